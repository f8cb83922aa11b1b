"""`segformer jobs list [DIR]` and `segformer jobs show DIR`: the jobs under a folder, or one job's job.json."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from segformer_tao import io as sio
from segformer_tao import joblock
from segformer_tao.errors import UserError
from segformer_tao.jobs import JOB_FILE, MONITORED_METRIC, read_job


def _job_rows(root: str) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(glob.glob(os.path.join(root, "**", JOB_FILE), recursive=True)):
        job = read_job(os.path.dirname(path))
        if job is None:  # not a JSON object: listed, so that it can be found and removed
            rows.append({"dir": os.path.dirname(path), "action": None, "status": "unreadable", "parent": "-",
                         "metric": None, "start": None, "heartbeat": "-"})
        else:
            metrics = job.get("metrics") or {}
            metric = metrics.get(MONITORED_METRIC, metrics.get("mIoU"))
            status, _ = joblock.liveness(job)
            rows.append({"dir": os.path.dirname(path), "action": job.get("action"), "status": status,
                         "parent": job.get("parent") or "-", "metric": metric, "start": job.get("start"),
                         "heartbeat": job.get("heartbeat") or "-"})
    return rows


def show_job(directory: str) -> dict[str, Any] | None:
    """job.json of ``directory`` as `jobs show` prints it: a running job that died says ``killed`` and why."""
    job = read_job(directory)
    if job is not None:
        status, why = joblock.liveness(job)
        if why:
            job.update(status=status, killed=why)
    return job


def main(argv: list[str]) -> int:
    """`segformer jobs list [DIR]` and `segformer jobs show DIR`."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("list", "show"):
        print("usage: segformer jobs list [DIR]   (table of jobs under DIR, default ./results)\n"
              "       segformer jobs show DIR     (the job.json of one results dir)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if argv[0] == "show":
        job = show_job(argv[1]) if len(argv) > 1 else None
        if job is None and len(argv) > 1 and os.path.isfile(os.path.join(argv[1], JOB_FILE)):
            raise UserError(f"'{os.path.join(argv[1], JOB_FILE)}' is unreadable: it is not a JSON object describing "
                            "a job (damaged, or not written by segformer_tao). Remove it; the next job in that folder "
                            "writes a new one.")
        if job is None:
            raise UserError(f"No job.json in '{argv[1] if len(argv) > 1 else ''}'. Usage: segformer jobs show DIR "
                            "with DIR the results dir of a job.")
        print(json.dumps(job, indent=2))
        return 0
    root = argv[1] if len(argv) > 1 else "results"
    if not sio.is_remote(root) and not os.path.isdir(root):
        raise UserError(f"'{root}' is not a folder. Usage: segformer jobs list [DIR] with DIR a results dir or a "
                        "folder of them (default ./results).")
    rows = _job_rows(root)
    if not rows:
        print(f"no jobs under {root}")
        return 0
    print(f"{'action':<15} {'status':<8} {'val_miou':>8}  {'start':<25} {'last heartbeat':<25} {'dir':<40} parent")
    for r in rows:
        metric = f"{r['metric']:.4f}" if isinstance(r["metric"], (int, float)) else "-"
        print(f"{r['action'] or '?':<15} {r['status'] or '?':<8} {metric:>8}  {r['start'] or '':<25} "
              f"{r['heartbeat']:<25} {r['dir']:<40} {r['parent']}")
    return 0
