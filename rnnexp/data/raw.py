"""The fetch stage's output, ``data/raw/``: a :class:`RawDataset` and its files.

:func:`write_raw` stores it (``dataset.npz`` and ``info.json``, all or nothing) and
:func:`read_raw` reads it back for the prepare stage, checking it is whole.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnexp.errors import DataError
from rnnexp.util.atomic import atomic_dir, atomic_save_npz, atomic_write_json

RAW_DATASET_FILE = "dataset.npz"
RAW_INFO_FILE = "info.json"


@dataclass
class RawDataset:
    """Images as loaded from a source, before quantization and splitting.

    Attributes:
        images: uint8 array (N, H, W, C), C is 1 (grayscale) or 3 (RGB).
        labels: int64 array (N,), or None for unlabelled data.
        max_value: Largest possible pixel value (16 for digits, 255 otherwise).
        class_names: Names of labels 0..K-1, or None.
        source: The source kind: "digits", "idx" or "image-folder".
        origin: Where the data came from (folder or URL), for the record.
    """

    images: np.ndarray
    labels: np.ndarray | None
    max_value: int
    class_names: list[str] | None
    source: str
    origin: str | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got shape {self.images.shape}")
        if self.labels is not None:
            if self.labels.dtype != np.int64 or self.labels.shape != self.images.shape[:1]:
                raise ValueError(
                    f"labels must be int64 ({self.images.shape[0]},), "
                    f"got {self.labels.dtype} {self.labels.shape}"
                )
        if not 1 <= self.max_value <= 255:
            raise ValueError(f"max_value must be in 1..255, got {self.max_value}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


def write_raw(ds: RawDataset, out_dir: str | os.PathLike[str]) -> None:
    """Write ``dataset.npz`` and ``info.json`` to ``out_dir`` atomically (all or nothing)."""
    arrays: dict[str, np.ndarray] = {"images": ds.images}
    if ds.labels is not None:
        arrays["labels"] = ds.labels
    info = {
        "source": ds.source,
        "origin": ds.origin,
        "max_value": int(ds.max_value),
        "class_names": ds.class_names,
        "shape": [int(s) for s in ds.images.shape[1:]],  # [H, W, C]
        "count": len(ds),
        "has_labels": ds.labels is not None,
    }
    with atomic_dir(out_dir) as tmp:
        atomic_save_npz(tmp / RAW_DATASET_FILE, **arrays)
        atomic_write_json(tmp / RAW_INFO_FILE, info)


def read_raw(raw_dir: str | os.PathLike[str]) -> RawDataset:
    """Read what :func:`write_raw` wrote; DataError if missing, corrupt or inconsistent."""
    folder = Path(raw_dir)
    info_path = folder / RAW_INFO_FILE
    data_path = folder / RAW_DATASET_FILE
    for p in (info_path, data_path):
        if not p.is_file():
            raise DataError(f"raw data file {p} is missing; run the fetch stage (`dvc repro`)")
    try:
        info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        max_value = int(info["max_value"])
        source = str(info["source"])
        class_names = info.get("class_names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"raw data file {info_path} is corrupt ({e}); rebuild with `dvc repro`"
        ) from e
    try:
        with np.load(io.BytesIO(data_path.read_bytes()), allow_pickle=False) as npz:
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(
            f"raw data file {data_path} is corrupt ({e}); rebuild with `dvc repro`"
        ) from e
    expected = [int(info.get("count", -1)), *info.get("shape", [])]
    if list(images.shape) != expected or (labels is None) == bool(info.get("has_labels")):
        raise DataError(
            f"raw data file {data_path} does not match {info_path} (images {images.shape}, "
            f"info says {expected}); rebuild with `dvc repro`"
        )
    if labels is not None and labels.size and class_names:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= len(class_names):
            bad = low if low < 0 else high
            raise DataError(
                f"raw data file {data_path} holds label {bad}, outside 0..{len(class_names) - 1} "
                f"(the {len(class_names)} classes of {info_path}); rebuild with `dvc repro`"
            )
    try:
        return RawDataset(images, labels, max_value, class_names, source, info.get("origin"))
    except ValueError as e:
        raise DataError(f"raw data file {data_path} is invalid: {e}") from e
