"""One rule, "this run's process is dead on this host", and its three users agree on it.

``owner_dead`` decides; stale-run reaping, reopening a run for a resumed training and
finding a killed training's run to continue must each act exactly when it says dead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from rnnexp import tracking
from rnnexp.tracking._liveness import (
    machine_identity,
    mark_stale_runs_killed,
    owner_dead,
    process_start,
)
from rnnexp.tracking._resume import reopen_run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def owner_tags(case: str) -> dict[str, str]:
    """Tags naming the owner process of a run for each case."""
    host, me, here = socket.gethostname(), os.getpid(), machine_identity()
    owners = {
        "live": (host, here, str(me), process_start(me)),
        "dead": (host, here, str(dead_pid()), None),
        "reused": (host, here, str(me), "1"),  # our pid, but another start time: pid reused
        "other-host": ("elsewhere.invalid", "boot:elsewhere/pidns:1", str(dead_pid()), None),
        # same host name, another machine (a container, a node): its pid means nothing here
        "other-machine": (host, "boot:elsewhere/pidns:1", str(dead_pid()), None),
        "no-machine": (host, None, str(dead_pid()), None),  # written before the tag: not ours
        "no-pid": (host, here, "unknown", None),
    }
    host, machine, pid, start = owners[case]
    tags = {"rnnexp.host": host, "rnnexp.pid": pid}
    if machine is not None:
        tags["rnnexp.machine"] = machine
    if start is not None:
        tags["rnnexp.pid_start"] = start
    return tags


CASES = {
    "live": False,
    "dead": True,
    "reused": True,
    "other-host": False,
    "other-machine": False,
    "no-machine": False,
    "no-pid": False,
}


def test_process_start_names_this_process_and_nothing_for_a_dead_pid():
    start = process_start(os.getpid())
    assert start is not None and start.isdigit()
    assert process_start(dead_pid()) is None


@pytest.mark.parametrize("case", CASES)
def test_owner_dead(case):
    assert owner_dead(owner_tags(case)) is CASES[case]


@pytest.mark.parametrize("case", CASES)
def test_reaping_reopening_and_continuing_agree_with_owner_dead(case, store, tiny_params):
    params = tiny_params(f"tracking.experiment=liveness-{case}")
    experiment_id = store.create_experiment(f"liveness-{case}")
    select = {"rnnexp.stage": "train", "rnnexp.case": case}
    run_id = store.create_run(experiment_id, tags={**owner_tags(case), **select}).info.run_id
    dead = CASES[case]

    # A killed training's rerun continues the RUNNING run only if its process is dead.
    assert tracking.killed_run_to_continue(params, select) == (run_id if dead else None)
    # A resumed training reopens the RUNNING run only if its process is dead.
    handle = reopen_run(store, run_id, experiment_id, {})
    assert (handle is not None) is dead
    if handle is not None:
        assert store.get_run(run_id).data.tags["rnnexp.resumes"] == "1"
    # Opening any run reaps the RUNNING runs of dead processes, and only those.
    assert mark_stale_runs_killed(store, experiment_id) == ([run_id] if dead else [])
    assert store.get_run(run_id).info.status == ("KILLED" if dead else "RUNNING")
    if dead:
        assert "died without ending the run" in store.get_run(run_id).data.tags["rnnexp.stale"]
        # Once KILLED it is the run to continue, whoever owned it.
        assert tracking.killed_run_to_continue(params, select) == run_id
    else:
        store.set_terminated(run_id)  # leave the shared store tidy


def test_continuing_selects_by_values_a_filter_string_cannot_quote(store, tiny_params):
    params = tiny_params("tracking.experiment=liveness-quotes")
    experiment_id = store.create_experiment("liveness-quotes")
    folder = {"rnnexp.stage": "train", "rnnexp.out": 'models/it\'s "x"'}
    other = {"rnnexp.stage": "train", "rnnexp.out": "models/other"}
    wanted = store.create_run(experiment_id, tags=folder).info.run_id
    store.set_terminated(wanted, status="KILLED")
    newer = store.create_run(experiment_id, tags=other).info.run_id
    store.set_terminated(newer, status="KILLED")
    assert tracking.killed_run_to_continue(params, folder) == wanted
    assert tracking.killed_run_to_continue(params, other) == newer
