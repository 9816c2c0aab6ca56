"""Generation from a trained generator: from noise, by class, or from a source image.

The one place that turns "what the user asked for" into sampler calls, shared by
the ``sample`` and ``complete`` commands, the evaluate stage and the per-epoch
sample grids. Sampling itself is :func:`rnnexp.models.sampling.sample_cached`
(identical images to the naive sampler, much faster).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rnnexp.data.tasks import build_source, source_to_float
from rnnexp.evaluation.images import make_grid
from rnnexp.models.generator import PixelRNN
from rnnexp.models.sampling import sample_cached


@dataclass(frozen=True)
class TaskInfo:
    """What a checkpoint's generator was trained to do (stored in the checkpoint)."""

    task: str = "unconditional"
    occlusion: str = "lower_half"
    noise_level: float = 0.2

    @classmethod
    def from_data_info(cls, data: dict) -> TaskInfo:
        return cls(
            task=data.get("task", "unconditional"),
            occlusion=data.get("occlusion", "lower_half"),
            noise_level=float(data.get("noise_level", 0.2)),
        )


def class_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels 0, 1, ..., K-1, 0, 1, ... for a grid with one column per class."""
    return torch.arange(n) % num_classes


def generate(
    generator: PixelRNN,
    n: int,
    height: int,
    width: int,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    source: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``n`` images (n, C, H, W) of level indices, reproducible by ``seed``."""
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    return sample_cached(
        generator,
        n,
        height,
        width,
        generator=rng,
        temperature=temperature,
        device=device,
        labels=labels,
        source=source,
        known=known,
        known_mask=known_mask,
    ).cpu()


def source_preview(source: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """A source (N, S, Hs, Ws) as displayable images (N, C, H, W): its image channels,
    enlarged to the target size (nearest) when smaller (upscale)."""
    images = torch.from_numpy(source[:, :channels].astype(np.float32))
    if images.shape[-2:] != (height, width):
        images = F.interpolate(images, size=(height, width), mode="nearest")
    return images.round().to(torch.uint8).numpy()


def triplet_grid(
    sources: np.ndarray, outputs: np.ndarray, targets: np.ndarray | None, levels: int
) -> Image.Image:
    """Rows of source | output | target (target omitted when unknown)."""
    columns = [sources, outputs] + ([targets] if targets is not None else [])
    # Interleave so that each row of the grid is one example.
    stacked = np.stack(columns, axis=1).reshape(-1, *outputs.shape[1:])
    return make_grid(stacked, levels, nrow=len(columns))


def translate(
    generator: PixelRNN,
    targets: np.ndarray | None,
    task: TaskInfo,
    *,
    sources: np.ndarray | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Outputs for image-to-image work; returns (sources, outputs) as uint8 levels.

    Either ``targets`` (N, C, H, W) are given and their sources are built as the
    prepare stage builds them (occluded, noisy or downsampled, seeded by ``seed``),
    or ``sources`` are given directly. A completion model keeps the visible pixels
    of each source fixed and samples the hidden ones. An unconditional generator
    completes the visible part of each target instead (its visible pixels are kept
    fixed too); a class-conditional one completes it as the class of ``labels`` (N,).
    """
    config = generator.config
    levels, channels = config.levels, config.channels
    if sources is None:
        if targets is None:
            raise ValueError("give targets or sources")
        kind = task.task if config.source_channels else "completion"
        rng = np.random.default_rng([seed, 1])
        sources = build_source(kind, targets, levels, rng, task.occlusion, task.noise_level)
    n = len(sources)
    if config.source_channels:
        source = torch.from_numpy(source_to_float(sources, levels))
        height, width = _target_size(task.task, sources.shape[-2:])
        fixed = {}
        if task.task == "completion":  # the visible pixels are given: sample the hidden only
            visible = torch.from_numpy(sources[:, -1:] > 0).expand(-1, channels, -1, -1)
            fixed["known"] = torch.from_numpy(sources[:, :channels].astype(np.int64))
            fixed["known_mask"] = visible.contiguous()
        out = generate(
            generator,
            n,
            height,
            width,
            seed=seed,
            temperature=temperature,
            source=source,
            **fixed,
        )
    else:  # completion with an unconditional model: sample only the hidden pixels
        visible = torch.from_numpy(sources[:, -1:] > 0).expand(-1, channels, -1, -1)
        known = torch.from_numpy(sources[:, :channels].astype(np.int64))
        height, width = sources.shape[-2:]
        out = generate(
            generator,
            n,
            height,
            width,
            seed=seed,
            temperature=temperature,
            labels=None if labels is None else torch.as_tensor(labels, dtype=torch.long),
            known=known,
            known_mask=visible.contiguous(),
        )
    return sources, out.numpy().astype(np.uint8)


def _target_size(task: str, source_size: tuple[int, int]) -> tuple[int, int]:
    h, w = source_size
    return (2 * h, 2 * w) if task == "upscale" else (h, w)


def sample_picture(
    generator: PixelRNN, task: TaskInfo, arrays: dict, n: int, seed: int, temperature: float
) -> Image.Image:
    """The picture a person wants to see of a generator, ``n`` examples.

    Unconditional: a grid of samples. Class-conditional: one column per class.
    Image-to-image: rows of source | output | target for the first ``n`` images of
    ``arrays`` (a split's arrays, with ``images`` and ``source``).
    """
    config = generator.config
    c, h, w = arrays["images"].shape[1:]
    if config.source_channels:
        sources = arrays["source"][:n]
        _, outputs = translate(
            generator, None, task, sources=sources, seed=seed, temperature=temperature
        )
        preview = source_preview(sources, c, h, w)
        return triplet_grid(preview, outputs, arrays["images"][:n], config.levels)
    labels = class_labels(n, config.num_classes) if config.num_classes else None
    images = generate(generator, n, h, w, seed=seed, temperature=temperature, labels=labels)
    nrow = config.num_classes or None
    return make_grid(images.numpy(), config.levels, nrow=nrow)
