"""run_training on tiny digits: checkpoints, the MLflow run, reproducibility, failures."""

from __future__ import annotations

import math
import re

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image

from rnnexp.data.prepare import read_meta
from rnnexp.errors import DataError, RnnexpError
from rnnexp.models.generator import PixelRNN
from rnnexp.training.checkpoint import load_checkpoint
from rnnexp.training.fit import run_training

CURVES = [("train", "nll"), ("train", "bpd"), ("val", "nll"), ("val", "bpd")]


def new_runs(client, all_runs, before):
    known = {r.info.run_id for r in before}
    return [r for r in all_runs(client) if r.info.run_id not in known]


def weights(path):
    return load_checkpoint(path).generator.state_dict()


def test_returns_best_metrics_and_both_checkpoints(trained):
    result, params = trained
    assert result.epochs == params.train.max_epochs == 3
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    last = load_checkpoint(result.last_checkpoint)
    assert [row["epoch"] for row in last.history] == [0, 1, 2]
    best_row = min(last.history, key=lambda row: row["val_bpd"])
    assert result.metrics == {
        "best/val_nll": best_row["val_nll"],
        "best/val_bpd": best_row["val_bpd"],
        "epochs": 3,
        "best/epoch": best_row["epoch"],
    }
    # ModelCheckpoint's best is the epoch run_training reports, history up to it.
    best = load_checkpoint(result.best_checkpoint)
    assert best.epoch == best_row["epoch"]
    assert best.history == last.history[: best_row["epoch"] + 1]
    assert best.run_id == last.run_id == result.run_id
    assert best.image_shape == (1, 8, 8)


def test_checkpoint_records_the_training_data(trained, prepared_dir):
    result, _ = trained
    meta = read_meta(prepared_dir)
    data = load_checkpoint(result.best_checkpoint).data
    assert data["content_hash"] == meta["content_hash"]
    assert data["levels"] == 17


def test_mlflow_run_finished_with_per_epoch_curves_equal_to_history(trained, store):
    result, params = trained
    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["rnnexp.stage"] == "train"
    assert run.data.params["train.max_epochs"] == "3"
    assert run.data.params["model.hidden"] == "4"
    history = load_checkpoint(result.last_checkpoint).history
    for stage, metric in CURVES:
        logged = store.get_metric_history(result.run_id, f"{stage}/{metric}")
        steps_values = sorted((m.step, m.value) for m in logged)
        assert steps_values == [(row["epoch"], row[f"{stage}_{metric}"]) for row in history]
    for key, value in result.metrics.items():
        assert run.data.metrics[key] == value


def test_logged_bits_per_dim_are_nats_over_dims_ln2(trained, store):
    result, _ = trained
    dims = 1 * 8 * 8
    for stage in ("train", "val"):
        nll = {m.step: m.value for m in store.get_metric_history(result.run_id, f"{stage}/nll")}
        bpd = {m.step: m.value for m in store.get_metric_history(result.run_id, f"{stage}/bpd")}
        assert set(nll) == set(bpd) == {0, 1, 2}
        for step in nll:
            assert bpd[step] == pytest.approx(nll[step] / (dims * math.log(2)), rel=1e-12)
    # and the figures are plausible: below a uniform guess over 17 levels (log2 17 bits/dim)
    assert all(v < math.log2(17) for v in bpd.values())


def test_training_loss_goes_down(trained):
    result, _ = trained
    history = load_checkpoint(result.last_checkpoint).history
    train_nll = [row["train_nll"] for row in history]
    val_nll = [row["val_nll"] for row in history]
    assert all(b < a for a, b in zip(train_nll, train_nll[1:], strict=False)), train_nll
    assert all(b < a for a, b in zip(val_nll, val_nll[1:], strict=False)), val_nll
    assert train_nll[-1] < train_nll[0] - 5.0  # nats per image, not a rounding wobble


def test_sample_grids_and_checkpoint_are_run_artifacts(trained, store, tmp_path):
    result, _ = trained
    images = [a.path for a in store.list_artifacts(result.run_id, "images")]
    pngs = [p for p in images if p.endswith(".png")]
    steps = sorted(int(re.search(r"samples\+step\+(\d+)\+", p).group(1)) for p in pngs)
    # sample_every=2 over 3 epochs: after epoch 1, and after the last epoch (2)
    assert steps == [1, 2]
    local = store.download_artifacts(result.run_id, pngs[0], str(tmp_path))
    with Image.open(local) as grid:
        assert grid.format == "PNG"
        assert grid.size == (2 * 34 + 2, 2 * 34 + 2)  # 4 tiles of 8x8 scaled x4, padded 2
    ckpt = {a.path: a.file_size for a in store.list_artifacts(result.run_id, "checkpoints")}
    assert ckpt == {"checkpoints/best.ckpt": result.best_checkpoint.stat().st_size}


def test_seeded_runs_are_reproducible(trained, tiny_params, prepared_dir, store, tmp_path):
    result, params = trained
    again = run_training(params, prepared_dir, tmp_path / "again")
    reference = weights(result.last_checkpoint)
    same = weights(again.last_checkpoint)
    assert again.run_id != result.run_id
    assert again.metrics == result.metrics
    assert reference.keys() == same.keys()
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    other = run_training(tiny_params("train.seed=1"), prepared_dir, tmp_path / "other")
    different = weights(other.last_checkpoint)
    assert not all(torch.equal(reference[k], different[k]) for k in reference)


class ThreadProbe(pl.Callback):
    """Records torch's CPU thread count at each training epoch."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen.append(torch.get_num_threads())


def test_threads_param_holds_for_the_training_and_is_undone_after(
    tiny_params, prepared_dir, store, tmp_path
):
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that 1 thread differs from the setting outside, on any machine
    try:
        probe = ThreadProbe()
        one = tiny_params("train.threads=1", "train.max_epochs=2", "train.sample_every=0")
        result = run_training(one, prepared_dir, tmp_path / "one", callbacks=[probe])
        assert probe.seen == [1, 1]
        assert torch.get_num_threads() == 2
        assert store.get_run(result.run_id).data.tags["rnnexp.threads"] == "1"

        probe = ThreadProbe()
        default = tiny_params("train.threads=0", "train.max_epochs=1", "train.sample_every=0")
        result = run_training(default, prepared_dir, tmp_path / "default", callbacks=[probe])
        assert probe.seen == [2]  # 0: torch's default count, the one set outside
        assert store.get_run(result.run_id).data.tags["rnnexp.threads"] == "2"
    finally:
        torch.set_num_threads(before)


def test_nan_loss_stops_training_naming_the_step(
    tiny_params, prepared_dir, store, all_runs, tmp_path, monkeypatch
):
    params = tiny_params("train.sample_every=0")
    batches = math.ceil(read_meta(prepared_dir)["splits"]["train"] / params.train.batch_size)
    bad_call = batches + 1  # 0-based training step: epoch 1, batch 1
    calls = []
    original = PixelRNN.nll

    def nll(self, x):
        out = original(self, x)
        if self.training:
            calls.append(len(calls))
            if calls[-1] == bad_call:
                return out * float("nan")
        return out

    monkeypatch.setattr(PixelRNN, "nll", nll)
    before = all_runs(store)
    with pytest.raises(RnnexpError) as info:
        run_training(params, prepared_dir, tmp_path / "models")
    message = str(info.value)
    assert f"epoch 1, step {bad_call} (batch 1)" in message
    assert "nan" in message
    assert len(calls) == bad_call + 1  # stopped at once: no further training step
    (run,) = new_runs(store, all_runs, before)
    assert run.info.status == "FAILED"
    assert f"step {bad_call}" in run.data.tags["rnnexp.error"]


def test_data_smaller_than_batch_fails_before_any_run(
    tiny_params, prepared_dir, store, all_runs, tmp_path
):
    before = all_runs(store)
    with pytest.raises(DataError, match=r"train\.batch_size=1000") as info:
        run_training(tiny_params("train.batch_size=1000"), prepared_dir, tmp_path / "models")
    assert "120 images" in str(info.value)
    assert str(prepared_dir / "train.npz") in str(info.value)
    assert new_runs(store, all_runs, before) == []
    assert not (tmp_path / "models").exists()
