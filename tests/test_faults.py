"""Injected faults: stale runs of dead processes, a full disk while writing outputs."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnexp import tracking
from rnnexp.data.prepare import prepare, write_prepared
from rnnexp.errors import RnnexpError
from rnnexp.training.callbacks import AtomicCheckpointIO
from rnnexp.training.fit import run_training


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_run(client, experiment_id, host, pid, start=None, machine=None):
    machine = machine or tracking._liveness.machine_identity()
    tags = {"rnnexp.host": host, "rnnexp.pid": str(pid), "rnnexp.stage": "train"}
    tags["rnnexp.machine"] = machine
    if start is not None:
        tags["rnnexp.pid_start"] = start
    return client.create_run(experiment_id, tags=tags).info.run_id


def test_stale_runs_of_dead_processes_end_killed_others_untouched(store, tiny_params):
    params = tiny_params()
    with tracking.tracked_run(params, "fetch") as first:
        experiment_id = first.experiment_id
    host, me = socket.gethostname(), os.getpid()
    dead = make_run(store, experiment_id, host, dead_pid())
    alive = make_run(store, experiment_id, host, me, tracking._liveness.process_start(me))
    reused = make_run(store, experiment_id, host, me, start="1")  # pid reused since
    elsewhere = make_run(
        store, experiment_id, "elsewhere.invalid", dead_pid(), machine="boot:elsewhere/pidns:1"
    )

    with tracking.tracked_run(params, "train") as run:
        assert store.get_run(run.run_id).info.status == "RUNNING"  # ours, alive

    status = {r: store.get_run(r).info.status for r in (dead, alive, reused, elsewhere)}
    assert status == {dead: "KILLED", alive: "RUNNING", reused: "KILLED", elsewhere: "RUNNING"}
    assert "died" in store.get_run(dead).data.tags["rnnexp.stale"]
    for run_id in (alive, elsewhere):
        store.set_terminated(run_id)  # leave the shared store tidy


@pytest.mark.slow
def test_sigkilled_process_run_is_ended_by_the_next_stage_run(store, tiny_params):
    code = (
        "import os, signal\n"
        "from rnnexp import tracking\n"
        "from rnnexp.config import Params\n"
        "with tracking.tracked_run(Params(), 'trial') as run:\n"
        "    print(run.run_id, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
    run_id = out.stdout.split()[0]
    assert store.get_run(run_id).info.status == "RUNNING"
    with tracking.tracked_run(tiny_params(), "train"):
        pass
    assert store.get_run(run_id).info.status == "KILLED"


class FullDisk:
    """A file whose writes succeed for ``room`` bytes, then raise ENOSPC."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.f.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def disk_full_after(monkeypatch):
    """``disk_full_after(n)``: atomic writes fail with ENOSPC after ``n`` more bytes in all."""

    def arm(room: int) -> None:
        budget = {"room": room}
        real = os.fdopen

        def fdopen(fd, *args, **kwargs):
            f = FullDisk(real(fd, *args, **kwargs), budget["room"])
            original = f.write

            def write(data):
                try:
                    return original(data)
                finally:
                    budget["room"] = f.room

            f.write = write
            return f

        monkeypatch.setattr(os, "fdopen", fdopen)

    return arm


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_full_disk_while_writing_a_checkpoint_keeps_the_old_one(tmp_path, disk_full_after):
    path = tmp_path / "last.ckpt"
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"state_dict": {"w": torch.zeros(10)}}, path)
    before = path.read_bytes()
    disk_full_after(100)
    with pytest.raises(RnnexpError, match=r"last\.ckpt: not written: No space left on device") as e:
        io_.save_checkpoint({"state_dict": {"w": torch.ones(10_000)}}, path)
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC  # still an OSError
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_full_disk_while_writing_prepared_data_keeps_the_old_folder(
    tmp_path, digits_subsample, disk_full_after
):
    out = tmp_path / "prepared"
    write_prepared(prepare(digits_subsample, 17, 0, 0.2, 0.2), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    first = min(len(b) for n, b in before.items() if n.endswith(".npz"))
    disk_full_after(first + 10)  # the first split fits, the second does not
    with pytest.raises(RnnexpError, match=r"\.npz: not written: No space left on device"):
        write_prepared(prepare(digits_subsample, 9, 1, 0.2, 0.2), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_full_disk_mid_training_fails_the_run_and_keeps_last_checkpoint(
    tiny_params, prepared_dir, store, tmp_path, monkeypatch
):
    out = tmp_path / "models"
    saves = []
    real = AtomicCheckpointIO.save_checkpoint

    def save(self, checkpoint, path, storage_options=None):
        saves.append(checkpoint["epoch"])
        if checkpoint["epoch"] == 1:  # epoch 0's files are written, epoch 1's hit a full disk
            monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(open(fd, "wb"), 50))
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save)
    params = tiny_params("train.sample_every=0")
    with pytest.raises(RnnexpError, match="No space left on device") as info:
        run_training(params, prepared_dir, out)
    assert torch.load(out / "last.ckpt", weights_only=True)["epoch"] == 0
    assert leftovers(out) == []
    runs = store.search_runs(
        [store.get_experiment_by_name(params.tracking.experiment).experiment_id],
        filter_string="tags.`rnnexp.stage` = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert runs[0].info.status == "FAILED"
    assert "No space left on device" in runs[0].data.tags["rnnexp.error"]
    assert str(info.value) in runs[0].data.tags["rnnexp.error"]


@pytest.mark.slow
def test_sigkilled_tune_leaves_no_run_running_after_the_rerun(tmp_path, prepared_dir, tiny_params):
    """The known gap: a SIGKILLed tune left its study run and its trial's run RUNNING."""
    import optuna
    import yaml
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from rnnexp.data.prepare import read_meta
    from rnnexp.stages.tune import default_study_name

    space = "tune.space={train.lr: {type: float, low: 1.0e-5, high: 3.0e-2, log: true}}"
    storage = f"sqlite:///{tmp_path}/optuna.db"
    params = tiny_params(
        space, f"tune.storage={storage}", "tune.n_trials=3", "tune.epochs=6", "tune.heartbeat=1"
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.to_dict()))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CI": "1"}
    cmd = [sys.executable, "-m", "rnnexp.cli", "tune", "--params", str(params_file)]
    cmd += ["--prepared", str(prepared_dir), "--out", str(tmp_path / "reports")]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    name = default_study_name(params, read_meta(prepared_dir)["content_hash"])
    deadline = time.time() + 300
    running = []
    while time.time() < deadline and not running:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            running = [
                t for t in study.get_trials() if t.state == TrialState.RUNNING and t.user_attrs
            ]
        except KeyError:
            pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert running, "the study should have had a running trial when killed"
    client = MlflowClient(uri)
    orphan = running[0].user_attrs["mlflow_run_id"]
    parent = client.get_run(orphan).data.tags["mlflow.parentRunId"]
    assert {client.get_run(r).info.status for r in (orphan, parent)} == {"RUNNING"}

    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for run_id in (orphan, parent):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        assert "died without ending the run" in run.data.tags["rnnexp.stale"]
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
