"""Read status.json's per-epoch lines whichever schema wrote them (metrics at the top level, or under TAO's
StatusLogger ``graphical``/``kpi``)."""

from __future__ import annotations

import json
import os


def epoch_records(results_dir) -> list[dict]:
    """One flat dict per finished epoch (train_loss, lr, val_loss, val_miou, ... at the top level)."""
    out = []
    with open(os.path.join(results_dir, "status.json"), encoding="utf-8") as f:
        for text in f:
            line = json.loads(text)
            flat = {**line, **(line.get("graphical") or {}), **(line.get("kpi") or {})}
            if flat.get("train_loss") is not None:
                out.append(flat)
    return out
