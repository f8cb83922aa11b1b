"""Spec files and overrides that must not leak the key, change it silently, or exhaust the machine (issue 34,
findings 1, 4, 5, 6 and 14)."""

from __future__ import annotations

import time

import pytest

from segformer_tao.config import compose_config
from segformer_tao.config.compose import load_spec_file
from segformer_tao.errors import UserError

SECRET = "Sup3rS3cretPw"


@pytest.mark.parametrize("line", [f'encryption_key: "{SECRET}\\q"', f"encryption_key: {SECRET}: x",
                                  f"encryption_key: @{SECRET}", f"encryption_key: [{SECRET}"])
def test_yaml_syntax_error_on_the_key_line_does_not_quote_it(tmp_path, line):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"train:\n  num_epochs: 2\n{line}\n")
    with pytest.raises(UserError) as e:
        load_spec_file(str(spec))
    message = str(e.value)
    assert "not valid YAML" in message and "line 3" in message, message
    assert SECRET not in message and SECRET[:6] not in message, message


def test_yaml_error_elsewhere_still_names_line_and_column(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  num_epochs: [2\n")
    with pytest.raises(UserError, match=r"line \d+, column \d+"):
        load_spec_file(str(spec))


@pytest.mark.parametrize("text", ["<<: {encryption_key: 0123}\n",
                                  "base: &b {encryption_key: 0123}\n<<: *b\n",
                                  "<<: [{train: {num_epochs: 2}}, {encryption_key: 0123}]\n"])
def test_key_from_a_merge_key_is_refused(tmp_path, text):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    with pytest.raises(UserError, match="merge key"):
        compose_config("train", [], str(spec))


def test_key_through_an_alias_is_its_exact_text(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("x: &k 0123\nencryption_key: *k\n")
    # `x` is not a key of the schema: only the key's value matters here
    from segformer_tao.config import encryption_key as ek

    assert ek.spec_file_value(spec.read_text(), str(spec)) == "0123"


@pytest.mark.parametrize("written, reason", [
    ('"C:\\new\\table"', "escape"),
    ("|\n  abc\n", "block scalar"),
    (">\n  abc\n", "block scalar"),
    ("abc #def", "comment"),
    ("abc\n  def", "more than one line"),
    ("'abc\n  def'", "more than one line"),
])
def test_spec_key_that_yaml_would_change_is_refused_with_the_reason(written, reason):
    from segformer_tao.config import encryption_key as ek

    with pytest.raises(UserError, match=reason) as e:
        ek.spec_file_value(f"encryption_key: {written}\n", "s.yaml")
    assert "abc" not in str(e.value) and "table" not in str(e.value)


@pytest.mark.parametrize("written, key", [("'it''s'", "it's"), ('"a#b"', "a#b"), ("a#b", "a#b"),
                                          ("'C:\\new'", "C:\\new"), ('"plain"', "plain"),
                                          ("abc  # a comment after a quoted key", None)])
def test_spec_keys_yaml_keeps_as_written(written, key):
    from segformer_tao.config import encryption_key as ek

    if key is None:
        with pytest.raises(UserError, match="comment"):
            ek.spec_file_value(f"encryption_key: {written}\n", "s.yaml")
        assert ek.spec_file_value("encryption_key: 'abc'  # the key\n", "s.yaml") == "abc"
    else:
        assert ek.spec_file_value(f"encryption_key: {written}\n", "s.yaml") == key


def _laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"train: {{num_epochs: 2}}\nz: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_fast(tmp_path):
    spec = tmp_path / "laughs.yaml"
    spec.write_text(_laughs(9))  # about 387 million values once expanded, in under 500 bytes
    assert spec.stat().st_size < 500
    t0 = time.monotonic()
    with pytest.raises(UserError, match="alias") as e:
        compose_config("train", [], str(spec))
    assert time.monotonic() - t0 < 5
    assert "laughs.yaml" in str(e.value)


def test_recursive_alias_is_refused(tmp_path):
    spec = tmp_path / "loop.yaml"
    spec.write_text("a: &a [1, *a]\n")
    with pytest.raises(UserError, match="alias"):
        load_spec_file(str(spec))


def test_small_alias_use_still_works(tmp_path):
    spec = tmp_path / "ok.yaml"
    spec.write_text("defaults_common: &e 3\ntrain: {num_epochs: *e}\nevaluate: {batch_size: *e}\n")
    spec_cfg = load_spec_file(str(spec))
    assert spec_cfg.train.num_epochs == 3 and spec_cfg.evaluate.batch_size == 3


@pytest.mark.parametrize("override", [f"encryption_ky={SECRET}", f"Encryption_key={SECRET}",
                                      f"train.encryption_key={SECRET}", f"train.num_epochz={SECRET}"])
def test_unknown_key_error_masks_the_value(override):
    with pytest.raises(UserError) as e:
        compose_config("train", [override])
    message = str(e.value)
    assert "Unknown key" in message and override.split("=")[0] in message, message
    assert SECRET not in message and SECRET[:6] not in message, message


def test_wrong_type_still_shows_the_value_of_a_known_key():
    with pytest.raises(UserError, match="ten"):
        compose_config("train", ["train.num_epochs=ten"])
