"""Conditioning of PixelRNN layers (Conditional PixelCNN, van den Oord et al. 2016b, 2.3).

A conditional model learns ``p(x | y)``: each layer gets a *conditioning bias*
added to the pre-activations of its gates (``tanh(W_f * x + V_f^T h)`` in the
paper's notation; here the input-to-state gates of the LSTMs, or the masked
convolution of a PixelCNN block):

- class-conditional (2016b, section 2.3, ``h`` a one-hot class): a learned class
  embedding ``(B, E)``, projected per layer by a linear map to ``(B, w, 1, 1)``,
  the same bias at every pixel;
- image-to-image (2016b, section 2.3, location-dependent ``s = m(h)``): a small
  *unmasked* convolutional encoder maps the source image, resized to the target
  ``H x W``, to ``(B, E, H, W)``, and a per-layer 1x1 convolution projects it to
  ``(B, w, H, W)``. The source is an input, not a target, so every pixel may see
  all of it.

``w`` is the layer's ``cond_width`` (``4h`` Row LSTM, ``8h`` Diagonal BiLSTM,
``h`` PixelCNN block). The biases do not depend on the image being generated, so
a sampler computes them once per batch (:meth:`Conditioning.forward`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_conditioning(
    num_classes: int,
    source_channels: int,
    batch: int,
    labels: Tensor | None,
    source: Tensor | None,
) -> None:
    """Raise ``ValueError`` unless ``labels``/``source`` fit a model with these settings.

    Args:
        num_classes: classes of a class-conditional model (0: unconditional on labels).
        source_channels: channels of the source image (0: no source).
        batch: batch size ``B`` of the images being modelled.
        labels: ``(B,)`` integer class indices in ``[0, num_classes)`` or ``None``.
        source: ``(B, source_channels, Hs, Ws)`` float image or ``None``.
    """
    if num_classes > 0:
        if labels is None:
            raise ValueError(
                f"this generator is class-conditional (num_classes={num_classes}): "
                "pass labels, a (B,) integer tensor"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if tuple(labels.shape) != (batch,):
            raise ValueError(
                f"labels must have shape ({batch},) (one class per image), "
                f"got {tuple(labels.shape)}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes - 1}], got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
    elif labels is not None:
        raise ValueError("this generator is not class-conditional (num_classes=0); got labels")
    if source_channels > 0:
        if source is None:
            raise ValueError(
                f"this generator is conditioned on a source image "
                f"(source_channels={source_channels}): pass source, a "
                f"(B, {source_channels}, Hs, Ws) float tensor in [-1, 1]"
            )
        if not source.is_floating_point():
            raise ValueError(f"source must be a float tensor in [-1, 1], got {source.dtype}")
        if source.dim() != 4 or source.shape[0] != batch or source.shape[1] != source_channels:
            raise ValueError(
                f"source must have shape ({batch}, {source_channels}, Hs, Ws), "
                f"got {tuple(source.shape)}"
            )
    elif source is not None:
        raise ValueError("this generator takes no source image (source_channels=0); got source")


class SourceEncoder(nn.Module):
    """Unmasked convolutional encoder of a source image (2016b, section 2.3: ``s = m(h)``).

    ``(B, S, Hs, Ws)`` in ``[-1, 1]`` -> resized (bilinear) to ``(B, S, H, W)`` ->
    ``depth`` x (3x3 conv -> ReLU) -> ``(B, width, H, W)``.

    Example:
        >>> enc = SourceEncoder(source_channels=1, width=8)
        >>> enc(torch.zeros(2, 1, 4, 4), 8, 8).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(self, source_channels: int, width: int, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(depth):
            layers += [nn.Conv2d(source_channels if k == 0 else width, width, 3, padding=1)]
            layers += [nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, source: Tensor, height: int, width: int) -> Tensor:
        if tuple(source.shape[2:]) != (height, width):
            # e.g. upscaling: the source is (H/2, W/2); bilinear, antialiased when shrinking.
            source = F.interpolate(
                source, size=(height, width), mode="bilinear", align_corners=False, antialias=True
            )  # (B, S, H, W)
        return self.net(source)  # (B, width, H, W)


class Conditioning(nn.Module):
    """Per-layer conditioning biases from class labels and/or a source image.

    Args:
        num_classes: number of classes (0: no class conditioning).
        source_channels: channels of the source image (0: no source conditioning).
        widths: ``cond_width`` of each layer, in order.
        embed: width ``E`` of the class embedding and of the source encoder.

    ``forward(labels, source, height, width)`` returns one bias per layer,
    ``(B, w, H, W)`` with a source, else ``(B, w, 1, 1)``; inputs must already have
    passed :func:`check_conditioning`.

    Example:
        >>> cond = Conditioning(num_classes=10, source_channels=0, widths=[8, 8], embed=4)
        >>> [b.shape for b in cond(torch.tensor([3]), None, 5, 5)]
        [torch.Size([1, 8, 1, 1]), torch.Size([1, 8, 1, 1])]
    """

    def __init__(
        self, num_classes: int, source_channels: int, widths: Sequence[int], embed: int
    ) -> None:
        super().__init__()
        if num_classes <= 0 and source_channels <= 0:
            raise ValueError("Conditioning needs num_classes > 0 or source_channels > 0")
        self.num_classes = num_classes
        self.source_channels = source_channels
        self.widths = list(widths)
        self.embedding: nn.Embedding | None = None
        self.class_proj: nn.ModuleList | None = None
        self.encoder: SourceEncoder | None = None
        self.source_proj: nn.ModuleList | None = None
        if num_classes > 0:
            self.embedding = nn.Embedding(num_classes, embed)
            self.class_proj = nn.ModuleList(nn.Linear(embed, w, bias=False) for w in widths)
        if source_channels > 0:
            self.encoder = SourceEncoder(source_channels, embed)
            self.source_proj = nn.ModuleList(nn.Conv2d(embed, w, 1, bias=False) for w in widths)

    def forward(
        self, labels: Tensor | None, source: Tensor | None, height: int, width: int
    ) -> list[Tensor]:
        biases: list[Tensor | None] = [None] * len(self.widths)
        if self.embedding is not None and self.class_proj is not None and labels is not None:
            e = self.embedding(labels)  # (B, E)
            for k, proj in enumerate(self.class_proj):
                biases[k] = proj(e)[:, :, None, None]  # (B, w, 1, 1)
        if self.encoder is not None and self.source_proj is not None and source is not None:
            s = self.encoder(source, height, width)  # (B, E, H, W)
            for k, proj in enumerate(self.source_proj):
                bias = proj(s)  # (B, w, H, W)
                prev = biases[k]
                biases[k] = bias if prev is None else prev + bias
        if any(b is None for b in biases):
            raise ValueError("conditioning inputs missing; call check_conditioning first")
        return [b for b in biases if b is not None]


__all__ = ["Conditioning", "SourceEncoder", "check_conditioning"]
