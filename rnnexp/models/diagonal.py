"""Diagonal BiLSTM layer (PixelRNN, van den Oord et al. 2016, section 3.2).

The layer runs along the diagonals of the image. The paper *skews* the input map
(row ``i`` shifted right by ``i``, so ``(B, F, H, W)`` becomes
``(B, F, H, W + H - 1)`` and pixel ``(i, j)`` lands at column ``i + j``); a column of
the skewed map is a diagonal of the image, and the recurrence goes column by column,
left to right:

- input-to-state: a masked 1x1 convolution (mask B, ``C`` colour groups, gate
  layout ``[i|f|o|g]`` as in the Row LSTM), computed for the whole map at once;
- state-to-state: a ``2 x 1`` convolution along the column over the previous
  column's hidden state: in the skewed map the previous column at row ``i`` is
  the left neighbour ``(i, j - 1)`` and at row ``i - 1`` the upper neighbour
  ``(i - 1, j)``. Both are strictly in the past, so it needs no mask, also not
  across colour groups;
- the LSTM update :func:`~rnnexp.models.lstm_cell.lstm_update`, zero initial state;
  the state outside the image is zero, like the zero padding above row 0.

Bidirectional (section 3.2): a second LSTM with its own weights runs right to
left (on the width-flipped input, the result flipped back). Its output at
``(i, j)`` has seen pixel ``(i, j)`` and those to its right, so the right-to-left
map is shifted *down* one row (a zero row on top, the last row dropped) before it
is added to the left-to-right map. After the shift it only holds information from
rows above, so it is added to every colour group. A 1x1 mask-B convolution maps the
sum back to ``F`` features, added to the input (residual connection, section 3.4);
optional dropout acts on the sum on its way into that convolution,
``x + out(dropout(h))``, not on the recurrent states. Together the two directions
see the whole past: every earlier pixel in raster order, with no blind spot.

How it is computed (:func:`diagonal_scan`): half of a skewed square map is padding,
so instead of skewing, the gates are gathered diagonal by diagonal into one
``(..., H*W)`` map (:func:`diagonal_order`) and each step works on the pixels of
one diagonal only, its *band*. Both directions run in the same loop, as a batch of
two with their own weights (a grouped state-to-state convolution). The
state-to-state bias is added to the input-to-state gates of every pixel once, so
the loop needs none, and the state of a pixel just outside the image comes out
exactly zero.

Conditioning (Conditional PixelCNN, 2016b, section 2.3): an optional bias
``cond``, broadcastable to ``(B, 8h, H, W)``, in the layout
``[left-to-right 4h | right-to-left 4h]``, is added to the input-to-state gate
pre-activations of both directions (in image coordinates).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from rnnexp.models.masked import MaskedConv2d
from rnnexp.models.row_lstm import gate_groups


@functools.lru_cache(maxsize=32)
def diagonal_order(height: int, width: int) -> tuple[Tensor, tuple[int, ...], Tensor, Tensor]:
    """The pixels of an ``H x W`` image listed diagonal after diagonal.

    Diagonal ``t`` (``0 <= t < W + H - 1``) holds the pixels ``(i, t - i)`` with
    ``max(0, t - W + 1) <= i <= min(t, H - 1)``, top to bottom (its *band*).

    Returns:
        ``(order, sizes, above, left)``: ``order[k]`` is the raster index ``i * W + j``
        of the ``k``-th pixel in diagonal order; ``sizes[t]`` is the length of diagonal
        ``t``; ``above[k]`` and ``left[k]`` are the diagonal-order positions of that
        pixel's upper and left neighbours, ``H*W`` where there is none. CPU tensors,
        cached per shape.
    """
    order, sizes = [], []
    for t in range(width + height - 1):
        rows = range(max(0, t - width + 1), min(t, height - 1) + 1)
        order += [i * width + (t - i) for i in rows]
        sizes.append(len(rows))
    position = {pixel: k for k, pixel in enumerate(order)}
    none = height * width
    above = [position.get(p - width, none) if p >= width else none for p in order]
    left = [position.get(p - 1, none) if p % width else none for p in order]
    as_tensor = functools.partial(torch.tensor, dtype=torch.long)
    return as_tensor(order), tuple(sizes), as_tensor(above), as_tensor(left)


class _Reorder(torch.autograd.Function):
    """``out[d] = x[d, index[d]]`` along dim 1, for permutations ``index`` ``(D, N)``.

    Why not ``x[arange, index]``: autograd's backward of advanced indexing is an
    accumulating scatter (slow on the CPU, a large share of a step); the backward of
    a permutation is just the inverse permutation, another gather.
    """

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return _gather(x, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return _gather(grad, inverse), None, None


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """``x[d, index[d]]`` for each ``d``: ``(D, N, ...) -> (D, N, ...)``."""
    # index_select copies whole rows only from a contiguous tensor; strided it crawls.
    rows = [xd.contiguous().index_select(0, idx) for xd, idx in zip(x, index, strict=True)]
    return torch.stack(rows)


def _bands(sizes: tuple[int, ...], height: int):
    """For each diagonal ``t``: its start, length ``n``, ``up`` and ``left`` links.

    Row ``i`` of diagonal ``t`` reads rows ``i - 1`` (above) and ``i`` (left) of
    diagonal ``t - 1``; rows outside the image are zero. With ``top = t < W`` (the
    band starts at row 0, so its first row has nothing above) and ``grow = t < H``
    (the band gained a bottom row, which has nothing to its left), and positions
    counted within each band:

    - ``up``: rows ``top .. n-1`` read rows ``0 .. n-1-top`` of the previous band;
    - ``left``: rows ``0 .. n-1-grow`` read rows ``1-top .. n-top-grow`` of it (the
      cell state ``c`` follows the same link).
    """
    width = len(sizes) - height + 1
    start, prev = 0, 0
    for t, n in enumerate(sizes):
        top, grow = int(t < width), int(t < height)
        up = (slice(top, n), slice(0, n - top))  # (this band's rows, previous band's rows)
        left = (slice(0, n - grow), slice(1 - top, 1 - top + n - grow))
        yield start, prev, n, up, left
        prev, start = start, start + n


class _DiagonalScan(torch.autograd.Function):
    """The recurrence of :func:`diagonal_scan`, with a hand-written backward.

    Why: run by autograd, each of the ``W + H - 1`` diagonals costs a dozen graph
    nodes, pads and concatenations, and every diagonal's weight gradient is its own
    small matrix product. Here the forward writes each band's results into
    preallocated maps, the backward walks the bands in reverse writing the gate
    gradients in place, and the weight gradient is one matrix product per tap over
    the whole map (each pixel's upper and left neighbours gathered by index).
    ``tests/test_lstm_cell.py`` checks it against a pixel loop and ``gradcheck``.
    """

    @staticmethod
    def forward(ctx, gates: Tensor, weight: Tensor, sizes: tuple[int, ...], height: int):
        d, total, b, four_h = gates.shape
        hidden = four_h // 4
        hs = gates.new_empty(d, total, b, hidden)
        acts = gates.new_empty(d, total, b, 4, hidden)  # sigmoid(i, f, o), tanh(g)
        c_in = gates.new_zeros(d, total, b, hidden)  # each pixel's incoming cell state
        tanh_c = gates.new_empty(d, total, b, hidden)
        c = None
        for start, prev, n, up, left in _bands(sizes, height):
            here, before = slice(start, start + n), slice(prev, start)
            pre = gates[:, here].clone()  # (D, n, B, 4h)
            if start:
                h_prev = hs[:, before]  # (D, n', B, h)
                for (rows, prev_rows), w in ((up, weight[:, 0]), (left, weight[:, 1])):
                    pre[:, rows].view(d, -1, four_h).baddbmm_(
                        h_prev[:, prev_rows].reshape(d, -1, hidden), w
                    )
                c_in[:, here][:, left[0]] = c[:, left[1]]
            a = acts[:, here]  # (D, n, B, 4, h)
            pre = pre.view(d, n, b, 4, hidden)
            torch.sigmoid(pre[..., :3, :], out=a[..., :3, :])
            torch.tanh(pre[..., 3, :], out=a[..., 3, :])
            c = torch.addcmul(a[..., 1, :] * c_in[:, here], a[..., 0, :], a[..., 3, :])
            torch.tanh(c, out=tanh_c[:, here])
            torch.mul(a[..., 2, :], tanh_c[:, here], out=hs[:, here])
        ctx.save_for_backward(weight, hs, acts, c_in, tanh_c)
        ctx.sizes, ctx.height = sizes, height
        return hs

    @staticmethod
    def backward(ctx, grad_hs: Tensor):
        weight, hs, acts, c_in, tanh_c = ctx.saved_tensors
        sizes, height = ctx.sizes, ctx.height
        d, total, b, hidden = hs.shape
        grad_gates = hs.new_empty(d, total, b, 4, hidden)
        w_t = weight.transpose(2, 3)  # (D, 2, 4h, h)
        dh_carry = dc_carry = None  # gradients reaching this band from the next one
        for start, prev, n, up, left in reversed(list(_bands(sizes, height))):
            here = slice(start, start + n)
            a, tc = acts[:, here], tanh_c[:, here]
            i, f, o, g = a.unbind(3)  # (D, n, B, h) each
            dh = grad_hs[:, here] if dh_carry is None else grad_hs[:, here] + dh_carry
            dc = torch.addcmul(
                dc_carry if dc_carry is not None else torch.zeros_like(dh), dh * o, 1 - tc * tc
            )
            gg = grad_gates[:, here]  # (D, n, B, 4, h)
            torch.mul(dc, g, out=gg[..., 0, :])
            torch.mul(dc, c_in[:, here], out=gg[..., 1, :])
            torch.mul(dh, tc, out=gg[..., 2, :])
            gg[..., :3, :] *= a[..., :3, :] * (1 - a[..., :3, :])
            torch.mul(dc * i, 1 - g * g, out=gg[..., 3, :])
            if not start:
                break
            n_prev = start - prev
            dh_carry = hs.new_zeros(d, n_prev, b, hidden)
            dc_carry = hs.new_zeros(d, n_prev, b, hidden)
            gpre = gg.view(d, n, b, 4 * hidden)
            for (rows, prev_rows), w in ((up, w_t[:, 0]), (left, w_t[:, 1])):
                dh_carry[:, prev_rows].view(d, -1, hidden).baddbmm_(
                    gpre[:, rows].reshape(d, -1, 4 * hidden), w
                )
            dc_carry[:, left[1]] = (dc * f)[:, left[0]]
        # Weight gradients over the whole map: each pixel's neighbour states x its gates.
        _, _, above, left_of = diagonal_order(height, len(sizes) - height + 1)
        padded = torch.cat([hs, hs.new_zeros(d, 1, b, hidden)], dim=1)  # row H*W: zeros
        flat_grad = grad_gates.view(d, total * b, 4 * hidden)
        grad_w = torch.stack(
            [
                torch.bmm(
                    padded.index_select(1, idx.to(hs.device)).view(d, -1, hidden).transpose(1, 2),
                    flat_grad,
                )
                for idx in (above, left_of)
            ],
            dim=1,
        )  # (D, 2, h, 4h)
        return grad_gates.view(d, total, b, 4 * hidden), grad_w, None, None


def diagonal_scan(gates: Tensor, weight: Tensor, sizes: tuple[int, ...], height: int) -> Tensor:
    """Run ``D`` diagonal LSTMs, diagonal by diagonal; their hidden states.

    Args:
        gates: input-to-state gate pre-activations with every bias in them,
            ``(D, H*W, B, 4h)``, pixels in diagonal order (:func:`diagonal_order`).
        weight: state-to-state weights ``(D, 2, h, 4h)``: tap 0 multiplies the state of
            the pixel above, tap 1 that of the pixel to the left.
        sizes: the lengths of the diagonals (:func:`diagonal_order`).
        height: the image height ``H`` (the width is ``len(sizes) - H + 1``).

    Returns:
        The hidden states ``(D, H*W, B, h)``, pixels in diagonal order. The state of
        a pixel outside the image is zero; the cell update is
        :func:`~rnnexp.models.lstm_cell.lstm_cell`'s.
    """
    # At least float32, with autocast off: the scan writes products into buffers in
    # place, which autocast (bf16-mixed, 16-mixed) would cast to another dtype.
    dtype = torch.promote_types(gates.dtype, torch.float32)
    with torch.autocast(gates.device.type, enabled=False):
        return _DiagonalScan.apply(gates.to(dtype).contiguous(), weight.to(dtype), sizes, height)


def shift_down(x: Tensor) -> Tensor:
    """Move a ``(B, F, H, W)`` map down one row: zero row on top, last row dropped.

    The result has ``x``'s memory layout (``zeros_like`` keeps its strides).
    """
    out = torch.zeros_like(x)
    out[:, :, 1:] = x[:, :, :-1]
    return out  # (B, F, H, W)


class DiagonalLSTM(nn.Module):
    """The weights of one direction of the Diagonal BiLSTM.

    ``i2s``: the masked 1x1 input-to-state convolution ``F -> 4h``; ``s2s``: the
    ``(2, 1)`` state-to-state kernel ``h -> 4h`` along a diagonal (tap 0 the pixel
    above, tap 1 the pixel to the left, in the direction's own coordinates). The
    recurrence itself is :func:`diagonal_scan`, which runs both directions at once.
    """

    def __init__(self, features: int, hidden: int, channel_groups: int = 1) -> None:
        super().__init__()
        self.hidden = hidden
        self.i2s = MaskedConv2d(
            features,
            4 * hidden,
            1,
            "B",
            channel_groups,
            out_groups=gate_groups(hidden, channel_groups),
        )
        self.s2s = nn.Conv1d(hidden, 4 * hidden, kernel_size=2)

    def i2s_matrix(self) -> Tensor:
        """The masked 1x1 input-to-state kernel as a matrix ``(F, 4h)``."""
        return (self.i2s.weight * self.i2s.mask)[:, :, 0, 0].t()


class DiagonalBiLSTM(nn.Module):
    """Diagonal BiLSTM layer: ``(B, features, H, W) -> (B, features, H, W)``.

    Args:
        features: input/output channels ``F`` (divisible by ``channel_groups``).
        hidden: LSTM hidden size ``h`` per direction (divisible by ``channel_groups``).
        channel_groups: number of image colour channels ``C``.
        dropout: probability of ``nn.Dropout`` on the combined hidden map before the
            output convolution (train mode only; 0: none).

    The kernels are fixed by the paper (1x1 input-to-state, 2x1 state-to-state);
    the generator's ``kernel`` setting does not apply to this layer.

    Sub-modules and methods for a step-wise sampler: ``l2r`` and ``r2l``
    (:class:`DiagonalLSTM`; ``r2l`` runs on width-flipped maps),
    ``combine(h_l2r, h_r2l)`` and ``output(x, h)``.
    ``cond_width`` (``8h``) is the width of the conditioning bias.

    Example:
        >>> layer = DiagonalBiLSTM(features=4, hidden=2)
        >>> layer(torch.zeros(1, 4, 3, 5)).shape
        torch.Size([1, 4, 3, 5])
    """

    def __init__(
        self, features: int, hidden: int, channel_groups: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.features = features
        self.hidden = hidden
        self.channel_groups = channel_groups
        self.cond_width = 8 * hidden
        self.l2r = DiagonalLSTM(features, hidden, channel_groups)
        self.r2l = DiagonalLSTM(features, hidden, channel_groups)
        # No parameters: state_dict keys are those of a model without dropout.
        self.drop = nn.Dropout(dropout)
        self.out = MaskedConv2d(hidden, features, 1, "B", channel_groups)

    def split_cond(self, cond: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """``(B, 8h, ...)`` conditioning bias -> left-to-right and right-to-left halves."""
        if cond is None:
            return None, None
        a, b = cond.chunk(2, dim=1)  # each (B, 4h, ...)
        return a, b

    def combine(self, h_l2r: Tensor, h_r2l: Tensor) -> Tensor:
        """``h_l2r + shift_down(h_r2l)``, ``(B, h, H, W)``: no pixel sees its own row's future."""
        return h_l2r + shift_down(h_r2l)

    def output(self, x: Tensor, h: Tensor) -> Tensor:
        """Residual output: ``x + out(dropout(h))``, ``(B, F, H, W)``."""
        return x + self.out(self.drop(h))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``(B, F, H, W) -> (B, F, H, W)``; ``cond`` broadcastable to ``(B, 8h, H, W)``."""
        b, features, height, width = x.shape
        index, inverse, sizes = self._orders(height, width, x.device)
        # Pixels first, channels last, in each direction's diagonal order (the
        # right-to-left direction's diagonals are those of the width-flipped image).
        xs = x.flatten(2).permute(2, 0, 1).expand(2, -1, -1, -1)  # (2, H*W, B, F)
        xs = _Reorder.apply(xs, index, inverse)
        # Input-to-state, a masked 1x1 convolution = one matmul, with both biases.
        weight = torch.stack([lstm.i2s_matrix() for lstm in (self.l2r, self.r2l)])
        bias = torch.stack([lstm.i2s.bias + lstm.s2s.bias for lstm in (self.l2r, self.r2l)])
        gates = torch.bmm(xs.reshape(2, -1, features), weight).add_(bias[:, None])
        gates = gates.view(2, height * width, b, -1)  # (2, H*W, B, 4h)
        if cond is not None:
            gates = gates + self._cond_by_diagonal(cond, b, index, inverse)
        w_s2s = torch.stack([lstm.s2s.weight for lstm in (self.l2r, self.r2l)])  # (2, 4h, h, 2)
        w_s2s = w_s2s.permute(0, 3, 2, 1).contiguous()  # (2, 2, h, 4h): direction, tap
        hs = diagonal_scan(gates, w_s2s, sizes, height)  # (2, H*W, B, h)
        hs = _Reorder.apply(hs, inverse, index)  # (2, H*W, B, h), the image's raster order
        hs = hs.permute(2, 0, 3, 1).view(b, 2, self.hidden, height, width)  # a view
        h = self.combine(hs[:, 0], hs[:, 1])  # (B, h, H, W)
        # Channels last, so that the 1x1 output convolution is one GEMM.
        return self.output(x, h.contiguous(memory_format=torch.channels_last))

    @staticmethod
    def _orders(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, tuple]:
        """Diagonal orders of the image and of its width-flip ``(2, H*W)``, their inverses."""
        order, sizes, _, _ = diagonal_order(height, width)
        flipped = (order // width) * width + (width - 1 - order % width)  # same pixel, flipped
        index = torch.stack([order, flipped])  # (2, H*W)
        inverse = torch.argsort(index, dim=1)
        return index.to(device), inverse.to(device), sizes

    def _cond_by_diagonal(self, cond: Tensor, b: int, index: Tensor, inverse: Tensor) -> Tensor:
        """The ``[l2r | r2l]`` conditioning bias in the gates' layout ``(2, H*W or 1, B, 4h)``."""
        cond = cond.expand(b, -1, -1, -1)  # (B, 8h, H or 1, W or 1)
        if cond.shape[2:] == (1, 1):  # class labels only: the same at every pixel
            return cond.view(b, 2, -1).permute(1, 0, 2)[:, None]  # (2, 1, B, 4h)
        cond = cond.flatten(2).view(b, 2, -1, index.shape[1]).permute(1, 3, 0, 2)
        return _Reorder.apply(cond, index, inverse)  # (2, H*W, B, 4h)


__all__ = ["DiagonalBiLSTM", "DiagonalLSTM", "diagonal_order", "diagonal_scan", "shift_down"]
