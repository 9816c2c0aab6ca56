"""PixelCNN residual block (PixelRNN, van den Oord et al. 2016, sections 3.3 and 3.4).

The non-recurrent baseline of the PixelRNN paper (figure 5, right): a residual
block of masked convolutions, all mask B with ``C`` colour groups::

    x (B, 2h, H, W) -> ReLU -> 1x1 -> (B, h, H, W) -> ReLU -> k x k -> (B, h, H, W)
                    -> ReLU -> dropout -> 1x1 -> (B, 2h, H, W) -> + x

Every convolution only sees the past in raster/channel order, so the stack is
causal. Its receptive field grows by ``k // 2`` per layer and has the paper's blind
spot (pixels above-right beyond the kernel's reach are never seen); that is a
property of this baseline, not a leak. The optional dropout (train mode only) is
element-wise on the residual branch, so it keeps the masks' causality.

Conditioning (Conditional PixelCNN, 2016b, section 2.3): an optional bias
``cond``, broadcastable to ``(B, h, H, W)``, is added to the ``k x k`` masked
convolution's output before its activation.
"""

from __future__ import annotations

from torch import Tensor, nn

from rnnexp.models.masked import MaskedConv2d


class PixelCNNBlock(nn.Module):
    """Masked residual block: ``(B, features, H, W) -> (B, features, H, W)``.

    Args:
        features: input/output channels ``F`` (divisible by ``channel_groups``).
        hidden: inner width ``h`` (divisible by ``channel_groups``).
        kernel: size ``k`` (odd) of the middle ``k x k`` masked convolution.
        channel_groups: number of image colour channels ``C``.
        dropout: probability of ``nn.Dropout`` on the residual branch, before the
            final 1x1 convolution (train mode only; 0: none).

    A non-recurrent layer: a cached sampler may recompute it on the window that a
    new pixel can influence. ``cond_width`` (``h``) is the width of the
    conditioning bias; ``pre_activation(x, cond)`` gives the conditioned ``k x k``
    convolution output and ``output(x, inner)`` the residual output.

    Example:
        >>> import torch
        >>> block = PixelCNNBlock(features=4, hidden=2, kernel=3)
        >>> block(torch.zeros(1, 4, 3, 5)).shape
        torch.Size([1, 4, 3, 5])
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
        self.cond_width = hidden
        self.act_in = nn.ReLU()
        self.reduce = MaskedConv2d(features, hidden, 1, "B", channel_groups)
        self.act_mid = nn.ReLU()
        self.conv = MaskedConv2d(hidden, hidden, kernel, "B", channel_groups)
        self.act_out = nn.ReLU()
        # No parameters: state_dict keys are those of a block without dropout.
        self.drop = nn.Dropout(dropout)
        self.expand = MaskedConv2d(hidden, features, 1, "B", channel_groups)

    def pre_activation(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``(B, F, H, W) -> (B, h, H, W)``: ReLU -> 1x1 -> ReLU -> k x k (+ ``cond``)."""
        inner = self.conv(self.act_mid(self.reduce(self.act_in(x))))  # (B, h, H, W)
        return inner if cond is None else inner + cond

    def output(self, x: Tensor, inner: Tensor) -> Tensor:
        """Residual output ``x + expand(dropout(ReLU(inner)))``, ``(B, F, H, W)``."""
        return x + self.expand(self.drop(self.act_out(inner)))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``(B, F, H, W) -> (B, F, H, W)``; ``cond`` broadcastable to ``(B, h, H, W)``."""
        return self.output(x, self.pre_activation(x, cond))


__all__ = ["PixelCNNBlock"]
