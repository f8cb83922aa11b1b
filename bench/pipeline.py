"""`segformer inference` / `evaluate` end to end vs the same runtime's model alone, on the same images (issue 32).

For torch, ONNX Runtime and OpenVINO, at 1920x1080 with 2 classes and 2048x1024 with 19 classes (mit_b0 at
img_size 512, random weights: speed does not depend on them): each round runs, in alternating order, the model
alone (``Runtime.predict`` on the already preprocessed batches) and the product (`segformer inference
inference.source=<folder>` and `segformer evaluate`, in this process, so imports are paid once; images/s from the
job's own timer, which starts after the model is loaded). Also: post-processing (resize to the original size +
argmax, old path and ``labels_at``, labels compared) vs the model's time per image; time to first mask of a
one-image ONNX Runtime inference in a fresh process beside `import onnxruntime` + session creation alone; peak
memory (max RSS) of inference on 4000x3000 images with the sliding window off and on.

Usage: python bench/pipeline.py [--images 6] [--rounds 3] [--runtimes torch,onnxruntime,openvino]
[--memory-classes 2] [--memory-images 1] [--quick]. Writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import compare  # noqa: E402
from segformer_tao import io  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = (("1920x1080, 2 classes", 2, (1080, 1920)), ("2048x1024, 19 classes", 19, (1024, 2048)))
IMG = 512


def make_checkpoint(path: str, classes: int) -> str:
    from segformer_tao.config import compose_config
    from segformer_tao.engine.checkpoint import save_checkpoint
    from segformer_tao.model import build_model

    cfg = compose_config("export", [f"dataset.segment.img_size={IMG}", f"dataset.segment.num_classes={classes}",
                                    "model=mit_b0", f"results_dir={os.path.dirname(path)}"])
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).eval()
    rng = np.random.default_rng(classes)
    seg = cfg.dataset.segment
    meta = {"class_names": [f"c{i}" for i in range(classes)], "img_size": IMG,
            "palette": rng.integers(0, 255, (classes, 3)).tolist(), "mean": list(seg.augmentation.mean),
            "std": list(seg.augmentation.std), "backbone": "mit_b0", "num_classes": classes}
    save_checkpoint(path, {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "meta": meta,
                           "config": OmegaConf.to_container(cfg, resolve=True)})
    return path


def make_images(folder: str, n: int, hw: tuple[int, int], classes: int, masks: bool = True) -> str:
    """n photo-like JPEGs (smooth colour fields + noise) in folder/images/test and class-id masks in masks/test."""
    rng = np.random.default_rng(n + hw[0])
    for i in range(n):
        small = rng.integers(0, 255, (9, 16, 3)).astype(np.uint8)
        rgb = np.asarray(Image.fromarray(small).resize(hw[::-1], Image.BICUBIC)).astype(np.int16)
        rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
        os.makedirs(f"{folder}/images/test", exist_ok=True)
        Image.fromarray(rgb).save(f"{folder}/images/test/{i:04d}.jpg", quality=90)
        if masks:
            os.makedirs(f"{folder}/masks/test", exist_ok=True)
            Image.fromarray((rgb[..., 0].astype(np.int32) * classes // 256).astype(np.uint8)).save(
                f"{folder}/masks/test/{i:04d}.png")
    return folder


def cli(*argv: str) -> None:
    from segformer_tao.cli import main

    code = main(list(argv))
    if code:
        raise SystemExit(f"segformer {' '.join(argv)} exited {code}")


def export(ckpt: str, data: str, classes: int, out: str) -> str:
    """The checkpoint's ONNX through `segformer export` (dynamic batch, img_size input)."""
    cli("export", f"export.checkpoint={ckpt}", f"results_dir={out}", "export.simplify=false",
        f"dataset.segment.root_dir={data}", f"dataset.segment.num_classes={classes}", "model=mit_b0")
    return next(os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if f.endswith(".onnx"))


def model_args(runtime: str, ckpt: str, onnx: str, action: str) -> list[str]:
    if runtime == "torch":
        return [f"{action}.checkpoint={ckpt}"]
    return [f"{action}.onnx_file={onnx}", f"{action}.onnx_engine={runtime}"]


def model_only(cfg_args: list[str], data: str, batch: int) -> float:
    """images/s of Runtime.predict alone on the data's test images, preprocessed beforehand."""
    from segformer_tao.config import compose_config
    from segformer_tao.data.loader import ImageFiles
    from segformer_tao.deploy.runtime import open_runtime

    cfg = compose_config("inference", cfg_args)
    runtime = open_runtime(cfg, "inference")
    files = sorted(os.path.join(f"{data}/images/test", f) for f in os.listdir(f"{data}/images/test"))
    ds = ImageFiles(files, runtime.meta.img_size, runtime.meta.mean, runtime.meta.std)
    batches = [torch.stack([ds[j]["image"] for j in range(i, min(i + batch, len(ds)))])
               for i in range(0, len(ds), batch)]
    runtime.predict(batches[0][:1])  # warm-up, as the product's own first batch is not
    start = time.perf_counter()
    for b in batches:
        runtime.predict(b)
    return len(ds) / (time.perf_counter() - start)


def pipeline(action: str, cfg_args: list[str], data: str, out: str) -> float:
    """images/s of `segformer <action>` as its job reports it (inference's metrics, evaluate's results.json)."""
    shutil.rmtree(out, ignore_errors=True)
    source = [f"inference.source={data}/images/test"] if action == "inference" else [
        f"dataset.segment.root_dir={data}"]
    cli(action, *cfg_args, *source, f"results_dir={out}", "dataset.segment.check=off")
    if action == "inference":
        with open(f"{out}/inference/job.json") as f:
            return float(json.load(f)["metrics"]["images_per_s"])
    with open(f"{out}/evaluate/results.json") as f:
        r = json.load(f)
    return r["images"] / r["seconds"]


def postprocess(classes: int, hw: tuple[int, int], reps: int) -> dict:
    """Seconds per image of the old path (resize_logits + argmax(1)) and labels_at on logits at 1/4 of img_size."""
    from segformer_tao.deploy.base import labels_at, resize_logits

    logits = torch.randn(1, classes, IMG // 4, IMG // 4, generator=torch.Generator().manual_seed(classes))
    old, new, resize = [], [], []
    for _ in range(reps):
        t = time.perf_counter()
        resize_logits(logits, hw)
        resize.append(time.perf_counter() - t)
        t = time.perf_counter()
        a = resize_logits(logits, hw).argmax(1)
        old.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = labels_at(logits, hw)
        new.append(time.perf_counter() - t)
    return {"old_s": compare.spread(old), "labels_at_s": compare.spread(new), "resize_alone_s": compare.spread(resize),
            "identical": bool(torch.equal(a, b.long()))}


def _max_rss_mib(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(max RSS MiB of the process or its waited-for children, wall seconds, exit code)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    return usage.ru_maxrss / 1024, time.perf_counter() - start, os.waitstatus_to_exitcode(status)


def first_mask(onnx: str, image: str, out: str, env: dict) -> dict:
    """A fresh `segformer inference` of one image on ONNX Runtime: seconds until the mask exists and until exit,
    beside a fresh `import onnxruntime` + InferenceSession of the same model."""
    shutil.rmtree(out, ignore_errors=True)
    mask = f"{out}/inference/masks/{os.path.splitext(os.path.basename(image))[0]}.png"
    start = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "segformer_tao.cli", "inference", f"inference.source={image}",
                          f"inference.onnx_file={onnx}", "inference.onnx_engine=onnxruntime", f"results_dir={out}",
                          f"dataset.segment.img_size={IMG}"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, last_line = None, None
    for _ in p.stdout:
        last_line = time.perf_counter()
        if seen is None and os.path.exists(mask):
            seen = last_line
    p.wait()
    end = time.perf_counter()
    if seen is None and os.path.exists(mask):
        seen = end
    code = ("import time; t=time.perf_counter(); import onnxruntime as ort; "
            f"ort.InferenceSession({onnx!r}, providers=['CPUExecutionProvider']); print(time.perf_counter()-t)")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return {"first_mask_s": (seen or end) - start, "process_s": end - start,
            "exit_after_last_line_s": end - (last_line or end), "import_ort_and_session_s": time.perf_counter() - t,
            "rc": p.returncode}


def peak_memory(onnx: str, folder: str, out: str, env: dict, sliding: bool, classes: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    rss, wall, rc = _max_rss_mib([sys.executable, "-m", "segformer_tao.cli", "inference",
                                  f"inference.source={folder}", f"inference.onnx_file={onnx}",
                                  "inference.onnx_engine=onnxruntime",
                                  f"inference.sliding_window={str(sliding).lower()}",
                                  "inference.batch_size=1", f"dataset.segment.img_size={IMG}",
                                  f"dataset.segment.num_classes={classes}", f"results_dir={out}"], env)
    return {"max_rss_mib": rss, "seconds": wall, "rc": rc}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=6, help="images per setting")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="inference/evaluate batch size")
    parser.add_argument("--runtimes", default="torch,onnxruntime,openvino")
    parser.add_argument("--memory-classes", type=int, default=2)
    parser.add_argument("--memory-images", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 round, 2 images: a smoke run, never judged")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.images = 1, 2
    runtimes = [r for r in args.runtimes.split(",") if r]
    if "openvino" in runtimes and not _installed("openvino"):
        print("openvino is not installed ([openvino] extra): its rows are skipped")
        runtimes.remove("openvino")
    info = compare.machine()
    print(compare.machine_line(info), flush=True)
    tmp = tempfile.mkdtemp(prefix="bench_pipeline_")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = {"machine": info, "args": vars(args), "settings": {}}
    try:
        onnx_of = {}
        for name, classes, hw in SETTINGS:
            ckpt = make_checkpoint(f"{tmp}/c{classes}.pth", classes)
            data = make_images(f"{tmp}/data{classes}", args.images, hw, classes)
            onnx_of[classes] = export(ckpt, data, classes, f"{tmp}/export{classes}")
            rows = {}
            for runtime in runtimes:
                base = [*model_args(runtime, ckpt, onnx_of[classes], "inference"), f"inference.batch_size={args.batch}",
                        f"dataset.segment.num_classes={classes}", "model=mit_b0", f"dataset.segment.img_size={IMG}"]
                ev = [*model_args(runtime, ckpt, onnx_of[classes], "evaluate"), f"evaluate.batch_size={args.batch}",
                      f"dataset.segment.num_classes={classes}", "model=mit_b0", "dataset.segment.label_transform=None",
                      "dataset.segment.test_split=test", f"dataset.segment.img_size={IMG}"]
                sides = {"model": [], "inference": [], "evaluate": []}
                for r in range(args.rounds):
                    order = ["model", "inference", "evaluate"]
                    for side in order if r % 2 == 0 else order[::-1]:
                        if side == "model":
                            sides[side].append(model_only(base, data, args.batch))
                        elif side == "inference":
                            sides[side].append(pipeline("inference", base, data, f"{tmp}/inf"))
                        else:
                            sides[side].append(pipeline("evaluate", ev, data, f"{tmp}/ev"))
                rows[runtime] = {k: compare.spread(v) for k, v in sides.items()}
                for action in ("inference", "evaluate"):
                    rows[runtime][f"{action}_vs_model"] = compare.verdict(sides[action], sides["model"], 0.9,
                                                                          quick=args.quick)
                print(f"{name} {runtime}: model {compare.fmt_side(rows[runtime]['model'])} img/s | inference "
                      f"{compare.fmt_side(rows[runtime]['inference'])} | evaluate "
                      f"{compare.fmt_side(rows[runtime]['evaluate'])} | inference/model "
                      f"{rows[runtime]['inference_vs_model']['ratio']:.2f}x "
                      f"({rows[runtime]['inference_vs_model']['status']}) evaluate/model "
                      f"{rows[runtime]['evaluate_vs_model']['ratio']:.2f}x "
                      f"({rows[runtime]['evaluate_vs_model']['status']})", flush=True)
            post = postprocess(classes, hw, max(3, args.rounds))
            model_s = 1 / rows[runtimes[0]]["model"]["median"] if runtimes else float("nan")
            post["labels_at_vs_model"] = post["labels_at_s"]["median"] / model_s
            print(f"{name} post-processing per image: old {compare.fmt_side(post['old_s'], 3)} s, labels_at "
                  f"{compare.fmt_side(post['labels_at_s'], 3)} s (identical labels: {post['identical']}; the resize "
                  f"alone {compare.fmt_side(post['resize_alone_s'], 3)} s); "
                  f"{100 * post['labels_at_vs_model']:.1f}% of {runtimes[0] if runtimes else '-'}'s model time "
                  f"({model_s:.3f} s)", flush=True)
            result["settings"][name] = {"runtimes": rows, "postprocess": post}
        one = make_images(f"{tmp}/one", 1, (1080, 1920), 2, masks=False) + "/images/test/0000.jpg"
        result["first_mask"] = first_mask(onnx_of[2], one, f"{tmp}/first", env)
        fm = result["first_mask"]
        print(f"first mask (fresh process, 1 image 1920x1080, ONNX Runtime): {fm['first_mask_s']:.2f} s; process "
              f"{fm['process_s']:.2f} s, exit {fm['exit_after_last_line_s']:.2f} s after its last line; `import "
              f"onnxruntime` + session alone {fm['import_ort_and_session_s']:.2f} s", flush=True)
        big = make_images(f"{tmp}/big", args.memory_images, (3000, 4000), args.memory_classes, masks=False)
        ckpt = make_checkpoint(f"{tmp}/m{args.memory_classes}.pth", args.memory_classes)
        if args.memory_classes not in onnx_of:
            onnx_of[args.memory_classes] = export(ckpt, f"{tmp}/data2", args.memory_classes, f"{tmp}/exportm")
        result["peak_memory"] = {}
        for sliding in (False, True):
            m = peak_memory(onnx_of[args.memory_classes], f"{big}/images/test", f"{tmp}/mem", env, sliding,
                            args.memory_classes)
            result["peak_memory"]["sliding_window" if sliding else "whole_image"] = m
            print(f"peak memory, {args.memory_images} image(s) 4000x3000, {args.memory_classes} classes, sliding "
                  f"window {'on' if sliding else 'off'}: {m['max_rss_mib']:.0f} MiB max RSS ({m['seconds']:.1f} s, "
                  f"rc {m['rc']})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    io.write_json(os.path.join(REPO, "bench", "results", "pipeline.json"), result)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
