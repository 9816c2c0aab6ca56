"""Resume: a training killed or interrupted mid-epoch continues from its last
checkpoint, in the same MLflow run, and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from early_peak import OVERRIDES as EARLY_PEAK
from early_peak import write_early_peak_data

from rnnexp.data.datamodule import EpochShuffleSampler
from rnnexp.training.callbacks import RngState
from rnnexp.training.fit import run_training
from rnnexp.training.resume import fingerprint


class Crash(Exception):
    """Stands in for a kill in in-process tests."""


class CrashAt(pl.Callback):
    """Raise :class:`Crash` before training batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise Crash(f"crash at epoch {self.epoch} batch {self.batch}")


def checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def state(path):
    return checkpoint(path)["state_dict"]


def assert_same_weights(a, b):
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"tensors differ after resume: {different}"


def train_runs(client, all_runs):
    return {
        r.info.run_id: r for r in all_runs(client) if r.data.tags.get("rnnexp.stage") == "train"
    }


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        orders.append(list(a))
        assert sorted(orders[-1]) == list(range(50))  # a permutation
    b.set_epoch(1)  # a fresh sampler jumped straight to epoch 1: what a resume does
    assert list(b) == orders[1]
    assert orders[0] != orders[1] != orders[2]
    other = EpochShuffleSampler(50, seed=4)
    other.set_epoch(1)
    assert list(other) != orders[1]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    callback = RngState()
    torch.save({"s": callback.state_dict()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # scramble
    callback.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True)["s"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_fingerprint_ignores_display_settings_only(tiny_params):
    constant = "train.lr_schedule=constant"
    base = fingerprint(tiny_params(constant), "h")
    assert (
        fingerprint(tiny_params(constant, "train.sample_every=1", "train.num_workers=1"), "h")
        == base
    )
    assert fingerprint(tiny_params(constant, "train.lr=2.0e-2"), "h") != base
    assert fingerprint(tiny_params(constant, "model.hidden=8"), "h") != base
    # a constant lr: the first epochs of a longer training are the same epochs
    assert fingerprint(tiny_params(constant, "train.max_epochs=4"), "h") == base
    cosine = fingerprint(tiny_params("train.lr_schedule=cosine"), "h")
    assert cosine != base
    assert fingerprint(tiny_params("train.lr_schedule=cosine", "train.max_epochs=4"), "h") != cosine
    assert fingerprint(tiny_params(constant, "train.patience=2"), "h") != base
    assert fingerprint(tiny_params(constant, "model.dropout=0.1"), "h") != base
    # the thread count reorders float sums: the weights differ in the last bits
    assert fingerprint(tiny_params(constant, "train.threads=1"), "h") != base
    assert fingerprint(tiny_params(constant), "other data") != base


def test_crash_mid_epoch_resumes_same_run_with_uninterrupted_weights(
    trained, tiny_params, prepared_dir, store, all_runs, tmp_path, caplog
):
    reference, params = trained
    out = tmp_path / "models"
    before = train_runs(store, all_runs)
    with pytest.raises(Crash):  # after epoch 0's checkpoint, inside epoch 1
        run_training(params, prepared_dir, out, callbacks=[CrashAt(epoch=1, batch=2)])
    (crashed,) = set(train_runs(store, all_runs)) - set(before)
    assert store.get_run(crashed).info.status == "FAILED"
    assert torch.load(out / "last.ckpt", weights_only=True)["epoch"] == 0

    with caplog.at_level(logging.INFO, logger="rnnexp"):  # the CLI's console shows INFO
        result = run_training(params, prepared_dir, out)

    assert "resuming from" in caplog.text
    assert result.run_id == crashed  # the same MLflow run, continued
    assert set(train_runs(store, all_runs)) - set(before) == {crashed}
    run = store.get_run(crashed)
    assert run.info.status == "FINISHED"
    assert run.data.tags["rnnexp.resumes"] == "1"
    assert_same_weights(result.last_checkpoint, reference.last_checkpoint)
    assert_same_weights(result.best_checkpoint, reference.best_checkpoint)
    assert result.metrics == reference.metrics
    # The curve has each epoch once, with the uninterrupted run's values.
    ours = [(m.step, m.value) for m in store.get_metric_history(crashed, "val/bpd")]
    theirs = [(m.step, m.value) for m in store.get_metric_history(reference.run_id, "val/bpd")]
    assert sorted(ours) == sorted(theirs)


@pytest.fixture(scope="module")
def early_peak_dir(tmp_path_factory, digits_subsample):
    """Prepared data whose val/bpd is best after epoch 0 and worse every epoch after."""
    return write_early_peak_data(digits_subsample, tmp_path_factory.mktemp("early") / "prepared")


def test_crash_after_a_later_epoch_than_the_best_resumes_from_the_later_epoch(
    early_peak_dir, tiny_params, store, tmp_path, caplog
):
    """Issue 16: validation worse after an early best, a crash after a later epoch. The
    resume continues from the later epoch (last.ckpt), not from the best (best.ckpt),
    and ends with the weights, checkpoints and curve of an uninterrupted run."""
    params = tiny_params("train.max_epochs=5", *EARLY_PEAK)
    reference = run_training(params, early_peak_dir, tmp_path / "reference", resume=False)
    logged = store.get_metric_history(reference.run_id, "val/bpd")
    curve = [m.value for m in sorted(logged, key=lambda m: m.step)]
    # the premise: best at epoch 0, worse at the epoch the resume starts from
    assert reference.metrics["best/epoch"] == 0 and curve[2] > curve[0], curve

    out = tmp_path / "models"
    with pytest.raises(Crash):  # inside epoch 3, after epoch 2's checkpoints
        run_training(params, early_peak_dir, out, callbacks=[CrashAt(epoch=3, batch=1)])
    assert checkpoint(out / "best.ckpt")["epoch"] == 0
    assert checkpoint(out / "last.ckpt")["epoch"] == 2  # not the best epoch's copy

    with caplog.at_level(logging.INFO, logger="rnnexp"):  # the CLI's console shows INFO
        result = run_training(params, early_peak_dir, out)
    assert "after epoch 3 (" in caplog.text  # 3 epochs done: epochs 3 and 4 left
    assert result.epochs == 5 and result.epochs_trained == 2
    assert checkpoint(out / "last.ckpt")["epoch"] == 4
    assert checkpoint(out / "best.ckpt")["epoch"] == 0
    assert_same_weights(result.last_checkpoint, reference.last_checkpoint)
    assert_same_weights(result.best_checkpoint, reference.best_checkpoint)
    assert result.metrics == reference.metrics
    assert (
        checkpoint(out / "last.ckpt")["rnnexp"]["history"]
        == checkpoint(reference.last_checkpoint)["rnnexp"]["history"]
    )
    steps = sorted(m.step for m in store.get_metric_history(result.run_id, "val/bpd"))
    assert steps == [0, 1, 2, 3, 4]  # each epoch once


@pytest.mark.slow  # five trainings
def test_other_params_unreadable_or_finished_checkpoints_start_afresh(
    trained, tiny_params, prepared_dir, store, all_runs, tmp_path, caplog
):
    reference, params = trained
    out = tmp_path / "models"
    with pytest.raises(Crash):
        run_training(params, prepared_dir, out, callbacks=[CrashAt(epoch=1, batch=0)])
    crashed_run = torch.load(out / "last.ckpt", weights_only=True)["rnnexp"]["run_id"]

    # Other params: the checkpoint is not theirs.
    other = run_training(tiny_params("train.lr=2.0e-2", "train.max_epochs=2"), prepared_dir, out)
    assert other.run_id != crashed_run
    assert "other params or data" in caplog.text
    assert store.get_run(crashed_run).info.status == "FAILED"

    # A finished training: rerunning means a new training, not a resume.
    again = run_training(tiny_params("train.lr=2.0e-2", "train.max_epochs=2"), prepared_dir, out)
    assert again.run_id != other.run_id
    assert_same_weights(again.last_checkpoint, other.last_checkpoint)

    # A truncated checkpoint: a note, then a fresh run.
    data = (out / "last.ckpt").read_bytes()
    (out / "last.ckpt").write_bytes(data[: len(data) // 2])
    fresh = run_training(params, prepared_dir, out)
    assert "not resumable" in caplog.text
    assert fresh.run_id not in (crashed_run, other.run_id, again.run_id)
    assert_same_weights(fresh.last_checkpoint, reference.last_checkpoint)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import lightning.pytorch as pl
    from rnnexp.config import load_params
    from rnnexp.training.fit import run_training

    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                os.kill(os.getpid(), signal.SIG{sig})

    params = load_params(sys.argv[1], sys.argv[4:])
    run_training(params, sys.argv[2], sys.argv[3], callbacks=[Kill()])
    """
)


def run_killed(sig, params_yaml, prepared_dir, out, overrides, env):
    code = KILLER.format(sig=sig)
    return subprocess.run(
        [sys.executable, "-c", code, str(params_yaml), str(prepared_dir), str(out), *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rnnexp_train_resumes_the_same_run(
    trained, prepared_dir, mlflow_uri, store, all_runs, tmp_path
):
    from conftest import PARAMS_YAML
    from helpers import TRAINED, set_args, tiny

    reference, _ = trained
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    out = tmp_path / "models"
    before = train_runs(store, all_runs)
    killed = run_killed("KILL", PARAMS_YAML, prepared_dir, out, tiny(TRAINED), env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (run_id,) = set(train_runs(store, all_runs)) - set(before)
    assert store.get_run(run_id).info.status == "RUNNING"  # nobody could end it

    sets = set_args(tiny(TRAINED, {"train.use_tuned": False}))
    cmd = [os.path.join(os.path.dirname(sys.executable), "rnnexp"), "train", "--params"]
    done = subprocess.run(
        [*cmd, str(PARAMS_YAML), "--prepared", str(prepared_dir), "--out", str(out), *sets],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr
    assert set(train_runs(store, all_runs)) - set(before) == {run_id}
    assert store.get_run(run_id).info.status == "FINISHED"
    assert_same_weights(out / "last.ckpt", reference.last_checkpoint)
    assert_same_weights(out / "best.ckpt", reference.best_checkpoint)


@pytest.mark.slow
def test_sigterm_ends_killed_keeps_checkpoint_and_resumes(
    trained, prepared_dir, mlflow_uri, store, all_runs, tmp_path
):
    from conftest import PARAMS_YAML
    from helpers import TRAINED, tiny

    reference, params = trained
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    out = tmp_path / "models"
    before = train_runs(store, all_runs)
    stopped = run_killed("TERM", PARAMS_YAML, prepared_dir, out, tiny(TRAINED), env)
    assert stopped.returncode != 0
    (run_id,) = set(train_runs(store, all_runs)) - set(before)
    assert store.get_run(run_id).info.status == "KILLED"
    # The checkpoint of epoch 0 is whole (loads) and nothing half-written is left.
    assert torch.load(out / "last.ckpt", weights_only=True)["epoch"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["best.ckpt", "last.ckpt"]

    result = run_training(params, prepared_dir, out)
    assert result.run_id == run_id
    assert_same_weights(result.last_checkpoint, reference.last_checkpoint)


class InterruptAt(CrashAt):
    """Ctrl-C (a real SIGINT) before training batch ``batch`` of epoch ``epoch``."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_interrupt_before_first_checkpoint_continues_the_killed_run(
    trained, prepared_dir, store, all_runs, tmp_path
):
    reference, params = trained
    out = tmp_path / "models"
    before = train_runs(store, all_runs)
    with pytest.raises((KeyboardInterrupt, SystemExit)):  # Lightning: SystemExit(1)
        run_training(params, prepared_dir, out, callbacks=[InterruptAt(epoch=0, batch=1)])
    (killed,) = set(train_runs(store, all_runs)) - set(before)
    assert store.get_run(killed).info.status == "KILLED"
    assert not (out / "last.ckpt").exists()

    result = run_training(params, prepared_dir, out)
    assert result.run_id == killed
    assert set(train_runs(store, all_runs)) - set(before) == {killed}
    assert store.get_run(killed).info.status == "FINISHED"
    assert_same_weights(result.last_checkpoint, reference.last_checkpoint)


@pytest.mark.slow
def test_kill_after_an_epoch_was_logged_but_not_checkpointed_keeps_one_run(
    trained, prepared_dir, store, all_runs, tmp_path
):
    """The window between logging epoch 1's metrics and writing its checkpoint: with
    the checkpoints gone the rerun starts over, still in the killed run."""
    reference, params = trained
    out = tmp_path / "models"
    before = train_runs(store, all_runs)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run_training(params, prepared_dir, out, callbacks=[InterruptAt(epoch=1, batch=1)])
    (killed,) = set(train_runs(store, all_runs)) - set(before)
    assert [m.step for m in store.get_metric_history(killed, "val/bpd")] == [0]
    for checkpoint in out.iterdir():  # as if the kill came before they were written
        checkpoint.unlink()

    result = run_training(params, prepared_dir, out)
    assert result.run_id == killed
    assert set(train_runs(store, all_runs)) - set(before) == {killed}
    assert_same_weights(result.last_checkpoint, reference.last_checkpoint)
    history = store.get_metric_history(killed, "val/bpd")
    epoch0 = [m.value for m in history if m.step == 0]
    assert len(epoch0) == 2 and epoch0[0] == epoch0[1]  # logged again, same value
