"""Script run as a separate process by the DDP tests (Lightning re-executes it for extra local ranks).

Usage: python ddp_entry.py <tmp_dir> <out_json_prefix> [overrides...]; every rank writes <prefix>.rank<R>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import RandomSegDataset, TinySegmenter, tiny_cfg  # noqa: E402

from segformer_tao.engine.datamodule import SegDataModule  # noqa: E402
from segformer_tao.engine.trainer import train_model  # noqa: E402


def main() -> None:
    tmp, prefix, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp, *overrides)
    torch.manual_seed(0)
    dm = SegDataModule(cfg, RandomSegDataset(12), RandomSegDataset(7, mode="eval", seed=1))
    out = train_model(cfg, str(tmp / "ddp_results"), TinySegmenter(), dm)
    rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
    Path(f"{prefix}.rank{rank}.json").write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
