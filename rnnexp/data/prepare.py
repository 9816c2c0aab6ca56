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

import numpy as np

from rnnexp.data.prepared import (  # the folder format; re-exported for the stages' readers
    META_FILE,
    SPLITS,
    PreparedData,
    check_batch_size,
    content_hash,
    read_arrays,
    read_meta,
    read_prepared,
    read_split,
    write_prepared,
)
from rnnexp.data.raw import RawDataset
from rnnexp.data.tasks import build_source
from rnnexp.errors import DataError

__all__ = [
    "META_FILE",
    "SPLITS",
    "PreparedData",
    "check_batch_size",
    "check_input",
    "content_hash",
    "prepare",
    "quantize",
    "read_arrays",
    "read_meta",
    "read_prepared",
    "read_split",
    "write_prepared",
]


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
