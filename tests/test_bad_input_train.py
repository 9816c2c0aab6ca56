"""Bad input to the training stages, end to end: tune, train and classifier.

Prepared data that is missing, modified or smaller than a batch; a tuned-params file
that is missing or bad; tune settings the tune stage cannot open; output places that
cannot be written (refused before the training, naming the user's path, not after an
epoch naming a temporary file). The promise checked is ``bad_input_harness``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from bad_input_harness import Case, run_case
from bad_input_setups import args, overwrite, remove, set_param, then
from bad_input_store_setups import a_file_at, a_folder_at


def tuned(text: str | None) -> Callable[[Path], list[str]]:
    """Setup: train.use_tuned on, reports/best_params.yaml holding ``text`` (None: absent)."""

    def setup(ws: Path) -> list[str]:
        set_param("train.use_tuned", True)(ws)
        if text is not None:
            (ws / "reports" / "best_params.yaml").write_text(text)
        return []

    return setup


CASES: list[Case] = [
    # --- tune: settings opened by the stage
    Case(
        "tune-storage-unknown-scheme",
        "tune",
        set_param("tune.storage", "bogus://nowhere"),
        ("tune.storage", "bogus://nowhere", "cannot open"),
    ),
    Case(
        "tune-workers-on-sqlite",
        "tune",
        args("--workers", "2"),
        ("tune.storage", "SQLite", "2 workers"),
    ),
    # --- train / tune: prepared data
    Case(
        "data-smaller-than-batch-train",
        "train",
        set_param("train.batch_size", 500),
        ("data/prepared/train.npz", "train.batch_size=500", "120 images"),
    ),
    Case(
        "data-smaller-than-batch-tune",
        "tune",
        set_param("train.batch_size", 500),
        ("data/prepared/train.npz", "train.batch_size=500", "120 images"),
    ),
    Case(
        "prepared-modified",
        "train",
        overwrite("data/prepared/val.npz", b"PK\x03\x04junk"),
        ("data/prepared/val.npz", "does not match"),
    ),
    Case(
        "prepared-meta-missing",
        "train",
        remove("data/prepared/meta.json"),
        ("data/prepared/meta.json", "missing"),
    ),
    Case(
        "prepared-missing",
        "tune",
        args("--prepared", "nothing_prepared"),
        ("nothing_prepared/meta.json", "missing"),
    ),
    Case(
        "tuned-params-missing",
        "train",
        tuned(None),
        ("reports/best_params.yaml", "not found", "train.use_tuned"),
    ),
    Case(
        "tuned-params-malformed",
        "train",
        tuned("params: {train.lr: [0.1\n"),
        ("reports/best_params.yaml", "malformed YAML"),
    ),
    Case(
        "tuned-params-unknown-key",
        "train",
        tuned("params:\n  train.learning_rate: 0.1\n"),
        ("reports/best_params.yaml", "train.learning_rate", "unknown key"),
    ),
    Case(
        "tuned-params-out-of-range",
        "train",
        tuned("params:\n  model.layers: 0\n"),
        ("reports/best_params.yaml", "model.layers", "out of range"),
    ),
    # --- output places that cannot be written: refused before any training
    Case(
        "train-out-parent-is-a-file",
        "train",
        then(a_file_at("checkpoints"), args("--out", "checkpoints/models")),
        ("checkpoints/models/best.ckpt", "checkpoints is a file, not a folder"),
        absent=(".tmp-",),
    ),
    Case(
        "train-checkpoint-path-is-a-folder",
        "train",
        a_folder_at("models/last.ckpt"),
        ("models/last.ckpt", "is a folder"),
        absent=(".tmp-",),
    ),
    Case(
        "tune-out-parent-is-a-file",
        "tune",
        args("--out", "reports/metrics.json/tune"),
        ("reports/metrics.json/tune/tune_trials.csv", "reports/metrics.json is a file"),
    ),
    Case(
        "tune-trial-out-parent-is-a-file",
        "tune",
        args("--trial-out", "samples.png/tuned"),
        ("samples.png/tuned", "samples.png is a file, not a folder"),
    ),
    Case(
        "classifier-out-is-a-folder",
        "classifier",
        a_folder_at("models/classifier.pt"),
        ("models/classifier.pt", "is a folder"),
    ),
    Case(
        "classifier-stage-prepared-missing",
        "classifier",
        args("--prepared", "nothing_prepared"),
        ("nothing_prepared/meta.json", "missing"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_keeps_the_promise(case, bad_input_world, store, tmp_path):
    outcome = run_case(case, bad_input_world, tmp_path, store)
    assert outcome.problems == [], outcome.stderr[-2000:]
