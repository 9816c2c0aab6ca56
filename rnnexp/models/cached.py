"""Cached (incremental) evaluation of a PixelRNN for raster-order sampling.

Fast generation for convolutional autoregressive models (Ramachandran et al. 2017):
when pixel ``(i, j)`` is generated, only what that pixel can change is computed,
from states cached when the earlier pixels were generated. One sub-pixel costs
one column through the network at one position, not a full forward pass; what
does not depend on row ``i``'s pixels is computed once per row
(:mod:`rnnexp.models.cached_layers`).

What each part computes (``B`` images, ``F = 2h`` features, ``L`` levels):

- input conv (``k_in x k_in`` mask A, :class:`~rnnexp.models.cached_layers.RowConv`):
  per row, the rows above for the whole row; per pixel, the taps of row ``i`` left
  of and at ``(i, j)``, from a zero-padded copy of the scaled image.
- layers: see :mod:`rnnexp.models.cached_layers` (Row LSTM, Diagonal BiLSTM,
  PixelCNN block): per pixel one product over the row's taps, the LSTM update of
  one column and the output product, written straight into the next layer's input.
- output head (two 1x1 convolutions): at ``(i, j)`` only, and of the last one only
  the ``L`` rows of the channel being drawn.
- conditioning: :meth:`PixelRNN.cond_biases` once per batch, added per row.

RGB (section 3.4): channels are drawn R, G, B. Channel ``c``'s logits at ``(i, j)``
see channels ``< c`` of the pixel, so the pixel's column (all layers, this pixel
only) is recomputed after each drawn channel, overwriting the states at ``(i, j)``.
Channel ``C - 1`` of a pixel is seen by no layer at that pixel (mask A), so the
column computed for the last channel is already the pixel's final state.

The values equal a full forward pass on the partially generated image up to
floating-point rounding (sums are formed in another order); the tests check it
at every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

from rnnexp.models.cached_layers import (
    CACHED_LAYERS,
    OUT_RELU,
    RowConv,
    layer_caches,
    pointwise,
)
from rnnexp.models.generator import PixelRNN
from rnnexp.models.masked import MaskedConv2d
from rnnexp.models.pixelcnn import PixelCNNBlock

F_ = TypeVar("F_", bound=Callable)

#: The phases :class:`CachedSampler` times when given ``timings`` (see
#: :func:`rnnexp.models.sampling.sample_cached` for the two of drawing).
PHASES = ("input", "layers", "rows", "head")


def timed(timings: dict[str, float] | None, name: str, fn: F_, device: torch.device) -> F_:
    """``fn`` itself, or, given ``timings``, ``fn`` adding its wall time to ``timings[name]``.

    Instrumented mode for the benchmark's time split: a ``perf_counter`` pair per
    call (a CUDA device is synchronised around each call so the time is the work's).
    """
    if timings is None:
        return fn
    timings.setdefault(name, 0.0)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def wrapper(*args):
        if sync is not None:
            sync()
        start = time.perf_counter()
        result = fn(*args)
        if sync is not None:
            sync()
        timings[name] += time.perf_counter() - start
        return result

    return wrapper  # type: ignore[return-value]


class _InputConv:
    """The mask-A input convolution pixel by pixel, over the scaled image (``RowConv``)."""

    def __init__(self, model: PixelRNN, x: Tensor) -> None:
        n, channels, height, width = x.shape
        self.conv = RowConv(model.input_conv, None, n, height, width)
        self.channels, self.ph, self.pw = channels, self.conv.ph, self.conv.pw
        # Every level scaled as model.scale scales it: put() looks the value up.
        self.table = model.scale(torch.arange(model.config.levels, device=x.device))  # (L,)
        cache = self.conv.cache  # (B, H + ph, W + 2pw, C)
        cache[:, self.ph :, self.pw : self.pw + width] = model.scale(x).permute(0, 2, 3, 1)
        # [c][j]: (B,) scaled level of sub-pixel (c, i, j) of the current row
        self.slots = [self.conv.row[:, self.pw :, c].unbind(1) for c in range(channels)]

    def start_row(self, i: int) -> None:
        self.conv.start_row(i, load=True)  # known levels of row i, from x

    def put(self, i: int, j: int, c: int, value: Tensor, row: int) -> None:
        """Write the scaled ``value`` ``(B,)`` of sub-pixel ``(c, i, j)``; ``row``: current row."""
        if i == row:
            torch.index_select(self.table, 0, value, out=self.slots[c][j])
        else:
            self.conv.cache[:, i + self.ph, j + self.pw, c] = self.table[value]

    def end_row(self, i: int) -> None:
        self.conv.end_row(i)

    def at(self, j: int, out: Tensor) -> None:
        """The input conv at ``(i, j)`` into ``out`` ``(B, F)`` (the first layer's input)."""
        self.conv.at(j, out)


def _is_pointwise(module: nn.Module) -> bool:
    return isinstance(module, MaskedConv2d) and module.kernel_size == (1, 1)


def _relu_block(layer: nn.Module) -> bool:
    """A PixelCNN block's activations are the ReLUs the cached block computes."""
    if not isinstance(layer, PixelCNNBlock):
        return True
    return all(isinstance(a, nn.ReLU) for a in (layer.act_in, layer.act_mid, layer.act_out))


class CachedSampler:
    """Step-wise evaluation of a :class:`PixelRNN` over one batch, in sampling order.

    Holds the image being generated, ``x`` ``(B, C, H, W)`` (integer levels, on the
    model's device), and the cached states of every layer. :meth:`steps` yields, in
    raster order and then R, G, B, the logits of each sub-pixel as a full forward
    pass ``model(x, labels, source)[:, :, c, i, j]`` would give them on the image
    so far; before advancing the iterator the caller writes the sub-pixel with
    :meth:`put` (else it keeps the value it has in ``x``). Values of ``x`` after the
    current sub-pixel are never read where they would matter (causality), so ``x``
    may hold known levels there (image completion).

    Args:
        model: the generator. Its weights must not change while sampling. The
            cached computation has eval-mode semantics whatever ``model.training``
            says: it never applies the layers' dropout (there is no batch norm), so
            it matches ``model(x)`` in eval mode; :func:`~rnnexp.models.sampling.sample_cached`
            puts the model in eval mode while it draws.
        x: ``(B, C, H, W)`` integer levels: the initial image (zeros, or known levels).
            Written in place by :meth:`put`.
        labels, source: the conditioning inputs, as for ``model(x, labels, source)``.
        timings: optional dict; :meth:`steps` then adds the wall time of each of
            :data:`PHASES` to it (instrumented mode, a little slower).

    Example:
        >>> from rnnexp.models import GeneratorConfig, PixelRNN
        >>> model = PixelRNN(GeneratorConfig(levels=4, hidden=4, layers=1, head_hidden=4))
        >>> sampler = CachedSampler(model, torch.zeros(2, 1, 3, 3, dtype=torch.long))
        >>> with torch.no_grad():
        ...     for i, j, c, logits in sampler.steps():
        ...         sampler.put(i, j, c, logits.argmax(dim=1))
        >>> sampler.x.shape
        torch.Size([2, 1, 3, 3])
    """

    def __init__(
        self,
        model: PixelRNN,
        x: Tensor,
        labels: Tensor | None = None,
        source: Tensor | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        if not self.supports(model):
            raise TypeError(f"CachedSampler does not support {type(model).__name__}")
        if x.dim() != 4 or x.shape[1] != model.config.channels:
            raise ValueError(
                f"x must have shape (B, {model.config.channels}, H, W), got {tuple(x.shape)}"
            )
        n, channels, height, width = x.shape
        self.model, self.x, self.timings = model, x, timings
        self._row = -1  # the row steps() is in
        self._x_slots: list[Sequence[Tensor]] = []  # [c][j]: x[:, c, row, j]
        with torch.no_grad():
            biases = model.cond_biases(n, height, width, labels, source)
            self._input = _InputConv(model, x)
            conds = [None if b is None else b.detach() for b in biases]
            self._layers, self._passes = layer_caches(list(model.layers), conds, n, height, width)
            self._w1, self._b1 = pointwise(model.head[1])  # (F, head_hidden)
            w2, b2 = pointwise(model.head[3])  # (head_hidden, C*L), (C*L,)
        self._layers[-1].out_mm = OUT_RELU  # _top holds ReLU(top features): the head's input
        levels = model.config.levels
        # Only channel c's columns of the last 1x1 conv are needed for channel c's logits.
        self._w2 = [w2[:, c * levels : (c + 1) * levels] for c in range(channels)]
        self._b2 = [b2[c * levels : (c + 1) * levels] for c in range(channels)]
        self._top = self._w1.new_zeros(n, self._w1.shape[0])  # ReLU(last layer's output)
        self._hidden = self._w1.new_zeros(n, self._w1.shape[1])  # (B, head_hidden)
        # Where each layer writes its output at column j: the next layer's input slot.
        self._first = self._layers[0].slots
        self._outs = [nxt.slots for nxt in self._layers[1:]] + [[self._top] * width]

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether ``model`` is a :class:`PixelRNN` whose every part has a cached version."""
        if not isinstance(model, PixelRNN):
            return False
        head = model.head
        return (
            isinstance(head, nn.Sequential)
            and len(head) == 4
            and isinstance(head[0], nn.ReLU)
            and isinstance(head[2], nn.ReLU)
            and _is_pointwise(head[1])
            and _is_pointwise(head[3])
            and all(isinstance(layer, CACHED_LAYERS) for layer in model.layers)
            and all(_relu_block(layer) for layer in model.layers)
        )

    def put(self, i: int, j: int, c: int, value: Tensor) -> None:
        """Set sub-pixel ``(c, i, j)`` of every image to ``value`` ``(B,)`` (integer levels)."""
        if i == self._row:
            self._x_slots[c][j].copy_(value)
        else:
            self.x[:, c, i, j] = value
        self._input.put(i, j, c, value, self._row)

    def _start_row(self, i: int) -> None:
        self._row = i
        self._x_slots = [self.x[:, c, i].unbind(1) for c in range(self.x.shape[1])]
        self._input.start_row(i)
        for layer in self._layers:
            layer.start_row(i)

    def _end_row(self, i: int) -> None:
        self._input.end_row(i)
        for layer in self._layers:
            layer.end_row(i)
        for row_pass in self._passes:
            row_pass.end_row(i)

    def _input_at(self, j: int) -> None:
        self._input.at(j, self._first[j])

    def _layers_at(self, j: int) -> None:
        """Every layer at pixel ``(i, j)``; ReLU of the top features lands in ``_top``."""
        for layer, outs in zip(self._layers, self._outs, strict=True):
            layer.pixel(j, outs[j])

    def _logits(self, c: int) -> Tensor:
        """Head at one pixel: logits ``(B, L)`` of channel ``c`` (a new tensor).

        Its first ReLU is the last layer's (``OUT_RELU``).
        """
        torch._addmm_activation(self._b1, self._top, self._w1, out=self._hidden)  # ReLU
        return torch.addmm(self._b2[c], self._hidden, self._w2[c])

    @torch.no_grad()
    def steps(
        self, skip: Sequence[Sequence[Sequence[bool]]] | Tensor | None = None
    ) -> Iterator[tuple[int, int, int, Tensor]]:
        """Yield ``(i, j, c, logits)`` for each sub-pixel in sampling order.

        Args:
            skip: optional ``(C, H, W)`` bools (nested lists or a tensor): sub-pixels
                to pass over (known in every image); nothing is yielded for them and
                their value in ``x`` is used.

        Yields:
            ``i, j, c`` and the logits ``(B, L)`` of channel ``c`` at ``(i, j)``.

        On the CPU the walk sets torch to one thread (also for the caller's code
        between two steps) and restores the setting when it ends or is closed.
        """
        if isinstance(skip, Tensor):
            skip = skip.tolist()
        channels, height, width = self.x.shape[1:]
        device, t = self.x.device, self.timings
        rows = timed(t, "rows", self._rows, device)
        input_at = timed(t, "input", self._input_at, device)
        layers_at = timed(t, "layers", self._layers_at, device)
        logits = timed(t, "head", self._logits, device)
        # On the CPU, the whole walk on one thread. Per-pixel products are B rows long,
        # too small to share: a second thread only adds waiting. The per-row products
        # (B*W rows) were no faster on 2 threads on a quiet machine, and 4x slower
        # with the cores busy, where the second thread waits for a core at every row
        # (benchmarks/RESULTS.md, "the per-row products on one thread as well").
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)
        try:
            for i in range(height):
                rows(i - 1, i)
                for j in range(width):
                    for c in range(channels):
                        known = skip is not None and bool(skip[c][i][j])
                        if known and c < channels - 1:
                            continue
                        # The last channel's column is the pixel's final state: always computed.
                        input_at(j)
                        layers_at(j)
                        if not known:
                            yield i, j, c, logits(c)
            rows(height - 1, height)
        finally:
            self._row = -1
            torch.set_num_threads(threads)

    def _rows(self, done: int, start: int) -> None:
        """End row ``done`` and start row ``start`` (either may be outside the image)."""
        if done >= 0:
            self._end_row(done)
        if start < self.x.shape[2]:
            self._start_row(start)


__all__ = ["CACHED_LAYERS", "PHASES", "CachedSampler", "timed"]
