"""Fast checks of the study plumbing: pruner choice, the pruning callback, storage and epoch errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest
import torch

from segformer_tao.automl import search
from segformer_tao.automl.pruning import PruningCallback
from segformer_tao.automl.space import build_space, load_train_schema, sample
from segformer_tao.config import compose_config
from segformer_tao.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _cfg(*overrides: str):
    return compose_config("train", ["dataset.segment.root_dir=/data", *overrides])


def test_pruners_use_epochs_as_the_resource():
    hb = search.build_pruner(_cfg("automl.algorithm=hyperband", "automl.max_epochs=9", "train.validation_interval=1"))
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    assert (hb._min_resource, hb._max_resource, hb._reduction_factor) == (1, 9, 3)
    asha = search.build_pruner(_cfg("automl.algorithm=asha", "train.validation_interval=2", "train.num_epochs=6"))
    assert isinstance(asha, optuna.pruners.SuccessiveHalvingPruner) and asha._min_resource == 2
    assert isinstance(search.build_pruner(_cfg()), optuna.pruners.NopPruner)


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return bool(trial.intermediate_values)


def _trainer(epoch: int, miou: float | None):
    metrics = {} if miou is None else {"val_miou": torch.tensor(miou)}
    return SimpleNamespace(sanity_checking=False, is_global_zero=True, world_size=1, current_epoch=epoch,
                           callback_metrics=metrics,
                           should_stop=False)


@pytest.mark.parametrize("pruner, pruned", [(optuna.pruners.NopPruner(), False), (_AlwaysPrune(), True)])
def test_pruning_callback_reports_each_validation_and_stops_pruned_trials(pruner, pruned):
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask()
    cb = PruningCallback(trial)
    cb.on_validation_end(_trainer(0, None), None)  # no val_miou yet: nothing reported
    trainer = _trainer(2, 0.25)
    cb.on_validation_end(trainer, None)
    assert cb.reported == {3: 0.25} and cb.pruned is pruned and trainer.should_stop is pruned
    study.tell(trial, 0.25)
    assert study.trials[0].intermediate_values == {3: 0.25}


def test_bad_storage_url_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="automl.storage"):
        search.open_study(_cfg("automl.storage=nosuchdb://x"), str(tmp_path), [])


def test_trials_must_validate_at_least_once():
    with pytest.raises(UserError, match="train.validation_interval=5"):
        search.run(_cfg("automl.max_epochs=2", "train.validation_interval=5"))


def test_trial_config_keeps_overrides_and_applies_values(tmp_path):
    cfg = _cfg("train.seed=3", "automl.max_epochs=4", "train.num_epochs=50", "train.pretrained_model_path=/m.pth")
    tcfg = search.trial_config(cfg, {"train.optim.lr": 1e-4}, str(tmp_path / "trials" / "0"))
    assert tcfg.train.optim.lr == 1e-4 and tcfg.train.num_epochs == 4 and tcfg.train.seed == 3
    assert tcfg.train.pretrained_model_path == "/m.pth" and tcfg.automl_policy == "off"
    assert tcfg.train.results_dir == str(tmp_path / "trials" / "0") and cfg.train.optim.lr != 1e-4


def test_sampler_choice_gp_for_bayesian_tpe_with_pruners():
    assert isinstance(search.build_sampler(_cfg()), optuna.samplers.GPSampler)  # scipy comes with [automl]
    assert isinstance(search.build_sampler(_cfg("automl.sampler=tpe")), optuna.samplers.TPESampler)
    for algorithm in ("hyperband", "asha"):
        assert isinstance(search.build_sampler(_cfg(f"automl.algorithm={algorithm}")), optuna.samplers.TPESampler)
        with pytest.raises(UserError, match=f"automl.sampler=gp cannot be used with automl.algorithm={algorithm}"):
            search.run(_cfg(f"automl.algorithm={algorithm}", "automl.sampler=gp"))


def test_gp_sampler_searches_the_packaged_space_and_beats_random_search():
    """A GP study over the real train search space (a cheap objective instead of training: best at 3x lr's lower
    bound) proposes in-bound values and, after its random start, lands nearer the optimum than random search."""
    cfg = _cfg("automl.num_trials=12", "automl.seed=1")
    space = build_space(cfg, load_train_schema())
    lr_param = next(p for p in space if p.key == "train.optim.lr")
    best = math.log10(lr_param.low * 3)
    startup = max(1, min(10, 12 // 3))

    def mean_distance_after_startup(sampler: optuna.samplers.BaseSampler) -> float:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        distances = []
        for _ in range(12):
            trial = study.ask()
            lr = sample(trial, space, cfg)["train.optim.lr"]
            assert lr_param.low <= lr <= lr_param.high
            distances.append(abs(math.log10(lr) - best))
            study.tell(trial, -distances[-1])
        return sum(distances[startup:]) / (12 - startup)

    gp = mean_distance_after_startup(search.build_sampler(cfg))
    assert gp < mean_distance_after_startup(optuna.samplers.RandomSampler(seed=1))
