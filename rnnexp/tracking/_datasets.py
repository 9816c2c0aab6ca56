"""The prepared data as an MLflow dataset input of a run (the UI's "Datasets" column).

A training or evaluation run logs the ``data/prepared`` folder it read as an MLflow
dataset: named for its source and levels (``digits-17``), its digest the start of
the prepared data's content hash (what DVC versions; the run's tag
``rnnexp.data_hash`` has all of it), its source the folder, its schema the tensors
of a split, its profile the split sizes. The input's tag ``mlflow.data.context``
says how the run used it: ``training`` or ``evaluation``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.data.schema import TensorDatasetSchema
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

DIGEST_CHARS = 12  # as the console shows the hash; MLflow stores at most 36 characters
CONTEXTS = ("training", "evaluation")


def dataset_name(source: str, meta: Mapping[str, Any]) -> str:
    """``digits-17``: the data source and its levels (and the task, if not unconditional)."""
    task = meta.get("task") or "unconditional"
    return f"{source}-{meta['levels']}" + ("" if task == "unconditional" else f"-{task}")


def _schema(meta: Mapping[str, Any]) -> str:
    """The tensors of a split: images (N, C, H, W) uint8, labels (N,) where there are any."""
    shape = (-1, meta["channels"], meta["height"], meta["width"])
    features = Schema([TensorSpec(np.dtype("uint8"), shape, "images")])
    targets = None
    if meta.get("has_labels"):
        targets = Schema([TensorSpec(np.dtype("int64"), (-1,), "labels")])
    return json.dumps(TensorDatasetSchema(features, targets).to_dict())


def dataset_input(
    source: str, meta: Mapping[str, Any], prepared_dir: str | Path, context: str
) -> DatasetInput:
    """The dataset input of the prepared data ``meta`` (read from ``prepared_dir``)."""
    if context not in CONTEXTS:
        raise ValueError(f"dataset context {context!r}: expected one of {CONTEXTS}")
    profile = {
        "splits": dict(meta["splits"]),
        "num_rows": sum(meta["splits"].values()),
        "levels": meta["levels"],
        "shape": [meta["channels"], meta["height"], meta["width"]],
        "task": meta.get("task") or "unconditional",
        "num_classes": meta.get("num_classes"),
        "content_hash": meta["content_hash"],
    }
    dataset = Dataset(
        name=dataset_name(source, meta),
        digest=str(meta["content_hash"])[:DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": str(Path(prepared_dir).resolve())}),
        schema=_schema(meta),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
