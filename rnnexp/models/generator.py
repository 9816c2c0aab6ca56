"""PixelRNN generator (van den Oord et al. 2016): input conv -> layers -> head.

Shapes (``C`` image channels, ``L`` levels, ``h`` hidden, ``F = 2h`` features)::

    x          (B, C, H, W)     integer levels in [0, L-1]
    scaled     (B, C, H, W)     float in [-1, 1]
    input conv (B, F, H, W)     7x7 mask A (section 3.4)
    layers     (B, F, H, W)     Row LSTM (3.1), Diagonal BiLSTM (3.2) or PixelCNN (3.3)
                                layers, each with a residual connection (3.4) and
                                ``nn.Dropout(config.dropout)`` on its output path
    head       (B, C*L, H, W)   ReLU -> 1x1 mask B -> ReLU -> 1x1 mask B
    logits     (B, L, C, H, W)  per-pixel, per-channel softmax over levels (section 2.2)

Every convolution is masked with ``C`` channel groups, so the logits of channel
``c`` at pixel ``(i, j)`` depend only on pixels before ``(i, j)`` in raster order
and on channels ``< c`` of pixel ``(i, j)``.

Conditioning (Conditional PixelCNN, van den Oord et al. 2016b, section 2.3): with
``num_classes > 0`` and/or ``source_channels > 0`` each layer gets a bias on its
gate pre-activations from the class label and/or the source image, see
:mod:`rnnexp.models.conditioning`. The conditioning inputs are seen everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnexp.models.conditioning import Conditioning, check_conditioning
from rnnexp.models.diagonal import DiagonalBiLSTM
from rnnexp.models.masked import MaskedConv2d
from rnnexp.models.pixelcnn import PixelCNNBlock
from rnnexp.models.row_lstm import RowLSTM

ARCHS = ("row_lstm", "diagonal_bilstm", "pixelcnn")


def _check_dropout(value: object) -> float:
    """``value`` as a float in ``[0, 1)``, else a ``ValueError`` naming ``dropout``."""
    # bool is an int subclass: refuse it explicitly (True would mean p = 1).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"generator dropout must be a number in [0, 1), got {value!r}")
    p = float(value)
    if not 0.0 <= p < 1.0:  # also False for NaN
        raise ValueError(f"generator dropout must be in [0, 1), got {value!r}")
    return p


@dataclass
class GeneratorConfig:
    """Hyperparameters that rebuild a :class:`PixelRNN` (stored in checkpoints).

    Attributes:
        arch: layer type, one of :data:`ARCHS`.
        channels: image channels ``C`` (1 grey, 3 RGB).
        levels: softmax size per channel (256 for 8-bit images).
        hidden: layer hidden size ``h`` (divisible by ``channels``); features are ``2h``.
        layers: number of layers (recurrent layers or PixelCNN blocks).
        kernel: size ``k`` (odd) of the Row LSTM's ``1 x k`` convolutions and of the
            PixelCNN blocks' ``k x k`` convolutions; the Diagonal BiLSTM's kernels are
            fixed by the paper (1x1 input-to-state, 2x1 state-to-state).
        input_kernel: size (odd) of the first, mask-A, convolution.
        head_hidden: hidden width of the output head (divisible by ``channels``).
        num_classes: classes of a class-conditional model (0: not class-conditional).
        source_channels: channels of the source image of an image-to-image model
            (0: no source image).
        dropout: probability ``p`` (``0 <= p < 1``) of the ``nn.Dropout`` on each
            layer's output path, before the residual add (a regulariser; active in
            train mode only). 0 leaves the model exactly as without dropout.

    Config dicts written before ``num_classes``/``source_channels``/``dropout``
    existed load as unconditional models without dropout; unknown keys are rejected.

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
    num_classes: int = 0
    source_channels: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or self.arch not in ARCHS:
            raise ValueError(f"generator arch must be one of {ARCHS}, got {self.arch!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("arch", "dropout"):
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"generator {f.name} must be an integer, got {value!r}")
        self.dropout = _check_dropout(self.dropout)
        minimum = {
            "channels": 1,
            "levels": 2,
            "hidden": 1,
            "layers": 1,
            "head_hidden": 1,
            "num_classes": 0,
            "source_channels": 0,
        }
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

    @property
    def conditional(self) -> bool:
        """Whether the model takes labels and/or a source image."""
        return self.num_classes > 0 or self.source_channels > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (stored in checkpoints); :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        """Config from a dict; missing keys take their defaults, unknown keys raise."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown generator config key(s) {unknown}; accepted keys: {sorted(known)}"
            )
        return cls(**d)


def _make_layer(config: GeneratorConfig, features: int) -> nn.Module:
    """One layer ``(B, F, H, W) -> (B, F, H, W)`` with ``forward(x, cond)`` and ``cond_width``."""
    c, p = config.channels, config.dropout
    if config.arch == "row_lstm":
        return RowLSTM(features, config.hidden, config.kernel, c, dropout=p)
    if config.arch == "diagonal_bilstm":
        return DiagonalBiLSTM(features, config.hidden, c, dropout=p)
    if config.arch == "pixelcnn":
        return PixelCNNBlock(features, config.hidden, config.kernel, c, dropout=p)
    raise ValueError(f"generator arch must be one of {ARCHS}, got {config.arch!r}")


class PixelRNN(nn.Module):
    """Autoregressive image model over discrete levels, optionally conditional.

    ``forward(x)`` maps integer images ``(B, C, H, W)`` to logits ``(B, L, C, H, W)``,
    so ``F.cross_entropy(model(x), x)`` is the mean NLL per sub-pixel in nats.
    Conditional models (``config.num_classes`` / ``config.source_channels``) also
    take ``labels`` ``(B,)`` and/or ``source`` ``(B, S, Hs, Ws)`` in ``[-1, 1]``.

    Parts a step-wise (cached) sampler can reuse: ``input_conv``, ``layers`` (see
    the layer classes for their per-row / per-diagonal methods), ``head``,
    :meth:`cond_biases` (one bias per layer, computed once per batch) and
    :meth:`logits_from_head` (head output -> logits).

    Dropout (``config.dropout``) is active in train mode only, as for any
    ``nn.Dropout``; the samplers put the model in eval mode while they draw, and
    the cached sampler never applies dropout.

    Example:
        >>> model = PixelRNN(GeneratorConfig(levels=4, hidden=8, head_hidden=8))
        >>> model(torch.zeros(2, 1, 5, 5, dtype=torch.long)).shape
        torch.Size([2, 4, 1, 5, 5])
        >>> cfg = GeneratorConfig(arch="pixelcnn", levels=4, hidden=8, num_classes=10)
        >>> x = torch.zeros(2, 1, 5, 5, dtype=torch.long)
        >>> PixelRNN(cfg)(x, labels=torch.tensor([1, 7])).shape
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
        self.conditioning: Conditioning | None = None
        if config.conditional:
            self.conditioning = Conditioning(
                config.num_classes,
                config.source_channels,
                [layer.cond_width for layer in self.layers],
                embed=features,
            )

    def scale(self, x: Tensor) -> Tensor:
        """Integer levels ``(B, C, H, W)`` -> floats in ``[-1, 1]`` of the parameters' dtype."""
        dtype = self.input_conv.weight.dtype
        return x.to(dtype) * (2.0 / (self.config.levels - 1)) - 1.0

    def cond_biases(
        self,
        batch: int,
        height: int,
        width: int,
        labels: Tensor | None = None,
        source: Tensor | None = None,
    ) -> list[Tensor | None]:
        """Conditioning bias of each layer, added to its gate pre-activations.

        Checks ``labels``/``source`` against the config (``ValueError`` naming the
        problem). Returns one entry per layer: ``None`` for an unconditional model,
        else a tensor broadcastable to ``(B, cond_width, H, W)``: ``(B, w, 1, 1)``
        for labels only, ``(B, w, H, W)`` with a source. They do not depend on the
        image being generated, so a sampler computes them once per batch.
        """
        cfg = self.config
        check_conditioning(cfg.num_classes, cfg.source_channels, batch, labels, source)
        if self.conditioning is None:
            return [None] * len(self.layers)
        if source is not None:
            source = source.to(self.input_conv.weight.dtype)
        return list(self.conditioning(labels, source, height, width))

    def logits_from_head(self, out: Tensor) -> Tensor:
        """Head output ``(B, C*L, H, W)`` -> logits ``(B, L, C, H, W)`` (any ``H, W``)."""
        b, _, h, w = out.shape
        out = out.view(b, self.config.channels, self.config.levels, h, w)  # (B, C, L, H, W)
        return out.transpose(1, 2)  # (B, L, C, H, W)

    def forward_scaled(
        self, xs: Tensor, labels: Tensor | None = None, source: Tensor | None = None
    ) -> Tensor:
        """Logits ``(B, L, C, H, W)`` from an already scaled float input ``(B, C, H, W)``.

        Differentiable in ``xs`` (and in ``source``); used by the causality tests.
        """
        return self.logits_from_head(self.head_output(xs, labels, source))

    def head_output(
        self, xs: Tensor, labels: Tensor | None = None, source: Tensor | None = None
    ) -> Tensor:
        """The head's output ``(B, C*L, H, W)``, channels last, from a scaled input."""
        b, _, h, w = xs.shape
        biases = self.cond_biases(b, h, w, labels, source)
        # Channels last: the layers and the head are 1x1 convolutions and matrix
        # products over channels, which run as plain GEMMs on this memory format.
        z = self.input_conv(xs).contiguous(memory_format=torch.channels_last)  # (B, F, H, W)
        for layer, cond in zip(self.layers, biases, strict=True):
            z = layer(z, cond)  # (B, F, H, W)
        return self.head(z)  # (B, C*L, H, W), channel c's logits are out-group c

    def forward(
        self, x: Tensor, labels: Tensor | None = None, source: Tensor | None = None
    ) -> Tensor:
        """Logits ``(B, L, C, H, W)`` of integer images ``x`` ``(B, C, H, W)``.

        Args:
            x: integer levels ``(B, C, H, W)`` in ``[0, L-1]``.
            labels: ``(B,)`` class indices, required iff ``config.num_classes > 0``.
            source: ``(B, source_channels, Hs, Ws)`` float image in ``[-1, 1]`` (any
                ``Hs, Ws``; resized to ``H, W``), required iff ``config.source_channels > 0``.
        """
        self._check_levels(x)
        return self.forward_scaled(self.scale(x), labels, source)

    def _check_levels(self, x: Tensor) -> None:
        """Raise unless ``x`` is an integer image batch ``(B, C, H, W)``."""
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

    def nll(self, x: Tensor, labels: Tensor | None = None, source: Tensor | None = None) -> Tensor:
        """Negative log-likelihood in nats per image, ``(B,)`` (sum over C, H, W).

        Equal to ``F.cross_entropy(self(x), x)`` summed per image, but computed on the
        head's channels-last output: there each sub-pixel's ``L`` logits are
        contiguous, so the rows of a ``(B*H*W*C, L)`` view are the cross-entropy's
        input without a copy, and its log-softmax runs over contiguous memory (about
        half the time of the strided one over the logits' ``L`` dim, forward and
        backward; 2026-12-01, one thread).
        """
        self._check_levels(x)
        out = self.head_output(self.scale(x), labels, source)  # (B, C*L, H, W)
        rows = out.permute(0, 2, 3, 1).reshape(-1, self.config.levels)  # (B*H*W*C, L)
        targets = x.permute(0, 2, 3, 1).reshape(-1)  # (B*H*W*C,), the same order
        nll = F.cross_entropy(rows, targets, reduction="none")
        return nll.view(x.shape[0], -1).sum(dim=1)


def count_parameters(config: GeneratorConfig) -> int:
    """Number of trainable parameters of ``PixelRNN(config)``.

    Example:
        >>> count_parameters(GeneratorConfig(hidden=4, layers=1, head_hidden=4, levels=4))
        1104
    """
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = PixelRNN(config)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_hidden(config: GeneratorConfig, target_params: int, arch: str) -> int:
    """The ``hidden`` of ``arch`` whose parameter count is closest to ``target_params``.

    All other settings are taken from ``config``; ``hidden`` stays a multiple of
    ``config.channels``. Used for equal-parameter-count comparisons of the archs.

    Example:
        >>> base = GeneratorConfig(hidden=32, layers=2, levels=17)
        >>> h = matched_hidden(base, count_parameters(base), "pixelcnn")
        >>> abs(count_parameters(dataclasses.replace(base, arch="pixelcnn", hidden=h))
        ...     / count_parameters(base) - 1) < 0.1
        True
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    step = config.channels

    counts: dict[int, int] = {}

    def count(m: int) -> int:
        if m not in counts:
            counts[m] = count_parameters(dataclasses.replace(config, arch=arch, hidden=m * step))
        return counts[m]

    # Every width is linear in hidden, so the count is a quadratic a m^2 + b m + c
    # in m = hidden / channels: fit it on three tiny models, solve, then walk to the
    # best m (the count grows with m, so the walk ends at the closest one).
    c1, c2, c3 = count(1), count(2), count(3)
    a = (c3 - 2 * c2 + c1) / 2
    b = c2 - c1 - 3 * a
    c = c1 - a - b
    disc = b * b - 4 * a * (c - target_params)
    if a > 0 and disc >= 0:
        m = max(1, round((-b + math.sqrt(disc)) / (2 * a)))
    elif b > 0:
        m = max(1, round((target_params - c) / b))
    else:
        m = 1

    def error(m: int) -> int:
        return abs(count(m) - target_params)

    while error(m + 1) < error(m):
        m += 1
    while m > 1 and error(m - 1) < error(m):
        m -= 1
    return m * step
