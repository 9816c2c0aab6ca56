"""PixelRNN generator (van den Oord et al. 2016): input conv -> recurrent layers -> head.

Shapes (``C`` image channels, ``L`` levels, ``h`` hidden, ``F = 2h`` features)::

    x          (B, C, H, W)     integer levels in [0, L-1]
    scaled     (B, C, H, W)     float in [-1, 1]
    input conv (B, F, H, W)     7x7 mask A (section 3.4)
    layers     (B, F, H, W)     Row LSTM layers with residual connections
    head       (B, C*L, H, W)   ReLU -> 1x1 mask B -> ReLU -> 1x1 mask B
    logits     (B, L, C, H, W)  per-pixel, per-channel softmax over levels (section 2.2)

Every convolution is masked with ``C`` channel groups, so the logits of channel
``c`` at pixel ``(i, j)`` depend only on pixels before ``(i, j)`` in raster order
and on channels ``< c`` of pixel ``(i, j)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from rnnexp.models.masked import MaskedConv2d
from rnnexp.models.row_lstm import RowLSTM

ARCHS = ("row_lstm",)


@dataclass
class GeneratorConfig:
    """Hyperparameters that rebuild a :class:`PixelRNN` (stored in checkpoints).

    Attributes:
        arch: layer type, one of :data:`ARCHS`.
        channels: image channels ``C`` (1 grey, 3 RGB).
        levels: softmax size per channel (256 for 8-bit images).
        hidden: recurrent hidden size ``h`` (divisible by ``channels``); features are ``2h``.
        layers: number of recurrent layers.
        kernel: width ``k`` (odd) of the layers' ``1 x k`` convolutions.
        input_kernel: size (odd) of the first, mask-A, convolution.
        head_hidden: hidden width of the output head (divisible by ``channels``).

    Example:
        >>> cfg = GeneratorConfig.from_dict({"hidden": 16, "levels": 17})
        >>> GeneratorConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    arch: str = "row_lstm"
    channels: int = 1
    levels: int = 256
    hidden: int = 32
    layers: int = 2
    kernel: int = 3
    input_kernel: int = 7
    head_hidden: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or self.arch not in ARCHS:
            raise ValueError(f"generator arch must be one of {ARCHS}, got {self.arch!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "arch" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"generator {f.name} must be an integer, got {value!r}")
        minimum = {"channels": 1, "levels": 2, "hidden": 1, "layers": 1, "head_hidden": 1}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(f"generator {name} must be >= {low}, got {getattr(self, name)}")
        for name in ("kernel", "input_kernel"):
            value = getattr(self, name)
            if value < 1 or value % 2 == 0:
                raise ValueError(f"generator {name} must be odd and positive, got {value}")
        for name in ("hidden", "head_hidden"):
            if getattr(self, name) % self.channels != 0:
                raise ValueError(
                    f"generator {name}={getattr(self, name)} must be divisible by "
                    f"channels={self.channels} (one channel group per colour)"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown generator config key(s) {unknown}; accepted keys: {sorted(known)}"
            )
        return cls(**d)


def _make_layer(config: GeneratorConfig, features: int) -> nn.Module:
    """One recurrent layer ``(B, F, H, W) -> (B, F, H, W)``; add a branch per new arch."""
    if config.arch == "row_lstm":
        return RowLSTM(features, config.hidden, config.kernel, config.channels)
    raise ValueError(f"generator arch must be one of {ARCHS}, got {config.arch!r}")


class PixelRNN(nn.Module):
    """Autoregressive image model over discrete levels.

    ``forward(x)`` maps integer images ``(B, C, H, W)`` to logits ``(B, L, C, H, W)``,
    so ``F.cross_entropy(model(x), x)`` is the mean NLL per sub-pixel in nats.

    Example:
        >>> model = PixelRNN(GeneratorConfig(levels=4, hidden=8, head_hidden=8))
        >>> model(torch.zeros(2, 1, 5, 5, dtype=torch.long)).shape
        torch.Size([2, 4, 1, 5, 5])
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        if config.arch not in ARCHS:
            raise ValueError(f"generator arch must be one of {ARCHS}, got {config.arch!r}")
        self.config = config
        c, features = config.channels, 2 * config.hidden
        self.input_conv = MaskedConv2d(c, features, config.input_kernel, "A", c)
        self.layers = nn.ModuleList(_make_layer(config, features) for _ in range(config.layers))
        self.head = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(features, config.head_hidden, 1, "B", c),
            nn.ReLU(),
            MaskedConv2d(config.head_hidden, c * config.levels, 1, "B", c),
        )

    def scale(self, x: Tensor) -> Tensor:
        """Integer levels ``(B, C, H, W)`` -> floats in ``[-1, 1]`` of the parameters' dtype."""
        dtype = self.input_conv.weight.dtype
        return x.to(dtype) * (2.0 / (self.config.levels - 1)) - 1.0

    def forward_scaled(self, xs: Tensor) -> Tensor:
        """Logits ``(B, L, C, H, W)`` from an already scaled float input ``(B, C, H, W)``.

        Differentiable in ``xs``; used by the causality tests.
        """
        b, c, h, w = xs.shape
        z = self.input_conv(xs)  # (B, F, H, W)
        for layer in self.layers:
            z = layer(z)  # (B, F, H, W)
        out = self.head(z)  # (B, C*L, H, W), channel c's logits are out-group c
        out = out.view(b, c, self.config.levels, h, w)  # (B, C, L, H, W)
        return out.transpose(1, 2)  # (B, L, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, L, C, H, W)`` of integer images ``x`` ``(B, C, H, W)``."""
        if x.is_floating_point() or x.is_complex():
            raise TypeError(
                f"PixelRNN expects integer levels, got dtype {x.dtype}; "
                "use forward_scaled() for float input in [-1, 1]"
            )
        if x.dim() != 4 or x.shape[1] != self.config.channels:
            raise ValueError(
                f"PixelRNN expects input (B, {self.config.channels}, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        return self.forward_scaled(self.scale(x))

    def nll(self, x: Tensor) -> Tensor:
        """Negative log-likelihood in nats per image, ``(B,)`` (sum over C, H, W)."""
        return F.cross_entropy(self(x), x, reduction="none").sum(dim=(1, 2, 3))
