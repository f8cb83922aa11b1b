"""Feed status.json files to TAO Core's own ``StatusParser`` and print what TAO's services would see.

Usage: ``python parse_status.py STATUS_JSON...`` with ``nvidia_tao_core`` (7.3) importable. Prints one JSON
object ``{path: <StatusParser.update_results(...)[job id]>}``: detailed_status (date, time, status, message),
kpi / graphical / categorical (lists of ``{"metric", "values": {epoch: value}, ...}``), TAO's progress
fields (epoch, max_epoch, eta, time_per_epoch) and ``automl_metric``: what TAO's AutoML controller reads as the
job's score (``read_metric``: value, best_epoch, latest_epoch).

Run in its own process: nvidia-tao-core is installed without its dependencies (those are the API server's:
MongoDB, Kubernetes, NGC, ... and clash with ours), so the few third-party modules that
``handler_utils`` imports at module level and that are not installed are stubbed here. Every attribute of a
stub is a class that raises when instantiated or called, so a parser path that needed one fails instead of
passing. The one substitution is TAO's status database: ``get_dnn_status`` returns the lines of the file, which is
what TAO stores (one dict per status.json line, via its status callback or ``sync_status_to_database``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types

# What handler_utils imports at module level that nvidia-tao-core's API-server dependencies would provide.
SERVER_ONLY = ("ruamel.yaml", "orjson", "kubernetes", "Crypto.Cipher", "pymongo.errors", "ngcbase")


class _Unavailable(type):
    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"{cls.__module__}.{cls.__name__} is a test stub; StatusParser must not need it")

    def __getattr__(cls, name):
        raise RuntimeError(f"{cls.__module__}.{cls.__name__}.{name} is a test stub; StatusParser must not need it")


def _stub(name: str) -> None:
    parts = name.split(".")
    if parts[0] not in sys.modules and importlib.util.find_spec(parts[0]) is not None:
        return  # installed here: the real module is used
    for i in range(1, len(parts) + 1):
        mod_name = ".".join(parts[:i])
        if mod_name in sys.modules:
            continue
        module = types.ModuleType(mod_name)
        module.__path__ = []  # a package, so that submodules can be stubbed under it

        def attr(attr_name: str, _mod: str = mod_name):
            if attr_name.startswith("__"):
                raise AttributeError(attr_name)
            return _Unavailable(attr_name, (), {"__module__": _mod})

        module.__getattr__ = attr
        sys.modules[mod_name] = module


def parse(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    handler_utils = importlib.import_module("nvidia_tao_core.microservices.utils.handler_utils")
    handler_utils.get_dnn_status = lambda job_id, automl=False, experiment_number="0": lines
    parser = handler_utils.StatusParser("segformer", results_dir=None)
    results = parser.update_results(job_id="job")["job"]
    # How TAO's AutoML controller ranks a trial: segformer's monitoring metric (val_miou, from TAO's own
    # network config) over every epoch (bayesian keeps epochs below the brain's epoch number).
    value, best_epoch, latest_epoch = parser.read_metric(results, metric="kpi", automl_algorithm="bayesian",
                                                         brain_epoch_number=10**9)
    results["automl_metric"] = {"value": value, "best_epoch": best_epoch, "latest_epoch": latest_epoch}
    return results


def main(paths: list[str]) -> None:
    for name in SERVER_ONLY:
        _stub(name)
    print(json.dumps({path: parse(path) for path in paths}))


if __name__ == "__main__":
    main(sys.argv[1:])
