"""Whether the process that owns a run still lives, and ending the runs of dead ones.

Every run names its process in the tags ``rnnexp.host``, ``rnnexp.pid`` and
``rnnexp.pid_start`` (the start time from ``/proc``, which tells a reused pid apart).
:func:`owner_dead` is the one rule "this run's process, on this host, is gone",
used to reap stale runs (:func:`mark_stale_runs_killed`), to reopen a run for a
resumed training, and to find a killed training's run to continue. On another host
we cannot tell, so a run of another host is never called dead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rnnexp.tracking._queries import search_runs


def process_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), or None.

    Together with the pid it names a process uniquely: a pid reused by a later
    process has a later start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after its ")".
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and, given ``start``, is that process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    if start is not None:
        now = process_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by another process
    return True


def owner_dead(tags: Mapping[str, str]) -> bool:
    """Whether a run's tags name a process of this host that no longer runs.

    False for a run of another host (we cannot tell), for tags naming no valid pid
    (we do not know whose run it is), and for a live process. True for a pid that
    no longer runs, or that now runs another process (its start time differs from
    ``rnnexp.pid_start``).
    """
    if tags.get("rnnexp.host") != socket.gethostname():
        return False
    try:
        pid = int(tags.get("rnnexp.pid", ""))
    except ValueError:
        return False
    return not process_alive(pid, tags.get("rnnexp.pid_start"))


def mark_stale_runs_killed(client: MlflowClient, experiment_id: str) -> list[str]:
    """End KILLED the RUNNING runs of the experiment whose process died; return their ids.

    A process killed with SIGKILL (or by the OOM killer, or a power cut) cannot end
    its run, which then stays RUNNING forever. A run is stale when :func:`owner_dead`
    says so; runs of live processes and of other hosts are never touched. Each stale
    run gets the tag ``rnnexp.stale`` saying why.
    """
    host = socket.gethostname()
    # Collected before ending any: ending runs while paging would shift the pages.
    dead = [
        run
        for run in search_runs(client, experiment_id, {"rnnexp.host": host}, status="RUNNING")
        if owner_dead(run.data.tags)
    ]
    stale = []
    for run in dead:
        note = f"process {int(run.data.tags['rnnexp.pid'])} on {host} died without ending the run"
        try:
            client.set_tag(run.info.run_id, "rnnexp.stale", note)
            client.set_terminated(run.info.run_id, status="KILLED")
        except MlflowException:  # ended or deleted by someone else meanwhile
            continue
        stale.append(run.info.run_id)
    return stale
