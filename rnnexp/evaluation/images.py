"""Turn level-index tensors into pictures."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray, levels: int) -> np.ndarray:
    """Level indices (N, C, H, W) in [0, levels-1] -> uint8 (N, H, W, C) in [0, 255]."""
    scaled = np.asarray(images, dtype=np.float64) * (255.0 / max(levels - 1, 1))
    return np.rint(scaled).astype(np.uint8).transpose(0, 2, 3, 1)


def make_grid(
    images: np.ndarray, levels: int, nrow: int | None = None, pad: int = 2
) -> Image.Image:
    """A grid picture of level-index images (N, C, H, W).

    Tiles are enlarged (nearest neighbour) to at least 32 pixels so that 8x8 digits
    stay visible in the MLflow UI.
    """
    pixels = to_uint8(images, levels)  # (N, H, W, C)
    n, h, w, c = pixels.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    scale = max(1, math.ceil(32 / max(h, w)))
    th, tw = h * scale + pad, w * scale + pad
    canvas = np.full((ncol * th + pad, nrow * tw + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        tile = pixels[k].repeat(scale, axis=0).repeat(scale, axis=1)
        canvas[pad + r * th : pad + r * th + h * scale, pad + q * tw : pad + q * tw + w * scale] = (
            tile
        )
    mode = "L" if c == 1 else "RGB"
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode=mode)


def image_bytes(image: Image.Image) -> bytes:
    """PNG bytes of a PIL image."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
