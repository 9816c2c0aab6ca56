"""The scoring classifier's early stopping, its fixed-size epochs and its model for 28x28."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnexp.data.prepare import prepare, read_split, write_prepared
from rnnexp.errors import RnnexpError
from rnnexp.evaluation.classifier import (
    CHECKPOINT_FORMAT,
    SmallCNN,
    _epoch_batches,
    accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)


@pytest.fixture(scope="module")
def one_val_image(tmp_path_factory, digits_subsample) -> Path:
    """The digits subsample with a val split of ONE image (160 train, 1 val, 39 test).

    Val accuracy is then 0 or 1: it can improve at most once, so training with any
    patience must stop within patience epochs of reaching its best.
    """
    out = tmp_path_factory.mktemp("one_val") / "prepared"
    write_prepared(prepare(digits_subsample, 17, 0, 0.005, 0.195), out)
    return out


def trained(folder: Path, **kwargs) -> tuple[SmallCNN, dict, list[float | None]]:
    """train_classifier on ``folder`` (seed 0, batch 16), with its val curve."""
    curve: list[float | None] = []
    model, info = train_classifier(
        folder, seed=0, batch_size=16, on_epoch=lambda _, acc: curve.append(acc), **kwargs
    )
    return model, info, curve


def test_stops_when_val_accuracy_stalls_and_keeps_the_best_epoch(one_val_image):
    _, info, curve = trained(one_val_image, epochs=12, patience=1)
    best = max(curve)
    assert info["stopped_early"] is True and info["epochs"] == len(curve) < 12
    assert info["best_epoch"] == curve.index(best) + 1  # the earliest of the best
    assert info["epochs"] == info["best_epoch"] + 1  # one epoch (patience 1) without gain
    assert all(acc <= best for acc in curve[info["best_epoch"] :])
    assert (info["max_epochs"], info["patience"], info["val_accuracy"]) == (12, 1, best)


def test_patience_zero_runs_every_epoch(one_val_image):
    _, info, curve = trained(one_val_image, epochs=5, patience=0)
    assert len(curve) == info["epochs"] == 5 and info["stopped_early"] is False
    assert info["best_epoch"] == curve.index(max(curve)) + 1


def test_a_patience_longer_than_the_epochs_left_never_stops_early(one_val_image):
    _, info, curve = trained(one_val_image, epochs=3, patience=3)
    assert len(curve) == info["epochs"] == 3 and info["stopped_early"] is False


def test_the_saved_model_is_the_best_epochs_not_the_last(prepared_dir, tmp_path):
    # lr 1e-2 makes the val accuracy swing, so the last epoch is worse than the best
    model, info, curve = trained(prepared_dir, epochs=10, patience=3, lr=1e-2)
    assert curve[-1] < max(curve)  # the case this test is about
    assert info["val_accuracy"] == max(curve) and info["stopped_early"]
    assert info["epochs"] == info["best_epoch"] + 3
    save_classifier(model, info, tmp_path / "classifier.pt")
    loaded, loaded_info = load_classifier(tmp_path / "classifier.pt")
    images, labels = read_split(prepared_dir, "val")
    assert accuracy(loaded, images, labels) == info["val_accuracy"] == loaded_info["val_accuracy"]
    assert loaded_info["best_epoch"] == info["best_epoch"] and loaded_info["epochs"] == len(curve)
    test_images, test_labels = read_split(prepared_dir, "test")
    assert accuracy(loaded, test_images, test_labels) == info["test_accuracy"]


def test_an_empty_val_split_runs_every_epoch_and_keeps_the_last(tmp_path, digits_subsample):
    folder = tmp_path / "prepared"
    write_prepared(prepare(digits_subsample, 17, 0, 0.0, 0.2), folder)
    _, info, curve = trained(folder, epochs=3, patience=1)
    assert curve == [None, None, None]
    assert (info["epochs"], info["best_epoch"], info["stopped_early"]) == (3, 3, False)
    assert info["val_accuracy"] is None


def test_epochs_take_turns_through_permutations_of_the_train_split():
    rng = np.random.default_rng(0)
    epochs = _epoch_batches(rng, n=10, epoch_images=4, batch_size=3)
    seen = []
    for _ in range(5):  # 5 epochs of 4 images: two full passes over the 10 images
        batches = next(epochs)
        assert [len(b) for b in batches] == [4]  # a last batch of 1 joins the one before
        seen += torch.cat(batches).tolist()
    assert sorted(seen[:10]) == sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # each pass in its own order
    small = next(_epoch_batches(np.random.default_rng(0), n=5, epoch_images=2048, batch_size=2))
    assert [len(b) for b in small] == [2, 3]  # a split smaller than an epoch: all of it


def test_epoch_images_caps_the_images_trained_on_per_epoch(prepared_dir):
    seen = []
    original = SmallCNN.forward

    def counting(self, x):
        if self.training:
            seen.append(len(x))
        return original(self, x)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SmallCNN, "forward", counting)
        _, info, _ = trained(prepared_dir, epochs=3, epoch_images=50)
    assert sum(seen) == 3 * 50 and info["epoch_images"] == 50
    _, info, _ = trained(prepared_dir, epochs=1, epoch_images=100000)
    assert info["epoch_images"] == 120  # the whole train split of the subsample


def test_large_images_enter_through_a_strided_convolution():
    for shape, stride, flat in (((1, 8, 8), 1, 64 * 4 * 4), ((1, 28, 28), 2, 64 * 7 * 7),
                                ((3, 17, 20), 2, 64 * 4 * 5), ((1, 64, 64), 2, 64 * 7 * 7),
                                ((1, 5, 7), 1, 64 * 5 * 7)):  # fmt: skip
        net = SmallCNN(*shape, levels=256, num_classes=10)
        assert net.body[0].stride == (stride, stride)
        assert net.feature.in_features == flat  # 64x64: average-pooled to 7x7 first
        x = torch.randint(0, 256, (2, *shape))
        assert net.body(net.scale(x)).flatten(1).shape == (2, flat)
        assert net.features(x).shape == (2, 64) and net(x).shape == (2, 10)


def test_a_version_1_checkpoint_asks_for_retraining(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "config": {}, "info": {}}, path)
    with pytest.raises(RnnexpError, match="version 1, this code reads version 2; retrain"):
        load_classifier(path)


def test_bad_training_arguments_are_refused(prepared_dir):
    with pytest.raises(ValueError, match="patience >= 0"):
        train_classifier(prepared_dir, epochs=1, patience=-1)
    with pytest.raises(ValueError, match="epoch_images"):
        train_classifier(prepared_dir, epochs=1, epoch_images=0)


def test_stage_passes_patience_and_logs_the_stop(one_val_image, tiny_params, caplog):
    import rnnexp.stages.classifier as stage

    params = tiny_params("evaluate.classifier_epochs=12", "evaluate.classifier_patience=1")
    with caplog.at_level(logging.INFO, logger="rnnexp"):
        _, info = stage.run(str(one_val_image), params)
    assert info["stopped_early"] and info["patience"] == 1 and info["max_epochs"] == 12
    lines = [r.getMessage() for r in caplog.records if r.name == "rnnexp.stages.classifier"]
    assert len(lines) == info["epochs"] + 1  # one per epoch, then the stop
    assert lines[-1] == (
        f"classifier: stopped at epoch {info['epochs']}/12: no better val accuracy in 1 "
        f"epoch; kept epoch {info['best_epoch']}"
    )
