"""Prepared data whose validation curve peaks early, for the resume and curve tests.

The train split is digits; the val split is uniform noise over the 17 levels. No
model of digits predicts noise better than the near-uniform distribution it starts
from, so learning digits makes val/bpd worse: the best epoch is the first, and
``best.ckpt`` stays there while ``last.ckpt`` moves on (issue 16: on data where every
epoch was a new best, a ``last.ckpt`` that followed ``best.ckpt`` went unnoticed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from rnnexp.data.prepare import prepare, write_prepared
from rnnexp.data.sources import RawDataset

# With the tests' tiny model (helpers.TRAINED) these settings give, over 8 epochs,
# val/bpd 4.12 at epoch 0 and 4.21 to 5.17 after it: every later epoch is worse than
# the first by 0.08 bits/dim or more. A constant lr keeps later epochs learning;
# patience 0 trains all of them (a test that wants early stopping sets it).
OVERRIDES = (
    "train.lr=3.0e-2",
    "train.lr_schedule=constant",
    "train.patience=0",
    "train.sample_every=0",
    "tracking.log_checkpoint=false",
)


def write_early_peak_data(digits: RawDataset, out: Path, train: int = 64, val: int = 32) -> Path:
    """``out`` prepared with ``train`` digits to train on and ``val`` noise images to
    validate on (and 8 digits to test on); returns ``out``."""
    data = prepare(digits, 17, 0, 0.0, 0.0)  # everything in train, quantised to 17 levels
    images, labels = data.splits["train"]
    assert len(images) >= train + 8, "not enough digits"
    noise = np.random.default_rng(0).integers(0, 17, (val, *images.shape[1:]), dtype=images.dtype)
    noise_labels = labels[:val]  # labels are not used by an unconditional model
    splits = {
        "train": (images[:train], labels[:train]),
        "val": (noise, noise_labels),
        "test": (images[train : train + 8], labels[train : train + 8]),
    }
    write_prepared(dataclasses.replace(data, splits=splits), out)
    return out
