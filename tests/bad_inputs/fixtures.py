"""Build the files the bad-input corpus points at (once per test session).

A tiny valid demo dataset (3 classes, 32 px, 2 images per split), broken copies of it, ONE checkpoint trained
through the CLI (mit_b0, 1 epoch), an encrypted copy of it, its ONNX (via `segformer export`), crafted broken
model files, a moto S3 server, the extra environments some cases need (``env_<case_id>``) and the file-size
limit of the disk-full case (``fsize_<case_id>``).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.bad_inputs.runner import preload
from tests.conftest import free_port, run_cli
from tests.faultproxy import FaultProxy

TINY_TRAIN = ["model=mit_b0", "dataset.segment.num_classes=3", "dataset.segment.img_size=32", "train.num_epochs=1",
              "dataset.segment.batch_size=2", "dataset.segment.workers=0", "dataset.segment.label_transform=None",
              "automl_policy=off"]
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}


def _write(path: str, text: str | bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(text, bytes) else "w") as f:
        f.write(text)
    return path


def _broken_copies(data: str, tmp: str) -> dict[str, str]:
    """Copies of the demo dataset, each with one kind of damage."""
    def copy(name: str) -> str:
        return shutil.copytree(data, os.path.join(tmp, name))

    out = {"empty_root": os.path.join(tmp, "empty_root"), "calib": os.path.join(tmp, "calib")}
    os.makedirs(out["calib"])
    for i in range(8):  # one calibration batch
        shutil.copy(os.path.join(data, "images", "train", f"{i % 2:04d}.png"), os.path.join(out["calib"], f"{i}.png"))
    os.makedirs(out["empty_root"])
    out["no_val"] = copy("no_val")
    shutil.rmtree(os.path.join(out["no_val"], "images", "val"))
    out["unpaired"] = copy("unpaired")
    shutil.copy(os.path.join(data, "images", "val", "0000.png"), os.path.join(out["unpaired"], "images", "val",
                                                                            "0099.png"))
    out["corrupt"] = copy("corrupt")
    _write(os.path.join(out["corrupt"], "images", "val", "0001.png"), b"\x89PNG\r\n\x1a\nnot really a png")
    out["size_mismatch"] = copy("size_mismatch")
    mask_path = os.path.join(out["size_mismatch"], "masks", "val", "0000.png")
    Image.open(mask_path).resize((16, 16), Image.NEAREST).save(mask_path)
    out["bad_values"] = copy("bad_values")
    mask_path = os.path.join(out["bad_values"], "masks", "val", "0000.png")
    arr = np.array(Image.open(mask_path))
    arr[:4, :4] = 7
    Image.fromarray(arr).save(mask_path)
    return out


def _rgb_dataset(tmp: str) -> str:
    """A demo dataset with colour masks, one of which holds a colour that is not in its palette."""
    from segformer_tao.data.synthetic import make_demo_dataset

    root = str(make_demo_dataset(os.path.join(tmp, "rgb"), size=32, train=2, val=2, test=2, mask_format="rgb"))
    mask_path = os.path.join(root, "masks", "val", "0000.png")
    arr = np.array(Image.open(mask_path).convert("RGB"))
    arr[:3, :3] = (123, 45, 67)
    Image.fromarray(arr).save(mask_path)
    return os.path.join(root, "spec.yaml")


def _model_files(tmp: str, data: str) -> dict[str, str]:
    """Train one tiny checkpoint through the CLI, export it, and derive the broken/encrypted variants."""
    from segformer_tao.engine.checkpoint import load_checkpoint, save_checkpoint

    train = run_cli("train", f"dataset.segment.root_dir={data}", *TINY_TRAIN, f"results_dir={tmp}/train_job")
    assert train.returncode == 0, train.output
    ckpt = os.path.join(tmp, "train_job", "train", "segformer_model_best.pth")
    onnx_out = os.path.join(tmp, "export_job")
    export = run_cli("export", f"dataset.segment.root_dir={data}", f"export.checkpoint={ckpt}",
                     f"results_dir={onnx_out}")
    assert export.returncode == 0, export.output
    onnx_file = next(os.path.join(r, f) for r, _, fs in os.walk(onnx_out) for f in fs if f.endswith(".onnx"))
    enc_ckpt = os.path.join(tmp, "encrypted.pth")
    save_checkpoint(enc_ckpt, load_checkpoint(ckpt), encryption_key="k1")
    with open(ckpt, "rb") as f:
        blob = f.read()
    with open(enc_ckpt, "rb") as f:
        sealed = f.read()
    ir = os.path.join(tmp, "ir", "model.xml")  # the ONNX as an OpenVINO IR (the [openvino] extra, in dev)
    from segformer_tao.deploy.openvino import read_model, save_ir

    save_ir(read_model(onnx_file, "onnx")[0], ir, {})
    return {"ckpt": ckpt, "onnx": onnx_file, "enc_ckpt": enc_ckpt, "ir": ir,
            "ir_without_bin": _write(os.path.join(tmp, "ir_alone", "model.xml"), open(ir).read()),
            "truncated_ckpt": _write(os.path.join(tmp, "truncated.pth"), blob[: len(blob) // 2]),
            "truncated_enc_ckpt": _write(os.path.join(tmp, "enc_truncated.pth"), sealed[: len(sealed) // 2]),
            "key_list_yaml": _write(os.path.join(tmp, "key_list.yaml"), "encryption_key: [Sup3r, Secret]\n"),
            "not_onnx": _write(os.path.join(tmp, "not_a_model.onnx"), b"this is not a protobuf at all"),
            "fake_engine": _write(os.path.join(tmp, "model.engine"), b"\x00" * 64)}


@pytest.fixture(scope="session")
def bad_paths(tmp_path_factory, moto_endpoint) -> dict:
    from segformer_tao.data.synthetic import make_demo_dataset

    tmp = str(tmp_path_factory.mktemp("bad_inputs"))
    preload()
    data = str(make_demo_dataset(os.path.join(tmp, "data"), size=32, train=2, val=2, test=2))
    paths: dict = {"tmp": tmp, "data": data, **_broken_copies(data, tmp), **_model_files(tmp, data)}
    paths["rgb_spec"] = _rgb_dataset(tmp)
    paths["bad_yaml"] = _write(os.path.join(tmp, "bad.yaml"), "train: [unclosed\n")
    paths["scalar_yaml"] = _write(os.path.join(tmp, "scalar.yaml"), "just a string\n")
    paths["unknown_key_yaml"] = _write(os.path.join(tmp, "unknown.yaml"), "train:\n  num_epochz: 3\n")
    paths["results_missing_yaml"] = _write(os.path.join(tmp, "results.yaml"), "results_dir: ???\n")
    paths["old_format_yaml"] = _write(os.path.join(tmp, "tao5.yaml"), "train:\n  max_iters: 1000\n  trainer:\n"
                                      "    sf_optim:\n      lr: 0.00006\nmodel:\n  input_height: 512\n")
    paths["a_file"] = _write(os.path.join(tmp, "a_file"), "x")
    paths["empty_dir"] = os.path.join(tmp, "empty_job")
    os.makedirs(paths["empty_dir"], exist_ok=True)
    paths["closed_port"] = str(free_port())
    paths["env_s3_unreachable"] = {**FAKE_AWS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{paths['closed_port']}"}
    paths["env_s3_missing_bucket"] = {**FAKE_AWS, "AWS_ENDPOINT_URL": moto_endpoint}
    paths["failing_s3"] = FaultProxy(moto_endpoint).start().set(rate=1.0, kinds=("503",))  # every request: 503
    paths["failing_s3_url"] = paths["failing_s3"].url
    paths["env_s3_keeps_failing"] = {**FAKE_AWS, "AWS_ENDPOINT_URL": paths["failing_s3_url"], "AWS_MAX_ATTEMPTS": "2"}
    paths["env_s3_max_attempts_not_a_number"] = {**FAKE_AWS, "AWS_ENDPOINT_URL": moto_endpoint,
                                                 "AWS_MAX_ATTEMPTS": "lots"}
    paths["env_s3_timeout_not_a_number"] = {**FAKE_AWS, "AWS_ENDPOINT_URL": moto_endpoint,
                                            "SEGFORMER_S3_TIMEOUT_S": "1min"}
    paths["env_encryption_key_env_var_empty"] = {"SEGFORMER_KEY": ""}
    paths["fsize_disk_full_checkpoint"] = 1 << 20  # bytes per file: logs fit, a checkpoint does not
    paths.update(_held_results_dirs(tmp))
    paths.update(_trust_boundary_files(tmp))
    paths.update(_convert_sources(tmp))
    paths.update(_attacker_files(tmp, data))
    return paths


def _convert_sources(tmp: str) -> dict:
    """Sources for `dataset convert`: an ADE20K replica (the wrong layout for other formats), a COCO-Stuff replica
    with ids outside its label table, an empty folder, and a non-empty destination."""
    from pathlib import Path

    from tests.data import layouts

    coco = layouts.make_coco_stuff(Path(tmp, "convert_bad_ids"))
    bad_mask = coco / "stuffthingmaps_trainval2017" / "val2017" / "000000000139.png"
    layouts._mask(bad_mask, layouts.blocks([0, 11, 200], 3))
    empty = os.path.join(tmp, "convert_empty_src")
    os.makedirs(empty)
    return {"convert_ade": str(layouts.make_ade20k(Path(tmp, "convert_ade"))), "convert_bad_ids": str(coco),
            "convert_empty": empty,
            "convert_full_dst": os.path.dirname(_write(os.path.join(tmp, "full_dst", "x"), "x"))}


def _attacker_files(tmp: str, data: str) -> dict:
    """Issue 34's crafted inputs: a spec whose key line is bad YAML, an alias bomb, an encrypted header asking for
    16 GiB of scrypt, a dataset holding a decompression bomb, a job.json that is a JSON list, an ONNX whose external
    data lies outside its folder, and a Hugging Face index naming the shard '.'."""
    import json
    import struct

    from segformer_tao import crypto
    from tests.crafted import bomb_png, onnx_with_external_data

    out = {"key_bad_escape_yaml": _write(os.path.join(tmp, "key_bad_escape.yaml"),
                                         'encryption_key: "Sup3rS3cretPw\\q"\n'),
           "alias_bomb_yaml": _write(os.path.join(tmp, "alias_bomb.yaml"), "".join(
               [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9 if i else ['"lol"'] * 9) + "]\n" for i in range(9)])
               + "z: *a8\n")}
    head = crypto.MAGIC2 + struct.pack(">BBBBI", crypto.KDF_SCRYPT, 22, 32, 16, crypto.CHUNK) + os.urandom(55)
    out["crafted_kdf_ckpt"] = _write(os.path.join(tmp, "crafted_kdf.pth"), head + os.urandom(64))
    bomb = shutil.copytree(data, os.path.join(tmp, "bomb"))
    _write(os.path.join(bomb, "images", "val", "0001.png"), bomb_png(13000, 13000))
    out["bomb"] = bomb
    out["job_json_list_dir"] = os.path.dirname(_write(os.path.join(tmp, "job_json_list", "job.json"), "[1, 2]\n"))
    _write(os.path.join(tmp, "secret.bin"), b"\x07" * 16)
    out["onnx_escape"] = onnx_with_external_data(os.path.join(tmp, "onnx_escape"), "../secret.bin")
    hf_dot = os.path.join(tmp, "hf_dot")
    out["hf_dot"] = os.path.dirname(_write(os.path.join(hf_dot, "model.safetensors.index.json"),
                                           json.dumps({"weight_map": {"secret": "."}})))
    return out


def _trust_boundary_files(tmp: str) -> dict:
    """An engine whose bytes changed after its build recorded them, a Hugging Face folder whose index names a
    shard outside it, and a results dir with log.txt planted as a link to another file."""
    import hashlib
    import json

    from safetensors.torch import save_file
    from torch import ones

    engine = _write(os.path.join(tmp, "tampered", "tampered.engine"), b"\x01" * 64)
    recorded = hashlib.sha256(b"\x02" * 64).hexdigest()
    _write(f"{engine}.json", json.dumps({"tensorrt_version": "10.0", "sha256": recorded}))
    hf = os.path.join(tmp, "hf_escape")
    os.makedirs(hf)
    save_file({"secret": ones(1)}, os.path.join(tmp, "outside.safetensors"))
    _write(os.path.join(hf, "model.safetensors.index.json"),
           json.dumps({"weight_map": {"secret": "../outside.safetensors"}}))
    victim = _write(os.path.join(tmp, "victim.txt"), "not a log\n")
    planted = os.path.join(tmp, "results_log_txt_is_a_symlink", "evaluate")
    os.makedirs(planted)
    os.symlink(victim, os.path.join(planted, "log.txt"))
    return {"tampered_engine": engine, "tampered_engine_recorded": recorded,
            "tampered_engine_sha": hashlib.sha256(b"\x01" * 64).hexdigest(), "hf_escape": hf, "victim": victim,
            "fake_engine_sha": hashlib.sha256(b"\x00" * 64).hexdigest()}


def _held_results_dirs(tmp: str) -> dict:
    """A results dir locked by this test process for the whole session, and one locked by a job on another host
    (a lock file + job.json naming that host, with a heartbeat the case's environment keeps fresh)."""
    import json

    from segformer_tao.joblock import JobLock, now_str

    busy = os.path.join(tmp, "busy")
    other = os.path.join(tmp, "other_host")
    holder = {"host": "gpu-node-07.cluster", "pid": 31337, "action": "train", "start": now_str(),
              "command": ["segformer", "train", "train.num_epochs=300"]}
    _write(os.path.join(other, ".segformer.lock"), json.dumps(holder))
    _write(os.path.join(other, "job.json"), json.dumps({**holder, "status": "running", "heartbeat": now_str()}))
    return {"busy_dir": busy, "busy_lock": JobLock.acquire(busy, "train", ["segformer", "train", "num_epochs=300"]),
            "other_host_dir": other, "env_results_dir_other_host": {"SEGFORMER_HEARTBEAT_S": "86400"}}
