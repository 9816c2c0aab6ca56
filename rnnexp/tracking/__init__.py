"""The one package that talks to MLflow: every stage execution is a tracked run.

Public API (``__all__``; import only these, from ``rnnexp.tracking``):

- :func:`tracked_run`: open a run for one stage execution; always closed FINISHED,
  FAILED or KILLED, never left RUNNING. Yields a :class:`RunHandle`, or a
  :class:`NullRunHandle` where nothing may be logged (tracking off, DDP ranks > 0).
- :func:`open_existing_run`: a handle on a run of this store by id, or None.
- :func:`killed_run_to_continue`: the run a rerun of a killed training continues.
- :func:`find_runs`: runs as plain dicts, for ``rnnexp compare``.
- :func:`tracking_uri`: the store in use; :func:`probe_store`: does it take writes.
- :func:`find_served_model`: the logged generator a model reference names
  (``rnnexp serve``), checked before MLflow's scoring server starts.
- :func:`replay_undelivered`: send ``mlflow-undelivered/*.json`` once the store is
  back (``rnnexp replay``), each item exactly once.
- :class:`TrackingError`: the store could not be reached (an :class:`RnnexpError`).
- :class:`MlflowRunLogger`: the Lightning logger writing into a :class:`RunHandle`.
  It is loaded lazily, on first access (module ``__getattr__``), so that
  ``import rnnexp.tracking`` does not import Lightning (~3.5 s): stages and
  commands that do not train must not pay for it.

Private modules, one job each (import them only from this package and its tests):

- ``_store``: the tracking URI, a client (SQLite stores created under a file lock),
  the experiment (artifacts beside the database), the probe, fail-fast requests.
- ``_handle``: :class:`RunHandle` and :class:`NullRunHandle`, the logging calls.
- ``_buffer``: logging that survives an outage: keep, retry in order, or save
  what was never delivered to ``mlflow-undelivered/<run_id>.json``.
- ``_runs``: :func:`tracked_run` and :func:`open_existing_run`: signals, end status.
- ``_resume``: reopening a run for a resumed training; the killed run to continue.
- ``_liveness``: who owns a run (host, machine identity: boot id and pid namespace,
  pid and its start), is that process provably dead on this machine (``owner_dead``),
  and ending the stale runs of dead processes.
- ``_replay``: sending the undelivered files, in order, exactly once per item.
- ``_queries``: searching runs by tags (one filter-string quoting), ``find_runs``.
- ``_tags``: git, DVC-experiment and owner tags of a run.
- ``_names``: run names that say what a run is (``train row_lstm h48x3 lr8.5e-3``),
  and the experiment's kind tag.
- ``_datasets``: the prepared data as a run's MLflow dataset input.
- ``_sysmetrics``: MLflow's system-metrics monitor, started and stopped with a run.
- ``_lightning``: :class:`MlflowRunLogger`.
- ``_pyfunc``: the generator as an MLflow ``pyfunc`` LoggedModel (``predict`` makes
  images); loading it needs rnnexp and torch only.
- ``_registry``: registering a logged model; the ``champion`` / ``challenger`` rule.
- ``_serving``: from a model reference (registry alias or version, model id, run) to
  the logged generator it names, or a message saying what is missing.

Warnings (the store unreachable, logging kept or not delivered) go to the standard
``logging`` loggers ``rnnexp.tracking.*``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rnnexp.tracking._handle import NullRunHandle, RunHandle
from rnnexp.tracking._queries import find_runs
from rnnexp.tracking._replay import replay_undelivered
from rnnexp.tracking._resume import killed_run_to_continue
from rnnexp.tracking._runs import open_existing_run, tracked_run
from rnnexp.tracking._serving import find_served_model
from rnnexp.tracking._store import TrackingError, probe_store, tracking_uri

if TYPE_CHECKING:
    from rnnexp.tracking._lightning import MlflowRunLogger

__all__ = [
    "MlflowRunLogger",
    "NullRunHandle",
    "RunHandle",
    "TrackingError",
    "find_runs",
    "find_served_model",
    "killed_run_to_continue",
    "open_existing_run",
    "probe_store",
    "replay_undelivered",
    "tracked_run",
    "tracking_uri",
]


def __getattr__(name: str) -> Any:
    """Load :class:`MlflowRunLogger` (and with it Lightning) on first access only."""
    if name == "MlflowRunLogger":
        from rnnexp.tracking._lightning import MlflowRunLogger

        return MlflowRunLogger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
