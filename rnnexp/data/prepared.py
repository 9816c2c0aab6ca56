"""The prepared-data folder (``data/prepared/``): its format, writer and readers.

``train.npz``, ``val.npz``, ``test.npz`` hold ``images`` (uint8 level indices,
(N, C, H, W)), ``labels`` (int64) when the data is labelled, and ``source`` for the
image-to-image tasks; ``meta.json`` holds the shape, levels, classes, split sizes,
the content hash and each file's sha256. Readers check the files against it.
"""

from __future__ import annotations

import hashlib
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

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
FORMAT_VERSION = 1
_META_KEYS = (
    "shape",
    "levels",
    "channels",
    "height",
    "width",
    "num_classes",
    "class_names",
    "splits",
    "files",
    "content_hash",
)


@dataclass
class PreparedData:
    """Quantized, split data.

    Attributes:
        splits: "train", "val", "test" -> (images uint8 (N, C, H, W) level
            indices in 0..levels-1, labels int64 (N,) or None).
        levels: Number of intensity levels (the model's softmax size).
        channels, height, width: Image shape.
        num_classes: Number of classes, or None for unlabelled data.
        class_names: Names of classes 0..num_classes-1, or None.
        task: What the data is for (see :mod:`rnnexp.data.tasks`).
        sources: split -> conditioning images uint8 (N, S, Hs, Ws), for the
            image-to-image tasks; None otherwise.
    """

    splits: dict[str, tuple[np.ndarray, np.ndarray | None]]
    levels: int
    channels: int
    height: int
    width: int
    num_classes: int | None
    class_names: list[str] | None
    task: str = "unconditional"
    sources: dict[str, np.ndarray] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.channels, self.height, self.width)


def content_hash(data: PreparedData) -> str:
    """sha256 over the split arrays (images and labels, fixed order) and the data's shape.

    The same data always gives the same hash; changing any pixel, label, split
    assignment, level count or class name changes it.
    """
    h = hashlib.sha256()
    header = {
        "format": FORMAT_VERSION,
        "shape": list(data.shape),
        "levels": data.levels,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
    }
    if data.task != "unconditional":  # keeps the hash of unconditional data unchanged
        header["task"] = data.task
    h.update(json.dumps(header, sort_keys=True).encode())
    for split in SPLITS:
        images, labels = data.splits[split]
        pairs = [("images", images), ("labels", labels)]
        if data.sources is not None:
            pairs.append(("source", data.sources[split]))
        for name, arr in pairs:
            if arr is None:
                h.update(f"|{split}/{name}:none".encode())
                continue
            arr = np.ascontiguousarray(arr)
            h.update(f"|{split}/{name}:{arr.dtype.str}:{list(arr.shape)}:".encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def _split_arrays(data: PreparedData, split: str) -> dict[str, np.ndarray]:
    images, labels = data.splits[split]
    expected = (images.shape[0], *data.shape)
    if images.dtype != np.uint8 or images.shape != expected:
        raise ValueError(
            f"{split} images must be uint8 {expected}, got {images.dtype} {images.shape}"
        )
    arrays = {"images": images}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64, copy=False)
    if data.sources is not None:
        arrays["source"] = data.sources[split]
    return arrays


def write_prepared(data: PreparedData, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the splits and ``meta.json`` to ``out_dir`` atomically; return the metadata.

    meta.json holds: ``shape`` [C, H, W], ``levels``, ``channels``, ``height``,
    ``width``, ``num_classes``, ``class_names``, ``splits`` (images per split),
    ``has_labels``, ``content_hash`` (see :func:`content_hash`) and ``files``
    (sha256 of each .npz, checked by :func:`read_split`).
    """
    if set(data.splits) != set(SPLITS):
        raise ValueError(f"splits must be {SPLITS}, got {sorted(data.splits)}")
    arrays = {s: _split_arrays(data, s) for s in SPLITS}
    has_labels = {s: "labels" in arrays[s] for s in SPLITS}
    if len(set(has_labels.values())) != 1:
        raise ValueError(f"either all splits have labels or none: {has_labels}")
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "shape": list(data.shape),
        "levels": data.levels,
        "channels": data.channels,
        "height": data.height,
        "width": data.width,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "has_labels": has_labels["train"],
        "splits": {s: int(data.splits[s][0].shape[0]) for s in SPLITS},
        "task": data.task,
        "source_shape": None if data.sources is None else list(data.sources["train"].shape[1:]),
        "content_hash": content_hash(data),
        "files": {},
    }
    with atomic_dir(out_dir) as tmp:
        for s in SPLITS:
            path = tmp / f"{s}.npz"
            atomic_save_npz(path, **arrays[s])
            meta["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        atomic_write_json(tmp / META_FILE, meta)
    return meta


def _rebuild_hint() -> str:
    return "rebuild it with `dvc repro` (the prepare stage)"


def read_meta(prepared_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``meta.json`` of a prepared-data folder; DataError if missing or corrupt."""
    path = Path(prepared_dir) / META_FILE
    if not path.is_file():
        raise DataError(f"prepared data file {path} is missing; {_rebuild_hint()}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"prepared data file {path} is corrupt ({e}); {_rebuild_hint()}") from e
    missing = [k for k in _META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise DataError(f"prepared data file {path} lacks {', '.join(missing)}; {_rebuild_hint()}")
    return meta


def read_split(
    prepared_dir: str | os.PathLike[str], split: str, meta: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one split as (images uint8 (N, C, H, W), labels int64 (N,) or None)."""
    arrays = read_arrays(prepared_dir, split, meta)
    return arrays["images"], arrays.get("labels")


def read_arrays(
    prepared_dir: str | os.PathLike[str], split: str, meta: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Read one split's arrays: ``images``, and ``labels`` / ``source`` where present.

    The file's sha256 must match the one in ``meta.json``: a file modified,
    truncated or swapped since the prepare stage wrote it raises DataError.
    Pass ``meta`` (from :func:`read_meta`) to avoid re-reading it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if meta is None:
        meta = read_meta(prepared_dir)
    path = Path(prepared_dir) / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"prepared data file {path} is missing; {_rebuild_hint()}")
    blob = path.read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    expected = meta["files"].get(path.name)
    if actual != expected:
        raise DataError(
            f"prepared data file {path} does not match {META_FILE} (sha256 {actual}, "
            f"expected {expected}): it was modified after the prepare stage wrote it; "
            f"{_rebuild_hint()}"
        )
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        images = arrays["images"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"prepared data file {path} is corrupt ({e}); {_rebuild_hint()}") from e
    expected_shape = (meta["splits"][split], *meta["shape"])
    if images.dtype != np.uint8 or images.shape != tuple(expected_shape):
        raise DataError(
            f"prepared data file {path} holds images {images.dtype} {images.shape}, "
            f"{META_FILE} says uint8 {tuple(expected_shape)}; {_rebuild_hint()}"
        )
    return arrays


def read_prepared(prepared_dir: str | os.PathLike[str]) -> PreparedData:
    """Read a whole prepared-data folder (all splits, each hash-checked)."""
    meta = read_meta(prepared_dir)
    arrays = {s: read_arrays(prepared_dir, s, meta) for s in SPLITS}
    splits = {s: (a["images"], a.get("labels")) for s, a in arrays.items()}
    has_source = all("source" in a for a in arrays.values())
    c, h, w = meta["shape"]
    return PreparedData(
        splits=splits,
        levels=int(meta["levels"]),
        channels=int(c),
        height=int(h),
        width=int(w),
        num_classes=meta["num_classes"],
        class_names=meta["class_names"],
        task=meta.get("task", "unconditional"),
        sources={s: a["source"] for s, a in arrays.items()} if has_source else None,
    )


def check_batch_size(n_train: int, batch_size: int, prepared_dir: str | Path) -> None:
    """Refuse a train split smaller than one batch, naming train.batch_size and the split.

    A batch size larger than the whole training split means the data or the batch
    size is not what the user meant (e.g. a batch size tuned for another dataset),
    so the stage stops before any run opens instead of training on one short batch.

    Raises:
        DataError: ``n_train < batch_size``.
    """
    if n_train < batch_size:
        raise DataError(
            f"{Path(prepared_dir) / 'train.npz'}: the train split has {n_train} images, fewer "
            f"than train.batch_size={batch_size}; set train.batch_size to at most {n_train}"
        )
