"""A trained generator as an MLflow 3 logged model: a ``pyfunc`` whose ``predict`` draws images.

:class:`GeneratorModel` wraps the train stage's best checkpoint (the model's artifact
``checkpoint``), loaded with :func:`rnnexp.training.checkpoint.load_checkpoint`: plain
torch, no Lightning, no DVC. Loading needs rnnexp and torch installed (``pip install
-e .`` in a clone); the model carries no copy of the code.

Request (a DataFrame; over HTTP ``{"dataframe_records": [{...}, ...]}``), one row per
request, each answered with ``n`` images:

- ``n`` (int, default 1): how many images;
- ``class`` (int, default -1): the class of a class-conditional model; -1 cycles
  through all classes (0, 1, ..., K-1, 0, ...); ignored by other models;
- ``temperature`` (float, default 1.0) and ``seed`` (int, default 0);
- ``image`` (image-to-image models only, required there): a whole image (C, H, W)
  of level indices, as a nested list; its source is built as the prepare stage
  builds it (occluded, noisy or downsampled), then completed or translated. The
  other models list it as optional only to refuse it with a clear error (MLflow
  would otherwise drop an unknown column with a log line, and answer with samples).

Response: a DataFrame with one row per image: ``image`` (nested list (C, H, W) of
level indices 0..levels-1), ``levels``, ``class`` (-1 where none) and ``seed``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, Schema

from rnnexp.tracking._store import global_store

log = logging.getLogger(__name__)

MODEL_NAME = "generator"
MODEL_ID_TAG = "rnnexp.model_id"
ARCH_TAG = "rnnexp.arch"  # on every generator model logged here (rnnexp serve checks it)
DEFAULTS = {"n": 1, "class": -1, "temperature": 1.0, "seed": 0}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _value(row: pd.Series, key: str) -> Any:
    value = row.get(key, None)
    return DEFAULTS[key] if _missing(value) else value


def _image(value: Any, k: Any, shape: tuple[int, int, int], levels: int) -> np.ndarray:
    """Row ``k``'s ``image`` as int64 level indices of ``shape``; RnnexpError naming the fault."""
    from rnnexp.errors import RnnexpError

    want = f"row {k}: `image` must be a nested list (C, H, W) = {shape} of levels 0..{levels - 1}"
    try:
        image = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError):  # ragged lists, or items that are not numbers
        raise RnnexpError(f"{want}, got a ragged or non-numeric list") from None
    if image.shape != shape:
        raise RnnexpError(f"{want}, got shape {image.shape}")
    if image.min() < 0 or image.max() >= levels:
        raise RnnexpError(f"{want}, got levels {image.min()}..{image.max()}")
    return image


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Generates images with the generator of the artifact ``checkpoint`` (module docstring)."""

    def load_context(self, context: Any) -> None:
        """Load the checkpoint (CPU, eval mode)."""
        from rnnexp.training.checkpoint import load_checkpoint

        self.loaded = load_checkpoint(context.artifacts["checkpoint"])

    # model_input: pd.DataFrame tells MLflow to take the explicit signature as it is
    # (without a hint it warns at every load; other hints would change the input it passes)
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """One output row per image (a DataFrame); see the module docstring for the columns."""
        from rnnexp.errors import RnnexpError
        from rnnexp.evaluation.generation import TaskInfo, class_labels, generate, translate

        frame = pd.DataFrame(model_input)
        generator = self.loaded.generator
        config = generator.config
        c, h, w = self.loaded.image_shape
        task = TaskInfo.from_data_info(self.loaded.data)
        rows: list[dict[str, Any]] = []
        for k, row in frame.iterrows():
            n, label = int(_value(row, "n")), int(_value(row, "class"))
            seed, temperature = int(_value(row, "seed")), float(_value(row, "temperature"))
            if n < 1 or temperature <= 0:
                raise RnnexpError(f"row {k}: n must be >= 1 and temperature > 0")
            labels = None
            if config.num_classes:
                if label >= config.num_classes:
                    raise RnnexpError(f"row {k}: class must lie in 0..{config.num_classes - 1}")
                every = class_labels(n, config.num_classes).numpy()
                labels = every if label < 0 else np.full(n, label)
            image = row.get("image", None)
            image = None if _missing(image) else image  # NaN: no image in this row of several
            if config.source_channels:
                if image is None:
                    raise RnnexpError(f"row {k}: this model translates images: give `image`")
                target = _image(image, k, (c, h, w), config.levels)
                targets = np.repeat(target[None].astype(np.uint8), n, axis=0)
                _, out = translate(generator, targets, task, seed=seed, temperature=temperature)
            elif image is not None:
                raise RnnexpError(
                    f"row {k}: this model (data.task {task.task}) draws images from noise and "
                    "takes no `image`; completion, denoise and upscale models take one"
                )
            else:
                import torch

                tensor = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
                out = generate(
                    generator, n, h, w, seed=seed, temperature=temperature, labels=tensor
                ).numpy()
            for j in range(n):
                rows.append(
                    {
                        "image": out[j].astype(int).tolist(),
                        "levels": config.levels,
                        "class": int(labels[j]) if labels is not None else -1,
                        "seed": seed,
                    }
                )
        return pd.DataFrame(rows, columns=["image", "levels", "class", "seed"])


def signature_and_example(metadata: dict[str, Any]) -> tuple[ModelSignature, pd.DataFrame]:
    """The request/response schema of a generator with ``metadata``, and a request example."""
    image = Array(Array(Array("long")))
    inputs = [
        ColSpec("long", "n"),
        ColSpec("long", "class", required=False),
        ColSpec("double", "temperature", required=False),
        ColSpec("long", "seed", required=False),
    ]
    example: dict[str, Any] = {"n": 2, "class": -1, "temperature": 1.0, "seed": 0}
    if metadata.get("source_channels"):
        inputs.append(ColSpec(image, "image"))
        c, h, w = metadata["image_shape"]
        example["image"] = np.zeros((c, h, w), dtype=int).tolist()
    else:  # listed only so that predict sees, and refuses, an image (module docstring);
        # any type: a null image (NaN in a DataFrame) passes MLflow's check, and is no image
        inputs.append(ColSpec(AnyType(), "image", required=False))
    outputs = [
        ColSpec(image, "image"),
        ColSpec("long", "levels"),
        ColSpec("long", "class"),
        ColSpec("long", "seed"),
    ]
    return ModelSignature(Schema(inputs), Schema(outputs)), pd.DataFrame([example])


def log_generator_model(
    client: mlflow.MlflowClient, run_id: str, checkpoint: str | Path, metadata: dict[str, Any]
) -> str:
    """Log ``checkpoint`` as a pyfunc LoggedModel of run ``run_id``; tag the run; its id.

    ``Model.log`` with an explicit ``run_id`` (no fluent active run: our runs are
    client-created); the global tracking URI is pointed at the client's store meanwhile.
    The requirements are given, not inferred (inferring loads the model in a
    subprocess). The run's step-0 metrics are linked to the model by MLflow.
    """
    import torch

    signature, example = signature_and_example(metadata)
    # The model is created here, in the run's experiment: Model.log would put it in
    # the global (default) experiment, as our runs are not fluent-active, and the
    # experiment's Models tab would not list it.
    run = client.get_run(run_id)
    model = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        tags={ARCH_TAG: str(metadata.get("arch")), "rnnexp.task": metadata.get("task")},
        params=dict(run.data.params),
    )
    with global_store(client.tracking_uri):
        info = Model.log(
            None,  # artifact_path: deprecated, but still positional
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=model.model_id,
            python_model=GeneratorModel(),
            artifacts={"checkpoint": str(checkpoint)},
            signature=signature,
            input_example=example,
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                f"torch=={torch.__version__.split('+')[0]}",
                "rnnexp",
            ],
            metadata={"rnnexp": metadata},
        )
    client.set_tag(run_id, MODEL_ID_TAG, info.model_id)
    return info.model_id
