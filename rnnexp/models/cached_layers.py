"""Per-pixel evaluation of the generator's layers for :mod:`rnnexp.models.cached`.

Each cache evaluates one layer at pixel ``(i, j)`` of the row that
:meth:`start_row` began, from states kept since the earlier pixels, and writes the
layer's output ``(B, F)`` straight into the next layer's input slot (``out=``).
What does not depend on row ``i``'s pixels (the terms of the rows above, the
biases, the conditioning bias of the row) is one matrix product per row; per pixel
there remain one product over the current row's taps, the element-wise LSTM
update and the output product. Every buffer and every per-column view of it is
allocated once: a pixel costs a dozen tensor calls per layer, no allocation.

Notation: ``B`` images, ``F = 2h`` features, ``h`` hidden, ``W`` the image width.
Weights are read detached (masked where the layer masks them) when the cache is
built; the arithmetic of each step is that of the layer's forward pass, summed in
another order (the tests compare both to ``1e-10`` in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnexp.models.diagonal import DiagonalBiLSTM, DiagonalLSTM
from rnnexp.models.masked import MaskedConv2d
from rnnexp.models.pixelcnn import PixelCNNBlock
from rnnexp.models.row_lstm import RowLSTM


def masked_weight(conv: MaskedConv2d) -> Tensor:
    """The effective (masked) kernel ``(out, in, kh, kw)``, detached."""
    return (conv.weight * conv.mask).detach()


def conv_bias(conv: nn.Conv1d | nn.Conv2d) -> Tensor:
    """The bias ``(out,)`` of a convolution, zeros if it has none, detached."""
    if conv.bias is None:
        return conv.weight.new_zeros(conv.weight.shape[0]).detach()
    return conv.bias.detach()


def pointwise(conv: MaskedConv2d) -> tuple[Tensor, Tensor]:
    """A 1x1 masked conv as ``(weight.T (in, out), bias (out,))`` for ``addmm``."""
    return masked_weight(conv)[:, :, 0, 0].t().contiguous(), conv_bias(conv)


def pointwise_with_bias(conv: MaskedConv2d) -> Tensor:
    """A 1x1 masked conv as one matrix ``(in + 1, out)``: its last row is the bias.

    The caches keep a constant 1 after the conv's input, so ``x + conv(y)`` is one
    ``addmm(x, [y | 1], W)``.
    """
    w, b = pointwise(conv)
    return torch.cat([w, b[None]])


def windows(row: Tensor, taps: int) -> list[Tensor]:
    """Views ``(B, taps * Cin)`` of ``row`` ``(B, W + taps - 1, Cin)``: column ``j`` holds
    ``row[:, j : j + taps]`` (tap-major, then channel), for ``j < W``; no copy.

    ``row`` must be contiguous in its last two dims (a slice of a contiguous map is).
    """
    b, length, cin = row.shape
    assert row.stride(2) == 1 and row.stride(1) == cin
    size, stride = (length - taps + 1, b, taps * cin), (cin, row.stride(0), 1)
    return list(row.as_strided(size, stride, row.storage_offset()).unbind(0))


def cond_row(cond: Tensor | None, i: int) -> Tensor | None:
    """Row ``i`` of a bias broadcastable to ``(B, w, H, W)``, as ``(B, W or 1, w)`` (a view)."""
    if cond is None:
        return None
    return cond[:, :, i if cond.shape[2] > 1 else 0].transpose(1, 2)


class Cell:
    """The LSTM update of :func:`~rnnexp.models.lstm_cell.lstm_cell`, on fixed buffers.

    The caller writes the gate pre-activations ``(B, 4h)``, layout ``[i|f|o|g]``, into
    :attr:`gates`; a call then writes ``c = f * c_prev + i * g`` into ``c`` and
    ``h = o * tanh(c)`` into ``h``: the same operations as the layer's forward pass.
    """

    def __init__(self, like: Tensor, n: int, hidden: int) -> None:
        h = hidden
        self.gates = like.new_zeros(n, 4 * h)  # pre-activations, written by the caller
        act = like.new_zeros(n, 4 * h)  # sigmoid(i, f, o) | tanh(g)
        self._pre_sig, self._pre_tanh = self.gates[:, : 3 * h], self.gates[:, 3 * h :]
        self._sig, self._g = act[:, : 3 * h], act[:, 3 * h :]
        self._i, self._f, self._o = act[:, :h], act[:, h : 2 * h], act[:, 2 * h : 3 * h]
        self._tanh_c = like.new_zeros(n, h)

    def __call__(self, c_prev: Tensor, c: Tensor, h: Tensor) -> None:
        torch.sigmoid(self._pre_sig, out=self._sig)
        torch.tanh(self._pre_tanh, out=self._g)
        torch.mul(self._f, c_prev, out=c)
        c.addcmul_(self._i, self._g)
        torch.tanh(c, out=self._tanh_c)
        torch.mul(self._o, self._tanh_c, out=h)


class RowConv:
    """A ``kh x kw`` masked convolution, evaluated pixel by pixel in raster order.

    The mask keeps rows ``i - ph .. i`` of the kernel (``ph, pw = kh // 2, kw // 2``),
    and of row ``i`` only the columns ``j - pw .. j``. Its input is kept in
    :attr:`cache` ``(B, H + ph, W + 2 pw, Cin)``, with the convolution's zero padding,
    for the rows above; the current row is in :attr:`row` ``(B, W + pw, Cin)``, whose
    per-column views are made once: :attr:`slots` ``[j]`` ``(B, Cin)`` where the
    caller writes the input at ``(i, j)``, :attr:`windows` ``[j]`` ``(B, (pw+1)*Cin)``
    columns ``j - pw .. j``. When row ``i`` starts the rows above are complete:
    :meth:`start_row` computes their part for the whole row in one product, plus the
    bias and the row's conditioning bias, into :attr:`above` ``[j]`` ``(B, out)``;
    :meth:`at` adds the taps of row ``i``.
    """

    def __init__(self, conv: MaskedConv2d, cond: Tensor | None, n: int, h: int, w: int) -> None:
        kh, kw = conv.kernel_size
        self.ph, self.pw, self.kw, self.n, self.width, self.cond = kh // 2, kw // 2, kw, n, w, cond
        weight = masked_weight(conv)  # (out, Cin, kh, kw)
        out, cin = weight.shape[:2]
        # (ph*kw*Cin, out), rows in (row, column, channel) order like the im2col below.
        self.w_above = weight[:, :, : self.ph].permute(2, 3, 1, 0).reshape(-1, out).contiguous()
        # ((pw+1)*Cin, out): taps j - pw .. j of row i (the rest of the row is masked).
        w_row = weight[:, :, self.ph, : self.pw + 1].permute(2, 1, 0).reshape(-1, out)
        self.w_row, self.bias = w_row.contiguous(), conv_bias(conv)
        self.cache = weight.new_zeros(n, h + self.ph, w + 2 * self.pw, cin)
        self.row = weight.new_zeros(n, w + self.pw, cin)  # pw zero columns on the left
        self.slots = list(self.row[:, self.pw :].unbind(1))
        self.windows = windows(self.row, self.pw + 1)
        self._above = weight.new_zeros(n, w, out)
        self.above = list(self._above.unbind(1))  # (B, out) of column j

    def start_row(self, i: int, load: bool = False) -> None:
        """Compute ``above`` of row ``i``; ``load``: fill :attr:`row` from the cache first."""
        n, width, ph, pw = self.n, self.width, self.ph, self.pw
        if load:
            self.row[:, pw:] = self.cache[:, i + ph, pw : pw + width]
        if ph:  # rows i-ph .. i-1 as (B*W, ph*kw*Cin): one product for the whole row
            cols = self.cache[:, i : i + ph].unfold(2, self.kw, 1)  # (B, ph, W, Cin, kw)
            cols = cols.permute(0, 2, 1, 4, 3).reshape(n * width, -1)
            torch.addmm(self.bias, cols, self.w_above, out=self._above.view(n * width, -1))
        else:
            self._above.copy_(self.bias.expand_as(self._above))
        cond = cond_row(self.cond, i)
        if cond is not None:
            self._above += cond

    def end_row(self, i: int) -> None:
        """Keep the completed row in the cache for the rows below."""
        self.cache[:, i + self.ph, self.pw : self.pw + self.width] = self.row[:, self.pw :]

    def at(self, j: int, out: Tensor) -> Tensor:
        """The convolution at ``(i, j)`` into ``out`` ``(B, out)``."""
        return torch.addmm(self.above[j], self.windows[j], self.w_row, out=out)


class RowLSTMCache:
    """Row LSTM (section 3.1): the state-to-state term once per row, the rest per pixel.

    Per row: ``s2s(h_{i-1})`` of the previous row's hidden state plus both biases
    and the conditioning bias, for every column. Per pixel: the ``1 x k`` mask-B
    input-to-state window (columns ``j - p .. j`` of this row's layer input), the
    LSTM update of column ``j`` from the cell state of column ``j`` of the row above,
    and the residual output.
    """

    def __init__(self, layer: RowLSTM, cond: Tensor | None, n: int, height: int, width: int):
        self.cond, self.n, self.width, self.kernel = cond, n, width, layer.kernel
        p, h, f = layer.kernel // 2, layer.hidden, layer.features
        self.w_i2s = layer.i2s_taps().detach().contiguous()  # ((p+1)*F, 4h)
        self.w_s2s = layer.s2s_taps().detach().contiguous()  # (k*h, 4h)
        self.bias = (conv_bias(layer.i2s) + conv_bias(layer.s2s)).detach()
        self.w_out = pointwise_with_bias(layer.out)  # (h+1, F)
        new = self.w_i2s.new_zeros
        self.z = new(n, width + p, f)  # this row's layer input, p zero columns on the left
        self.slots = list(self.z[:, p:].unbind(1))  # (B, F): input of column j
        self.windows = windows(self.z, p + 1)  # (B, (p+1)*F): columns j-p .. j
        # Hidden states of two rows (previous, current), p zero columns on each side
        # for the s2s taps, then a channel of ones that multiplies the output bias.
        self.hs = new(2, n, width + 2 * p, h + 1)
        self.hs[..., h] = 1
        self.h_aug = [list(r[:, p : p + width].unbind(1)) for r in self.hs]  # (B, h+1)
        self.h = [[v[:, :h] for v in r] for r in self.h_aug]  # (B, h)
        self.cs = [list(r.unbind(0)) for r in new(2, width, n, h)]  # cell states (B, h)
        self.now = 0  # index of the current row's buffers
        self._gates = new(n, width, 4 * h)  # per-row part of the gates
        self.gates = list(self._gates.unbind(1))
        self.cell = Cell(self.w_i2s, n, h)
        self.out_mm = torch.addmm  # the output product (see OUT_RELU)

    def start_row(self, i: int) -> None:
        n, width, h = self.n, self.width, self.w_s2s.shape[0] // self.kernel
        above = self.hs[1 - self.now, :, :, :h]  # (B, W + 2p, h): row i-1 (zeros for i = 0)
        taps = above.unfold(1, self.kernel, 1).transpose(2, 3).reshape(n * width, -1)
        torch.addmm(self.bias, taps, self.w_s2s, out=self._gates.view(n * width, -1))
        cond = cond_row(self.cond, i)
        if cond is not None:
            self._gates += cond

    def pixel(self, j: int, out: Tensor) -> None:
        now = self.now
        torch.addmm(self.gates[j], self.windows[j], self.w_i2s, out=self.cell.gates)
        self.cell(self.cs[1 - now][j], self.cs[now][j], self.h[now][j])
        self.out_mm(self.slots[j], self.h_aug[now][j], self.w_out, out=out)  # residual

    def end_row(self, i: int) -> None:
        self.now = 1 - self.now


def _diagonal_weights(lstm: DiagonalLSTM) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(i2s (F, 4h), above (h, 4h), side (h, 4h), bias (4h,))`` of one direction."""
    w_s2s = lstm.s2s.weight.detach()  # (4h, h, 2): tap 0 the pixel above, tap 1 beside
    bias = conv_bias(lstm.i2s) + conv_bias(lstm.s2s)
    # Contiguous: a slice of the (4h, h, 2) kernel has no unit stride, and BLAS would
    # copy it at every product.
    above, side = (w_s2s[:, :, t].t().contiguous() for t in (0, 1))
    return masked_weight(lstm.i2s)[:, :, 0, 0].t().contiguous(), above, side, bias


def _row_gates(
    out: Tensor, terms: list[tuple[Tensor, Tensor]], bias: Tensor, cond: Tensor | None, i: int
) -> None:
    """``out`` ``(W, B, 4h)`` = bias + sum of ``x @ w`` over ``terms`` + row ``i`` of ``cond``.

    Each ``x`` is ``(W, B, in)``; one product over the whole row per term.
    """
    flat = out.view(-1, out.shape[-1])  # (W*B, 4h)
    (x, w), *rest = terms
    torch.addmm(bias, x.reshape(flat.shape[0], -1), w, out=flat)
    for x, w in rest:
        flat.addmm_(x.reshape(flat.shape[0], -1), w)
    c = cond_row(cond, i)
    if c is not None:
        out += c.transpose(0, 1)  # (W or 1, B, 4h)


class DiagonalCache:
    """Diagonal BiLSTM (section 3.2): left to right per pixel, right to left per row.

    The left-to-right LSTM at ``(i, j)`` reads its state at ``(i, j - 1)`` (hidden and
    cell) and ``(i - 1, j)`` (hidden): the latter's product, with the biases and the
    conditioning, is one product per row; per pixel one product of ``[z | h(i, j-1)]``.
    The right-to-left LSTM enters shifted down one row, so it runs along row ``i``
    once the row is complete (:class:`RightToLeft`, all layers at once), and pixel
    ``(i + 1, j)`` adds its column ``j``.
    """

    def __init__(
        self, layer: DiagonalBiLSTM, cond: Tensor | None, n: int, height: int, width: int
    ) -> None:
        self.width, self.hidden = width, layer.hidden
        self.cond, self.cond_r2l = layer.split_cond(cond)
        w_i2s, self.w_up, w_side, self.bias = _diagonal_weights(layer.l2r)
        self.w_pixel = torch.cat([w_i2s, w_side])  # (F+h, 4h): [z(i, j) | h(i, j-1)]
        self.w_i2s_r, self.w_up_r, self.w_side_r, self.bias_r = _diagonal_weights(layer.r2l)
        self.w_out = pointwise_with_bias(layer.out)  # (h+1, F)
        h, f = layer.hidden, layer.features
        new = w_i2s.new_zeros
        # This row: column j holds [z(i, j) | h(i, j-1)] (column W: h(i, W-1) only), so
        # a pixel's LSTM writes its h straight into the next pixel's input.
        self.row = new(width + 1, n, f + h)
        self.inputs = list(self.row[:width].unbind(0))  # (B, F+h)
        self.slots = [v[:, :f] for v in self.inputs]  # (B, F): layer input of column j
        self.z_row, self.h_row = self.row[:width, :, :f], self.row[1:, :, f:]  # (W, B, .)
        self.h = list(self.h_row.unbind(0))  # (B, h): h(i, j)
        self.c = list(new(width + 1, n, h).unbind(0))  # c[j+1]: cell of (i, j); c[0] = 0
        self._gates = new(width, n, 4 * h)  # per-row part of the gates, column j
        self.gates = list(self._gates.unbind(0))
        self.cell = Cell(w_i2s, n, h)
        self.combined = new(n, h + 1)  # [h_l2r(i, j) + h_r2l(i-1, j) | 1]
        self.combined[:, h] = 1
        self._combined_h = self.combined[:, :h]
        self.out_mm = torch.addmm  # the output product (see OUT_RELU)
        # Right-to-left h of row i-1 at column j, per parity of the row (RightToLeft).
        self.r2l: RightToLeft  # set by RightToLeft, with r2l_cols
        self.r2l_cols: list[list[Tensor]] = []

    def start_row(self, i: int) -> None:
        # h(i-1, :) is still in the row buffer (zeros for i = 0).
        _row_gates(self._gates, [(self.h_row, self.w_up)], self.bias, self.cond, i)

    def pixel(self, j: int, out: Tensor) -> None:
        torch.addmm(self.gates[j], self.inputs[j], self.w_pixel, out=self.cell.gates)
        self.cell(self.c[j], self.c[j + 1], self.h[j])
        torch.add(self.h[j], self.r2l_cols[self.r2l.prev][j], out=self._combined_h)
        self.out_mm(self.slots[j], self.combined, self.w_out, out=out)  # residual

    def end_row(self, i: int) -> None:
        pass  # the right-to-left pass is the RightToLeft's


class RightToLeft:
    """The right-to-left LSTMs of ``D`` Diagonal BiLSTM layers, run along each completed row.

    They depend on row ``i``'s layer inputs only, which are final once the row is
    complete, so the ``D`` layers run together: per column one batched product
    (``baddbmm``) and one LSTM update over ``(D*B, h)``, instead of ``D`` of each.
    States ``(2, W + 1, D, B, h)``: rows ``i - 1`` and ``i`` by parity, column ``W``
    the zero state right of the row.
    """

    def __init__(self, caches: list[DiagonalCache], n: int, height: int) -> None:
        d, width, h = len(caches), caches[0].width, caches[0].hidden
        self.caches, self.n, self.height, self.width = caches, n, height, width
        like = caches[0].w_side_r
        self.w_side = torch.stack([cache.w_side_r for cache in caches])  # (D, h, 4h)
        self.states = like.new_zeros(2, width + 1, d, n, h)
        self.cols = [list(s.unbind(0)) for s in self.states]  # (D, B, h) per column
        self.flat = [[v.view(d * n, h) for v in cols] for cols in self.cols]  # (D*B, h)
        self.c = list(like.new_zeros(width + 1, d * n, h).unbind(0))
        self._gates = like.new_zeros(d, width, n, 4 * h)  # per-row part, layer by layer
        self.gates = list(self._gates.unbind(1))  # (D, B, 4h) of column j
        self.cell = Cell(like, d * n, h)
        self._cell_gates = self.cell.gates.view(d, n, 4 * h)
        self.prev = 0  # parity of row i-1's states
        for k, cache in enumerate(caches):
            cache.r2l = self
            cache.r2l_cols = [[v[k] for v in cols] for cols in self.cols]

    def end_row(self, i: int) -> None:
        if i + 1 >= self.height:
            return  # the last row's right-to-left pass reaches no pixel
        now = 1 - self.prev
        for k, c in enumerate(self.caches):  # the terms of row i and of row i-1, per layer
            above = self.states[self.prev, : self.width, k]  # (W, B, h)
            terms = [(c.z_row, c.w_i2s_r), (above, c.w_up_r)]
            _row_gates(self._gates[k], terms, c.bias_r, c.cond_r2l, i)
        hs, flat, cs, cell = self.cols[now], self.flat[now], self.c, self.cell
        for j in range(self.width - 1, -1, -1):  # from the zero state right of the row
            torch.baddbmm(self.gates[j], hs[j + 1], self.w_side, out=self._cell_gates)
            cell(cs[j + 1], cs[j], flat[j])
        self.prev = now


class PixelCNNCache:
    """PixelCNN block (section 3.3): 1x1 reduction, ``k x k`` convolution from cached
    inner activations (:class:`RowConv`), 1x1 expansion, all at one pixel."""

    def __init__(
        self, block: PixelCNNBlock, cond: Tensor | None, n: int, height: int, width: int
    ) -> None:
        self.conv = RowConv(block.conv, cond, n, height, width)
        self.w_reduce, self.b_reduce = pointwise(block.reduce)  # (F, h), (h,)
        self.w_expand = pointwise_with_bias(block.expand)  # (h+1, F)
        h, f = block.hidden, block.features
        self.z = self.w_reduce.new_zeros(n, f)  # the block's input at the current pixel
        self.slots = [self.z] * width
        self._relu_z = torch.empty_like(self.z)
        self.inner = self.w_reduce.new_zeros(n, h + 1)  # [ReLU(conv) | 1]
        self.inner[:, h] = 1
        self._inner_h = self.inner[:, :h]
        self.out_mm = torch.addmm  # the output product (see OUT_RELU)

    def start_row(self, i: int) -> None:
        self.conv.start_row(i)

    def pixel(self, j: int, out: Tensor) -> None:
        conv = self.conv
        torch.clamp_min(self.z, 0, out=self._relu_z)  # ReLU (at::relu is this clamp)
        # ReLU(reduce) straight into the conv's input cache at (i, j).
        torch._addmm_activation(self.b_reduce, self._relu_z, self.w_reduce, out=conv.slots[j])
        # ReLU(k x k conv + bias + cond): the inner activation, act_out of the block.
        torch._addmm_activation(conv.above[j], conv.windows[j], conv.w_row, out=self._inner_h)
        self.out_mm(self.z, self.inner, self.w_expand, out=out)  # residual

    def end_row(self, i: int) -> None:
        self.conv.end_row(i)


LayerCache = RowLSTMCache | DiagonalCache | PixelCNNCache

#: An ``out_mm`` for the last layer, whose output only the head reads, through its
#: ReLU: ``ReLU(x + y @ W)`` in one call (``at::relu`` is ``clamp_min(0)`` like this).
OUT_RELU = torch._addmm_activation
CACHED_LAYERS = (RowLSTM, DiagonalBiLSTM, PixelCNNBlock)


def layer_caches(
    layers: list[nn.Module], conds: list[Tensor | None], n: int, height: int, width: int
) -> tuple[list[LayerCache], list[RightToLeft]]:
    """The caches of a generator's layers, and the per-row passes that serve several.

    ``conds``: each layer's conditioning bias (or None). Raises ``TypeError`` for a
    layer type without a cached version.
    """
    caches: list[LayerCache] = []
    for layer, cond in zip(layers, conds, strict=True):
        if isinstance(layer, RowLSTM):
            caches.append(RowLSTMCache(layer, cond, n, height, width))
        elif isinstance(layer, DiagonalBiLSTM):
            caches.append(DiagonalCache(layer, cond, n, height, width))
        elif isinstance(layer, PixelCNNBlock):
            caches.append(PixelCNNCache(layer, cond, n, height, width))
        else:
            raise TypeError(f"no cached implementation of layer type {type(layer).__name__}")
    diagonal = [c for c in caches if isinstance(c, DiagonalCache)]
    passes = []
    for hidden in sorted({c.hidden for c in diagonal}):  # one batch per state size
        passes.append(RightToLeft([c for c in diagonal if c.hidden == hidden], n, height))
    return caches, passes
