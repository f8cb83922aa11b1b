"""`segformer dataset ...`: check a dataset, or write the synthetic demo dataset.

    segformer dataset check [-e spec.yaml] [--splits train,val] [--full] key=value ...
    segformer dataset demo OUTDIR [--classes N --size S --train N --val N --test N --mask-format F --seed N]
"""

from __future__ import annotations

import argparse

from segformer_tao.data.synthetic import MASK_FORMATS, make_demo_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segformer dataset", description="Dataset tools (unet layout).")
    sub = p.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="Check a dataset before training: pairing, readability, mask values.")
    chk.add_argument("-e", "--experiment_spec", default=None, help="TAO-format spec YAML.")
    chk.add_argument("--splits", default="train,val",
                     help="Comma-separated splits to check: train, val, test, predict or folder names.")
    chk.add_argument("--full", action="store_true", help="Check every file (default: dataset.segment.check).")
    chk.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dataset.segment.root_dir=/data/seg")
    demo = sub.add_parser("demo", help="Write a deterministic synthetic dataset (shapes = classes).")
    demo.add_argument("outdir")
    demo.add_argument("--classes", type=int, default=3, help="Classes including background.")
    demo.add_argument("--size", type=int, default=64, help="Image side in pixels.")
    demo.add_argument("--train", type=int, default=16)
    demo.add_argument("--val", type=int, default=8)
    demo.add_argument("--test", type=int, default=4)
    demo.add_argument("--mask-format", choices=MASK_FORMATS, default="ids",
                      help="ids: grey class ids; binary255: 0/255 (2 classes); rgb: palette colours.")
    demo.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str]) -> int:
    """Run a `segformer dataset` command; returns the exit code (UserError propagates to the top-level CLI)."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        root = make_demo_dataset(args.outdir, num_classes=args.classes, size=args.size, train=args.train,
                                 val=args.val, test=args.test, mask_format=args.mask_format, seed=args.seed)
        print(f"Demo dataset written to {root}. A quick CPU training run on it (a minute or two):\n"
              f"  segformer train -e {root / 'spec.yaml'} results_dir={root.parent / 'results'} model=mit_b0 "
              "automl_policy=off train.num_epochs=20\n"
              "(without model= and automl_policy=off it runs TAO's default fan_small_12_p4_hybrid in an AutoML "
              "search, which takes far longer on a CPU).")
        return 0
    from segformer_tao.config import compose_config
    from segformer_tao.data.check import check_dataset

    cfg = compose_config("train", args.overrides, spec_file=args.experiment_spec)
    mode = "full" if args.full else (None if cfg.dataset.segment.check != "off" else "sample")
    report_path = f"{str(cfg.get('results_dir') or 'results').rstrip('/')}/dataset_report.json"
    check_dataset(cfg, [s.strip() for s in args.splits.split(",") if s.strip()], mode=mode,
                  report_path=report_path)
    return 0
