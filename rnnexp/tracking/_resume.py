"""Continuing an earlier run instead of opening a second one for the same model.

A training resumed from its checkpoint continues the run the checkpoint names
(:func:`reopen_run`). A training killed before any checkpoint named its run
continues the run it left KILLED, or RUNNING for a dead process
(:func:`killed_run_to_continue`). Neither takes a run whose process may still live:
both ask :func:`~rnnexp.tracking._liveness.owner_dead`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rnnexp.config import Params
from rnnexp.tracking._handle import RunHandle
from rnnexp.tracking._liveness import owner_dead
from rnnexp.tracking._queries import search_runs
from rnnexp.tracking._store import connect
from rnnexp.util.distributed import is_global_zero


def reopen_run(
    client: MlflowClient, run_id: str, experiment_id: str, tags: Mapping[str, str]
) -> RunHandle | None:
    """Set an ended run of ``experiment_id`` RUNNING again, for a resumed training.

    The run gets ``tags``, and ``rnnexp.resumes`` counts its resumptions; the error
    that stopped it moves to ``rnnexp.previous_error``. Returns None when the run is
    not in this store, is deleted, belongs to another experiment, or is RUNNING and
    not known dead (:func:`owner_dead`): perhaps still running, do not steal it.
    """
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    info = run.info
    if info.lifecycle_stage == "deleted" or info.experiment_id != experiment_id:
        return None
    if info.status == "RUNNING" and not owner_dead(run.data.tags):
        return None
    resumes = int(run.data.tags.get("rnnexp.resumes", "0")) + 1
    client.update_run(run_id, status="RUNNING")
    handle = RunHandle(client, run_id, experiment_id)
    more: dict[str, Any] = {"rnnexp.resumes": resumes}
    if "rnnexp.error" in run.data.tags:  # the error that stopped it is history now
        more["rnnexp.previous_error"] = run.data.tags["rnnexp.error"]
        client.delete_tag(run_id, "rnnexp.error")
    handle.set_tags({**tags, **more})
    return handle


def killed_run_to_continue(params: Params, tags: Mapping[str, str]) -> str | None:
    """The run to continue for a training killed with no checkpoint to resume, if any.

    That is the newest run of the experiment carrying all of ``tags`` (stage, output
    folder, fingerprint), when it ended KILLED, or is RUNNING for a dead process of
    this host. A kill before the first checkpoint, or between logging an epoch's
    metrics and writing its checkpoint, leaves no checkpoint naming the run, so
    without this the rerun would open a second run for the same model. The rerun
    starts from scratch in that run (deterministic: epochs it logged again repeat
    their values).
    """
    if not params.tracking.enabled or not is_global_zero(params.train.devices):
        return None  # this process opens no run, so it continues none
    client, _ = connect(params)
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    if experiment is None:
        return None
    run = next(search_runs(client, experiment.experiment_id, tags), None)
    if run is None:
        return None
    if run.info.status == "KILLED":
        return run.info.run_id
    if run.info.status == "RUNNING" and owner_dead(run.data.tags):
        return run.info.run_id
    return None
