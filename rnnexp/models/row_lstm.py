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
import torch.nn.functional as F
from torch import Tensor, nn

from rnnexp.models.lstm_cell import lstm_cell, lstm_update
from rnnexp.models.masked import MaskedConv2d, contiguous_groups


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

    A step-wise (cached) sampler uses the weights (``i2s``, ``s2s``, ``out``) and
    ``output(x, h)``. ``cond_width`` (``4h``) is the width of the conditioning bias
    of :meth:`forward`.
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

    def i2s_taps(self) -> Tensor:
        """The masked input-to-state kernel as one matrix ``((p+1)*F, 4h)``, ``p = k // 2``.

        Mask B keeps the columns ``j - p .. j`` of the ``1 x k`` kernel; tap ``t`` (rows
        ``t*F .. (t+1)*F``) multiplies the input at column ``j - p + t``.
        """
        p = self.kernel // 2
        w = (self.i2s.weight * self.i2s.mask)[:, :, 0, : p + 1]  # (4h, F, p+1)
        return w.permute(2, 1, 0).reshape(-1, w.shape[0])  # ((p+1)*F, 4h)

    def s2s_taps(self) -> Tensor:
        """The state-to-state kernel as a matrix ``(k*h, 4h)``; tap ``t`` reads ``j - p + t``."""
        return self.s2s.weight.permute(2, 1, 0).reshape(-1, self.s2s.weight.shape[0])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``(B, F, H, W) -> (B, F, H, W)``; ``cond`` broadcastable to ``(B, 4h, H, W)``.

        Computed channels last: both convolutions of the recurrence become matrix
        products over stacked taps (im2col along the width), which the CPU's BLAS runs
        several times faster than the equivalent small convolutions, in the backward
        pass above all. The output is in ``torch.channels_last`` memory format, as the
        generator's maps are (its next 1x1 convolutions are plain GEMMs then).
        """
        b, features, height, width = x.shape
        p, four_h = self.kernel // 2, 4 * self.hidden
        # Input-to-state for every pixel at once: taps j-p .. j of the input row.
        xs = F.pad(x.permute(0, 2, 3, 1), (0, 0, p, 0))  # (B, H, W + p, F)
        taps = torch.cat([xs[:, :, t : t + width] for t in range(p + 1)], dim=-1)
        bias = self.i2s.bias + self.s2s.bias  # (4h,) both biases, once per pixel
        gates = torch.addmm(bias, taps.view(-1, (p + 1) * features), self.i2s_taps())
        gates = gates.view(b, height, width, four_h)  # (B, H, W, 4h)
        if cond is not None:  # (B, 4h, H or 1, W or 1) -> (B, H or 1, W or 1, 4h)
            gates = gates + cond.permute(0, 2, 3, 1)
        w_s2s = self.s2s_taps()  # (k*h, 4h)
        h = c = x.new_zeros(b * width, self.hidden)  # the state above row 0
        hs = []
        for gates_row in gates.unbind(1):  # (B, W, 4h); unbind: one cat in the backward
            hp = F.pad(h.view(b, width, -1), (0, 0, p, p))  # (B, W + 2p, h)
            h_taps = torch.cat([hp[:, t : t + width] for t in range(self.kernel)], dim=-1)
            pre = torch.addmm(
                gates_row.reshape(b * width, four_h), h_taps.view(b * width, -1), w_s2s
            )  # (B*W, 4h)
            h, c = lstm_cell(pre.view(-1, 4, self.hidden), c)  # (B*W, h) each
            hs.append(h.view(b, width, -1))
        h_map = torch.stack(hs, dim=1).permute(0, 3, 1, 2)  # (B, h, H, W), channels last
        return self.output(x, h_map)

    def output(self, x: Tensor, h: Tensor) -> Tensor:
        """Residual output: ``x + out(dropout(h))``, ``(B, F, H, W)`` (one-row maps too)."""
        return x + self.out(self.drop(h))


__all__ = ["RowLSTM", "gate_groups", "lstm_update"]
