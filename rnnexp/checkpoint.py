"""Read checkpoints written by the train stage, safely.

Checkpoints are loaded with ``torch.load(weights_only=True)``: a pickle that would
run code is refused. They carry what is needed to rebuild the generator
(``hyper_parameters``), the training history and the MLflow run id (``rnnexp``).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rnnexp.atomic import atomic_write_bytes
from rnnexp.errors import RnnexpError
from rnnexp.models.generator import GeneratorConfig, PixelRNN


@dataclass
class LoadedCheckpoint:
    generator: PixelRNN
    image_shape: tuple[int, int, int]
    run_id: str | None
    history: list[dict[str, float]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> LoadedCheckpoint:
    """Rebuild the generator of a train-stage checkpoint, in eval mode.

    Raises:
        RnnexpError: the file is missing, not a checkpoint, truncated, unsafe, or
            not one of ours — with the path in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise RnnexpError(f"{path}: checkpoint not found (run `dvc repro train` first)")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RnnexpError(
            f"{path}: refused to load: not a plain-weights checkpoint ({first})"
        ) from None
    except Exception as exc:  # torch's legacy (non-zip) reader raises KeyError and others
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RnnexpError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {first}"
        ) from None
    if not isinstance(raw, dict) or "state_dict" not in raw or "hyper_parameters" not in raw:
        raise RnnexpError(f"{path}: not an rnnexp checkpoint (no state_dict/hyper_parameters)")
    hparams = raw["hyper_parameters"]
    try:
        config = GeneratorConfig.from_dict(hparams["generator"])
        generator = PixelRNN(config)
        prefix = "generator."
        state = {k[len(prefix) :]: v for k, v in raw["state_dict"].items() if k.startswith(prefix)}
        generator.load_state_dict(state)
        image_shape = tuple(hparams["image_shape"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise RnnexpError(f"{path}: checkpoint does not match the generator code: {exc}") from None
    generator.eval()
    info = raw.get("rnnexp", {})
    return LoadedCheckpoint(
        generator=generator,
        image_shape=image_shape,
        run_id=info.get("run_id"),
        history=list(info.get("history", [])),
        data=dict(info.get("data", {})),
        epoch=int(raw.get("epoch", 0)),
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer that never leaves a half-written file.

    The checkpoint is serialised in memory and moved into place with a rename, so an
    interrupted save (kill, full disk) keeps the previous checkpoint intact.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())
