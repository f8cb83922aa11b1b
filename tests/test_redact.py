"""What redaction hides and what it leaves alone (issue 34, findings 2, 13 and 16): URL passwords with any
character, token-carrying query parameters, and a key that occurs inside a path that is read back."""

from __future__ import annotations

import pytest

from segformer_tao import redact

PASSWORDS = ["pa ss-7781", "pa\tss-7781", "pa\nss-7781", "p/w#x-7781", "pera/x#O-7781", "p@ss:w/rd-7781"]


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    monkeypatch.setattr(redact, "_KNOWN", set())


@pytest.mark.parametrize("password", PASSWORDS)
def test_url_password_with_any_character_is_hidden_everywhere(password):
    url = f"postgresql://bob:{password}@127.0.0.1:5432/db"
    cfg = {"automl": {"storage": url}, "results_dir": "/r"}
    redact.register_config(cfg)
    stored = redact.strip_secrets(cfg)
    assert stored["automl"]["storage"] == "postgresql://bob:***@127.0.0.1:5432/db"
    line = f"opening automl.storage={url} (OperationalError: refused)"
    shown = redact.redact(line)
    assert "7781" not in shown and password not in shown, shown
    assert "OperationalError" in shown and "127.0.0.1:5432/db" in shown, shown  # nothing else mangled


@pytest.mark.parametrize("password", PASSWORDS)
def test_command_line_registration_covers_the_whole_argument(password):
    arg = f"automl.storage=postgresql://bob:{password}@127.0.0.1:5432/db"
    redact.register(*redact.url_passwords(arg))
    assert password not in redact.redact(f"cmd: segformer train {arg}")


def test_storage_url_password_is_the_whole_password():
    from segformer_tao.automl.storage import mask_url, url_password

    for password in PASSWORDS:
        url = f"postgresql://bob:{password}@127.0.0.1:5432/db"
        assert url_password(url) == password
        assert mask_url(url) == "postgresql://bob:***@127.0.0.1:5432/db"
    detail = "OperationalError: (psycopg.OperationalError) connection failed"
    redact.register(*redact.url_passwords("postgresql://bob:p/pera#x@127.0.0.1:1/db"))
    assert redact.redact(detail) == detail


@pytest.mark.parametrize("query, secret", [
    ("access_token=ya29.a0AfH6SMBx", "ya29.a0AfH6SMBx"),
    ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=9f86d081884c7d65", "9f86d081884c7d65"),
    ("X-Amz-Security-Token=FwoGZXIvYXdzEJr", "FwoGZXIvYXdzEJr"),
    ("sv=2022-11-02&sig=abcDEF123%2Bxyz", "abcDEF123%2Bxyz"),
    ("client_secret=s3cr3t-value", "s3cr3t-value"),
])
def test_token_query_parameters_are_hidden(query, secret):
    url = f"https://bucket.example.com/data/x.png?{query}"
    cfg = {"inference": {"source": url}}
    redact.register_config(cfg)
    assert secret not in str(redact.strip_secrets(cfg))
    assert secret not in redact.redact(f"reading {url}")


def test_harmless_query_parameters_are_kept():
    url = "https://example.com/x?design=a&version=2&signed=yes"
    assert redact.redact(url) == url and redact.strip_secrets({"u": url}) == {"u": url}


def test_a_key_inside_a_path_is_not_rewritten_in_config_values():
    key = "projectkey1"
    redact.register(key)
    cfg = {"dataset": {"segment": {"root_dir": f"/data/{key}/ds"}}, "other": key, "encryption_key": key}
    stored = redact.strip_secrets(cfg)
    assert stored == {"dataset": {"segment": {"root_dir": f"/data/{key}/ds"}}, "other": "***"}
    assert key not in redact.redact(f"root_dir=/data/{key}/ds")  # free text (logs, messages) still hides it


def test_a_trial_spec_keeps_the_real_path_and_never_the_key_entry():
    from omegaconf import OmegaConf

    from segformer_tao.config import compose_config, to_yaml_without_secrets

    key = "projectkey1"
    cfg = compose_config("train", [f"encryption_key={key}", f"dataset.segment.root_dir=/data/{key}/ds"])
    written = OmegaConf.create(to_yaml_without_secrets(cfg))
    assert written.dataset.segment.root_dir == f"/data/{key}/ds"  # what an AutoML trial runs from
    assert "encryption_key" not in written
