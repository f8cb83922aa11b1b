"""TAO's value conventions resolved once, right after composing, so the code after it sees concrete values.

Batch sizes: TAO's generated default spec writes ``-1`` for ``dataset.segment.batch_size``, ``evaluate.batch_size``
and ``inference.batch_size``. In TAO, evaluate and inference batch by ``dataset.segment.batch_size``; here their own
key wins when it is > 0, else they take ``dataset.segment.batch_size``, and ``-1`` there means the schema default.
The resolved values are what experiment.yaml records.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from segformer_tao.config.schema import DatasetSegmentConfig
from segformer_tao.errors import UserError

# dataset.segment.batch_size=-1 resolves to the schema default (the default TAO's own schema shows for the key).
DEFAULT_BATCH_SIZE = DatasetSegmentConfig.batch_size
# Keys that take their batch size from dataset.segment.batch_size when <= 0 (TAO: they are not read at all).
FOLLOWS_DATASET_BATCH = ("evaluate.batch_size", "inference.batch_size")


def _note(message: str) -> None:
    # stderr: `segformer config ... > spec.yaml` must stay valid YAML.
    print(f"note: {message}", file=sys.stderr)


def resolve_batch_sizes(cfg: DictConfig) -> None:
    """Replace the ``-1`` batch sizes of TAO's default spec by the values they stand for (in place).

    ``dataset.segment.batch_size=-1`` -> the schema default, 8 (with a note); ``evaluate/inference.batch_size``
    <= 0 -> the resolved ``dataset.segment.batch_size``. A 0 is a UserError (TAO's -1 is the only "unset" value).
    """
    seg = cfg.dataset.segment
    for key in ("dataset.segment.batch_size", *FOLLOWS_DATASET_BATCH):
        if OmegaConf.select(cfg, key) == 0:
            default = DEFAULT_BATCH_SIZE if key.startswith("dataset") else "dataset.segment.batch_size"
            raise UserError(f"{key}=0 is not a batch size: give a positive number, or -1 for the default "
                            f"({default}).")
    if int(seg.batch_size) < 0:
        seg.batch_size = DEFAULT_BATCH_SIZE
        _note(f"dataset.segment.batch_size=-1 (TAO's default spec): using {DEFAULT_BATCH_SIZE}, the schema default. "
              "Set it to the batch size you want per device.")
    for key in FOLLOWS_DATASET_BATCH:
        section = cfg.get(key.split(".")[0])
        if section is not None and int(section.batch_size) < 0:
            section.batch_size = int(seg.batch_size)
