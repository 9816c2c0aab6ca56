"""Which torch device a setting of ``train.accelerator`` means, for work outside Lightning.

Training hands ``train.accelerator`` to Lightning; the evaluate stage runs plain
torch and must pick the same kind of device itself, so that ``auto`` (the default)
evaluates on a GPU where training used one, and on the CPU elsewhere. Before a
training opens its MLflow run, :func:`check_training_machine` refuses settings this
machine cannot start (Lightning and torch.compile would raise only once the run is open).
"""

from __future__ import annotations

from typing import Any

import torch

from rnnexp.config_checks import cpu_precision_problem
from rnnexp.errors import RnnexpError
from rnnexp.util.distributed import check_launch


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
    has = "a CUDA GPU" if cuda else "an MPS device" if mps else "only the CPU (no CUDA or MPS)"
    raise RnnexpError(
        f"train.accelerator: {accelerator!r}, but this machine has {has}; set "
        "train.accelerator: auto (a GPU when there is one, else the CPU) or cpu"
    )


def check_training_devices(accelerator: str, devices: int) -> None:
    """Refuse ``train.accelerator`` and ``train.devices`` that this machine cannot train on.

    Call it before any MLflow run or study opens. On the CPU any number of devices
    (processes) works; on CUDA no more than the visible GPUs; MPS is one device.

    Raises:
        RnnexpError: naming the key, what it asks for and what the machine has.

    Example:
        >>> check_training_devices("cpu", 2)
    """
    kind = torch_device(accelerator).type
    count = torch.cuda.device_count() if kind == "cuda" else 1 if kind == "mps" else devices
    if devices > count:
        plural = "s" if count != 1 else ""
        hint = " (CUDA_VISIBLE_DEVICES limits what is visible)" if kind == "cuda" else ""
        raise RnnexpError(
            f"train.devices: {devices} with train.accelerator: {accelerator!r}, but this machine "
            f"has {count} {kind.upper()} device{plural}{hint}; set train.devices to at most {count}"
        )


def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device`` here (None: it can).

    Its default backend, inductor, compiles CPU kernels with a C++ compiler (``$CXX``,
    else ``g++``) and CUDA kernels with Triton (GPUs of compute capability 7.0 and up).
    Without them the first training step fails, with the MLflow run already open.

    Example:
        >>> compile_problem(torch.device("meta")) is None  # no check for other devices
        True
    """
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed, or the GPU is older than compute capability 7.0"
    elif device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler

        try:
            get_cpp_compiler()
        except InvalidCxxCompiler:
            return "no C++ compiler: torch's inductor looks for $CXX, else g++ (apt install g++)"
    return None


def check_training_machine(train: Any) -> None:
    """Refuse a training this machine cannot start or that would wait forever: the
    devices of ``train.accelerator``/``train.devices`` (:func:`check_training_devices`),
    the members of ``train.num_nodes`` (:func:`rnnexp.util.distributed.check_launch`),
    ``train.compile`` without a compiler (:func:`compile_problem`) and
    ``train.precision: 16-mixed`` where ``auto`` means the CPU.

    ``train`` is ``params.train``. Call it before any MLflow run or Optuna study opens.
    """
    check_training_devices(train.accelerator, train.devices)
    device = torch_device(train.accelerator)
    if device.type == "cpu" and (problem := cpu_precision_problem(train.precision)):
        raise RnnexpError(f"{problem} (train.accelerator {train.accelerator!r} found no GPU)")
    if train.compile and (problem := compile_problem(device)):
        raise RnnexpError(
            f"train.compile: true, but torch.compile cannot build kernels for the "
            f"{device.type.upper()} of this machine: {problem}; set train.compile: false"
        )
    check_launch(train.num_nodes)
