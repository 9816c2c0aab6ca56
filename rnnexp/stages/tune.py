# ruff: noqa: E402
"""DVC stage ``tune``: an Optuna study over ``tune.space``, one training code path.

Every trial calls :func:`rnnexp.training.fit.run_training` with the trial's params (and
the final model's epoch budget and early-stopping rule: ``train.max_epochs``, or
``tune.epochs`` when set, and ``train.patience``), reports the validation metric every
epoch through optuna-integration's ``PyTorchLightningPruningCallback`` and is a nested
MLflow run under the tune stage's run. The stage writes the best params, which the
train stage merges over ``params.yaml`` (``train.use_tuned``), and the best trial's
checkpoints (``models/tuned/``), which the train stage continues instead of training
the same model again.

Trials write their checkpoints under ``<workspace>/.rnnexp/trials/<study>/<number>/``;
a pruned or failed trial's, and a complete trial's that another trial beats, are
deleted, so the folder keeps the best trial of each study (a resumed study still has it).

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

# A stage process runs again under tcmalloc before torch loads (rnnexp.util.allocator);
# hence the imports below this block (ruff: E402 off for this file).
if __name__ == "__main__":
    from rnnexp.util.allocator import rerun_under_tcmalloc

    rerun_under_tcmalloc()

import json
import logging
import multiprocessing
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from rnnexp import console, tracking
from rnnexp.config import Params, with_overrides
from rnnexp.console import trial_line
from rnnexp.data.prepare import check_batch_size, read_meta
from rnnexp.errors import RnnexpError
from rnnexp.tuning.search import (  # noqa: F401  (part of this stage's API)
    TABLE_COLUMNS,
    default_study_name,
    make_pruner,
    make_sampler,
    suggest,
    trials_table,
)
from rnnexp.tuning.storage import (  # noqa: F401  (part of this stage's API)
    journal_path,
    open_storage,
    storage_url,
    trials_dir,
)

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Off a terminal a trial logs an epoch line at most this often: a short trial shows
# just its result line, a long one that it is alive (with an ETA).
TRIAL_PROGRESS_EVERY_S = 60.0


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

    out = trials_dir(ctx.study_name) / str(trial.number)
    try:
        overrides = suggest(trial, ctx.params.tune.space)
        budget = ctx.params.tune.epochs or ctx.params.train.max_epochs
        trial_params = with_overrides(
            ctx.params, {**overrides, "train.max_epochs": budget}, "trial"
        )
        result = run_training(
            trial_params,
            ctx.prepared_dir,
            out,
            stage="trial",
            parent_run_id=ctx.parent_run_id,
            tags=tags,
            callbacks=[PyTorchLightningPruningCallback(trial, monitor=ctx.params.tune.metric)],
            on_run_start=started,
            finished_on=(optuna.TrialPruned,),
            resume=False,
            progress=EpochProgress(f"tune: trial {trial.number}", TRIAL_PROGRESS_EVERY_S),
        )
    except optuna.TrialPruned as exc:
        shutil.rmtree(out, ignore_errors=True)
        _tag_state(state["run"], "pruned")
        if state["run"] is not None:  # "trial 3 ... (pruned at epoch 5)"; Optuna counts from 0
            epoch = re.search(r"epoch (\d+)", str(exc))
            state["run"].add_name_note(
                f"pruned at epoch {int(epoch[1]) + 1}" if epoch else "pruned"
            )
        raise
    except Exception as exc:
        shutil.rmtree(out, ignore_errors=True)
        _tag_state(state["run"], "failed")
        trial.set_user_attr("error", str(exc))  # for _log_trial: Optuna's report is silenced
        raise
    _tag_state(state["run"], "complete")
    key = "best/val_bpd" if ctx.params.tune.metric == "val/bpd" else "best/val_nll"
    value = result.metrics[key]
    if _beaten(trial.study, value):  # its checkpoints will never be continued
        shutil.rmtree(out, ignore_errors=True)
    return value


def _beaten(study: optuna.Study, value: float) -> bool:
    """Whether a complete trial of ``study`` already has a better value."""
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return any(v is not None and v < value for v in values)


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
    best_trial: int | None = None
    best_run_id: str | None = None  # the best trial's MLflow run
    best_checkpoints: Path | None = None  # its folder of best.ckpt and last.ckpt, if kept


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
        result.best_checkpoints = _keep_best(study)
        _log_study(run, study, result)
    return result


def _keep_best(study: optuna.Study) -> Path | None:
    """Delete the checkpoints of the study's finished trials but the best one's; the
    best trial's folder, or None (with a warning) when it is not on this machine."""
    best, root = study.best_trial, trials_dir(study.study_name)
    done = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    for folder in root.iterdir() if root.is_dir() else ():
        if folder.name != str(best.number) and folder.name.isdigit() and int(folder.name) in done:
            shutil.rmtree(folder, ignore_errors=True)
    kept = root / str(best.number)
    if (kept / "best.ckpt").is_file() and (kept / "last.ckpt").is_file():
        return kept
    log.warning(
        f"tune: the checkpoints of the best trial ({best.number}) are not in {kept} (trained "
        "on another machine, or deleted); the train stage trains the model from scratch"
    )
    return None


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
    return TuneResult(
        study.study_name,
        dict(best.params),
        best.value,
        rows,
        run_id,
        best.number,
        best.user_attrs.get("mlflow_run_id"),
    )


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
    """Write ``reports/best_params.yaml``, ``reports/tune_trials.csv`` and the best
    trial's checkpoints with its ``trial.json`` (``models/tuned/``)."""
    import yaml

    from rnnexp.util.atomic import atomic_dir, atomic_write_json, atomic_write_text, check_writable
    from rnnexp.util.devices import check_training_machine

    out = Path(args.out)
    check_training_machine(params.train)  # before a study or run opens
    # Before the search: its outputs' places (and where trials keep checkpoints), and
    # the MLflow store its runs go to (an unreachable one fails in seconds, before a
    # study is created).
    check_writable(
        files=[out / "tune_trials.csv", out / "best_params.yaml"],
        folders=[args.trial_out, trials_dir("study").parent],
    )
    if params.tracking.enabled and params.tune.n_trials > 0:
        tracking.probe_store(params, write=False)
    result = run(params, args.prepared, workers=args.workers)
    best = {"study": result.study_name or None, "best_value": result.best_value}
    best["trial"], best["trial_run_id"] = result.best_trial, result.best_run_id
    best["params"] = result.best_overrides
    with atomic_dir(args.trial_out) as folder:
        if result.best_checkpoints is not None:
            for name in ("best.ckpt", "last.ckpt"):
                shutil.copyfile(result.best_checkpoints / name, folder / name)
        kept = result.best_checkpoints is not None
        atomic_write_json(folder / "trial.json", {**best, "checkpoints": kept})
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
