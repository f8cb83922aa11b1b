"""Writing inference outputs off the main thread: a small pool that encodes and writes masks and overlays while
the model runs the next batch (PNG encoding of a 1080p overlay takes ~0.5 s; zlib and numpy release the GIL).

Every file is written atomically (segformer_tao.io: temp file + rename), so a run that fails or is killed leaves
complete files or none, never a half-written mask.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class OutputWriter:
    """``submit(fn, *args)`` runs ``fn`` on one of ``threads`` threads; at most ``pending`` jobs wait (bounded
    memory: each holds a mask and maybe an image). The first failure is raised by the next ``submit`` or by
    ``close``; leaving the ``with`` block on an error waits for the jobs in flight and raises the block's error."""

    def __init__(self, threads: int = 2, pending: int = 8) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="segformer-writer")
        self.pending = max(1, pending)
        self.jobs: deque[Future] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        while self.jobs and (self.jobs[0].done() or len(self.jobs) >= self.pending):
            self.jobs.popleft().result()
        self.jobs.append(self.pool.submit(fn, *args))

    def close(self) -> None:
        """Wait for every job; raise the first failure."""
        try:
            while self.jobs:
                self.jobs.popleft().result()
        finally:
            self.pool.shutdown(wait=True)

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        self.pool.shutdown(wait=True, cancel_futures=True)
