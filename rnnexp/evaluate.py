"""Evaluation: test likelihood beside a baseline, and samples.

``evaluate_checkpoint`` is pure (no files written, no MLflow); the stage entry point
in ``cli.py`` writes its results and logs them into the model's MLflow run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rnnexp.checkpoint import load_checkpoint
from rnnexp.config import EvaluateParams
from rnnexp.data.prepare import read_arrays, read_meta, read_split
from rnnexp.data.tasks import source_to_float, visible_mask
from rnnexp.errors import RnnexpError
from rnnexp.generate import TaskInfo, sample_picture


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """bits/dim = nats / (pixels x channels x ln 2)."""
    return nats_per_image / (dims * math.log(2))


def independent_pixel_nll(train: np.ndarray, test: np.ndarray, levels: int) -> float:
    """Mean test NLL (nats/image) of a per-pixel, per-channel categorical fit on ``train``.

    Each (channel, row, column) gets its own histogram of levels over the training
    images, with add-one (Laplace) smoothing so unseen levels keep finite NLL.
    """
    n, dims = train.shape[0], math.prod(train.shape[1:])
    flat_train = train.reshape(n, dims).astype(np.int64)
    counts = np.ones((dims, levels))  # add-one smoothing
    np.add.at(counts, (np.tile(np.arange(dims), n), flat_train.ravel()), 1.0)
    log_probs = np.log(counts / counts.sum(axis=1, keepdims=True))  # (dims, levels)
    flat_test = test.reshape(test.shape[0], dims).astype(np.int64)
    nll = -log_probs[np.arange(dims)[None, :], flat_test].sum(axis=1)
    return float(nll.mean())


@torch.no_grad()
def pixel_nll(
    generator: torch.nn.Module,
    images: np.ndarray,
    batch_size: int,
    labels: np.ndarray | None = None,
    source: np.ndarray | None = None,
) -> np.ndarray:
    """NLL in nats of every sub-pixel (N, C, H, W) given all before it (and conditioning).

    ``labels`` (N,) and ``source`` (N, S, Hs, Ws) float in [-1, 1] are the
    conditioning inputs of conditional generators.
    """
    generator.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        x = torch.from_numpy(images[part].astype(np.int64))
        cond = {}
        if labels is not None:
            cond["labels"] = torch.from_numpy(labels[part].astype(np.int64))
        if source is not None:
            cond["source"] = torch.from_numpy(source[part])
        logits = generator(x, **cond)  # (B, L, C, H, W)
        parts.append(F.cross_entropy(logits, x, reduction="none").double().numpy())
    return np.concatenate(parts)


def model_nll(
    generator: torch.nn.Module,
    images: np.ndarray,
    batch_size: int,
    labels: np.ndarray | None = None,
    source: np.ndarray | None = None,
) -> float:
    """Mean NLL in nats/image of level-index images (N, C, H, W) under the generator."""
    nll = pixel_nll(generator, images, batch_size, labels, source)
    return float(nll.sum(axis=(1, 2, 3)).mean())


def hidden_region(config: Any, task: TaskInfo, arrays: dict) -> np.ndarray | None:
    """Where completion is scored (N, 1, H, W), True = hidden; None if not exact here.

    Under raster order the NLL of the hidden lower half given the visible upper half
    is exact for any generator: it is the sum of the lower half's per-pixel NLLs. A
    completion model conditioned on a source sees the visible part of any region.
    """
    images = arrays["images"]
    if config.source_channels:
        if task.task != "completion":
            return None
        return ~visible_mask(arrays["source"])
    if config.num_classes:
        return None
    hidden = np.zeros((len(images), 1, *images.shape[2:]), dtype=bool)
    hidden[:, :, images.shape[2] // 2 :] = True
    return hidden


def heat_map(per_pixel: np.ndarray, scale: int = 16) -> Image.Image:
    """A (H, W) map as a black-red-yellow-white picture, each pixel ``scale`` wide."""
    t = (per_pixel - per_pixel.min()) / max(float(np.ptp(per_pixel)), 1e-12)
    rgb = np.clip(np.stack([3 * t, 3 * t - 1, 3 * t - 2], axis=-1), 0, 1)  # (H, W, 3)
    pixels = np.rint(rgb * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
    return Image.fromarray(pixels, mode="RGB")


def conditioning_arrays(config: Any, arrays: dict, levels: int) -> dict[str, np.ndarray]:
    """The ``labels`` / ``source`` arrays a generator with ``config`` is conditioned on."""
    cond = {}
    if config.num_classes:
        cond["labels"] = arrays["labels"]
    if config.source_channels:
        cond["source"] = source_to_float(arrays["source"], levels)
    return cond


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, float]]  # nested by group, as DVC metrics
    samples: Image.Image
    nll_heat_map: Image.Image
    curve: list[dict[str, float]]
    run_id: str | None


def evaluate_checkpoint(
    checkpoint: str | Path, prepared_dir: str | Path, params: EvaluateParams
) -> Evaluation:
    """Score a checkpoint on the test split and draw a sample grid."""
    loaded = load_checkpoint(checkpoint)
    meta = read_meta(prepared_dir)
    data_shape = (meta["channels"], meta["height"], meta["width"])
    config = loaded.generator.config
    if config.levels != meta["levels"] or tuple(loaded.image_shape) != data_shape:
        raise RnnexpError(
            f"{checkpoint}: the model was trained for {config.levels} levels and images "
            f"{tuple(loaded.image_shape)}, but {prepared_dir} holds {meta['levels']} levels "
            f"and images {data_shape}; retrain (dvc repro) or point at the right data"
        )
    test_arrays = read_arrays(prepared_dir, "test", meta)
    test = test_arrays["images"]
    train, _ = read_split(prepared_dir, "train", meta)
    if len(test) == 0:
        raise RnnexpError(
            f"{Path(prepared_dir) / 'test.npz'}: the test split is empty; set "
            "data.test_fraction above 0 and rerun the prepare stage"
        )
    dims = math.prod(data_shape)
    cond = conditioning_arrays(config, test_arrays, meta["levels"])
    per_pixel = pixel_nll(loaded.generator, test, params.batch_size, **cond)  # (N, C, H, W)
    nll = float(per_pixel.sum(axis=(1, 2, 3)).mean())
    baseline = independent_pixel_nll(train, test, meta["levels"])
    task = TaskInfo.from_data_info(loaded.data)
    picture = sample_picture(
        loaded.generator, task, test_arrays, params.n_samples, params.seed, params.temperature
    )
    metrics: dict[str, dict[str, Any]] = {
        "test": {"nll_nats": nll, "bpd": bits_per_dim(nll, dims), "images": len(test)},
        "baseline": {"nll_nats": baseline, "bpd": bits_per_dim(baseline, dims)},
        "train": {"epochs": len(loaded.history), "checkpoint_epoch": loaded.epoch},
    }
    hidden = hidden_region(config, task, test_arrays)
    if hidden is not None:
        hidden_dims = hidden.sum(axis=(1, 2, 3)) * data_shape[0]  # sub-pixels per image
        hidden_nll = (per_pixel * hidden).sum(axis=(1, 2, 3))
        metrics["completion"] = {
            "hidden_nll_nats": float(hidden_nll.mean()),
            "hidden_bpd": float((hidden_nll / (hidden_dims * math.log(2))).mean()),
        }
    return Evaluation(
        metrics=metrics,
        samples=picture,
        nll_heat_map=heat_map(per_pixel.mean(axis=(0, 1))),
        curve=loaded.history,
        run_id=loaded.run_id,
    )
