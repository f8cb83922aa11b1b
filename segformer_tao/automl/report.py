"""What an AutoML study leaves behind: automl_results.json/.csv, plots, and best_model/ (checkpoint + spec)."""

from __future__ import annotations

import csv
import io as _io
import logging
import os

import optuna
from optuna.trial import FrozenTrial, TrialState

from segformer_tao import io
from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")
BEST_DIR = "best_model"
BEST_CHECKPOINT = "segformer_model_best.pth"
SURPLUS = "surplus"  # a trial asked for by two workers racing for the last slot: never run, not reported
RESULTS_JSON, RESULTS_CSV = "automl_results.json", "automl_results.csv"
MIOU_PLOT, IMPORTANCE_PLOT = "automl_val_miou.png", "automl_importances.png"


def trial_row(t: FrozenTrial) -> dict:
    """One trial as reported: number, state, val_miou (pruned: last reported), epochs reported, params, dir,
    the worker that ran it (``host:pid``) and its devices."""
    steps = sorted(t.intermediate_values)
    value = t.value if t.state == TrialState.COMPLETE else (t.intermediate_values[steps[-1]] if steps else None)
    return {"trial": t.number, "state": t.state.name.lower(), "val_miou": value,
            "epochs_reported": steps[-1] if steps else 0, "params": t.user_attrs.get("config", {}),
            "trial_dir": t.user_attrs.get("trial_dir"), "host": t.user_attrs.get("host"),
            "devices": t.user_attrs.get("devices"),
            "duration_s": round(t.duration.total_seconds(), 2) if t.duration else None}


def _write_csv(path: str, rows: list[dict]) -> None:
    keys = sorted({k for r in rows for k in r["params"]})
    buf = _io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", "state", "val_miou", "epochs_reported", *keys, "trial_dir", "host", "devices",
                     "duration_s"])
    for r in rows:
        writer.writerow([r["trial"], r["state"], r["val_miou"], r["epochs_reported"],
                         *[r["params"].get(k, "") for k in keys], r["trial_dir"], r["host"], r["devices"],
                         r["duration_s"]])
    io.write_text(path, buf.getvalue())


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importance of each searched parameter for val_miou ({} with fewer than 2 complete trials)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as e:  # e.g. every complete trial had the same parameters
        log.info("AutoML: no parameter importances (%s)", e)
        return {}


def _save_png(fig, path: str) -> None:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    io.write_bytes(path, buf.getvalue())


def plot(rows: list[dict], imp: dict[str, float], out_dir: str) -> list[str]:
    """val_miou per trial (colour = state) and parameter importances (a note when unknown); returns PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    colours = {"complete": "tab:green", "pruned": "tab:orange", "fail": "tab:red", "running": "tab:gray"}
    fig, ax = plt.subplots(figsize=(7, 4))
    for state, colour in colours.items():
        pts = [(r["trial"], r["val_miou"]) for r in rows if r["state"] == state and r["val_miou"] is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), c=colour, label=state)
    done = sorted((r["trial"], r["val_miou"]) for r in rows if r["state"] == "complete")
    if done:
        best = [max(v for _, v in done[: i + 1]) for i in range(len(done))]
        ax.step([n for n, _ in done], best, where="post", c="tab:green", alpha=0.5, label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel="val_miou (pruned: last reported)", title="AutoML: val_miou per trial")
    ax.legend()
    paths = [os.path.join(out_dir, MIOU_PLOT)]
    _save_png(fig, paths[0])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.4 * max(1, len(imp))))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    if not imp:
        ax.text(0.5, 0.5, "needs at least 2 complete trials with different parameters", ha="center", va="center")
    ax.set(xlabel="importance for val_miou (fANOVA)", title="AutoML: parameter importances")
    paths.append(os.path.join(out_dir, IMPORTANCE_PLOT))
    _save_png(fig, paths[-1])
    plt.close(fig)
    return paths


def export_best(best: FrozenTrial, out_dir: str) -> str:
    """Copy the best trial's best checkpoint and experiment.yaml into best_model/; returns the checkpoint path."""
    src_dir = best.user_attrs["trial_dir"]
    src = best.user_attrs.get("best_checkpoint") or os.path.join(src_dir, BEST_CHECKPOINT)
    dst_dir = os.path.join(out_dir, BEST_DIR)
    dst = os.path.join(dst_dir, BEST_CHECKPOINT)
    io.write_bytes(dst, io.read_bytes(src))
    io.write_text(os.path.join(dst_dir, "experiment.yaml"), io.read_text(os.path.join(src_dir, "experiment.yaml")))
    io.write_json(os.path.join(dst_dir, "trial.json"), trial_row(best))
    return dst


def write_report(study: optuna.Study, out_dir: str) -> dict:
    """Write results, plots and best_model/; return the train action's {"metrics", "artifacts"}."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]
    rows = [trial_row(t) for t in trials]
    imp = importances(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None  # ties: the earlier trial
    summary = {"best_trial": best.number if best else None, "best_val_miou": best.value if best else None,
               "best_params": best.user_attrs.get("config") if best else None, "importances": imp,
               "counts": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}, "trials": rows}
    io.write_json(os.path.join(out_dir, RESULTS_JSON), summary)
    _write_csv(os.path.join(out_dir, RESULTS_CSV), rows)
    plots = plot(rows, imp, out_dir)
    if best is None:
        raise UserError(f"AutoML finished with no complete trial (states: {summary['counts']}); see "
                        f"{os.path.join(out_dir, RESULTS_JSON)}. Raise automl.timeout or automl.num_trials, or use "
                        "automl.algorithm=bayesian (no pruning).")
    artifacts = {"automl_results": os.path.join(out_dir, RESULTS_JSON)}
    if os.path.isdir(best.user_attrs["trial_dir"]):
        artifacts["best_checkpoint"] = export_best(best, out_dir)
        log.info("AutoML: best trial %d val_miou=%.4f %s -> %s", best.number, best.value,
                 best.user_attrs.get("config"), os.path.join(out_dir, BEST_DIR))
    else:  # a worker on another host without a shared filesystem ran it: best_model/ is written there
        log.info("AutoML: best trial %d val_miou=%.4f %s ran on %s; its best_model/ is in the results dir there (%s)",
                 best.number, best.value, best.user_attrs.get("config"), best.user_attrs.get("host"),
                 best.user_attrs["trial_dir"])
    artifacts.update({os.path.splitext(os.path.basename(p))[0]: p for p in plots})
    metrics = {"val_miou": best.value, "best_trial": best.number, "trials_complete": summary["counts"]["complete"],
               "trials_pruned": summary["counts"]["pruned"]}
    return {"metrics": metrics, "artifacts": artifacts}
