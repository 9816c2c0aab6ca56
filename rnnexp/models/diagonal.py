"""Diagonal BiLSTM layer (PixelRNN, van den Oord et al. 2016, section 3.2).

The layer runs along the diagonals of the image. The input map is *skewed*:
row ``i`` is shifted right by ``i``, so ``(B, F, H, W)`` becomes
``(B, F, H, W + H - 1)`` and pixel ``(i, j)`` lands at column ``i + j``. A column
of the skewed map is a diagonal of the image, and the recurrence goes column by
column, left to right:

- input-to-state: a masked 1x1 convolution (mask B, ``C`` colour groups, gate
  layout ``[i|f|o|g]`` as in the Row LSTM), computed for the whole map at once;
- state-to-state: a ``2 x 1`` convolution along the column over the previous
  column's hidden state: in the skewed map the previous column at row ``i`` is
  the left neighbour ``(i, j - 1)`` and at row ``i - 1`` the upper neighbour
  ``(i - 1, j)``. Both are strictly in the past, so it needs no mask, also not
  across colour groups;
- the LSTM update :func:`~rnnexp.models.row_lstm.lstm_update`, zero initial state;
  the state outside the image (left of column 0 in the skewed map) is kept at
  zero, like the zero padding above row 0.

The hidden map is unskewed back to ``(B, h, H, W)``.

Bidirectional (section 3.2): a second LSTM with its own weights runs right to
left (the input's width is flipped, the same kind of LSTM is run, the result
flipped back). Its output at ``(i, j)`` has seen pixel ``(i, j)`` and those to its
right, so the right-to-left map is shifted *down* one row (a zero row on top, the
last row dropped) before it is added to the left-to-right map. After the shift it
only holds information from rows above, so it is added to every colour group.
A 1x1 mask-B convolution maps the sum back to ``F`` features, added to the input
(residual connection, section 3.4); optional dropout acts on the sum on its way
into that convolution, ``x + out(dropout(h))``, not on the recurrent states.
Together the two directions see the whole past: every earlier pixel in raster
order, with no blind spot.

Conditioning (Conditional PixelCNN, 2016b, section 2.3): an optional bias
``cond``, broadcastable to ``(B, 8h, H, W)`` in the layout
``[left-to-right 4h | right-to-left 4h]``, is added to the input-to-state gate
pre-activations of both directions (in image coordinates; the right-to-left half
is flipped with the input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnexp.models.masked import MaskedConv2d
from rnnexp.models.row_lstm import gate_groups, lstm_update


def skew(x: Tensor) -> Tensor:
    """Shift row ``i`` right by ``i``: ``(B, F, H, W) -> (B, F, H, W + H - 1)``.

    Pixel ``(i, j)`` goes to column ``i + j``; the rest is zero. Pad/reshape only:
    padding every row to ``W + H`` and re-reading the flat map with rows of
    ``W + H - 1`` shifts row ``i`` by ``i``.
    """
    b, f, h, w = x.shape
    padded = F.pad(x, (0, h))  # (B, F, H, W + H)
    flat = padded.reshape(b, f, h * (w + h))[:, :, : h * (w + h - 1)]  # (B, F, H*(W+H-1))
    return flat.reshape(b, f, h, w + h - 1)  # (B, F, H, W + H - 1)


def unskew(x: Tensor, width: int) -> Tensor:
    """Inverse of :func:`skew`: ``(B, F, H, W + H - 1) -> (B, F, H, W)``."""
    b, f, h, wide = x.shape
    if wide != width + h - 1:
        raise ValueError(f"skewed width {wide} does not match width {width} and height {h}")
    flat = F.pad(x.reshape(b, f, h * wide), (0, h))  # (B, F, H*(W+H))
    return flat.reshape(b, f, h, width + h)[..., :width]  # (B, F, H, W)


def shift_down(x: Tensor) -> Tensor:
    """Move a ``(B, F, H, W)`` map down one row: zero row on top, last row dropped."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]  # (B, F, H, W)


class DiagonalLSTM(nn.Module):
    """One direction (left to right) of the Diagonal BiLSTM: ``(B, F, H, W) -> (B, h, H, W)``.

    Methods a step-wise (cached) sampler can use, diagonal by diagonal:
    ``input_to_state(x, cond)`` (image coordinates), :func:`skew`,
    ``initial_state(gates_col)``, ``step(gates_col, state, valid)`` and :func:`unskew`
    (``valid``: the column of ``skew(ones(1, 1, H, W))``).
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
        # (2, 1) kernel along the skewed column: rows i - 1 and i of the previous column.
        self.s2s = nn.Conv1d(hidden, 4 * hidden, kernel_size=2)

    def input_to_state(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Gate contributions ``(B, F, H, W) -> (B, 4h, H, W)``, plus ``cond`` if given."""
        gates = self.i2s(x)  # (B, 4h, H, W)
        return gates if cond is None else gates + cond

    def initial_state(self, gates_col: Tensor) -> tuple[Tensor, Tensor]:
        """Zero ``(h, c)``, each ``(B, h, H)``, matching a ``(B, 4h, H)`` gate column."""
        b, _, height = gates_col.shape
        zeros = gates_col.new_zeros(b, self.hidden, height)
        return zeros, zeros

    def step(
        self, gates_col: Tensor, state: tuple[Tensor, Tensor], valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One skewed column (one image diagonal) of the recurrence.

        Args:
            gates_col: input-to-state gates of this column, ``(B, 4h, H)``.
            state: previous column's ``(h, c)``, each ``(B, h, H)``.
            valid: optional ``(1, 1, H)`` 0/1 mask of the rows of this column that are
                image pixels; the state elsewhere is set to zero, so the state left of
                the image's first column is zero like the padding above row 0.

        Returns:
            This column's ``(h, c)``, each ``(B, h, H)``; row ``i`` of the new state
            sees rows ``i`` (left neighbour) and ``i - 1`` (upper neighbour) of ``h``.
        """
        h_prev, c_prev = state
        s2s = self.s2s(F.pad(h_prev, (1, 0)))  # zero row above row 0 -> (B, 4h, H)
        h, c = lstm_update(gates_col + s2s, c_prev)  # (B, h, H) each
        if valid is not None:
            h, c = h * valid, c * valid
        return h, c

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Hidden map ``(B, h, H, W)`` of the left-to-right pass over ``x`` ``(B, F, H, W)``."""
        height, width = x.shape[2:]
        gates = skew(self.input_to_state(x, cond))  # (B, 4h, H, W + H - 1)
        cols = gates.unbind(dim=3)  # (W + H - 1) x (B, 4h, H); unbind: fast backward
        valid = skew(gates.new_ones(1, 1, height, width)).unbind(dim=3)  # (1, 1, H) each
        state = self.initial_state(cols[0])
        hs = []
        for col, mask in zip(cols, valid, strict=True):
            state = self.step(col, state, mask)
            hs.append(state[0])
        return unskew(torch.stack(hs, dim=3), width)  # (B, h, H, W)


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
    (:class:`DiagonalLSTM`; ``r2l`` runs on width-flipped maps, see
    :meth:`right_to_left`), ``combine(h_l2r, h_r2l)`` and ``output(x, h)``.
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

    def right_to_left(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Right-to-left hidden map ``(B, h, H, W)``, not yet shifted down.

        Its value at ``(i, j)`` depends on row ``i`` from column ``j`` rightwards and on
        rows above: flip the width, run the left-to-right kind of LSTM, flip back.
        """
        flipped_cond = None if cond is None else cond.flip(-1)
        return self.r2l(x.flip(-1), flipped_cond).flip(-1)  # (B, h, H, W)

    def combine(self, h_l2r: Tensor, h_r2l: Tensor) -> Tensor:
        """``h_l2r + shift_down(h_r2l)``, ``(B, h, H, W)``: no pixel sees its own row's future."""
        return h_l2r + shift_down(h_r2l)

    def output(self, x: Tensor, h: Tensor) -> Tensor:
        """Residual output: ``x + out(dropout(h))``, ``(B, F, H, W)``."""
        return x + self.out(self.drop(h))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``(B, F, H, W) -> (B, F, H, W)``; ``cond`` broadcastable to ``(B, 8h, H, W)``."""
        cond_l2r, cond_r2l = self.split_cond(cond)
        h_l2r = self.l2r(x, cond_l2r)  # (B, h, H, W)
        h_r2l = self.right_to_left(x, cond_r2l)  # (B, h, H, W)
        return self.output(x, self.combine(h_l2r, h_r2l))


__all__ = ["DiagonalBiLSTM", "DiagonalLSTM", "shift_down", "skew", "unskew"]
