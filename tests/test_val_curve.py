"""``reports/val_curve.csv`` has one row per epoch trained (issue 16), however the
training went: stopped early, resumed after a crash, or continued from a tune trial.

Each test trains, runs the evaluate stage's ``main`` (which writes the curve), and
compares the rows with the epochs the training went through, counted by a callback or
read from MLflow, and with the val/bpd values logged per epoch. The data peaks at
epoch 0 (``tests/early_peak.py``), so ``best.ckpt`` is an earlier epoch than
``last.ckpt``: a curve read from the best epoch, or a ``last.ckpt`` that follows it,
would be short.
"""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from early_peak import OVERRIDES as EARLY_PEAK
from early_peak import write_early_peak_data

from rnnexp.stages.evaluate import main as evaluate_main
from rnnexp.stages.train import run as train_run
from rnnexp.stages.tune import main as tune_main
from rnnexp.training.fit import run_training

# the search: the lr only; the one trial takes params' own lr (3e-2)
SPACE = "tune.space={train.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}}"


class Crash(Exception):
    """Stands in for a kill."""


class Epochs(pl.Callback):
    """The epochs whose training and validation finished (``epochs``), and a crash
    before batch 0 of epoch ``crash_at``."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.epochs: list[int] = []
        self.crash_at = crash_at

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.crash_at:
            raise Crash(f"crash in epoch {self.crash_at}")

    def on_validation_epoch_end(self, trainer, module) -> None:
        self.epochs.append(trainer.current_epoch)


@pytest.fixture(scope="module")
def early_peak_dir(tmp_path_factory, digits_subsample):
    return write_early_peak_data(digits_subsample, tmp_path_factory.mktemp("early") / "prepared")


def evaluate(params, models, prepared, reports) -> list[dict[str, str]]:
    """Run the evaluate stage on ``models/best.ckpt``; the rows of its val_curve.csv."""
    args = SimpleNamespace(
        checkpoint=str(models / "best.ckpt"),
        prepared=str(prepared),
        classifier=str(models / "classifier.pt"),  # none: sample scores are skipped
        out=str(reports),
    )
    evaluate_main(args, params)
    with open(reports / "val_curve.csv", newline="") as f:
        return list(csv.DictReader(f))


def logged_curve(store, run_id) -> list[tuple[int, float]]:
    """(epoch, val/bpd) as the run logged them, in epoch order."""
    return sorted((m.step, m.value) for m in store.get_metric_history(run_id, "val/bpd"))


def as_curve(rows) -> list[tuple[int, float]]:
    return [(int(row["epoch"]), float(row["val_bpd"])) for row in rows]


def epoch_of(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


@pytest.fixture(scope="module")
def stopped_early(early_peak_dir, tiny_params, store, tmp_path_factory):
    """A training that early stopping ended after 3 of 8 epochs, evaluated:
    (result, the epochs trained, val_curve.csv rows, the reports folder)."""
    params = tiny_params("train.max_epochs=8", *EARLY_PEAK, "train.patience=2",
                         "evaluate.score_samples=0")  # fmt: skip
    root = tmp_path_factory.mktemp("stopped_early")
    seen = Epochs()
    result = run_training(params, early_peak_dir, root / "models", callbacks=[seen])
    rows = evaluate(params, root / "models", early_peak_dir, root / "reports")
    return result, seen.epochs, rows, root


def test_a_training_stopped_early_has_a_row_per_epoch_trained(stopped_early, store):
    result, epochs, rows, root = stopped_early
    # epoch 0 is the best, epochs 1 and 2 are no better: patience 2 stops after epoch 2
    assert result.stopped_early and epochs == [0, 1, 2]
    assert epoch_of(root / "models" / "best.ckpt") == 0
    assert [int(row["epoch"]) for row in rows] == epochs
    assert as_curve(rows) == logged_curve(store, result.run_id)
    assert store.get_run(result.run_id).data.metrics["epochs"] == len(rows)


def test_metrics_json_counts_every_epoch_trained(stopped_early):
    result, epochs, rows, root = stopped_early
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == len(epochs) == len(rows)


def test_a_resumed_training_has_each_epoch_once(early_peak_dir, tiny_params, store, tmp_path):
    params = tiny_params("train.max_epochs=5", *EARLY_PEAK, "evaluate.score_samples=0")
    models = tmp_path / "models"
    crashed = Epochs(crash_at=3)
    with pytest.raises(Crash):
        run_training(params, early_peak_dir, models, callbacks=[crashed])
    assert crashed.epochs == [0, 1, 2] and epoch_of(models / "last.ckpt") == 2
    resumed = Epochs()
    result = run_training(params, early_peak_dir, models, callbacks=[resumed])
    assert resumed.epochs == [3, 4] and result.epochs_trained == 2  # resumed after epoch 2

    rows = evaluate(params, models, early_peak_dir, tmp_path / "reports")
    assert [int(row["epoch"]) for row in rows] == crashed.epochs + resumed.epochs
    assert as_curve(rows) == logged_curve(store, result.run_id)


def tune_then_train(params, prepared_dir, root):
    """The tune stage's main (models/tuned, reports/), the train stage, then evaluate:
    (train result, the trial's MLflow run id, val_curve.csv rows)."""
    args = SimpleNamespace(prepared=str(prepared_dir), out=str(root / "reports"), workers=None,
                           trial_out=str(root / "models" / "tuned"))  # fmt: skip
    tune_main(args, params)
    best_params = str(root / "reports" / "best_params.yaml")
    result = train_run(params, str(prepared_dir), str(root / "models"), best_params, args.trial_out)
    trial = json.loads((root / "models" / "tuned" / "trial.json").read_text())
    assert trial["checkpoints"], "the train stage should start from the trial"
    rows = evaluate(params, root / "models", prepared_dir, root / "reports")
    return result, trial["trial_run_id"], rows


def test_a_training_that_continues_a_tune_trial_has_the_trials_epochs_and_its_own(
    early_peak_dir, tiny_params, store, tmp_path
):
    # one trial of 2 epochs (params' configuration); the final budget is 3 epochs
    params = tiny_params(SPACE, "tune.n_trials=1", "tune.epochs=2", "train.max_epochs=3",
                         *EARLY_PEAK, "evaluate.score_samples=0",
                         f"tune.storage=sqlite:///{tmp_path}/optuna.db")  # fmt: skip
    result, trial_run, rows = tune_then_train(params, early_peak_dir, tmp_path)
    assert [step for step, _ in logged_curve(store, trial_run)] == [0, 1]
    assert result.epochs == 3 and result.epochs_trained == 1  # the trial's 2, then 1 more
    assert epoch_of(tmp_path / "models" / "best.ckpt") == 0
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert as_curve(rows)[:2] == logged_curve(store, trial_run)
    assert as_curve(rows) == logged_curve(store, result.run_id)


def test_a_tune_trial_that_stopped_early_and_is_taken_as_it_stands(
    early_peak_dir, tiny_params, store, tmp_path
):
    params = tiny_params(SPACE, "tune.n_trials=1", "train.max_epochs=8", *EARLY_PEAK,
                         "train.patience=1", "evaluate.score_samples=0",
                         f"tune.storage=sqlite:///{tmp_path}/optuna.db")  # fmt: skip
    result, trial_run, rows = tune_then_train(params, early_peak_dir, tmp_path)
    # the trial: epoch 0 the best, epoch 1 no better, patience 1 stopped it there
    assert [step for step, _ in logged_curve(store, trial_run)] == [0, 1]
    assert result.stopped_early and result.epochs == 2 and result.epochs_trained == 0
    assert epoch_of(tmp_path / "models" / "best.ckpt") == 0
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    assert as_curve(rows) == logged_curve(store, trial_run) == logged_curve(store, result.run_id)
