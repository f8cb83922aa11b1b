"""Which process of a multi-process run this is: the one place that reads the launchers' rank variables.

What only global rank 0 may do (the results-dir lock, job.json, status.json, logs, checkpoints) asks
:func:`is_primary`.
"""

from __future__ import annotations

import os

# Variables a launcher sets to a non-zero value in every process but the first (torchrun, TAO's scripts, Lightning).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK")


def is_primary() -> bool:
    """False in the extra processes of a multi-process (DDP) run: only global rank 0 writes job files."""
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in RANK_VARIABLES)
