"""Samplers for PixelRNN-style autoregressive models (raster order, then R, G, B).

``sample_naive`` runs one full forward pass per generated sub-pixel. It is the
reference the cached sampler must match, and it also does image completion:
pixels given in ``known`` where ``known_mask`` is True are kept, the rest sampled.

``sample_cached`` draws the same images (the same random draws, in the same order,
from the same logits up to floating-point rounding) but computes, per sub-pixel,
only what the new sub-pixel changes (:class:`~rnnexp.models.cached.CachedSampler`,
after Ramachandran et al. 2017, *Fast Generation for Convolutional Autoregressive
Models*): one column through the network at one pixel, plus per-row work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rnnexp.models.cached import CachedSampler, timed
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


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


@dataclass
class _Setup:
    """What both samplers start from (checked arguments, initial image, conditioning)."""

    x: Tensor  # (n, C, H, W) long on device: zeros, known levels where given
    mask: Tensor | None  # (n, C, H, W) bool on device, or None
    skip: list[list[list[bool]]] | None  # (C, H, W): known in every image -> no draw
    cond: dict[str, Tensor]  # only the conditioning inputs that were given
    temperature: float
    draw_device: torch.device
    generator: torch.Generator | None
    row: int = -1  # the row whose uniform numbers are in `uniforms`
    uniforms: list[Tensor] = field(default_factory=list)  # (n, 1) each, next one last

    def uniform(self, i: int) -> Tensor:
        """The next uniform numbers ``(n, 1)`` in ``[0, 1)`` for a draw in row ``i``.

        Drawn once per row, for all of the row's draws (one call, and one copy to a
        GPU instead of one per sub-pixel), in the order the draws use them.
        """
        if self.row != i:
            n, channels, _, width = self.x.shape
            count = channels * width
            if self.skip is not None:
                count = sum(not k for c in range(channels) for k in self.skip[c][i])
            u = torch.rand(
                count,
                n,
                1,
                generator=self.generator,
                device=self.draw_device,
                dtype=torch.float64,
            )
            self.uniforms = list(u.to(self.x.device).unbind(0))[::-1]
            self.row = i
        return self.uniforms.pop()


def _setup(
    model: nn.Module,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    temperature: float,
    device: torch.device | str | None,
    known: Tensor | None,
    known_mask: Tensor | None,
    labels: Tensor | None,
    source: Tensor | None,
) -> _Setup:
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
    device = torch.device(device)
    draw_device = generator.device if generator is not None else device

    x = torch.zeros(shape, dtype=torch.long, device=device)
    mask = skip = None
    if known is not None and known_mask is not None:
        mask = known_mask.to(device)
        x = torch.where(mask, known.to(device=device, dtype=torch.long), x)
        skip = mask.all(dim=0).tolist()  # (C, H, W) nested lists: no device sync per step
    cond: dict[str, Tensor] = {}
    if labels is not None:
        cond["labels"] = labels.to(device)
    if source is not None:
        cond["source"] = source.to(device=device, dtype=_model_dtype(model))
    return _Setup(x, mask, skip, cond, temperature, draw_device, generator)


def _cdf(s: _Setup, logits: Tensor) -> Tensor:
    """Cumulative probabilities ``(n, L)``, float64, of ``logits`` ``(n, L)`` at the temperature.

    The softmax is in the logits' dtype (their own rounding is as large as its), the
    sums in float64: a level's probability is the difference of two of them.
    """
    z = logits if s.temperature == 1.0 else logits / s.temperature
    return torch.softmax(z, dim=1).cumsum(1, dtype=torch.float64)


def _choose(s: _Setup, cdf: Tensor, i: int, j: int, c: int) -> Tensor:
    """Draw sub-pixel ``(c, i, j)`` of every image from its :func:`_cdf`: ``(n,)`` levels.

    Inverse transform sampling: one uniform number ``u`` in ``[0, 1)`` per image
    (:meth:`_Setup.uniform`, from the generator on its device); the level ``l`` is the
    first with ``u < cdf[l]``, or the last where rounding leaves the total below
    ``u``. ``torch.multinomial`` draws ``L`` exponential numbers per image instead:
    0.2-0.5 ms a sub-pixel for 16 images of 256 levels, as long as the rest of a
    cached step. Known levels are kept.
    """
    draw = torch.searchsorted(cdf, s.uniform(i), right=True).view(-1)
    draw = draw.clamp_max_(cdf.shape[1] - 1)
    if s.mask is not None:
        draw = torch.where(s.mask[:, c, i, j], s.x[:, c, i, j], draw)
    return draw


def _draw(s: _Setup, logits: Tensor, i: int, j: int, c: int) -> Tensor:
    """Draw sub-pixel ``(c, i, j)`` of every image from ``logits`` ``(n, L)``: ``(n,)``.

    The one place both samplers draw (:func:`_cdf`, then :func:`_choose`): the same
    logits and generator state give the same levels.
    """
    return _choose(s, _cdf(s, logits), i, j, c)


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
    labels: Tensor | None = None,
    source: Tensor | None = None,
) -> Tensor:
    """Draw ``n`` images by running the whole model once per sub-pixel.

    Args:
        model: the generator; ``model(x, **cond)`` gives logits ``(B, L, C, H, W)``,
            where ``cond`` holds only the conditioning inputs that are given (so any
            module with ``config`` and ``forward(x)`` works unconditionally).
        n, height, width: number and size of images.
        generator: random source of the draws (one uniform number per image and
            sub-pixel, :func:`_choose`); they happen on the generator's device, so a
            CPU generator gives the same images on any device.
        temperature: logits are divided by it before the softmax (> 0).
        device: where the model runs; defaults to the model's parameters' device.
        known, known_mask: optional ``(n, C, H, W)`` levels and bool mask; where the
            mask is True the level is kept fixed (image completion). Sub-pixels known
            in every image are not drawn (no random numbers are used for them).
        labels: ``(n,)`` int64 class indices of a class-conditional model (one per
            image: must match ``n``).
        source: ``(n, source_channels, Hs, Ws)`` float source images in ``[-1, 1]`` of
            an image-to-image model (one per image: must match ``n``); cast to the
            model's dtype.

    Returns:
        LongTensor ``(n, C, H, W)`` of levels in ``[0, L-1]`` on ``device``.

    Example:
        >>> from rnnexp.models import GeneratorConfig, PixelRNN
        >>> model = PixelRNN(GeneratorConfig(levels=4, hidden=4, layers=1, head_hidden=4))
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_naive(model, 2, 3, 3, generator=g).shape
        torch.Size([2, 1, 3, 3])
    """
    s = _setup(
        model, n, height, width, generator, temperature, device, known, known_mask, labels, source
    )
    x, channels = s.x, model.config.channels
    was_training = model.training
    model.eval()
    try:
        for i in range(height):
            for j in range(width):
                for c in range(channels):
                    if s.skip is not None and s.skip[c][i][j]:
                        continue
                    logits = model(x, **s.cond)[:, :, c, i, j]  # (n, L)
                    x[:, c, i, j] = _draw(s, logits, i, j, c)
    finally:
        model.train(was_training)
    return x


@torch.no_grad()
def sample_cached(
    model: PixelRNN,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    device: torch.device | str | None = None,
    known: Tensor | None = None,
    known_mask: Tensor | None = None,
    labels: Tensor | None = None,
    source: Tensor | None = None,
    *,
    timings: dict[str, float] | None = None,
) -> Tensor:
    """Draw ``n`` images like :func:`sample_naive`, computing only what each pixel changes.

    Same arguments, checks and result as :func:`sample_naive`, and the same random
    draws in the same order (one per sub-pixel not known in every image), so for
    the same ``generator`` seed the images are identical (up to a floating-point
    near-tie between two levels, where the logits' rounding can differ).

    Per sub-pixel it evaluates the network at that pixel only, from cached layer
    states (:class:`~rnnexp.models.cached.CachedSampler`): every ``PixelRNN`` arch
    (Row LSTM, Diagonal BiLSTM, PixelCNN), grey or RGB, unconditional or
    conditional. A model that is not a ``PixelRNN`` made of these parts (e.g. a
    wrapper or a test stub with only ``forward(x)``) is sampled by
    :func:`sample_naive` instead.

    On the CPU the walk runs on one torch thread, whatever the setting
    (:meth:`~rnnexp.models.cached.CachedSampler.steps`; the setting is restored
    afterwards).

    Args:
        timings: optional dict (instrumented mode, a little slower): the wall time
            of each phase is added to it, in seconds: ``input``, ``layers``, ``rows``
            and ``head`` of :class:`~rnnexp.models.cached.CachedSampler`, ``softmax``
            (:func:`_cdf`) and ``sampling`` (:func:`_choose` and writing the level).

    Example:
        >>> from rnnexp.models import GeneratorConfig, PixelRNN
        >>> model = PixelRNN(GeneratorConfig(levels=4, hidden=4, layers=1, head_hidden=4))
        >>> a = sample_cached(model, 2, 3, 3, generator=torch.Generator().manual_seed(0))
        >>> b = sample_naive(model, 2, 3, 3, generator=torch.Generator().manual_seed(0))
        >>> torch.equal(a, b)
        True
    """
    args = (generator, temperature, device, known, known_mask, labels, source)
    if not CachedSampler.supports(model):
        return sample_naive(model, n, height, width, *args)
    s = _setup(model, n, height, width, *args)
    was_training = model.training
    model.eval()
    device = s.x.device
    cumulative = timed(timings, "softmax", _cdf, device)

    def draw(i: int, j: int, c: int, cdf: Tensor) -> None:
        sampler.put(i, j, c, _choose(s, cdf, i, j, c))

    choose = timed(timings, "sampling", draw, device)
    try:
        sampler = CachedSampler(model, s.x, **s.cond, timings=timings)
        for i, j, c, logits in sampler.steps(s.skip):
            choose(i, j, c, cumulative(s, logits))
    finally:
        model.train(was_training)
    return s.x
