"""Likelihood of a generator on images, beside the independent-pixel baseline, and
the pictures of what it generates or completes (used by the evaluate stage)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rnnexp.config import EvaluateParams
from rnnexp.data.tasks import source_to_float, visible_mask
from rnnexp.evaluation.generation import (
    TaskInfo,
    class_labels,
    generate,
    source_preview,
    translate,
    triplet_grid,
)
from rnnexp.evaluation.scores import (
    pixel_histograms,
)
from rnnexp.models.generator import PixelRNN


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """bits/dim = nats / (pixels x channels x ln 2)."""
    return nats_per_image / (dims * math.log(2))


def independent_pixel_nll(train: np.ndarray, test: np.ndarray, levels: int) -> float:
    """Mean test NLL (nats/image) of a per-pixel, per-channel categorical fit on ``train``.

    Each (channel, row, column) gets its own histogram of levels over the training
    images (:func:`rnnexp.evaluation.scores.pixel_histograms`, add-one smoothed so unseen levels
    keep finite NLL).
    """
    log_probs = pixel_histograms(train, levels)  # (dims, levels)
    dims = len(log_probs)
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
    device = next(generator.parameters()).device  # the batches go where the model is
    parts = []
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        x = torch.from_numpy(images[part].astype(np.int64)).to(device)
        cond = {}
        if labels is not None:
            cond["labels"] = torch.from_numpy(labels[part].astype(np.int64)).to(device)
        if source is not None:
            cond["source"] = torch.from_numpy(source[part]).to(device)
        logits = generator(x, **cond)  # (B, L, C, H, W)
        parts.append(F.cross_entropy(logits, x, reduction="none").double().cpu().numpy())
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


def _in_chunks(n: int, size: int, make: Callable[[slice, int], np.ndarray]) -> np.ndarray:
    """``make(part, chunk_index)`` over ``range(n)`` in chunks of ``size``, concatenated."""
    return np.concatenate(
        [make(slice(s, min(s + size, n)), i) for i, s in enumerate(range(0, n, size))]
    )


def model_outputs(
    generator: PixelRNN, task: TaskInfo, arrays: dict, params: EvaluateParams
) -> tuple[np.ndarray, np.ndarray | None]:
    """What the generator makes, for scoring: (images (N, C, H, W) uint8, wanted labels).

    From noise: ``params.score_samples`` samples (one class after the other for a
    class-conditional model; the labels are the classes asked for). Image-to-image:
    the outputs for the first ``score_samples`` sources of ``arrays`` (a split); the
    labels are the sources' labels where the data has labels. Sampled with the
    cached sampler in chunks of ``params.batch_size``, reproducibly by ``params.seed``.
    """
    config = generator.config
    size, seed, temperature = params.batch_size, params.seed, params.temperature
    if config.source_channels:
        n = min(params.score_samples, len(arrays["source"]))
        sources = arrays["source"][:n]

        def make(part: slice, i: int) -> np.ndarray:
            return translate(
                generator, None, task, sources=sources[part], seed=seed + i, temperature=temperature
            )[1]

        return _in_chunks(n, size, make), arrays.get("labels", [None] * n)[:n]
    n = params.score_samples
    _, h, w = arrays["images"].shape[1:]
    labels = class_labels(n, config.num_classes) if config.num_classes else None

    def sample(part: slice, i: int) -> np.ndarray:
        wanted = labels[part] if labels is not None else None
        images = generate(
            generator,
            part.stop - part.start,
            h,
            w,
            seed=seed + i,
            temperature=temperature,
            labels=wanted,
        )
        return images.numpy().astype(np.uint8)

    return _in_chunks(n, size, sample), None if labels is None else labels.numpy()


def completions(
    generator: PixelRNN, task: TaskInfo, arrays: dict, n: int, seed: int, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of ``arrays`` as the generator completes or translates them.

    A generator from noise draws the lower halves (upper halves kept; a
    class-conditional one as the image's class); an image-to-image generator
    translates the sources. Returns (sources (n, S, Hs, Ws), outputs (n, C, H, W)).
    """
    if generator.config.source_channels:
        sources = arrays["source"][:n]
        return translate(generator, None, task, sources=sources, seed=seed, temperature=temperature)
    labels = arrays["labels"][:n] if generator.config.num_classes else None
    return translate(
        generator,
        arrays["images"][:n],
        TaskInfo("completion", "lower_half", task.noise_level),
        seed=seed,
        temperature=temperature,
        labels=labels,
    )


def completion_picture(
    generator: PixelRNN, task: TaskInfo, arrays: dict, n: int, seed: int, temperature: float
) -> Image.Image:
    """Rows of source | output | target for the first ``n`` images of ``arrays``."""
    sources, outputs = completions(generator, task, arrays, n, seed, temperature)
    targets = arrays["images"][: len(outputs)]
    preview = source_preview(sources, *targets.shape[1:])
    return triplet_grid(preview, outputs, targets, generator.config.levels)
