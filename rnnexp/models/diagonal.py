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
exactly zero. Into and out of the scan's order the maps move as rows: the layer's
channels-last input is ``(B*H*W, F)`` rows, image after image, the scan's maps are
``(H*W*B, ...)`` rows, pixel after pixel, and one ``index_select`` per direction
moves whole rows between the two orders (:func:`_row_orders`); the one-row shift
of the right-to-left map is part of its index.

Conditioning (Conditional PixelCNN, 2016b, section 2.3): an optional bias
``cond``, broadcastable to ``(B, 8h, H, W)``, in the layout
``[left-to-right 4h | right-to-left 4h]``, is added to the input-to-state gate
pre-activations of both directions (in image coordinates).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rnnexp.models.diagonal_scan import diagonal_order, diagonal_scan
from rnnexp.models.masked import MaskedConv2d
from rnnexp.models.row_lstm import gate_groups


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
    out = x.new_empty(len(index), *x.shape[1:])
    for xd, idx, od in zip(x, index, out, strict=True):
        # index_select copies whole rows only from a contiguous tensor; strided it
        # crawls. Written into one buffer: a stack of the parts would copy them again.
        torch.index_select(xd.contiguous(), 0, idx, out=od)
    return out


def _gather_sum(x: Tensor, index: Tensor) -> Tensor:
    """``sum over d of x[d, index[d]]``: ``(D, N, ...) -> (N, ...)``, no ``(D, N, ...)`` copy."""
    parts = zip(x, index, strict=True)
    xd, idx = next(parts)
    out = xd.contiguous().index_select(0, idx)
    for xd, idx in parts:
        out += xd.contiguous().index_select(0, idx)
    return out


class _InputToState(torch.autograd.Function):
    """``bmm(x in each direction's order, weight)``: the input-to-state gates of both directions.

    ``x`` ``(R, F)`` rows, ``weight`` ``(D, F, 4h)``, ``index`` and ``inverse``
    ``(D, R)`` row permutations as in :class:`_Reorder` (:class:`_RowOrders`'s
    ``to_scan`` and ``from_scan``); returns ``(D, R, 4h)``. Why not
    ``bmm(_Reorder(x))``: that keeps ``x`` in all ``D`` orders for the weight
    gradient, ``D`` copies of the layer's input; here ``x`` is kept once and
    reordered again in the backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, index, inverse)
        return torch.bmm(_by_direction(x, index), weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        x, weight, index, inverse = ctx.saved_tensors
        dtype = grad.dtype  # autocast's (bf16) where the forward's product ran under it
        xs = _by_direction(x, index).to(dtype)
        grad_weight = torch.bmm(xs.transpose(1, 2), grad).to(weight.dtype)
        grad_x = torch.bmm(grad, weight.to(dtype).transpose(1, 2)).view(len(index), *x.shape)
        return _gather_sum(grad_x, inverse).to(x.dtype), grad_weight, None, None


def _by_direction(x: Tensor, index: Tensor) -> Tensor:
    """``(R, F)`` rows -> ``(D, R, F)``: the rows of ``x`` in each order ``index[d]``."""
    return _gather(x.expand(len(index), *x.shape), index)


#: Rows the right-to-left map moves down before it is added (section 3.2). Without
#: the shift that pass would see the pixels to the right; only a test sets it to 0.
R2L_SHIFT = 1


class _RowOrders(NamedTuple):
    """Row indices between the layer's raster rows and the scan's, for one shape.

    Raster row ``b*H*W + p`` is pixel ``p`` (raster order) of image ``b``; scan row
    ``k*B + b`` of direction ``d`` is the ``k``-th pixel of ``d``'s diagonal order in
    image ``b``. Each field is an int64 index for ``index_select`` along the rows;
    ``s`` is :data:`R2L_SHIFT`.
    """

    to_scan: Tensor  # (2, H*W*B): each scan row's raster row
    from_scan: Tensor  # (2, B*H*W): each raster row's scan row (the inverse)
    r2l_below: Tensor  # (B*(H*W - s*W),): raster rows of pixels p >= s*W, the
    # right-to-left scan row of the pixel s rows above
    r2l_back: Tensor  # (H*W*B,): each right-to-left scan row's raster row s rows below
    r2l_dropped: Tensor  # right-to-left scan rows of the last s image rows


@functools.lru_cache(maxsize=16)
def _row_orders(
    height: int, width: int, batch: int, shift: int, device: torch.device
) -> _RowOrders:
    """:class:`_RowOrders` of a ``(batch, ., height, width)`` map, cached per shape."""
    index, inverse, _ = _pixel_orders(height, width)  # (2, H*W) each
    pixels = height * width
    images = torch.arange(batch)
    # (2, H*W, B) -> (2, H*W*B): scan row (k, b) reads raster row (b, index[d, k]).
    to_scan = (index[:, :, None] + images * pixels).flatten(1)
    # (2, B, H*W) -> (2, B*H*W): raster row (b, p) reads scan row (inverse[d, p], b).
    from_scan = (inverse[:, None, :] * batch + images[:, None]).flatten(1)
    moved = shift * width  # the shift in raster pixels
    r2l_below = from_scan[1].view(batch, pixels)[:, : pixels - moved].flatten()
    below = index[1] + moved  # (H*W,): the raster pixel each right-to-left pixel feeds
    r2l_back = (below.clamp(max=pixels - 1)[:, None] + images * pixels).flatten()
    dropped = ((below >= pixels).nonzero()[:, 0, None] * batch + images).flatten()
    orders = _RowOrders(to_scan, from_scan, r2l_below, r2l_back, dropped)
    return _RowOrders(*(t.to(device) for t in orders))


@functools.lru_cache(maxsize=16)
def _pixel_orders(height: int, width: int) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Diagonal orders of the image and of its width-flip ``(2, H*W)``, their inverses, sizes."""
    order, sizes, _, _ = diagonal_order(height, width)
    flipped = (order // width) * width + (width - 1 - order % width)  # same pixel, flipped
    index = torch.stack([order, flipped])  # (2, H*W)
    return index, torch.argsort(index, dim=1), sizes


class _Combine(torch.autograd.Function):
    """Both directions' hidden states ``(2, H*W*B, h)`` (scan rows) -> ``(B*H*W, h)``
    (raster rows): the left-to-right map plus the right-to-left map moved down
    :data:`R2L_SHIFT` rows (zero rows on top).

    Each term is one row gather; the backward gathers with the inverse indices (a
    permutation's backward is a gather, not autograd's accumulating scatter).
    """

    @staticmethod
    def forward(ctx, hs: Tensor, orders: _RowOrders, batch: int) -> Tensor:
        hidden = hs.shape[2]
        out = hs[0].index_select(0, orders.from_scan[0])  # (B*H*W, h)
        below = hs[1].index_select(0, orders.r2l_below).view(batch, -1, hidden)
        first = out.shape[0] // batch - below.shape[1]  # s*W: the first pixel it reaches
        out.view(batch, -1, hidden)[:, first:] += below
        ctx.save_for_backward(orders.to_scan[0], orders.r2l_back, orders.r2l_dropped)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        to_l2r, r2l_back, r2l_dropped = ctx.saved_tensors
        grad = grad.contiguous()
        grad_hs = grad.new_empty(2, *grad.shape)
        torch.index_select(grad, 0, to_l2r, out=grad_hs[0])
        torch.index_select(grad, 0, r2l_back, out=grad_hs[1])
        grad_hs[1].index_fill_(0, r2l_dropped, 0)
        return grad_hs, None, None


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
    (:class:`DiagonalLSTM`; ``r2l`` runs on width-flipped maps) and ``output(x, h)``.
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

    def output(self, x: Tensor, h: Tensor) -> Tensor:
        """Residual output: ``x + out(dropout(h))``, ``(B, F, H, W)``."""
        return x + self.out(self.drop(h))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``(B, F, H, W) -> (B, F, H, W)``; ``cond`` broadcastable to ``(B, 8h, H, W)``."""
        b, features, height, width = x.shape
        orders = _row_orders(height, width, b, R2L_SHIFT, x.device)
        # Input-to-state, a masked 1x1 convolution = one matmul per direction, with
        # both biases, on the input's rows in that direction's diagonal order.
        weight = torch.stack([lstm.i2s_matrix() for lstm in (self.l2r, self.r2l)])
        bias = torch.stack([lstm.i2s.bias + lstm.s2s.bias for lstm in (self.l2r, self.r2l)])
        rows = x.permute(0, 2, 3, 1).reshape(-1, features)  # (B*H*W, F), a view if channels last
        gates = _InputToState.apply(rows, weight, orders.to_scan, orders.from_scan)
        gates = gates.add_(bias[:, None]).view(2, height * width, b, -1)  # (2, H*W, B, 4h)
        index, inverse, sizes = _pixel_orders(height, width)
        if cond is not None:
            index, inverse = index.to(x.device), inverse.to(x.device)
            gates = gates + self._cond_by_diagonal(cond, b, index, inverse)
        w_s2s = torch.stack([lstm.s2s.weight for lstm in (self.l2r, self.r2l)])  # (2, 4h, h, 2)
        w_s2s = w_s2s.permute(0, 3, 2, 1).contiguous()  # (2, 2, h, 4h): direction, tap
        hs = diagonal_scan(gates, w_s2s, sizes, height)  # (2, H*W, B, h)
        h = _Combine.apply(hs.view(2, -1, self.hidden), orders, b)  # (B*H*W, h)
        # (B, h, H, W), channels last: the 1x1 output convolution is one GEMM.
        return self.output(x, h.view(b, height, width, -1).permute(0, 3, 1, 2))

    def _cond_by_diagonal(self, cond: Tensor, b: int, index: Tensor, inverse: Tensor) -> Tensor:
        """The ``[l2r | r2l]`` conditioning bias in the gates' layout ``(2, H*W or 1, B, 4h)``."""
        cond = cond.expand(b, -1, -1, -1)  # (B, 8h, H or 1, W or 1)
        if cond.shape[2:] == (1, 1):  # class labels only: the same at every pixel
            return cond.view(b, 2, -1).permute(1, 0, 2)[:, None]  # (2, 1, B, 4h)
        cond = cond.flatten(2).view(b, 2, -1, index.shape[1]).permute(1, 3, 0, 2)
        return _Reorder.apply(cond, index, inverse)  # (2, H*W, B, 4h)


__all__ = ["DiagonalBiLSTM", "DiagonalLSTM", "diagonal_order", "diagonal_scan"]
