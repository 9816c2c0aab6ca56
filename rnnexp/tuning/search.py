"""The search itself: the study's name, its sampler and pruner, the values a trial
suggests for ``tune.space``, and the table of its trials."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna
import pandas as pd

from rnnexp.config import Params


def default_study_name(params: Params, data_hash: str) -> str:
    """``rnnexp-<hash>`` of everything a trial's result depends on except the budget,
    so that raising ``n_trials`` resumes the study and changing the space starts anew."""
    tune = params.to_dict()["tune"]
    for budget in ("n_trials", "timeout", "workers", "storage", "heartbeat", "study_name"):
        tune.pop(budget)
    key = {"tune": tune, "model": params.to_dict()["model"], "data": data_hash}
    key["train"] = {k: v for k, v in params.to_dict()["train"].items() if k != "use_tuned"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"rnnexp-{digest[:12]}"


def make_sampler(params: Params) -> optuna.samplers.BaseSampler:
    t = params.tune
    if t.sampler == "random":
        return optuna.samplers.RandomSampler(seed=t.seed)
    return optuna.samplers.TPESampler(seed=t.seed, n_startup_trials=max(t.startup_trials, 1))


def make_pruner(params: Params) -> optuna.pruners.BasePruner:
    t = params.tune
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=1)
    if t.pruner == "hyperband":
        budget = t.epochs or params.train.max_epochs
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=budget)
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, space: dict[str, dict]) -> dict[str, Any]:
    """The trial's values of the searched params, ``{"section.key": value}``."""
    values = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "categorical":
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif kind == "int":
            step = spec.get("step", 1)
            log = bool(spec.get("log", False))
            values[name] = trial.suggest_int(name, spec["low"], spec["high"], step=step, log=log)
        else:
            values[name] = trial.suggest_float(
                name, spec["low"], spec["high"], log=bool(spec.get("log", False))
            )
    return values


TABLE_COLUMNS = ["number", "state", "value", "epochs", "duration"]  # and params_*, user_attrs_*


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, from Optuna's ``trials_dataframe``: number, state (lower case),
    value, epochs run, duration in seconds, its MLflow run (``user_attrs_mlflow_run_id``)
    and its params (``params_<name>``). The tune stage writes it as ``tune_trials.csv``."""
    attrs = ("number", "state", "value", "duration", "params", "user_attrs")
    table = study.trials_dataframe(attrs=attrs)
    if table.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    table["state"] = table["state"].str.lower()
    table["duration"] = table["duration"].dt.total_seconds()
    epochs = [len(trial.intermediate_values) for trial in study.get_trials(deepcopy=False)]
    table.insert(3, "epochs", epochs)  # both in trial-number order
    return table
