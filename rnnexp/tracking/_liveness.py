"""Who owns a run, whether that process still lives, and ending the runs of dead ones.

Every run names the process that owns it (:func:`owner_tags`, set when the run is
opened or reopened):

- ``rnnexp.host``: the host name, for people; it decides nothing, since containers
  and cluster nodes often share one;
- ``rnnexp.machine``: the machine identity (:func:`machine_identity`), the set of
  processes whose pids this process can check;
- ``rnnexp.pid`` and ``rnnexp.pid_start``: the process and its start time from
  ``/proc`` (which tells a reused pid apart).

:func:`owner_dead` is the one rule "this run's process is provably dead", used to
reap stale runs (:func:`mark_stale_runs_killed`), to reopen a run for a resumed
training and to find a killed training's run to continue. A run is called dead
only when its machine identity equals ours and its pid is gone (or reused) here.
Everything else is left alone: a run of another machine (even one with our host
name, even when its pid is free here), and a run with no machine identity at all
(see :func:`owner_dead` for runs written before the tag existed).
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rnnexp.tracking._queries import search_runs

MACHINE_TAG = "rnnexp.machine"
STALE_TAG = "rnnexp.stale"  # why the reaper ended a run


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _boot_time() -> str | None:
    """Seconds since the epoch at which this kernel booted (``/proc/stat``, psutil), or None."""
    for line in (_read("/proc/stat") or "").splitlines():
        if line.startswith("btime "):
            return line.split()[1]
    try:
        import psutil  # not a dependency of ours; MLflow's system metrics bring it
    except ImportError:
        return None
    return str(int(psutil.boot_time()))


@functools.cache
def machine_identity() -> str | None:
    """The identity of "this machine" for pid checks: ``boot:<boot id>/pidns:<inode>``.

    A pid means something only inside one pid namespace of one running kernel, so
    that pair is the machine:

    - the boot id (``/proc/sys/kernel/random/boot_id``): a random UUID the kernel
      draws at every boot. Unlike the host name it differs between cluster nodes
      that share a name, and unlike ``/etc/machine-id`` it changes on reboot (when
      every pid of the last boot is dead). Without it: ``/etc/machine-id`` plus the
      boot time.
    - the pid namespace (the inode of ``/proc/self/ns/pid``): containers on one
      host share the kernel, so its boot id, but each has its own pid namespace (pid
      1 in each); containers that share one (``docker run --pid=host``, a pod with
      ``shareProcessNamespace``) see each other's processes, and then liveness
      checks across them are sound, so they rightly count as one machine. The
      kernel reuses a namespace's inode only once the namespace is gone, that is
      once every process of it has died.

    Off Linux there are no pid namespaces: the machine id (or host name) plus the
    boot time. None when this process cannot name its machine (no boot id and no
    boot time, or a ``/proc`` that shows another pid namespace than ours): then
    no run is ever called dead here.
    """
    if sys.platform.startswith("linux"):
        # A /proc mounted from another pid namespace would answer for other processes.
        try:
            if os.readlink("/proc/self") != str(os.getpid()):
                return None
            pidns = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            return None
        boot = _read("/proc/sys/kernel/random/boot_id")
        if boot is None:
            machine, booted = _read("/etc/machine-id"), _boot_time()
            if machine is None or booted is None:
                return None
            boot = f"{machine}@{booted}"
        return f"boot:{boot}/pidns:{pidns}"
    booted = _boot_time()
    if booted is None:
        return None
    return f"boot:{_read('/etc/machine-id') or socket.gethostname()}@{booted}"


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
    """Whether process ``pid`` of this machine runs (and, given ``start``, is that process)."""
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


def owner_tags() -> dict[str, str]:
    """The tags naming this process as a run's owner: host, machine identity, pid, start."""
    pid = os.getpid()
    tags = {"rnnexp.host": socket.gethostname(), "rnnexp.pid": str(pid)}
    machine, start = machine_identity(), process_start(pid)
    if machine is not None:
        tags[MACHINE_TAG] = machine
    if start is not None:
        tags["rnnexp.pid_start"] = start
    return tags


def owner_dead(tags: Mapping[str, str]) -> bool:
    """Whether a run's tags name a process of this machine that no longer runs.

    True only when the run's ``rnnexp.machine`` equals :func:`machine_identity` and
    its pid no longer runs here, or now runs another process (its start time differs
    from ``rnnexp.pid_start``). False otherwise, because we cannot tell:

    - a run of another machine, whatever its host name: its pid means nothing here;
    - a run with no ``rnnexp.machine`` tag (written by rnnexp before the tag, or on
      a machine that could not name itself): host name and pid are all it has, and
      two containers share both easily, so it is never provably ours. Such a run is
      never ended automatically; end it by hand once its process is known dead;
    - a run whose tags name no valid pid, and a live process.
    """
    mine = machine_identity()
    if mine is None or tags.get(MACHINE_TAG) != mine:
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
    says so; runs of live processes, of other machines and without a machine
    identity are never touched. Each stale run gets the tag :data:`STALE_TAG` saying why.
    """
    mine = machine_identity()
    if mine is None:
        return []
    # Collected before ending any: ending runs while paging would shift the pages.
    dead = [
        run
        for run in search_runs(client, experiment_id, {MACHINE_TAG: mine}, status="RUNNING")
        if owner_dead(run.data.tags)
    ]
    stale = []
    for run in dead:
        tags = run.data.tags
        note = (
            f"process {int(tags['rnnexp.pid'])} on {tags.get('rnnexp.host', '?')} ({mine}) "
            "died without ending the run"
        )
        try:
            client.set_tag(run.info.run_id, STALE_TAG, note)
            client.set_terminated(run.info.run_id, status="KILLED")
        except MlflowException:  # ended or deleted by someone else meanwhile
            continue
        stale.append(run.info.run_id)
    return stale
