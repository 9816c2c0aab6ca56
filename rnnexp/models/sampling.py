"""Samplers for PixelRNN-style autoregressive models (raster order, then R, G, B).

``sample_naive`` runs one full forward pass per generated sub-pixel. It is the
reference the cached sampler must match, and it also does image completion:
pixels given in ``known`` where ``known_mask`` is True are kept, the rest sampled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnexp.models.generator import PixelRNN


def _check_known(
    known: Tensor | None, known_mask: Tensor | None, shape: tuple[int, ...], levels: int
) -> None:
    if (known is None) != (known_mask is None):
        raise ValueError("known and known_mask must be given together")
    if known is None or known_mask is None:
        return
    if tuple(known.shape) != shape or tuple(known_mask.shape) != shape:
        raise ValueError(
            f"known and known_mask must have shape {shape} (n, C, H, W), got "
            f"{tuple(known.shape)} and {tuple(known_mask.shape)}"
        )
    if known_mask.dtype != torch.bool:
        raise ValueError(f"known_mask must be a bool tensor, got dtype {known_mask.dtype}")
    if known.is_floating_point() or known.is_complex():
        raise ValueError(f"known must hold integer levels, got dtype {known.dtype}")
    given = known[known_mask]
    if given.numel() and (given.min() < 0 or given.max() >= levels):
        raise ValueError(f"known levels must lie in [0, {levels - 1}]")


@torch.no_grad()
def sample_naive(
    model: PixelRNN,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    device: torch.device | str | None = None,
    known: Tensor | None = None,
    known_mask: Tensor | None = None,
) -> Tensor:
    """Draw ``n`` images by running the whole model once per sub-pixel.

    Args:
        model: the generator; ``model(x)`` gives logits ``(B, L, C, H, W)``.
        n, height, width: number and size of images.
        generator: random source for ``torch.multinomial``; the draws happen on the
            generator's device, so a CPU generator gives the same images on any device.
        temperature: logits are divided by it before the softmax (> 0).
        device: where the model runs; defaults to the model's parameters' device.
        known, known_mask: optional ``(n, C, H, W)`` levels and bool mask; where the
            mask is True the level is kept fixed (image completion).

    Returns:
        LongTensor ``(n, C, H, W)`` of levels in ``[0, L-1]`` on ``device``.

    Example:
        >>> from rnnexp.models import GeneratorConfig, PixelRNN
        >>> model = PixelRNN(GeneratorConfig(levels=4, hidden=4, layers=1, head_hidden=4))
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_naive(model, 2, 3, 3, generator=g).shape
        torch.Size([2, 1, 3, 3])
    """
    temperature = float(temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if n < 1 or height < 1 or width < 1:
        raise ValueError(f"n, height and width must be >= 1, got {n}, {height}, {width}")
    channels, levels = model.config.channels, model.config.levels
    shape = (n, channels, height, width)
    _check_known(known, known_mask, shape, levels)
    if device is None:
        device = next(model.parameters()).device
    draw_device = generator.device if generator is not None else torch.device(device)

    x = torch.zeros(shape, dtype=torch.long, device=device)
    mask = None
    if known is not None and known_mask is not None:
        mask = known_mask.to(device)
        x = torch.where(mask, known.to(device=device, dtype=torch.long), x)

    was_training = model.training
    model.eval()
    try:
        for i in range(height):
            for j in range(width):
                for c in range(channels):
                    if mask is not None and bool(mask[:, c, i, j].all()):
                        continue
                    logits = model(x)[:, :, c, i, j]  # (n, L)
                    probs = torch.softmax(logits.double() / temperature, dim=1)
                    draw = torch.multinomial(probs.to(draw_device), 1, generator=generator)
                    draw = draw.squeeze(1).to(device)  # (n,)
                    if mask is not None:
                        draw = torch.where(mask[:, c, i, j], x[:, c, i, j], draw)
                    x[:, c, i, j] = draw
    finally:
        model.train(was_training)
    return x
