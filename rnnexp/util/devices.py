"""Which torch device a setting of ``train.accelerator`` means, for work outside Lightning.

Training hands ``train.accelerator`` to Lightning; the evaluate stage runs plain
torch and must pick the same kind of device itself, so that ``auto`` (the default)
evaluates on a GPU where training used one, and on the CPU elsewhere.
"""

from __future__ import annotations

import torch

from rnnexp.errors import RnnexpError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def torch_device(accelerator: str) -> torch.device:
    """The one device that ``accelerator`` trains on, as Lightning chooses it.

    ``auto``: Apple's MPS, else CUDA, else the CPU (Lightning's order); ``gpu``: MPS
    or CUDA; ``cuda``, ``mps``, ``cpu``: that kind. Several devices (DDP) evaluate
    on the first.

    Raises:
        RnnexpError: the setting asks for a kind of device this machine lacks.

    Example:
        >>> torch_device("cpu")
        device(type='cpu')
    """
    cuda, mps = torch.cuda.is_available(), _mps_available()
    if accelerator == "auto":
        return torch.device("mps" if mps else "cuda" if cuda else "cpu")
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator == "gpu" and (mps or cuda):
        return torch.device("mps" if mps else "cuda")
    if (accelerator == "cuda" and cuda) or (accelerator == "mps" and mps):
        return torch.device(accelerator)
    raise RnnexpError(
        f"train.accelerator: {accelerator!r}, but this machine has no such device; set "
        "train.accelerator: auto (a GPU when there is one, else the CPU) or cpu"
    )
