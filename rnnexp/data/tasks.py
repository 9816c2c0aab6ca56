"""Conditioning inputs of each task, built by the prepare stage.

``data.task`` says what the generator is asked to do:

- ``unconditional``: images from noise; no conditioning input.
- ``class``: images of a requested class; the labels are the conditioning input.
- ``completion``: the source is the target with a region occluded (the lower half,
  or a random box) plus a visibility channel; the model fills in the rest.
- ``denoise``: the source is the target with Gaussian noise added
  (``data.noise_level`` times the full range) and re-quantized.
- ``upscale``: the source is the target downsampled by 2 (2x2 mean).

Sources are uint8 level indices, like images, so they are stored and hashed the
same way; :func:`source_to_float` maps them to [-1, 1] for the model's encoder.
"""

from __future__ import annotations

import numpy as np

from rnnexp.config import OCCLUSIONS, TASKS
from rnnexp.errors import DataError

IMAGE_TASKS = ("completion", "denoise", "upscale")


def occlusion_mask(n: int, height: int, width: int, kind: str, rng: np.random.Generator):
    """Visibility mask (N, 1, H, W), True where the pixel stays visible."""
    visible = np.ones((n, 1, height, width), dtype=bool)
    if kind == "lower_half":
        visible[:, :, height // 2 :, :] = False
    elif kind == "random_box":
        # Boxes of a quarter to a half of each side, anywhere in the image.
        bh = rng.integers(max(1, height // 4), max(2, height // 2) + 1, size=n)
        bw = rng.integers(max(1, width // 4), max(2, width // 2) + 1, size=n)
        top = rng.integers(0, height - bh + 1)
        left = rng.integers(0, width - bw + 1)
        for k in range(n):
            visible[k, :, top[k] : top[k] + bh[k], left[k] : left[k] + bw[k]] = False
    else:
        raise ValueError(f"occlusion must be one of {OCCLUSIONS}, got {kind!r}")
    return visible


def build_source(
    task: str,
    images: np.ndarray,
    levels: int,
    rng: np.random.Generator,
    occlusion: str = "lower_half",
    noise_level: float = 0.2,
) -> np.ndarray | None:
    """The conditioning image of each target for ``task``; None when there is none.

    Args:
        images: uint8 level indices (N, C, H, W).

    Returns:
        uint8 level indices (N, S, Hs, Ws): completion (N, C+1, H, W) with the
        visibility channel last (0 or levels-1); denoise (N, C, H, W); upscale
        (N, C, H/2, W/2).
    """
    n, c, h, w = images.shape
    top = levels - 1
    if task in ("unconditional", "class"):
        return None
    if task == "completion":
        visible = occlusion_mask(n, h, w, occlusion, rng)  # (N, 1, H, W)
        hidden_zeroed = np.where(visible, images, 0)
        flag = visible.astype(np.uint8) * top
        return np.concatenate([hidden_zeroed, flag], axis=1).astype(np.uint8)
    if task == "denoise":
        noise = rng.normal(0.0, noise_level * top, size=images.shape)
        return np.clip(np.rint(images + noise), 0, top).astype(np.uint8)
    if task == "upscale":
        if h % 2 or w % 2:
            raise DataError(f"task 'upscale' needs even image sides, the images are {h}x{w}")
        blocks = images.reshape(n, c, h // 2, 2, w // 2, 2).astype(np.float64)
        return np.rint(blocks.mean(axis=(3, 5))).astype(np.uint8)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def source_channels(task: str, channels: int) -> int:
    """Channels of the source image of ``task`` for images with ``channels`` channels."""
    return {"completion": channels + 1, "denoise": channels, "upscale": channels}.get(task, 0)


def source_to_float(source: np.ndarray, levels: int) -> np.ndarray:
    """uint8 levels -> float32 in [-1, 1], the model's input range."""
    return (source.astype(np.float32) / (levels - 1)) * 2.0 - 1.0


def visible_mask(source: np.ndarray) -> np.ndarray:
    """The visibility mask (N, 1, H, W) of completion sources: True = visible."""
    return source[:, -1:] > 0
