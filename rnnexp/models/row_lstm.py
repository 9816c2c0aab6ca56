"""Row LSTM layer (PixelRNN, van den Oord et al. 2016, section 3.1).

The layer processes the image one row at a time, top to bottom. For row ``r``:

- input-to-state: a masked ``1 x k`` convolution (mask B) of the row's features,
  computed for the whole map at once since it does not depend on the recurrence;
- state-to-state: an unmasked 1-d convolution of width ``k`` over the previous
  row's hidden state (the previous row is entirely in the past, so it needs no
  mask, also not across colour channel groups);
- LSTM update: ``i, f, o`` sigmoid, ``g`` tanh, ``c = f * c + i * g``,
  ``h = o * tanh(c)``, zero initial state.

Conditioning (Conditional PixelCNN, van den Oord et al. 2016b, section 2.3): an
optional bias ``cond``, broadcastable to ``(B, 4h, H, W)``, is added to the
input-to-state gate pre-activations (``W_k^T h`` / ``V_k^T s`` of the paper).

The hidden state is mapped back to the feature width by a 1x1 mask-B convolution
and added to the input (residual connection, section 3.4). Optional dropout acts on
the hidden map on its way into that convolution, ``x + out(dropout(h))``, not on
the state the recurrence carries to the next row; it is element-wise, so it keeps
the masks' causality.

RGB (section 3.4): the hidden size ``h`` is split into ``C`` contiguous groups, one
per colour channel, and each gate ``i, f, o, g`` uses the same split, so hidden
channel group ``c`` at pixel ``(r, j)`` only sees the current pixel's input groups
``<= c``. The LSTM update is element-wise, so it keeps the grouping.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnexp.models.masked import MaskedConv2d, contiguous_groups


def lstm_update(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM cell update shared by the Row LSTM and the Diagonal BiLSTM (section 3.1).

    Args:
        gates: pre-activations ``(B, 4h, ...)`` in the layout ``[i|f|o|g]``; each gate
            is split into ``C`` contiguous colour groups like the hidden state.
        c_prev: previous cell state ``(B, h, ...)``.

    Returns:
        ``(h, c)``, each ``(B, h, ...)``: ``c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g)``,
        ``h = sigmoid(o) * tanh(c)``. Element-wise, so it keeps the colour groups.
    """
    i, f, o, g = gates.chunk(4, dim=1)  # each (B, h, ...)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def gate_groups(hidden: int, channel_groups: int) -> Tensor:
    """Colour group of each of the ``4h`` gate channels, layout ``[i|f|o|g]`` (section 3.4)."""
    return contiguous_groups(hidden, channel_groups, "hidden").repeat(4)  # (4h,)


class RowLSTM(nn.Module):
    """Row LSTM: ``(B, features, H, W) -> (B, features, H, W)``.

    Args:
        features: input/output channels ``F`` (divisible by ``channel_groups``).
        hidden: LSTM hidden size ``h`` (divisible by ``channel_groups``).
        kernel: width ``k`` (odd) of the input-to-state and state-to-state kernels.
        channel_groups: number of image colour channels ``C``.
        dropout: probability of ``nn.Dropout`` on the hidden map before the output
            convolution (train mode only; 0: none).

    Methods a step-wise (cached) sampler can use, row by row:
    ``input_to_state(x, cond)`` for the gates of a map or a single row ``(B, F, 1, W)``,
    ``initial_state(gates_row)``, ``step(gates_row, state)`` and ``output(x, h)``.
    ``cond_width`` (``4h``) is the width of the conditioning bias of :meth:`forward`.
    """

    def __init__(
        self,
        features: int,
        hidden: int,
        kernel: int = 3,
        channel_groups: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {kernel}")
        self.features = features
        self.hidden = hidden
        self.kernel = kernel
        self.channel_groups = channel_groups
        self.cond_width = 4 * hidden
        self.i2s = MaskedConv2d(
            features,
            4 * hidden,
            (1, kernel),
            "B",
            channel_groups,
            out_groups=gate_groups(hidden, channel_groups),
        )
        self.s2s = nn.Conv1d(hidden, 4 * hidden, kernel, padding=kernel // 2)
        # No parameters: state_dict keys are those of a model without dropout.
        self.drop = nn.Dropout(dropout)
        self.out = MaskedConv2d(hidden, features, 1, "B", channel_groups)

    def input_to_state(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Input-to-state gate contributions of every row: ``(B, F, H, W) -> (B, 4h, H, W)``.

        ``cond`` (optional, broadcastable to ``(B, 4h, H, W)``) is the layer's
        conditioning bias, added to the gate pre-activations (2016b, section 2.3).
        """
        gates = self.i2s(x)  # (B, 4h, H, W)
        return gates if cond is None else gates + cond

    def initial_state(self, x_row: Tensor) -> tuple[Tensor, Tensor]:
        """Zero ``(h, c)``, each ``(B, h, W)``, matching a ``(B, 4h, W)`` gate row."""
        b, _, w = x_row.shape
        zeros = x_row.new_zeros(b, self.hidden, w)
        return zeros, zeros

    def step(self, gates_in: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """One row of the recurrence.

        Args:
            gates_in: input-to-state contribution of this row, ``(B, 4h, W)``.
            state: previous row's ``(h, c)``, each ``(B, h, W)``.

        Returns:
            This row's ``(h, c)``, each ``(B, h, W)``.
        """
        h_prev, c_prev = state
        return lstm_update(gates_in + self.s2s(h_prev), c_prev)  # (B, 4h, W) gates

    def output(self, x: Tensor, h: Tensor) -> Tensor:
        """Residual output: ``x + out(dropout(h))``, ``(B, F, H, W)`` (one-row maps too)."""
        return x + self.out(self.drop(h))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``(B, F, H, W) -> (B, F, H, W)``; ``cond`` broadcastable to ``(B, 4h, H, W)``."""
        gates_in = self.input_to_state(x, cond)  # (B, 4h, H, W)
        rows = gates_in.unbind(dim=2)  # H x (B, 4h, W); unbind, not x[:, :, r] (faster backward)
        state = self.initial_state(rows[0])
        hs = []
        for row in rows:
            state = self.step(row, state)
            hs.append(state[0])
        h = torch.stack(hs, dim=2)  # (B, h, H, W)
        return self.output(x, h)


__all__ = ["RowLSTM", "gate_groups", "lstm_update"]
