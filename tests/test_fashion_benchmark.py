"""The Fashion-MNIST recipe and the pieces of ``benchmarks/fashion.py``, on tiny data.

The benchmark itself trains for an hour per model; here its pieces run on a few
IDX images written to ``tmp_path`` (no download, no real dataset needed).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rnnexp.config import load_params, with_overrides
from rnnexp.data.prepare import read_arrays
from rnnexp.models.generator import count_parameters

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "params" / "fashion-mnist.yaml"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("fashion_bench", REPO / "benchmarks/fashion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fashion = _load_benchmark()


def _write_idx(folder: Path, part: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST-format files (gzipped, as Debian ships them): big-endian header, then bytes."""
    n, h, w = images.shape
    header = (0x0803).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (n, h, w))
    (folder / f"{part}-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(header + images.astype(np.uint8).tobytes())
    )
    label_header = (0x0801).to_bytes(4, "big") + n.to_bytes(4, "big")
    (folder / f"{part}-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(label_header + labels.astype(np.uint8).tobytes())
    )


@pytest.fixture
def tiny_idx(tmp_path) -> Path:
    """60 train + 10 t10k random 28x28 images with labels 0..9: a Fashion-MNIST in miniature."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    for part, n in (("train", 60), ("t10k", 10)):
        _write_idx(folder, part, rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10)
    return folder


def test_recipe_validates_and_names_the_debian_dataset():
    p = load_params(RECIPE)
    assert (p.data.source, p.data.path) == ("idx", "/usr/share/datasets/fashion-mnist")
    assert (p.data.levels, p.data.task, p.model.arch) == (256, "unconditional", "row_lstm")
    assert p.tune.n_trials == 0  # no search in the recipe: one budget for the training


def test_recipe_fractions_give_exactly_the_10000_test_images():
    # prepare() cuts round(fraction * N) images from the pooled 60,000 + 10,000
    p = load_params(RECIPE)
    assert int(round(p.data.test_fraction * 70_000)) == 10_000
    assert int(round(p.data.val_fraction * 70_000)) == 5_000


def test_baseline_bits_per_dim_by_hand():
    # two pixels, 3 levels; add-one smoothed histograms over the 3 train images:
    # pixel 0 saw 0, 0, 1 -> (3, 2, 1) / 6; pixel 1 saw 1, 2, 1 -> (1, 3, 2) / 6
    train = np.array([[0, 1], [0, 2], [1, 1]], np.uint8).reshape(3, 1, 1, 2)
    test = np.array([[0, 2], [2, 0]], np.uint8).reshape(2, 1, 1, 2)
    # image 1: -ln(3/6) - ln(2/6) = ln 6; image 2: -ln(1/6) - ln(1/6) = 2 ln 6
    expected = 1.5 * math.log(6) / (2 * math.log(2))  # mean nats / (2 dims x ln 2)
    assert fashion.baseline_bpd(train, test, levels=3) == pytest.approx(expected, rel=1e-12)


def test_pixelcnn_gets_the_row_lstm_parameter_count():
    p = load_params(RECIPE)
    meta = {"channels": 1, "levels": 256, "num_classes": 10, "task": "unconditional"}
    cnn = fashion.arch_params(p, "pixelcnn", meta)
    assert cnn.model.arch == "pixelcnn" and cnn.model.layers == p.model.layers
    row = count_parameters(fashion.build_generator(p, meta).config)
    matched = count_parameters(fashion.build_generator(cnn, meta).config)
    assert abs(matched / row - 1) < 0.05
    assert fashion.arch_params(p, "row_lstm", meta) is p


def test_prepare_data_keeps_the_split_rule_and_caps(tiny_idx, tmp_path):
    p = with_overrides(load_params(RECIPE), {"data.path": str(tiny_idx)})
    meta = fashion.prepare_data(p, tmp_path / "prepared", {"train": 20, "val": 3, "test": None})
    # 70 pooled images: test round(70/7) = 10, val 5 capped to 3, train 55 capped to 20
    assert meta["splits"] == {"train": 20, "val": 3, "test": 10}
    assert meta["levels"] == 256 and meta["shape"] == [1, 28, 28]
    assert read_arrays(tmp_path / "prepared", "test")["images"].shape == (10, 1, 28, 28)


def test_train_for_keeps_the_best_checked_weights(tiny_idx, tmp_path):
    p = with_overrides(
        load_params(RECIPE),
        {"data.path": str(tiny_idx), "model.hidden": 4, "model.layers": 1,
         "model.head_hidden": 4, "train.batch_size": 8, "train.accelerator": "cpu"},
    )  # fmt: skip
    fashion.prepare_data(p, tmp_path / "prepared", {"train": None, "val": None, "test": None})
    args = argparse.Namespace(minutes=0.03, epoch_images=16, patience=0)
    generator, row = fashion.train_for(p, tmp_path / "prepared", tmp_path / "work", args)
    assert row["checks"] >= 1 and len(row["val_curve"]) == row["checks"]
    assert row["images_seen"] % 8 == 0 and row["images_seen"] >= 8  # whole batches of 8
    assert row["best_val_bpd"] == pytest.approx(min(row["val_curve"]), abs=1e-4)
    assert row["val_curve"][row["best_check"] - 1] == min(row["val_curve"])
    # the returned weights are the kept ones: they score the val split at the best figure
    val = read_arrays(tmp_path / "prepared", "val")["images"]
    nats = fashion.likelihood.model_nll(generator, val, batch_size=8)
    assert nats / (784 * math.log(2)) == pytest.approx(row["best_val_bpd"], rel=1e-5)
    assert (row["arch"], row["hidden"], row["layers"]) == ("row_lstm", 4, 1)


def _figures(row_bpd: float, cnn_bpd: float) -> dict:
    model = dict(
        hidden=8, layers=2, parameters=1000, train_images_per_s=30.0, images_seen=640,
        passes=0.5, checks=2, best_check=1, best_val_bpd=3.4, frechet=5.0, test_seconds=1.0,
        sample_seconds=2.0, test_images=10, val_curve=[3.4, 3.5], load_before="0.1/0.2/0.3",
    )  # fmt: skip
    return {
        "machine": dict(
            node="vm", machine="x86_64", cpu="cpu", cores=2, torch_threads=2, gpu=None,
            python="3.11", torch="2.13", lightning="2.6", date="2026-11-28T10:00+00:00",
        ),  # fmt: skip
        "args": "--minutes 60", "device": "cpu", "data": "/x", "levels": 256,
        "splits": {"train": 55000, "val": 1000, "test": 10000}, "minutes": 60.0,
        "epoch_images": 6400, "samples": 1000, "load_start": "0", "load_end": "0",
        "lr": 2e-3, "schedule": "cosine",
        "total_seconds": 60.0,
        "classifier": {"test_accuracy": 0.9, "seconds": 3.0},
        "baseline": {"test_bpd": 5.0, "frechet": 50.0, "real_train_frechet": 1.0},
        "models": [
            {**model, "arch": "row_lstm", "test_bpd": row_bpd},
            {**model, "arch": "pixelcnn", "test_bpd": cnn_bpd},
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("row_bpd", "cnn_bpd", "verdict"),
    [(3.40, 3.60, "**met**"), (3.60, 3.70, "**not met**"), (3.40, 3.30, "**not met**")],
)
def test_markdown_states_the_target_verdict(row_bpd, cnn_bpd, verdict):
    text = fashion.markdown(_figures(row_bpd, cnn_bpd))
    assert text.rstrip().endswith(verdict + ".")
    assert f"**{row_bpd:.4f}**" in text and "| 5.0000 |" in text  # model and baseline rows


def test_time_cosine_halves_the_rate_at_half_time_and_ends_at_zero():
    schedule = fashion.TimeCosine(lr=0.004, seconds=1000.0)
    group: dict = {}
    trainer = SimpleNamespace(optimizers=[SimpleNamespace(param_groups=[group])])
    schedule.start = time.monotonic() - 500.0  # half the budget spent
    schedule.on_train_batch_start(trainer, None, None, 0)
    assert group["lr"] == pytest.approx(0.002, rel=1e-3)
    schedule.start = time.monotonic() - 2000.0  # past the budget: stays at 0
    schedule.on_train_batch_start(trainer, None, None, 0)
    assert group["lr"] == pytest.approx(0.0, abs=1e-12)
