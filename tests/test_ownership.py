"""Run ownership across machines that share a host name (containers, cluster nodes).

A run names its owner by host, machine identity (boot id and pid namespace), pid and
pid start time. Stale-run reaping, reopening a run and continuing a killed one act
only on a run whose owner is provably dead on *this* machine: a run of another
machine with our host name is never ended, even when its pid is free here, and a
run without a machine identity (written before the tag) is never called ours.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rnnexp import tracking
from rnnexp.config import Params
from rnnexp.tracking import _liveness
from rnnexp.tracking._liveness import (
    MACHINE_TAG,
    machine_identity,
    mark_stale_runs_killed,
    owner_dead,
    process_start,
)
from rnnexp.tracking._resume import reopen_run

LINUX = sys.platform.startswith("linux")
OTHER = "boot:0ther-machine/pidns:4026531999"  # another node or container, same host name


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_run(client, experiment_id, machine, pid, start=None, case="x"):
    tags = {"rnnexp.host": socket.gethostname(), "rnnexp.pid": str(pid), "rnnexp.case": case}
    tags["rnnexp.stage"] = "train"
    if machine is not None:
        tags[MACHINE_TAG] = machine
    if start is not None:
        tags["rnnexp.pid_start"] = start
    return client.create_run(experiment_id, tags=tags).info.run_id


@pytest.fixture
def fresh_identity():
    """Forget the cached machine identity before and after the test."""
    machine_identity.cache_clear()
    yield
    machine_identity.cache_clear()


@pytest.mark.skipif(not LINUX, reason="boot id and pid namespaces are Linux's")
def test_machine_identity_is_the_boot_id_and_the_pid_namespace():
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    pidns = os.stat("/proc/self/ns/pid").st_ino
    assert machine_identity() == f"boot:{boot}/pidns:{pidns}"
    assert tracking._tags.source_tags()[MACHINE_TAG] == machine_identity()


@pytest.mark.skipif(not LINUX, reason="boot id and pid namespaces are Linux's")
def test_without_a_boot_id_machine_id_and_boot_time_stand_in(monkeypatch, fresh_identity):
    real = _liveness._read
    monkeypatch.setattr(_liveness, "_read", lambda p: None if "boot_id" in p else real(p))
    machine = Path("/etc/machine-id")
    if not machine.is_file() or not machine.read_text().strip():
        assert machine_identity() is None  # nothing names this machine: nothing is ours
        return
    btime = next(
        x.split()[1] for x in Path("/proc/stat").read_text().splitlines() if x[:6] == "btime "
    )
    pidns = os.stat("/proc/self/ns/pid").st_ino
    assert machine_identity() == f"boot:{machine.read_text().strip()}@{btime}/pidns:{pidns}"


@pytest.mark.skipif(not LINUX, reason="/proc is Linux's")
def test_a_proc_of_another_pid_namespace_names_no_machine_and_proves_nothing(
    monkeypatch, fresh_identity
):
    mine = machine_identity()
    real = os.readlink
    monkeypatch.setattr(os, "readlink", lambda p: "1" if p == "/proc/self" else real(p))
    machine_identity.cache_clear()
    assert machine_identity() is None
    tags = {"rnnexp.host": socket.gethostname(), MACHINE_TAG: mine, "rnnexp.pid": str(dead_pid())}
    assert owner_dead(tags) is False


def test_runs_of_another_machine_with_our_host_name_are_never_ended(
    store, tiny_params, monkeypatch
):
    params = tiny_params("tracking.experiment=ownership-simulated")
    experiment_id = store.create_experiment("ownership-simulated")
    me, here = os.getpid(), machine_identity()
    runs = {
        # A live process on the other machine; its pid is free here.
        "theirs, pid dead here": make_run(store, experiment_id, OTHER, dead_pid(), case="a"),
        # Its pid is ours here, with another start time: here that reads "pid reused".
        "theirs, pid reused here": make_run(store, experiment_id, OTHER, me, "1", case="b"),
        # Written before the machine tag: host and pid only, never provably ours.
        "no machine tag": make_run(store, experiment_id, None, dead_pid(), case="c"),
        "ours, dead": make_run(store, experiment_id, here, dead_pid(), case="d"),
        "ours, live": make_run(store, experiment_id, here, me, process_start(me), case="e"),
    }
    ended = {"ours, dead"}
    for name, run_id in runs.items():  # continuing and reopening obey the same rule
        tags = store.get_run(run_id).data.tags
        assert owner_dead(tags) is (name in ended), name
        select = {"rnnexp.stage": "train", "rnnexp.case": tags["rnnexp.case"]}
        expected = run_id if name in ended else None
        assert tracking.killed_run_to_continue(params, select) == expected, name
    for name in ("theirs, pid dead here", "theirs, pid reused here", "no machine tag"):
        assert reopen_run(store, runs[name], experiment_id, {}) is None, name

    with tracking.tracked_run(params, "train"):  # opening a run reaps the stale ones
        pass
    status = {name: store.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {name: "KILLED" if name in ended else "RUNNING" for name in runs}

    # Seen from the other machine the same rule ends its own dead runs, and only those.
    monkeypatch.setattr(_liveness, "machine_identity", lambda: OTHER)
    theirs = sorted([runs["theirs, pid dead here"], runs["theirs, pid reused here"]])
    assert sorted(mark_stale_runs_killed(store, experiment_id)) == theirs
    assert store.get_run(runs["no machine tag"]).info.status == "RUNNING"
    assert store.get_run(runs["ours, live"]).info.status == "RUNNING"
    for name in ("no machine tag", "ours, live"):
        store.set_terminated(runs[name])  # leave the shared store tidy


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from rnnexp import tracking
    from rnnexp.config import Params
    from rnnexp.tracking import _liveness

    if sys.argv[1] != "-":  # the machine this process pretends to be on
        _liveness.machine_identity = lambda: sys.argv[1]
    params = Params(tracking={"experiment": sys.argv[2]})
    with tracking.tracked_run(params, "train") as run:
        print(run.run_id, run.client.get_run(run.run_id).data.tags["rnnexp.pid"], flush=True)
        if sys.argv[3] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.stdin.readline()  # live until told
    """
)


def child(machine: str, experiment: str, then: str, prefix=()) -> subprocess.Popen:
    """A process opening a run (as ``machine``; "-": its real one), then dying or waiting."""
    cmd = [*prefix, sys.executable, "-c", CHILD, machine, experiment, then]
    return subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_two_machines_with_one_host_name_each_end_only_their_own_dead_runs(store):
    experiment = "ownership-processes"
    params = Params(tracking={"experiment": experiment})
    runs = {}
    for machine in ("-", OTHER):  # a process here and one "on the other machine"
        proc = child(machine, experiment, "die")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, err
        runs[machine] = out.split()[0]
    assert {store.get_run(r).info.status for r in runs.values()} == {"RUNNING"}
    tags = store.get_run(runs[OTHER]).data.tags
    assert tags["rnnexp.host"] == socket.gethostname() and tags[MACHINE_TAG] == OTHER

    with tracking.tracked_run(params, "train"):  # here: ends our dead process's run only
        pass
    assert store.get_run(runs["-"]).info.status == "KILLED"
    assert store.get_run(runs[OTHER]).info.status == "RUNNING"

    proc = child(OTHER, experiment, "end")  # a run opened on the other machine reaps there
    out, err = proc.communicate("\n", timeout=300)
    assert proc.returncode == 0, err
    assert store.get_run(runs[OTHER]).info.status == "KILLED"
    assert "died without ending the run" in store.get_run(runs[OTHER]).data.tags["rnnexp.stale"]


def _can_unshare() -> bool:
    if not LINUX or shutil.which("unshare") is None:
        return False
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", "true"]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --pid --mount-proc` (root)")
def test_a_live_process_in_another_pid_namespace_keeps_its_run(store):
    """A real container-like neighbour: same kernel and host name, its own pid namespace.

    Its process is pid 1 there; pid 1 here is another process with another start
    time, which host name and pid alone would read as "pid reused: dead".
    """
    experiment = "ownership-namespace"
    neighbour = child(
        "-", experiment, "wait", prefix=["unshare", "--pid", "--fork", "--mount-proc"]
    )
    try:
        line = neighbour.stdout.readline()
        if not line:
            pytest.fail(neighbour.communicate(timeout=300)[1])
        run_id, pid = line.split()
        tags = store.get_run(run_id).data.tags
        assert tags["rnnexp.host"] == socket.gethostname()
        assert tags[MACHINE_TAG] != machine_identity()
        assert tags[MACHINE_TAG].split("/")[0] == machine_identity().split("/")[0]  # one boot
        assert pid == "1" and process_start(1) != tags["rnnexp.pid_start"]

        assert owner_dead(tags) is False
        with tracking.tracked_run(Params(tracking={"experiment": experiment}), "train"):
            pass
        assert store.get_run(run_id).info.status == "RUNNING"
    finally:
        out, err = neighbour.communicate("\n", timeout=300)
    assert neighbour.returncode == 0, err
    assert store.get_run(run_id).info.status == "FINISHED"  # it was alive, and ended its run
