"""DVC stage ``tune``: an Optuna study over ``tune.space``, one training code path.

Every trial calls :func:`rnnexp.training.fit.run_training` with the trial's params (and
``tune.epochs`` epochs), reports the validation metric every epoch through
optuna-integration's ``PyTorchLightningPruningCallback`` and is a nested MLflow
run under the tune stage's run. The stage writes the best params, which the train
stage merges over ``params.yaml`` (``train.use_tuned``).

Storage (``tune.storage``):

- ``null``: ``sqlite:///<workspace root>/optuna.db`` - one writer only;
- ``journal:<file>``: Optuna's journal file storage, for several worker processes
  on one machine (a relative path is taken from the workspace root);
- ``postgresql+psycopg://user:password@host/db``: several machines.

A study of the same name resumes: its finished (complete or pruned) trials count
toward ``tune.n_trials``, so an interrupted ``dvc repro`` continues. RDB storages
run a heartbeat, so a killed worker's trial turns FAIL and is retried once.

Example:
    >>> result = run(load_params("params.yaml"))  # doctest: +SKIP
    >>> result.best_overrides  # doctest: +SKIP
    {'train.lr': 0.0042, 'model.hidden': 32, 'model.layers': 2}
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from rnnexp import console, tracking
from rnnexp.config import Params, with_overrides
from rnnexp.console import trial_line
from rnnexp.data.prepare import check_batch_size, read_meta
from rnnexp.errors import ConfigError, RnnexpError
from rnnexp.util.paths import workspace_root

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Off a terminal a trial logs an epoch line at most this often: a short trial shows
# just its result line, a long one that it is alive (with an ETA).
TRIAL_PROGRESS_EVERY_S = 60.0


def storage_url(params: Params) -> str:
    """The study storage: ``tune.storage`` or the workspace's SQLite file."""
    return params.tune.storage or f"sqlite:///{workspace_root() / 'optuna.db'}"


def journal_path(url: str) -> Path:
    """The file of a ``journal:<file>`` storage; a relative one is from the workspace root."""
    path = Path(url.removeprefix("journal:"))
    return path if path.is_absolute() else workspace_root() / path


def open_storage(params: Params, workers: int) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``workers`` processes; SQLite refuses more than one."""
    url = storage_url(params)
    if url.startswith("journal:"):
        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite") and workers > 1:
        raise ConfigError(
            f"tune.storage: SQLite ({url}) takes one writer, but {workers} workers were asked "
            "for; use 'journal:optuna-journal.log' for workers on one machine, or "
            "'postgresql+psycopg://user:password@host/db' for workers on several machines"
        )
    try:
        return RDBStorage(
            url,
            heartbeat_interval=params.tune.heartbeat,
            grace_period=2 * params.tune.heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    except Exception as exc:  # SQLAlchemy: bad URL, missing driver, server down
        raise RnnexpError(f"tune.storage {url!r}: cannot open the study storage: {exc}") from None


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
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=t.epochs)
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


@dataclass
class _Context:
    """What a worker needs to run trials (picklable, for worker processes)."""

    params: Params
    prepared_dir: str
    study_name: str
    parent_run_id: str
    workers: int


def _objective(ctx: _Context, trial: optuna.Trial) -> float:
    from optuna_integration import PyTorchLightningPruningCallback

    from rnnexp.training.callbacks import EpochProgress
    from rnnexp.training.fit import run_training

    tags = {"rnnexp.study": ctx.study_name, "rnnexp.trial": str(trial.number)}
    state = {"run": None}

    def started(run: tracking.RunHandle) -> None:
        state["run"] = run
        trial.set_user_attr("mlflow_run_id", run.run_id)

    try:
        overrides = suggest(trial, ctx.params.tune.space)
        trial_params = with_overrides(
            ctx.params, {**overrides, "train.max_epochs": ctx.params.tune.epochs}, "trial"
        )
        with tempfile.TemporaryDirectory(prefix="rnnexp-trial-") as scratch:
            result = run_training(
                trial_params,
                ctx.prepared_dir,
                scratch,
                stage="trial",
                parent_run_id=ctx.parent_run_id,
                tags=tags,
                callbacks=[PyTorchLightningPruningCallback(trial, monitor=ctx.params.tune.metric)],
                on_run_start=started,
                finished_on=(optuna.TrialPruned,),
                save_checkpoints=False,
                progress=EpochProgress(f"tune: trial {trial.number}", TRIAL_PROGRESS_EVERY_S),
            )
    except optuna.TrialPruned as exc:
        _tag_state(state["run"], "pruned")
        if state["run"] is not None:  # "trial 3 ... (pruned at epoch 5)"; Optuna counts from 0
            epoch = re.search(r"epoch (\d+)", str(exc))
            state["run"].add_name_note(
                f"pruned at epoch {int(epoch[1]) + 1}" if epoch else "pruned"
            )
        raise
    except Exception as exc:
        _tag_state(state["run"], "failed")
        trial.set_user_attr("error", str(exc))  # for _log_trial: Optuna's report is silenced
        raise
    _tag_state(state["run"], "complete")
    key = "best/val_bpd" if ctx.params.tune.metric == "val/bpd" else "best/val_nll"
    return result.metrics[key]


def _tag_state(run: tracking.RunHandle | None, state: str) -> None:
    if run is not None:
        run.set_tags({"rnnexp.trial_state": state})


def _log_trial(metric: str, study: optuna.Study, trial: FrozenTrial) -> None:
    """Log a finished trial's console line (an Optuna study callback)."""
    if trial.state == TrialState.FAIL:
        why = trial.user_attrs.get("error", "its objective gave no finite value")
        log.warning("tune: trial %d failed: %s", trial.number, " ".join(why.split()))
    elif trial.state in FINISHED:
        steps = trial.intermediate_values  # epoch -> metric
        pruned_at = steps[max(steps)] if steps else None
        value = trial.value if trial.state == TrialState.COMPLETE else pruned_at
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        state = trial.state.name.lower()
        log.info(trial_line(trial.number, state, metric, value, len(steps), seconds, trial.params))


def _optimize(ctx: _Context, n_trials: int, console_verbose: bool | None = None) -> None:
    """One worker: ``n_trials`` trials of the shared study (console: its parent's, if any)."""
    if console_verbose is not None:
        console.setup(console_verbose)
    storage = open_storage(ctx.params, ctx.workers)
    study = optuna.load_study(
        study_name=ctx.study_name,
        storage=storage,
        sampler=make_sampler(ctx.params),
        pruner=make_pruner(ctx.params),
    )
    study.optimize(
        lambda trial: _objective(ctx, trial),
        n_trials=n_trials,
        timeout=ctx.params.tune.timeout,
        catch=(RnnexpError,),  # a NaN loss or bad trial config fails that trial only
        callbacks=[lambda study, trial: _log_trial(ctx.params.tune.metric, study, trial)],
        gc_after_trial=True,
    )


@dataclass
class TuneResult:
    study_name: str
    best_overrides: dict[str, Any]
    best_value: float | None
    trials: pd.DataFrame  # trials_table()
    run_id: str | None


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


def run(
    params: Params, prepared_dir: str | Path = "data/prepared", workers: int | None = None
) -> TuneResult:
    """Run (or resume) the study until ``tune.n_trials`` trials have finished.

    ``workers`` (default ``tune.workers``) processes share the study. With
    ``tune.n_trials: 0`` nothing is searched and the result has no overrides.
    """
    t = params.tune
    workers = workers or t.workers
    meta = read_meta(prepared_dir)
    if t.n_trials == 0:
        return TuneResult("", {}, None, pd.DataFrame(columns=TABLE_COLUMNS), None)
    # Every trial would fail on it; say so once, before a study or run is opened.
    check_batch_size(meta["splits"]["train"], params.train.batch_size, prepared_dir)
    storage = open_storage(params, workers)  # refuses SQLite with several workers
    name = t.study_name or default_study_name(params, meta["content_hash"])
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        sampler=make_sampler(params),
        pruner=make_pruner(params),
        load_if_exists=True,
    )
    if not study.trials:  # start from the configuration in params.yaml
        current = params.flat()
        study.enqueue_trial({k: current[k] for k in t.space}, skip_if_exists=True)
    tags = {
        "rnnexp.study": name,
        "rnnexp.sampler": t.sampler,
        "rnnexp.pruner": t.pruner,
        "rnnexp.data_hash": meta["content_hash"],
    }
    system_metrics = params.tracking.system_metrics
    with tracking.tracked_run(params, "tune", tags=tags, system_metrics=system_metrics) as run:
        done = sum(tr.state in FINISHED for tr in study.get_trials(deepcopy=False))
        remaining = max(t.n_trials - done, 0)
        ctx = _Context(params, str(prepared_dir), name, run.run_id, workers)
        shares = [remaining // workers + (k < remaining % workers) for k in range(workers)]
        if workers == 1:
            _optimize(ctx, remaining)
        else:
            _run_workers(ctx, [s for s in shares if s])
        study = optuna.load_study(study_name=name, storage=open_storage(params, workers))
        result = _summarise(study, run.run_id)
        _log_study(run, study, result)
    return result


def _run_workers(ctx: _Context, shares: list[int]) -> None:
    """Worker processes (spawned: fresh interpreters, no forked locks or threads)."""
    spawn = multiprocessing.get_context("spawn")
    verbose = console.current()
    procs = [spawn.Process(target=_optimize, args=(ctx, n, verbose), daemon=False) for n in shares]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RnnexpError(f"{len(failed)} tune worker(s) exited with status {failed}")


def _summarise(study: optuna.Study, run_id: str) -> TuneResult:
    rows = trials_table(study)
    complete = [tr for tr in study.get_trials(deepcopy=False) if tr.state == TrialState.COMPLETE]
    if not complete:
        raise RnnexpError(
            f"study {study.study_name}: no trial completed ({len(rows)} trials, states "
            f"{sorted(set(rows['state']))}); see the trial runs in MLflow"
        )
    best = study.best_trial
    return TuneResult(study.study_name, dict(best.params), best.value, rows, run_id)


def _log_study(run: tracking.RunHandle, study: optuna.Study, result: TuneResult) -> None:
    counts = result.trials["state"].value_counts().to_dict()
    run.log_metrics(
        {"best_value": result.best_value, **{f"trials/{k}": v for k, v in counts.items()}}
    )
    run.set_tags({f"best.{k}": v for k, v in result.best_overrides.items()})
    run.log_text(json.dumps(result.best_overrides, indent=2), "best_params.json")
    run.log_text(result.trials.to_csv(index=False), "trials.csv")
    try:
        from optuna.visualization import plot_optimization_history, plot_param_importances
    except ImportError:  # plotly missing: the plots are a nicety, not the result
        return
    run.log_text(plot_optimization_history(study).to_html(), "optimization_history.html")
    if (result.trials["state"] == "complete").sum() >= 2 and result.best_overrides:
        try:
            run.log_text(plot_param_importances(study).to_html(), "param_importances.html")
        except (ValueError, RuntimeError):  # e.g. every trial had the same params
            pass


def main(args: Any, params: Params) -> None:
    """Write ``reports/best_params.yaml`` and ``reports/tune_trials.csv``."""
    import yaml

    from rnnexp.util.atomic import atomic_write_text

    result = run(params, args.prepared, workers=args.workers)
    out = Path(args.out)
    best = {"study": result.study_name or None, "best_value": result.best_value}
    best["params"] = result.best_overrides
    atomic_write_text(out / "tune_trials.csv", result.trials.to_csv(index=False))
    atomic_write_text(out / "best_params.yaml", yaml.safe_dump(best, sort_keys=False))
    if result.trials.empty:
        log.info("tune: tune.n_trials is 0; training uses params.yaml as it is")
        return
    log.info(
        f"tune: study {result.study_name}, {len(result.trials)} trials, best "
        f"{params.tune.metric} {result.best_value:.4f} with {result.best_overrides}"
    )


if __name__ == "__main__":
    from rnnexp.cli import entry

    entry(["tune", *sys.argv[1:]])
