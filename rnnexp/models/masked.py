"""Masked convolutions (PixelRNN, van den Oord et al. 2016, sections 3.4 and 3.5).

A masked convolution lets the output at pixel ``(i, j)`` see only what comes
before it in raster order: every row above, the pixels left of ``(i, j)`` in row
``i``, and, at ``(i, j)`` itself, only the colour channels allowed by the mask
type. Channels are split into ``C`` groups (``C`` = number of image colour
channels, R, G, B for RGB), and at the centre pixel

- mask ``'A'`` (first layer): output group ``g`` sees input groups ``< g``;
- mask ``'B'`` (later layers): output group ``g`` sees input groups ``<= g``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASK_TYPES = ("A", "B")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    kh, kw = size
    return int(kh), int(kw)


def contiguous_groups(channels: int, groups: int, what: str = "channels") -> Tensor:
    """Group index of each of ``channels`` channels split into ``groups`` contiguous blocks.

    Example: ``contiguous_groups(6, 3) -> tensor([0, 0, 1, 1, 2, 2])``.
    """
    if channels % groups != 0:
        raise ValueError(
            f"{what}={channels} must be divisible by channel_groups={groups} "
            "(one block of channels per image colour channel)"
        )
    # On the CPU also under a ``torch.device(...)`` context: group checks need values.
    return torch.arange(channels, device="cpu") // (channels // groups)


def build_mask(
    in_groups: Tensor,
    out_groups: Tensor,
    kernel_size: tuple[int, int],
    mask_type: str,
) -> Tensor:
    """Return the (out, in, kh, kw) 0/1 mask for the given channel group assignments."""
    kh, kw = kernel_size
    cr, cc = kh // 2, kw // 2  # centre row / column
    mask = torch.ones(len(out_groups), len(in_groups), kh, kw, device=in_groups.device)
    mask[:, :, cr + 1 :, :] = 0  # rows below the centre
    mask[:, :, cr, cc + 1 :] = 0  # right of the centre in the centre row
    if mask_type == "A":
        allowed = in_groups[None, :] < out_groups[:, None]
    else:
        allowed = in_groups[None, :] <= out_groups[:, None]
    mask[:, :, cr, cc] = allowed.to(mask.dtype)  # (out, in)
    return mask


def _support_box(mask: Tensor) -> tuple[int, int, int, int] | None:
    """Rows r0..r1 and columns c0..c1 holding every unmasked tap; None = whole kernel."""
    kh, kw = mask.shape[-2:]
    taps = mask.flatten(0, 1).any(dim=0)  # (kh, kw)
    rows = taps.any(dim=1).nonzero().flatten().tolist()
    cols = taps.any(dim=0).nonzero().flatten().tolist()
    if not rows or (len(rows) == kh and len(cols) == kw):
        return None
    return rows[0], rows[-1], cols[0], cols[-1]


class MaskedConv2d(nn.Conv2d):
    """A 2-d convolution whose kernel only sees the past in raster/channel order.

    Args:
        in_channels: input channels, divisible by ``channel_groups`` (the image input
            with ``in_channels == channel_groups`` is one channel per group).
        out_channels: output channels, divisible by ``channel_groups`` unless
            ``out_groups`` is given.
        kernel_size: odd ``k`` or ``(kh, kw)``, e.g. ``(1, k)`` for a row convolution
            (its only row is the centre row). Padding keeps ``H x W`` unchanged.
        mask_type: ``'A'`` (excludes the current channel group) or ``'B'`` (includes it).
        channel_groups: number of image colour channels ``C`` (1 grey, 3 RGB).
        out_groups: optional explicit group index (in ``[0, C)``) of each output
            channel, for layouts that are not ``C`` contiguous blocks, e.g. LSTM gates
            ``[i|f|o|g]`` where each gate is split into ``C`` blocks.
        bias: add a learnable bias.

    Example:
        >>> conv = MaskedConv2d(3, 6, 3, "A", channel_groups=3)
        >>> conv(torch.zeros(1, 3, 5, 5)).shape
        torch.Size([1, 6, 5, 5])
    """

    mask: Tensor
    #: Convolve only with the rows/columns of the kernel the mask keeps (same result,
    #: fewer multiplications). A class switch so benchmarks can compare both ways.
    crop_kernels: bool = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        mask_type: str,
        channel_groups: int = 1,
        *,
        out_groups: Sequence[int] | Tensor | None = None,
        bias: bool = True,
    ) -> None:
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        if channel_groups < 1:
            raise ValueError(f"channel_groups must be >= 1, got {channel_groups}")
        kh, kw = _pair(kernel_size)
        if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {(kh, kw)}")
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2), bias=bias)
        self.mask_type = mask_type
        self.channel_groups = channel_groups

        in_g = contiguous_groups(in_channels, channel_groups, "in_channels")
        if out_groups is None:
            out_g = contiguous_groups(out_channels, channel_groups, "out_channels")
        else:
            out_g = torch.as_tensor(out_groups, dtype=torch.long, device="cpu")
            if out_g.shape != (out_channels,):
                raise ValueError(
                    f"out_groups must have one entry per output channel ({out_channels}), "
                    f"got shape {tuple(out_g.shape)}"
                )
            if out_g.numel() and (out_g.min() < 0 or out_g.max() >= channel_groups):
                raise ValueError(f"out_groups entries must lie in [0, {channel_groups})")
        # Built and checked on the CPU, then put where the weight is (also under a
        # ``torch.device(...)`` context, e.g. "meta" in count_parameters).
        mask = build_mask(in_g, out_g, (kh, kw), mask_type)
        self._support = _support_box(mask)
        self.register_buffer("mask", mask.to(self.weight.device))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight * self.mask
        if self.kernel_size == (1, 1) and x.is_contiguous(memory_format=torch.channels_last):
            # A 1x1 convolution is a product over channels: on a channels-last map it
            # is one GEMM, forward and backward (mkldnn's 1x1 backward was 2-4x slower
            # on the CPU). The result is channels last too.
            out = F.linear(x.permute(0, 2, 3, 1), weight[:, :, 0, 0], self.bias)
            return out.permute(0, 3, 1, 2)  # (B, out, H, W)
        if self._support is None or not self.crop_kernels:
            return self._conv_forward(x, weight, self.bias)
        # Convolve with the part of the kernel the mask keeps (2 of 3 taps of a 1x3
        # mask-B kernel, the upper 4 of 7 rows of a 7x7 one): same result, fewer
        # multiplications. Output (y, x) reads input (y + i - kh//2, x + j - kw//2)
        # for each kept tap (i, j), hence the asymmetric (possibly negative) padding.
        r0, r1, c0, c1 = self._support
        ph, pw = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        x = F.pad(x, (pw - c0, c1 - pw, ph - r0, r1 - ph))
        return F.conv2d(x, weight[:, :, r0 : r1 + 1, c0 : c1 + 1], self.bias)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, mask_type={self.mask_type!r}, "
            f"channel_groups={self.channel_groups}"
        )
