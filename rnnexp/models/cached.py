"""Cached (incremental) evaluation of a PixelRNN for raster-order sampling.

Fast generation for convolutional autoregressive models (Ramachandran et al. 2017):
when pixel ``(i, j)`` is generated, only what that pixel can change is computed,
from states cached when the earlier pixels were generated. One sub-pixel costs
one column through the network at one position, not a full forward pass.

What each part computes and keeps (``B`` images, ``F = 2h`` features, ``k`` kernel):

- input conv (``k_in x k_in`` mask A): at ``(i, j)`` only, from a zero-padded copy
  of the scaled image; the window holds rows ``i - k_in//2 .. i`` (the mask zeroes
  the rest of the kernel).
- Row LSTM (section 3.1): once per row, the state-to-state term ``s2s(h_{i-1})``
  of the previous row's hidden state (plus the biases and the conditioning bias of
  the row). Per pixel, the ``1 x k`` mask-B input-to-state window over the layer
  input at columns ``j - k//2 .. j`` (the current pixel and its left neighbours,
  kept in a one-row buffer) and the LSTM update of column ``j`` only, with the cell
  state of column ``j`` of the previous row.
- Diagonal BiLSTM (section 3.2): the left-to-right LSTM advances one cell per
  pixel, from its state at ``(i, j - 1)`` (hidden and cell, this row) and
  ``(i - 1, j)`` (hidden, previous row). The right-to-left LSTM enters shifted down
  one row, so when row ``i`` is complete (every layer's input of row ``i`` is then
  final) it is run along row ``i``, right to left, once per layer, from the row's
  layer input and its own state of row ``i - 1``; pixel ``(i + 1, j)`` adds its
  column ``j``.
- PixelCNN block (section 3.3): per pixel, the 1x1 reduction at ``(i, j)`` into a
  zero-padded cache of the block's inner activations, then the ``k x k`` mask-B
  convolution at ``(i, j)`` only (its window covers rows above and the left part
  of row ``i``: all computed) and the 1x1 expansion.
- output head (1x1 convolutions): at ``(i, j)`` only, and of the last convolution
  only the rows of the channel being drawn.
- conditioning: :meth:`PixelRNN.cond_biases` once per batch, indexed per row.

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

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from rnnexp.models.diagonal import DiagonalBiLSTM
from rnnexp.models.generator import PixelRNN
from rnnexp.models.masked import MaskedConv2d
from rnnexp.models.pixelcnn import PixelCNNBlock
from rnnexp.models.row_lstm import RowLSTM, lstm_update

CACHED_LAYERS = (RowLSTM, DiagonalBiLSTM, PixelCNNBlock)


def _masked(conv: MaskedConv2d) -> Tensor:
    """The effective (masked) kernel ``(out, in, kh, kw)``, detached."""
    return (conv.weight * conv.mask).detach()


def _bias(conv: nn.Module, out: int, like: Tensor) -> Tensor:
    bias = getattr(conv, "bias", None)
    return like.new_zeros(out) if bias is None else bias.detach()


def _pointwise(conv: MaskedConv2d) -> tuple[Tensor, Tensor]:
    """A 1x1 masked conv as ``(weight.T (in, out), bias (out,))`` for ``addmm``."""
    w = _masked(conv)[:, :, 0, 0]  # (out, in)
    return w.t(), _bias(conv, w.shape[0], w)


def _cond_row(cond: Tensor | None, i: int, width: int) -> Tensor | None:
    """Row ``i`` of a bias broadcastable to ``(B, w, H, W)``, as ``(W, B, w)`` (a view)."""
    if cond is None:
        return None
    row = cond[:, :, i if cond.shape[2] > 1 else 0]  # (B, w, 1 or W)
    return row.expand(-1, -1, width).permute(2, 0, 1)  # (W, B, w)


def _row_bias(base: Tensor, cond: Tensor | None, i: int, n: int, width: int) -> Tensor:
    """``base`` ``(w,)`` or ``(W, B, w)`` plus row ``i`` of ``cond``: contiguous ``(W, B, w)``."""
    row = base.expand(width, n, base.shape[-1])
    c = _cond_row(cond, i, width)
    return (row if c is None else row + c).contiguous()


class _InputConv:
    """The mask-A input convolution at one pixel, over a zero-padded scaled image."""

    def __init__(self, model: PixelRNN, x: Tensor) -> None:
        conv = model.input_conv
        kh, kw = conv.kernel_size
        self.ph, self.pw = kh // 2, kw // 2
        w = _masked(conv)[:, :, : self.ph + 1]  # (F, C, ph+1, kw): rows below are masked
        self.w = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).t()  # ((ph+1)*kw*C, F)
        self.b = _bias(conv, w.shape[0], w)
        self.scale = model.scale
        b, c, h, width = x.shape
        # (B, H + ph, W + 2 pw, C): zero padding above, left and right (as conv2d's).
        self.xs = x.new_zeros(b, h + self.ph, width + 2 * self.pw, c, dtype=w.dtype)
        self.xs[:, self.ph :, self.pw : self.pw + width] = self.scale(x).permute(0, 2, 3, 1)

    def put(self, i: int, j: int, c: int, value: Tensor) -> None:
        self.xs[:, i + self.ph, j + self.pw, c] = self.scale(value)

    def pixel(self, i: int, j: int) -> Tensor:
        window = self.xs[:, i : i + self.ph + 1, j : j + 2 * self.pw + 1]  # (B, ph+1, kw, C)
        return torch.addmm(self.b, window.reshape(window.shape[0], -1), self.w)  # (B, F)


class _RowLSTMCache:
    """Row LSTM layer at one pixel; per-row state-to-state term (section 3.1)."""

    def __init__(self, layer: RowLSTM, cond: Tensor | None, n: int, height: int, width: int):
        self.layer, self.cond, self.n, self.width = layer, cond, n, width
        kw = layer.i2s.kernel_size[1]
        self.p = kw // 2
        w = _masked(layer.i2s)[:, :, 0, : self.p + 1]  # (4h, F, p+1): columns j-p .. j
        self.w_i2s = w.permute(0, 2, 1).reshape(w.shape[0], -1).t()  # ((p+1)*F, 4h)
        self.b_i2s = _bias(layer.i2s, w.shape[0], w)
        self.w_out, self.b_out = _pointwise(layer.out)
        hidden, features = layer.hidden, w.shape[1]
        self.zrow = w.new_zeros(n, width + self.p, features)  # layer input, left zero padding
        self.h_prev = w.new_zeros(width, n, hidden)  # (W, B, h) previous row
        self.c_prev = w.new_zeros(width, n, hidden)
        self.h_cur = torch.empty_like(self.h_prev)
        self.c_cur = torch.empty_like(self.c_prev)
        self.gate_bias = w.new_zeros(width, n, w.shape[0])

    def start_row(self, i: int) -> None:
        s2s = self.layer.s2s(self.h_prev.permute(1, 2, 0))  # (B, 4h, W) from row i-1
        base = s2s.permute(2, 0, 1) + self.b_i2s  # (W, B, 4h)
        self.gate_bias = _row_bias(base, self.cond, i, self.n, self.width)

    def pixel(self, i: int, j: int, z: Tensor) -> Tensor:
        p = self.p
        self.zrow[:, j + p] = z
        window = self.zrow[:, j : j + p + 1].reshape(self.n, -1)  # (B, (p+1)*F), a view
        gates = torch.addmm(self.gate_bias[j], window, self.w_i2s)  # (B, 4h)
        h, c = lstm_update(gates, self.c_prev[j])  # (B, h) each
        self.h_cur[j], self.c_cur[j] = h, c
        return z + torch.addmm(self.b_out, h, self.w_out)  # (B, F) residual

    def end_row(self, i: int) -> None:
        self.h_prev, self.h_cur = self.h_cur, self.h_prev
        self.c_prev, self.c_cur = self.c_cur, self.c_prev


class _DiagonalCache:
    """Diagonal BiLSTM at one pixel (left to right); right to left once per row (3.2)."""

    def __init__(
        self, layer: DiagonalBiLSTM, cond: Tensor | None, n: int, height: int, width: int
    ) -> None:
        self.layer, self.n, self.height, self.width = layer, n, height, width
        self.cond_l2r, self.cond_r2l = layer.split_cond(cond)
        l2r, r2l = layer.l2r, layer.r2l
        w_i2s = _masked(l2r.i2s)[:, :, 0, 0]  # (4h, F)
        w_s2s = l2r.s2s.weight.detach()  # (4h, h, 2): [..., 0] from above, [..., 1] from the side
        # One matmul per pixel: [z | h(i-1, j) | h(i, j-1)] -> gates.
        self.w_l2r = torch.cat([w_i2s, w_s2s[:, :, 0], w_s2s[:, :, 1]], dim=1).t()
        self.b_l2r = _bias(l2r.i2s, w_i2s.shape[0], w_i2s) + _bias(l2r.s2s, w_i2s.shape[0], w_i2s)
        w_i2s_r = _masked(r2l.i2s)[:, :, 0, 0]
        w_s2s_r = r2l.s2s.weight.detach()
        self.w_i2s_r = w_i2s_r.t()  # (F, 4h)
        self.w_s2s_r = torch.cat([w_s2s_r[:, :, 0], w_s2s_r[:, :, 1]], dim=1).t()  # (2h, 4h)
        self.b_i2s_r = _bias(r2l.i2s, w_i2s_r.shape[0], w_i2s_r)
        self.b_s2s_r = _bias(r2l.s2s, w_i2s_r.shape[0], w_i2s_r)
        self.w_out, self.b_out = _pointwise(layer.out)
        hidden, features = layer.hidden, w_i2s.shape[1]
        self.zrow = w_i2s.new_zeros(width, n, features)  # this row's layer input
        self.h_up = w_i2s.new_zeros(width, n, hidden)  # left-to-right h of row i-1
        # This row's left-to-right state; index j+1 holds (i, j), index 0 the zero state.
        self.h_row = w_i2s.new_zeros(width + 1, n, hidden)
        self.c_row = w_i2s.new_zeros(width + 1, n, hidden)
        self.r2l_prev = w_i2s.new_zeros(width, n, hidden)  # right-to-left h of row i-1
        self.gate_bias = w_i2s.new_zeros(width, n, w_i2s.shape[0])

    def start_row(self, i: int) -> None:
        self.gate_bias = _row_bias(self.b_l2r, self.cond_l2r, i, self.n, self.width)

    def pixel(self, i: int, j: int, z: Tensor) -> Tensor:
        self.zrow[j] = z
        inp = torch.cat([z, self.h_up[j], self.h_row[j]], dim=1)  # (B, F + 2h)
        gates = torch.addmm(self.gate_bias[j], inp, self.w_l2r)  # (B, 4h)
        h, c = lstm_update(gates, self.c_row[j])  # cell state from (i, j - 1)
        self.h_row[j + 1], self.c_row[j + 1] = h, c
        h = h + self.r2l_prev[j]  # combine: right-to-left shifted down one row
        return z + torch.addmm(self.b_out, h, self.w_out)  # (B, F) residual

    def end_row(self, i: int) -> None:
        self.h_up = self.h_row[1:].clone()
        if i + 1 >= self.height:
            return  # the last row's right-to-left pass reaches no pixel
        # Right to left along the completed row i, from its layer input (final now).
        gates_in = torch.matmul(self.zrow, self.w_i2s_r) + self.b_i2s_r  # (W, B, 4h)
        cond = _cond_row(self.cond_r2l, i, self.width)
        if cond is not None:
            gates_in = gates_in + cond
        out = torch.empty_like(self.r2l_prev)
        h = c = self.r2l_prev.new_zeros(self.n, self.layer.hidden)  # state right of the row
        for j in range(self.width - 1, -1, -1):
            s2s = torch.addmm(self.b_s2s_r, torch.cat([self.r2l_prev[j], h], dim=1), self.w_s2s_r)
            h, c = lstm_update(gates_in[j] + s2s, c)
            out[j] = h
        self.r2l_prev = out


class _PixelCNNCache:
    """PixelCNN block at one pixel, from cached inner activations (section 3.3)."""

    def __init__(
        self, block: PixelCNNBlock, cond: Tensor | None, n: int, height: int, width: int
    ) -> None:
        self.block, self.cond, self.n, self.width = block, cond, n, width
        kh, kw = block.conv.kernel_size
        self.ph, self.pw = kh // 2, kw // 2
        w = _masked(block.conv)[:, :, : self.ph + 1]  # (h, h, ph+1, kw): rows below masked
        self.w_conv = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).t()  # ((ph+1)*kw*h, h)
        self.b_conv = _bias(block.conv, w.shape[0], w)
        self.w_reduce, self.b_reduce = _pointwise(block.reduce)
        self.w_expand, self.b_expand = _pointwise(block.expand)
        # (B, H + ph, W + 2 pw, h): inner activations with the conv's zero padding.
        self.a = w.new_zeros(n, height + self.ph, width + 2 * self.pw, w.shape[1])
        self.row_bias = w.new_zeros(width, n, w.shape[0])

    def start_row(self, i: int) -> None:
        self.row_bias = _row_bias(self.b_conv, self.cond, i, self.n, self.width)

    def pixel(self, i: int, j: int, z: Tensor) -> Tensor:
        blk = self.block
        a = blk.act_mid(torch.addmm(self.b_reduce, blk.act_in(z), self.w_reduce))  # (B, h)
        self.a[:, i + self.ph, j + self.pw] = a
        window = self.a[:, i : i + self.ph + 1, j : j + 2 * self.pw + 1]  # (B, ph+1, kw, h)
        inner = torch.addmm(self.row_bias[j], window.reshape(self.n, -1), self.w_conv)
        return z + torch.addmm(self.b_expand, blk.act_out(inner), self.w_expand)  # (B, F)

    def end_row(self, i: int) -> None:
        pass


_Cache = _RowLSTMCache | _DiagonalCache | _PixelCNNCache


def _layer_cache(layer: nn.Module, cond: Tensor | None, n: int, height: int, width: int) -> _Cache:
    if isinstance(layer, RowLSTM):
        return _RowLSTMCache(layer, cond, n, height, width)
    if isinstance(layer, DiagonalBiLSTM):
        return _DiagonalCache(layer, cond, n, height, width)
    if isinstance(layer, PixelCNNBlock):
        return _PixelCNNCache(layer, cond, n, height, width)
    raise TypeError(f"no cached implementation of layer type {type(layer).__name__}")


def _is_pointwise(module: nn.Module) -> bool:
    return isinstance(module, MaskedConv2d) and module.kernel_size == (1, 1)


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
    ) -> None:
        if not self.supports(model):
            raise TypeError(f"CachedSampler does not support {type(model).__name__}")
        if x.dim() != 4 or x.shape[1] != model.config.channels:
            raise ValueError(
                f"x must have shape (B, {model.config.channels}, H, W), got {tuple(x.shape)}"
            )
        n, _, height, width = x.shape
        self.model = model
        self.x = x
        self.levels = model.config.levels
        with torch.no_grad():
            biases = model.cond_biases(n, height, width, labels, source)
            self._input = _InputConv(model, x)
            self._layers = [
                _layer_cache(layer, None if b is None else b.detach(), n, height, width)
                for layer, b in zip(model.layers, biases, strict=True)
            ]
        self._act1, self._act2 = model.head[0], model.head[2]
        self._w1, self._b1 = _pointwise(model.head[1])
        w2, b2 = _pointwise(model.head[3])  # (head_hidden, C*L), (C*L,)
        levels = self.levels
        # Only channel c's rows of the last 1x1 conv are needed for channel c's logits.
        self._w2 = [w2[:, c * levels : (c + 1) * levels] for c in range(model.config.channels)]
        self._b2 = [b2[c * levels : (c + 1) * levels] for c in range(model.config.channels)]

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether ``model`` is a :class:`PixelRNN` whose every part has a cached version."""
        if not isinstance(model, PixelRNN):
            return False
        head = model.head
        return (
            isinstance(head, nn.Sequential)
            and len(head) == 4
            and _is_pointwise(head[1])
            and _is_pointwise(head[3])
            and all(isinstance(layer, CACHED_LAYERS) for layer in model.layers)
        )

    def put(self, i: int, j: int, c: int, value: Tensor) -> None:
        """Set sub-pixel ``(c, i, j)`` of every image to ``value`` ``(B,)`` (integer levels)."""
        self.x[:, c, i, j] = value
        self._input.put(i, j, c, value)

    def _column(self, i: int, j: int) -> Tensor:
        """Every layer at pixel ``(i, j)`` from the image so far: top features ``(B, F)``."""
        z = self._input.pixel(i, j)
        for layer in self._layers:
            z = layer.pixel(i, j, z)
        return z

    def _logits(self, z: Tensor, c: int) -> Tensor:
        """Head at one pixel: logits ``(B, L)`` of channel ``c``."""
        hidden = self._act2(torch.addmm(self._b1, self._act1(z), self._w1))
        return torch.addmm(self._b2[c], hidden, self._w2[c])

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
        """
        if isinstance(skip, Tensor):
            skip = skip.tolist()
        channels, height, width = self.x.shape[1:]
        for i in range(height):
            for layer in self._layers:
                layer.start_row(i)
            for j in range(width):
                for c in range(channels):
                    known = skip is not None and bool(skip[c][i][j])
                    if known and c < channels - 1:
                        continue
                    # The last channel's column is the pixel's final state: always computed.
                    z = self._column(i, j)
                    if not known:
                        yield i, j, c, self._logits(z, c)
            for layer in self._layers:
                layer.end_row(i)


__all__ = ["CACHED_LAYERS", "CachedSampler"]
