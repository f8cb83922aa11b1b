"""Run `segformer_tao.cli.main(argv)` in a forked child of the test process: a fresh process per case, as with
`run_cli`, but torch, Lightning, timm and ONNX are imported once (by :func:`preload`) instead of per case, which
keeps the whole corpus within a few minutes on a shared 2-core machine.

The child gets its own environment overrides and, for the disk-full case, an RLIMIT_FSIZE; its stdout and stderr
are captured from file descriptors 1 and 2, so warnings and tracebacks printed by any library are seen too.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile

from tests.conftest import CliResult

HEAVY_MODULES = ["torch", "pytorch_lightning", "timm", "onnx", "onnxruntime", "s3fs", "segformer_tao.cli",
                 "segformer_tao.engine.trainer", "segformer_tao.actions.evaluate", "segformer_tao.actions.export",
                 "segformer_tao.actions.quantize", "segformer_tao.actions.inference", "segformer_tao.data.check"]


def preload() -> None:
    """Import the heavy modules once in the parent so that every forked case starts warm."""
    import importlib

    for name in HEAVY_MODULES:
        importlib.import_module(name)


def _child(argv: list[str], env: dict | None, fsize: int | None, out_fd: int, err_fd: int) -> int:
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives until os._exit
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.update(env or {})
    if fsize:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    import logging

    import torch

    # A parent that already ran torch ops on several threads leaves an OpenMP thread pool that does not survive
    # fork(): the child's first parallel op then crashes (seen: a segfault in trunc_normal_ after tests/data ran
    # first). One thread in the child never touches that pool; these cases are tiny anyway.
    torch.set_num_threads(1)
    logging.getLogger().handlers.clear()  # pytest's capture handlers belong to the parent
    from segformer_tao.cli import main

    return int(main(argv) or 0)


def run_cli_forked(*argv: str, env: dict | None = None, fsize: int | None = None) -> CliResult:
    """Like ``tests.conftest.run_cli`` (exit code, stdout, stderr) with the CLI run in a forked child."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(list(argv), env, fsize, out.fileno(), err.fileno())
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - report anything main() let through, as a real process would
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return CliResult(os.waitstatus_to_exitcode(status), out.read().decode(errors="replace"),
                         err.read().decode(errors="replace"))
