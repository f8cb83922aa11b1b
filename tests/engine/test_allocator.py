"""reuse_freed_memory: a large block freed and allocated again is reused, not page-faulted in afresh."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Minor page faults of the 2nd..4th malloc + fill + free of 64 MiB (above glibc's 32 MiB mmap ceiling).
PROBE = """
import ctypes, resource, sys
from segformer_tao.engine.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def cycle():
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(p)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cycle()
start = faults()
for _ in range(3):
    cycle()
print(applied, faults() - start)
"""


def _probe(mode: str, env: dict | None = None) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": REPO, **(env or {})}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux)")
def test_freed_large_blocks_are_reused():
    applied, faults_on = _probe("on")
    _, faults_off = _probe("off")
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert applied
    assert faults_off >= 3 * pages * 0.9, faults_off  # glibc's default: each allocation faulted in afresh
    assert faults_on < pages / 4, faults_on  # reused: no fresh pages


def test_user_malloc_settings_win():
    applied, _ = _probe("on", {"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert not applied
