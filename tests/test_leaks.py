"""No leaks over long runs: a tiny training (validation, status.json, heartbeat every epoch) and an inference over
many batches keep their resident memory, open file descriptors and threads flat after warm-up.

The figures are sampled from the real CLI processes' /proc by bench/leaks.py (which runs the long version); each
step's floor (minimum) is compared, so a transient (a checkpoint's temp file) does not count, a leak does.
"""

from __future__ import annotations

import os
import sys

import pytest

from bench.leaks import run

FD_SLACK, THREAD_SLACK = 2, 2
RSS_SLACK_KB = 16 * 1024  # measured growth: < 1 MiB over 7 epochs and over 40 images (2-core CPU)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="samples the CLI processes through Linux /proc")
def test_memory_fds_and_threads_stay_flat_over_a_long_tiny_run(tmp_path):
    result = run(str(tmp_path), epochs=9, images=96)  # a fast CPU writes several masks between samples
    for phase, min_steps in (("train", 4), ("inference", 24)):
        g = result[phase]["growth"]
        report = f"{phase}: {g}"
        print(report)
        assert g["steps"] >= min_steps, report  # enough steps were sampled for a trend to show
        assert g["fds"] <= FD_SLACK, report
        assert g["threads"] <= THREAD_SLACK, report
        assert g["rss_kb"] <= RSS_SLACK_KB, report
    assert os.path.isdir(tmp_path / "results" / "inference" / "masks")
