"""Read checkpoints written by the train stage, safely.

Checkpoints are loaded with ``torch.load(weights_only=True)``: a pickle that would
run code is refused. They carry what is needed to rebuild the generator
(``hyper_parameters``), the training history and the MLflow run id (``rnnexp``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnexp.errors import RnnexpError
from rnnexp.models.generator import GeneratorConfig, PixelRNN
from rnnexp.util.safe_load import load_weights


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
    raw = load_weights(path, "checkpoint", map_location)
    if not isinstance(raw, dict) or "state_dict" not in raw or "hyper_parameters" not in raw:
        raise RnnexpError(f"{path}: not an rnnexp checkpoint (no state_dict/hyper_parameters)")
    hparams = raw["hyper_parameters"]
    try:
        config = GeneratorConfig.from_dict(hparams["generator"])
        generator = PixelRNN(config)
        prefix = "generator."
        state = {k[len(prefix) :]: v for k, v in raw["state_dict"].items() if k.startswith(prefix)}
        image_shape = tuple(hparams["image_shape"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RnnexpError(f"{path}: checkpoint does not match the generator code: {exc}") from None
    try:
        keys = generator.load_state_dict(state, strict=False)  # shape mismatches still raise
        wrong = [f"missing {k}" for k in keys.missing_keys]
        wrong += [f"unexpected {k}" for k in keys.unexpected_keys]
    except RuntimeError as exc:
        wrong = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    if wrong:
        # e.g. weights of another arch or size than the hyper_parameters say
        raise RnnexpError(
            f"{path}: checkpoint does not match the generator code: its weights are not those "
            f"of the {config.arch} generator (hidden {config.hidden}, {config.layers} layers) "
            f"its hyper_parameters describe: {len(wrong)} problems, e.g. {wrong[0][:200]}"
        )
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


def check_fits_data(
    loaded: LoadedCheckpoint, meta: dict[str, Any], checkpoint: str | Path, prepared_dir: str | Path
) -> None:
    """Refuse to score prepared data the checkpoint's generator was not built for.

    Levels and image shape must match; a class-conditional model needs labelled data
    with as many classes; an image-to-image model needs data prepared for its task
    (the same conditioning source). ``meta`` is the prepared data's ``meta.json``.

    Raises:
        RnnexpError: naming the checkpoint, the data folder and each difference.
    """
    config = loaded.generator.config
    model: list[str] = []
    data: list[str] = []

    def differ(of_model: str, of_data: str) -> None:
        model.append(of_model)
        data.append(of_data)

    if config.levels != meta["levels"]:
        differ(f"{config.levels} levels", f"{meta['levels']} levels")
    data_shape = (meta["channels"], meta["height"], meta["width"])
    if tuple(loaded.image_shape) != data_shape:
        differ(f"images {tuple(loaded.image_shape)}", f"images {data_shape}")
    if config.num_classes and (
        not meta.get("has_labels") or meta.get("num_classes") != config.num_classes
    ):
        differ(f"{config.num_classes} classes", f"{meta.get('num_classes') or 'no'} classes")
    if config.source_channels:
        model_task = loaded.data.get("task", "an image-to-image task")
        data_task = meta.get("task", "unconditional")
        source = meta.get("source_shape") or [0]
        if model_task != data_task or source[0] != config.source_channels:
            differ(f"task {model_task!r}", f"task {data_task!r}")
    if model:
        raise RnnexpError(
            f"{checkpoint}: the model does not fit the data in {prepared_dir}: it was trained "
            f"for {', '.join(model)}, but the data has {', '.join(data)}; retrain "
            "(dvc repro train) or point at the right data"
        )
