"""`segformer dataset ...`: check a dataset, convert one from its official layout, or write the demo dataset.

    segformer dataset check [-e spec.yaml] [--splits train,val] [--full] key=value ...
    segformer dataset convert --format FMT SRC DST [--splits a:b,...] [--overwrite] [--link M] [format options]
    segformer dataset formats
    segformer dataset demo OUTDIR [--classes N --size S --train N --val N --test N --mask-format F --seed N]
"""

from __future__ import annotations

import argparse

from segformer_tao.data.synthetic import MASK_FORMATS, make_demo_dataset

# The names of segformer_tao.data.convert.FORMATS, here so that --help does not import the converters.
FORMAT_NAMES = ("cityscapes", "ade20k", "voc", "coco-stuff", "labelme", "masks-folder")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segformer dataset", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Dataset tools. Training reads the unet layout (images/<split>/, masks/<split>/, same file "
                    "stems);\n`convert` writes it, with a spec.yaml, from Cityscapes, ADE20K, Pascal VOC, COCO-Stuff, "
                    "LabelMe or mask folders:\n  segformer dataset convert --format cityscapes /data/cityscapes "
                    "/data/cityscapes_unet\n  segformer train -e /data/cityscapes_unet/spec.yaml\n"
                    "`segformer dataset formats` lists the formats and the layout each expects.")
    sub = p.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="Check a dataset before training: pairing, readability, mask values.")
    chk.add_argument("-e", "--experiment_spec", default=None, help="TAO-format spec YAML.")
    chk.add_argument("--splits", default="train,val",
                     help="Comma-separated splits to check: train, val, test, predict or folder names.")
    chk.add_argument("--full", action="store_true", help="Check every file (default: dataset.segment.check).")
    chk.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dataset.segment.root_dir=/data/seg")
    conv = sub.add_parser("convert", help="Convert a dataset in its official layout into the unet layout + spec.yaml.",
                          description="Writes DST/images/<split>, DST/masks/<split> (images hard-linked, else "
                          "symlinked, else copied; masks re-encoded only where ids change), DST/spec.yaml "
                          "(dataset.segment keys: num_classes, palette, label_transform, ignore_index, splits) and "
                          "DST/convert_report.json, then runs `dataset check` on the result. Nothing is written "
                          "until SRC's layout is recognised; a failed or interrupted run leaves DST as it was.")
    conv.add_argument("--format", required=True, choices=list(FORMAT_NAMES), dest="fmt",
                      help="Source layout (see `segformer dataset formats`).")
    conv.add_argument("src", help="Top folder of the source dataset.")
    conv.add_argument("dst", help="Output folder (new or empty, or any with --overwrite).")
    conv.add_argument("--splits", default=None, help="Source split -> output split, e.g. training:train,"
                      "validation:val (default per format; unnamed source splits are skipped).")
    conv.add_argument("--overwrite", action="store_true", help="Replace a non-empty DST (only once the new tree is "
                      "complete).")
    conv.add_argument("--link", default="auto", choices=["auto", "hardlink", "symlink", "copy"],
                      help="How images and unchanged masks get into DST (auto: hard link, else symlink, else copy).")
    conv.add_argument("--no-check", dest="check", action="store_false", help="Skip `dataset check` afterwards.")
    conv.add_argument("--aug", action="store_true", default=None, help="voc: use SegmentationClassAug (SBD masks).")
    conv.add_argument("--classes", default=None, help="labelme: class names in id order (background is 0), e.g. "
                      "cat,dog; default: the labels found, sorted.")
    conv.add_argument("--val-fraction", type=float, default=None,
                      help="labelme, masks-folder without split folders: share of files for val (default 0.2).")
    conv.add_argument("--seed", type=int, default=None, help="labelme, masks-folder: seed of the train/val split.")
    conv.add_argument("--image-dir", default=None, help="masks-folder: image folder name under SRC.")
    conv.add_argument("--mask-dir", default=None, help="masks-folder: mask folder name under SRC.")
    conv.add_argument("--mask-suffix", default=None, help="masks-folder: mask name = image name + this + .png.")
    sub.add_parser("formats", help="List the formats `convert` reads and the layout each expects.")
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
    if args.command in ("convert", "formats"):
        from segformer_tao.data.convert import convert, formats_text

        if args.command == "formats":
            print(formats_text())
            return 0
        opts = {k: getattr(args, k) for k in ("splits", "aug", "classes", "val_fraction", "seed", "image_dir",
                                               "mask_dir", "mask_suffix")}
        convert(args.fmt, args.src, args.dst, opts, overwrite=args.overwrite, link=args.link, check=args.check)
        return 0
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
