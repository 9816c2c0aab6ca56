"""Hyperparameter search: an Optuna study over ``tune.space``, one training code path.

Every trial calls :func:`rnnexp.train.run_training` with the trial's params (and
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
    >>> result = run_tuning(load_params("params.yaml"))  # doctest: +SKIP
    >>> result.best_overrides  # doctest: +SKIP
    {'train.lr': 0.0042, 'model.hidden': 32, 'model.layers': 2}
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from rnnexp import tracking
from rnnexp.config import Params, with_overrides
from rnnexp.data.prepare import check_batch_size, read_meta
from rnnexp.errors import ConfigError, RnnexpError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Heartbeats and the retry callback are marked experimental; they are what we want.
warnings.filterwarnings("ignore", category=ExperimentalWarning, module="optuna")


def storage_url(params: Params) -> str:
    """The study storage: ``tune.storage`` or the workspace's SQLite file."""
    return params.tune.storage or f"sqlite:///{tracking.workspace_root() / 'optuna.db'}"


def open_storage(params: Params, workers: int) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``workers`` processes; SQLite refuses more than one."""
    url = storage_url(params)
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        if not path.is_absolute():
            path = tracking.workspace_root() / path
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

    from rnnexp.train import run_training

    overrides = suggest(trial, ctx.params.tune.space)
    trial_params = with_overrides(
        ctx.params, {**overrides, "train.max_epochs": ctx.params.tune.epochs}, "trial"
    )
    tags = {"rnnexp.study": ctx.study_name, "rnnexp.trial": str(trial.number)}
    state = {"run": None}

    def started(run: tracking.RunHandle) -> None:
        state["run"] = run
        trial.set_user_attr("mlflow_run_id", run.run_id)

    try:
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
            )
    except optuna.TrialPruned:
        _tag_state(state["run"], "pruned")
        raise
    except Exception:
        _tag_state(state["run"], "failed")
        raise
    _tag_state(state["run"], "complete")
    key = "best/val_bpd" if ctx.params.tune.metric == "val/bpd" else "best/val_nll"
    return result.metrics[key]


def _tag_state(run: tracking.RunHandle | None, state: str) -> None:
    if run is not None:
        run.set_tags({"rnnexp.trial_state": state})


def _optimize(ctx: _Context, n_trials: int) -> None:
    """One worker: run ``n_trials`` trials of the shared study."""
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
        gc_after_trial=True,
    )


@dataclass
class TuneResult:
    study_name: str
    best_overrides: dict[str, Any]
    best_value: float | None
    trials: list[dict[str, Any]]
    run_id: str | None


def _trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if (t.datetime_complete and t.datetime_start)
            else None
        )
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "epochs": len(t.intermediate_values),
                "duration_s": duration,
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id", ""),
                **{f"param.{k}": v for k, v in t.params.items()},
            }
        )
    return rows


def trials_csv(rows: list[dict[str, Any]]) -> str:
    columns = ["number", "state", "value", "epochs", "duration_s", "mlflow_run_id"]
    columns += sorted({k for row in rows for k in row if k.startswith("param.")})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def run_tuning(
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
        return TuneResult("", {}, None, [], None)
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
    with tracking.tracked_run(params, "tune", tags=tags) as run:
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
    procs = [spawn.Process(target=_optimize, args=(ctx, n), daemon=False) for n in shares]
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
    rows = _trial_rows(study)
    complete = [tr for tr in study.get_trials(deepcopy=False) if tr.state == TrialState.COMPLETE]
    if not complete:
        raise RnnexpError(
            f"study {study.study_name}: no trial completed ({len(rows)} trials, states "
            f"{sorted({r['state'] for r in rows})}); see the trial runs in MLflow"
        )
    best = study.best_trial
    return TuneResult(study.study_name, dict(best.params), best.value, rows, run_id)


def _log_study(run: tracking.RunHandle, study: optuna.Study, result: TuneResult) -> None:
    counts: dict[str, int] = {}
    for row in result.trials:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    run.log_metrics(
        {"best_value": result.best_value, **{f"trials/{k}": v for k, v in counts.items()}}
    )
    run.set_tags({f"best.{k}": v for k, v in result.best_overrides.items()})
    run.log_text(json.dumps(result.best_overrides, indent=2), "best_params.json")
    run.log_text(trials_csv(result.trials), "trials.csv")
    try:
        from optuna.visualization import plot_optimization_history, plot_param_importances
    except ImportError:  # plotly missing: the plots are a nicety, not the result
        return
    run.log_text(plot_optimization_history(study).to_html(), "optimization_history.html")
    if len([r for r in result.trials if r["state"] == "complete"]) >= 2 and result.best_overrides:
        try:
            run.log_text(plot_param_importances(study).to_html(), "param_importances.html")
        except (ValueError, RuntimeError):  # e.g. every trial had the same params
            pass
