"""inference.source: every form (image, folder, glob, list, s3:// prefix, video) gives the masks the unet path gives
for the same image, output names keep relative paths, and a video's frames, rate and masks are those of its decoded
frames run one by one."""

from __future__ import annotations

import os
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from segformer_tao.data.sources import list_source, output_names
from segformer_tao.errors import UserError

av = pytest.importorskip("av", reason="the [video] extra (PyAV) is not installed")
IMG, CLASSES = 64, 3


def _checkpoint(path: str, tmp) -> str:
    from segformer_tao.config import compose_config
    from segformer_tao.engine.checkpoint import save_checkpoint
    from segformer_tao.model import build_model

    cfg = compose_config("export", [f"dataset.segment.img_size={IMG}", f"dataset.segment.num_classes={CLASSES}",
                                    "model.backbone.type=mit_b0", f"results_dir={tmp}"])
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).eval()
    seg = cfg.dataset.segment
    meta = {"class_names": ["a", "b", "c"], "palette": [[0, 0, 0], [255, 0, 0], [0, 0, 255]], "img_size": IMG,
            "mean": list(seg.augmentation.mean), "std": list(seg.augmentation.std), "backbone": "mit_b0",
            "num_classes": CLASSES}
    save_checkpoint(path, {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "meta": meta,
                           "config": OmegaConf.to_container(cfg, resolve=True)})
    return path


def _image(path, w: int, h: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = rng.integers(0, 255, 3)
    arr[h // 3 :, :] += rng.integers(0, 120, (h - h // 3, w, 3)).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    ckpt = _checkpoint(str(tmp / "tiny.pth"), tmp)
    photos = tmp / "photos"
    files = {"a/x.png": _image(photos / "a" / "x.png", 90, 70, 1), "b/x.png": _image(photos / "b" / "x.png", 50, 80, 2),
             "b/deep/y.jpg": _image(photos / "b" / "deep" / "y.jpg", 64, 64, 3)}
    (photos / "README.txt").write_text("not an image")
    return {"tmp": tmp, "ckpt": ckpt, "photos": str(photos), "files": files}


def _infer(world, name: str, *overrides: str) -> str:
    from segformer_tao.cli import main

    out = world["tmp"] / name
    code = main(["inference", f"inference.checkpoint={world['ckpt']}", f"results_dir={out}", "model=mit_b0",
                 f"dataset.segment.num_classes={CLASSES}", "dataset.segment.workers=0", "inference.batch_size=2",
                 *overrides])
    assert code == 0
    return str(out / "inference")


def _masks(folder: str) -> dict[str, np.ndarray]:
    return {os.path.relpath(os.path.join(r, f), folder): np.asarray(Image.open(os.path.join(r, f)))
            for r, _, fs in os.walk(folder) for f in fs if f.endswith(".png")}


def test_output_names_keep_relative_paths_and_never_collide():
    files = ["/p/a/x.png", "/p/b/x.png", "/p/b/deep/y.jpg", "/p/c/z.jpg", "/p/c/z.png"]
    assert output_names(files, "/p") == ["a/x", "b/x", "b/deep/y", "c/z.jpg", "c/z.png"]
    urls = ["s3://bk/pre/a/x.png", "s3://bk/pre/b/x.png"]
    assert output_names(urls, "s3://bk/pre") == ["a/x", "b/x"]


def test_listing_forms_and_their_names(world):
    photos, files = world["photos"], world["files"]
    folder = list_source(photos)
    assert folder.names == ["a/x", "b/deep/y", "b/x"]
    assert [os.path.basename(p) for p in folder.skipped] == ["README.txt"]
    assert list_source(f"{photos}/**/*.png").names == ["a/x", "b/x"]
    listing = world["tmp"] / "list.txt"
    listing.write_text(f"# two photos\nphotos/a/x.png\n\n{files['b/x.png']}\n")
    assert list_source(str(listing)).names == ["a/x", "b/x"]
    assert list_source(files["b/deep/y.jpg"]).names == ["y"]
    with pytest.raises(UserError, match="matches no file"):
        list_source(f"{photos}/**/*.webp")


@pytest.mark.slow
def test_every_source_form_gives_the_masks_of_the_unet_path(world, s3_env):
    import s3fs

    files = world["files"]
    unet = world["tmp"] / "unet"
    for rel, src in files.items():
        dst = unet / "images" / "test" / os.path.basename(rel)
        if os.path.basename(rel) == "x.png":  # the unet layout is flat: give the two x.png their own stems
            dst = dst.with_name(rel.split("/")[0] + "_x.png")
        os.makedirs(dst.parent, exist_ok=True)
        shutil.copy(src, dst)
    ref = _masks(os.path.join(_infer(world, "unet", f"dataset.segment.root_dir={unet}"), "masks"))
    expected = {"a/x.png": ref["a_x.png"], "b/x.png": ref["b_x.png"], "b/deep/y.png": ref["y.png"]}
    assert {k: v.shape for k, v in expected.items()} == {"a/x.png": (70, 90), "b/x.png": (80, 50),
                                                         "b/deep/y.png": (64, 64)}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env})
    if not fs.exists("src-bucket"):
        fs.mkdir("src-bucket")
    fs.put(world["photos"], "src-bucket/photos", recursive=True)
    listing = world["tmp"] / "list.txt"
    listing.write_text("\n".join(files.values()) + "\n")
    forms = {"folder": (world["photos"], expected), "glob": (f"{world['photos']}/**/*.png",
                                                             {k: expected[k] for k in ("a/x.png", "b/x.png")}),
             "list": (str(listing), expected), "s3": ("s3://src-bucket/photos", expected),
             "image": (files["b/deep/y.jpg"], {"y.png": expected["b/deep/y.png"]})}
    for form, (value, want) in forms.items():
        got = _masks(os.path.join(_infer(world, form, f"inference.source={value}"), "masks"))
        assert sorted(got) == sorted(want), form
        for name, mask in want.items():
            assert np.array_equal(got[name], mask), (form, name)
    overlays = os.path.join(world["tmp"], "folder", "inference", "overlays")
    assert sorted(_masks(overlays)) == ["a/x.png", "b/deep/y.png"]  # the first batch's (vis_after_n_batches=16)


def _write_video(path: str, frames: int, rate: Fraction, w: int = 96, h: int = 64) -> None:
    out = av.open(path, "w")
    stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for i in range(frames):
        a = np.zeros((h, w, 3), np.uint8)
        a[:, : (i + 1) * w // frames] = 220
        a[..., 1] = 30 * i
        for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


def _decoded(path: str, gray: bool = False) -> tuple[list[np.ndarray], Fraction]:
    with av.open(path) as c:
        s = c.streams.video[0]
        return [f.to_ndarray(format="gray" if gray else "rgb24") for f in c.decode(s)], s.average_rate


@pytest.mark.slow
def test_video_frames_rate_and_masks_equal_per_image_inference_of_its_decoded_frames(world):
    video = str(world["tmp"] / "clip.mp4")
    rate = Fraction(30000, 1001)
    _write_video(video, 7, rate)
    frames, _ = _decoded(video)
    stills = world["tmp"] / "stills"
    for i, f in enumerate(frames):
        _image_from(stills / f"{i:06d}.png", f)
    want = _masks(os.path.join(_infer(world, "stills", f"inference.source={stills}"), "masks"))
    out = _infer(world, "video", f"inference.source={video}")
    got = _masks(os.path.join(out, "masks"))
    assert sorted(got) == [f"clip/{k}" for k in sorted(want)] and len(got) == 7
    assert all(np.array_equal(got[f"clip/{k}"], v) for k, v in want.items())
    overlay_frames, overlay_rate = _decoded(os.path.join(out, "overlays", "clip.mp4"))
    assert len(overlay_frames) == 7 and overlay_rate == rate and overlay_frames[0].shape == (64, 96, 3)
    out = _infer(world, "mask_video", f"inference.source={video}", "inference.video_masks=video")
    mask_frames, mask_rate = _decoded(os.path.join(out, "masks", "clip.mkv"), gray=True)
    assert mask_rate == rate and len(mask_frames) == 7
    assert all(np.array_equal(m, want[f"{i:06d}.png"]) for i, m in enumerate(mask_frames))  # lossless


def _image_from(path, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def test_inference_help_names_the_input_keys():
    from segformer_tao.cli import action_help

    text = action_help("inference")
    inputs = text.split("inputs (one of):", 1)[1].split("config groups", 1)[0]
    assert "inference.source=PATH" in inputs and "dataset.segment.root_dir=DIR" in inputs and "video" in inputs
