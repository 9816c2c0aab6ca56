"""Quantize raw images to ``levels`` intensity levels and split them into train/val/test.

The prepare stage reads ``data/raw`` (see :mod:`rnnexp.data.sources`), calls
:func:`prepare` and writes ``data/prepared`` with :func:`write_prepared`:
``train.npz``, ``val.npz``, ``test.npz`` (``images`` uint8 level indices in
(N, C, H, W) layout, ``labels`` int64 if the data is labelled) and ``meta.json``.
Readers use :func:`read_meta` and :func:`read_split`, which check each file
against the sha256 recorded in ``meta.json``.

Example:
    >>> from rnnexp.data.sources import load_digits
    >>> data = prepare(load_digits(), levels=17, seed=0, val_fraction=0.1, test_fraction=0.1)
    >>> data.splits["train"][0].shape, data.levels
    ((1437, 1, 8, 8), 17)
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

from rnnexp.atomic import atomic_dir, atomic_save_npz, atomic_write_json
from rnnexp.data.sources import RawDataset
from rnnexp.data.tasks import build_source
from rnnexp.errors import DataError

__all__ = [
    "META_FILE",
    "SPLITS",
    "PreparedData",
    "check_input",
    "content_hash",
    "prepare",
    "quantize",
    "read_meta",
    "read_prepared",
    "read_arrays",
    "read_split",
    "write_prepared",
]

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


def quantize(images: np.ndarray, max_value: int, levels: int) -> np.ndarray:
    """Map pixel values 0..max_value to level indices 0..levels-1.

    ``q = (x * levels) // (max_value + 1)``: equal-width bins, so digits
    (max_value 16) with 17 levels and 8-bit data with 256 levels are unchanged.

    Example:
        >>> quantize(np.array([0, 63, 64, 255], np.uint8), max_value=255, levels=4)
        array([0, 0, 1, 3], dtype=uint8)
    """
    if isinstance(levels, bool) or not isinstance(levels, int | np.integer):
        raise ValueError(f"levels must be an int, got {levels!r}")
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in 2..256, got {levels}")
    if not 1 <= max_value <= 255:
        raise ValueError(f"max_value must be in 1..255, got {max_value}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.size and int(images.max()) > max_value:
        raise ValueError(f"images hold value {int(images.max())} > max_value {max_value}")
    q = images.astype(np.uint32) * levels // (max_value + 1)
    return q.astype(np.uint8)


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


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def check_input(
    raw: RawDataset, val_fraction: float, test_fraction: float, task: str = "unconditional"
) -> None:
    """Refuse raw data that :func:`prepare` cannot split or build ``task`` from.

    The prepare stage calls it before opening its MLflow run, so bad data stops the
    stage before any work: a split that would get no image, labels outside the
    class range, ``class`` without labels, ``upscale`` with odd image sides.

    Raises:
        DataError: naming the dataset and the param that does not fit it.
        ValueError: fractions outside [0, 1) (params validation prevents these).
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    where = raw.origin or raw.source
    n = len(raw.images)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    sizes = {"train": n - n_test - n_val, "val": n_val, "test": n_test}
    fractions = {"train": 1.0, "val": val_fraction, "test": test_fraction}
    empty = [s for s in SPLITS if sizes[s] < 1 and fractions[s] > 0]
    if empty:
        raise DataError(
            f"dataset {where} is too small for the split fractions "
            f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}: {n} images "
            f"give {sizes}, so the {', '.join(empty)} split would be empty; raise the fraction "
            "or use more images"
        )
    if raw.labels is not None and n:
        num_classes = len(raw.class_names) if raw.class_names else int(raw.labels.max()) + 1
        if raw.labels.min() < 0 or raw.labels.max() >= num_classes:
            raise DataError(f"dataset {where} has labels outside 0..{num_classes - 1}")
    if task == "class" and raw.labels is None:
        raise DataError(
            f"data.task 'class' needs labels, but dataset {where} has none "
            "(image folders get labels from class subfolders)"
        )
    _, h, w, _ = raw.images.shape
    if task == "upscale" and (h % 2 or w % 2):
        raise DataError(
            f"data.task 'upscale' needs even image sides, but dataset {where} holds {h}x{w} "
            "images (set data.image_size to an even size for image folders)"
        )


def prepare(
    raw: RawDataset,
    levels: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    task: str = "unconditional",
    occlusion: str = "lower_half",
    noise_level: float = 0.2,
) -> PreparedData:
    """Quantize ``raw`` to ``levels`` levels and split it at random (reproducibly by ``seed``).

    A permutation from ``np.random.default_rng(seed)`` is cut into test (the
    first ``round(test_fraction * N)`` images), then val, then train (the rest).
    A split whose fraction is 0 is empty; any other split that would get no
    image raises DataError. For image-to-image tasks each image's source is built
    (see :func:`rnnexp.data.tasks.build_source`) from a generator seeded by
    ``seed`` too, before the split, so an image's source does not depend on it.

    Example:
        >>> from rnnexp.data.sources import load_digits
        >>> d = prepare(load_digits(), levels=4, seed=1, val_fraction=0.2, test_fraction=0.1)
        >>> {k: len(v[0]) for k, v in d.splits.items()}
        {'train': 1258, 'val': 359, 'test': 180}
    """
    check_input(raw, val_fraction, test_fraction, task)
    n = len(raw.images)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    num_classes: int | None = None
    if raw.labels is not None:
        num_classes = len(raw.class_names) if raw.class_names else int(raw.labels.max()) + 1

    q = quantize(raw.images, raw.max_value, levels)  # (N, H, W, C)
    q = np.ascontiguousarray(q.transpose(0, 3, 1, 2))  # (N, C, H, W)
    source = build_source(task, q, levels, np.random.default_rng([seed, 1]), occlusion, noise_level)
    perm = np.random.default_rng(seed).permutation(n)
    index = {
        "test": perm[:n_test],
        "val": perm[n_test : n_test + n_val],
        "train": perm[n_test + n_val :],
    }
    splits = {
        s: (q[index[s]], None if raw.labels is None else raw.labels[index[s]]) for s in SPLITS
    }
    _, c, h, w = q.shape
    return PreparedData(
        splits=splits,
        levels=int(levels),
        channels=int(c),
        height=int(h),
        width=int(w),
        num_classes=num_classes,
        class_names=list(raw.class_names) if raw.class_names is not None else None,
        task=task,
        sources=None if source is None else {s: source[index[s]] for s in SPLITS},
    )


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
