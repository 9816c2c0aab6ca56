"""Searching a store's runs by tags, and reading them back as plain dicts for ``compare``.

:func:`search_runs` is the one way this package searches runs by tag values: it
quotes what a filter string can quote (:func:`tag_filter`), pages through the
results, and checks every tag again on the runs themselves, so a value a filter
string cannot hold (a quote, a backslash, a backtick) still selects exactly.
:func:`find_runs` returns plain dicts, so callers need no mlflow import.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from rnnexp.config import Params
from rnnexp.errors import RnnexpError
from rnnexp.tracking._store import tracking_uri

SEARCH_PAGE = 1000  # the most runs one search_runs call may return
_UNQUOTABLE = frozenset("'\"\\`")  # a filter string cannot hold these in a quoted value


def tag_filter(tags: Mapping[str, str], status: str | None = None) -> str:
    """A ``search_runs`` filter string: ``status`` and each tag equal to its value.

    Tags whose key or value holds a character a filter string cannot quote are left
    out (the filter then selects more runs); :func:`search_runs` checks them again.

    Example:
        >>> tag_filter({"rnnexp.stage": "train", "rnnexp.dvc_exp": "it's"}, "RUNNING")
        "attributes.status = 'RUNNING' and tags.`rnnexp.stage` = 'train'"
    """
    clauses = [f"attributes.status = '{status}'"] if status else []
    clauses += [f"tags.`{k}` = '{v}'" for k, v in tags.items() if not _UNQUOTABLE & set(k + v)]
    return " and ".join(clauses)


def search_runs(
    client: MlflowClient,
    experiment_id: str,
    tags: Mapping[str, str],
    status: str | None = None,
) -> Iterator[Run]:
    """The active runs of an experiment carrying all of ``tags`` (and ``status``), newest first.

    Pages are fetched as the caller iterates; a caller that changes the runs it
    selects must collect them all first.
    """
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=tag_filter(tags, status),
            order_by=["attributes.start_time DESC"],
            max_results=SEARCH_PAGE,
            page_token=token,
        )
        for run in page:
            if status is not None and run.info.status != status:
                continue
            if all(run.data.tags.get(k) == v for k, v in tags.items()):
                yield run
        token = page.token
        if not token:
            return


def _run_dict(run: Run) -> dict[str, Any]:
    info, data = run.info, run.data
    return {
        "run_id": info.run_id,
        "run_name": info.run_name or "",
        "experiment_id": info.experiment_id,
        "status": info.status,
        "start_time": info.start_time,  # ms since the epoch
        "end_time": info.end_time,
        "tags": dict(data.tags),
        "params": dict(data.params),
        "metrics": dict(data.metrics),  # latest value of each metric
    }


def find_runs(
    params_or_uri: Params | str,
    run_ids: list[str] | None = None,
    experiment: str | None = None,
    dvc_exp: str | None = None,
    stage: str | None = "train",
) -> list[dict[str, Any]]:
    """Runs of a store as plain dicts, for comparison tables.

    Each dict has ``run_id``, ``run_name``, ``experiment_id``, ``status``,
    ``start_time``/``end_time`` (ms since the epoch), ``tags``, ``params`` (strings,
    as logged) and ``metrics`` (latest value of each key).

    Args:
        params_or_uri: params (their store: :func:`tracking_uri`; their experiment
            ``tracking.experiment`` is the default) or a tracking URI (default
            experiment: ``rnnexp``).
        run_ids: exactly these runs, in this order, whatever their stage or
            experiment; an unknown or deleted id raises :class:`RnnexpError`.
            Cannot be combined with ``experiment`` or ``dvc_exp``.
        experiment: the experiment to search (default: see ``params_or_uri``).
        dvc_exp: only runs tagged ``rnnexp.dvc_exp`` with this DVC experiment name.
        stage: only runs tagged ``rnnexp.stage`` with this stage (None: any stage).

    Returns:
        The selected runs; without ``run_ids``, the active runs of the experiment,
        newest first.

    Example:
        >>> runs = find_runs("sqlite:///mlflow.db", dvc_exp="gawky-bump")  # doctest: +SKIP
        >>> [r["metrics"].get("test/bpd") for r in runs]  # doctest: +SKIP
    """
    if isinstance(params_or_uri, Params):
        uri = tracking_uri(params_or_uri)
        default_experiment = params_or_uri.tracking.experiment
    else:
        uri = params_or_uri
        default_experiment = Params().tracking.experiment
    client = MlflowClient(tracking_uri=uri)

    if run_ids:
        if experiment is not None or dvc_exp is not None:
            raise RnnexpError("select runs by run id or by experiment/DVC experiment, not both")
        runs = []
        for run_id in run_ids:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                raise RnnexpError(f"run {run_id!r} not found in the MLflow store {uri}") from None
            if run.info.lifecycle_stage == "deleted":
                raise RnnexpError(f"run {run_id!r} is deleted in the MLflow store {uri}")
            runs.append(_run_dict(run))
        return runs

    name = experiment or default_experiment
    found = client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage == "deleted":
        raise RnnexpError(f"experiment {name!r} not found in the MLflow store {uri}")
    wanted = {"rnnexp.stage": stage, "rnnexp.dvc_exp": dvc_exp}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    return [_run_dict(run) for run in search_runs(client, found.experiment_id, wanted)]
