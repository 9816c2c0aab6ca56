"""Bad data, end to end: the fetch stage's sources and the prepare stage's data/raw.

fetch reads IDX files or an image folder inside its MLflow run, so a bad source
ends that run FAILED; prepare checks data/raw before any run. The promise checked is
``bad_input_harness``'s.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bad_input_harness import Case, run_case
from bad_input_setups import (
    args,
    overwrite,
    png_bytes,
    remove,
    set_param,
    set_params,
    then,
    truncate,
)

# --------------------------------------------------------------------------- sources


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file (big-endian magic, one 4-byte size per dimension, uint8 data)."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


IMAGES_MAGIC, LABELS_MAGIC = 0x803, 0x801


def idx_source(
    images_mangle: Callable[[bytes], bytes] = lambda b: b,
    labels_mangle: Callable[[bytes], bytes] = lambda b: b,
    n_labels: int = 30,
    labels_gz: bool = False,
) -> Callable[[Path], list[str]]:
    """Setup: an IDX folder ``idx/`` of 30 6x6 images (mangled) and data.source=idx."""

    def setup(ws: Path) -> list[str]:
        folder = ws / "idx"
        folder.mkdir()
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (30, 6, 6))
        labels = rng.integers(0, 10, n_labels)
        (folder / "train-images-idx3-ubyte").write_bytes(
            images_mangle(idx_bytes(images, IMAGES_MAGIC))
        )
        blob = labels_mangle(idx_bytes(labels, LABELS_MAGIC))
        name = "train-labels-idx1-ubyte" + (".gz" if labels_gz else "")
        (folder / name).write_bytes(blob)
        set_params(("data.source", "idx"), ("data.path", "idx"))(ws)
        return []

    return setup


def image_folder(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Callable:
    """Setup: folder ``imgs/`` with ``files`` (relative name -> bytes), data.source=image-folder."""

    def setup(ws: Path) -> list[str]:
        folder = ws / "imgs"
        folder.mkdir()
        for d in dirs:
            (folder / d).mkdir(parents=True)
        for name, blob in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(blob)
        set_params(("data.source", "image-folder"), ("data.path", "imgs"))(ws)
        return []

    return setup


GOOD_PNGS = {f"img{k}.png": png_bytes(value=20 * k) for k in range(6)}


def raw_with(mangle: Callable[[dict, dict], None]) -> Callable[[Path], list[str]]:
    """Setup: data/raw rewritten with ``mangle(arrays, info)`` applied (as a hand edit would)."""

    def setup(ws: Path) -> list[str]:
        raw = ws / "data" / "raw"
        with np.load(raw / "dataset.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        info = json.loads((raw / "info.json").read_text())
        mangle(arrays, info)
        np.savez(raw / "dataset.npz", **arrays)
        (raw / "info.json").write_text(json.dumps(info))
        return []

    return setup


def _labels_beyond_classes(arrays: dict, info: dict) -> None:
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][7] = 12  # class_names has 10 entries


def _negative_label(arrays: dict, info: dict) -> None:
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][3] = -1


def _odd_sides(arrays: dict, info: dict) -> None:
    arrays["images"] = arrays["images"][:, :7, :7]  # (N, 7, 7, 1)
    info["shape"] = [7, 7, 1]


def _no_labels(arrays: dict, info: dict) -> None:
    del arrays["labels"]
    info.update(has_labels=False, class_names=None)


def _zero_by_zero(arrays: dict, info: dict) -> None:
    arrays["images"] = arrays["images"][:, :0, :0]  # (N, 0, 0, 1)
    info["shape"] = [0, 0, 1]


def _no_images(arrays: dict, info: dict) -> None:
    arrays["images"], arrays["labels"] = arrays["images"][:0], arrays["labels"][:0]
    info["count"] = 0


def idx_images(shape: tuple[int, ...]) -> Callable[[bytes], bytes]:
    """An images-file mangler: a whole IDX images file of ``shape`` instead."""
    return lambda b: idx_bytes(np.zeros(shape), IMAGES_MAGIC)


# --------------------------------------------------------------------------- the cases

CASES: list[Case] = [
    # --- data sources (fetch): the stage's run opens, the source fails, the run ends FAILED
    Case(
        "idx-missing-folder",
        "fetch",
        set_params(("data.source", "idx"), ("data.path", "nope")),
        ("nope", "does not exist", "data.path"),
        run="failed",
    ),
    Case(
        "idx-wrong-magic",
        "fetch",
        idx_source(images_mangle=lambda b: b"\0\0\x08\x02" + b[4:]),
        ("idx/train-images-idx3-ubyte", "magic number"),
        run="failed",
    ),
    Case(
        "idx-images-and-labels-swapped",
        "fetch",
        idx_source(images_mangle=lambda b: idx_bytes(np.zeros(30), LABELS_MAGIC)),
        ("idx/train-images-idx3-ubyte", "magic number", "swapped"),
        run="failed",
    ),
    Case(
        "idx-images-truncated",
        "fetch",
        idx_source(images_mangle=lambda b: b[: len(b) - 50]),
        ("idx/train-images-idx3-ubyte", "truncated"),
        run="failed",
    ),
    Case(
        "idx-labels-truncated",
        "fetch",
        idx_source(labels_mangle=lambda b: b[:20]),
        ("idx/train-labels-idx1-ubyte", "truncated"),
        run="failed",
    ),
    Case(
        "idx-header-truncated",
        "fetch",
        idx_source(images_mangle=lambda b: b[:6]),
        ("idx/train-images-idx3-ubyte", "truncated"),
        run="failed",
    ),
    Case(
        "idx-label-count-differs",
        "fetch",
        idx_source(n_labels=29),
        ("idx/train-images-idx3-ubyte", "idx/train-labels-idx1-ubyte", "30 images", "29 labels"),
        run="failed",
    ),
    Case(
        "idx-corrupt-gzip",
        "fetch",
        idx_source(labels_mangle=lambda b: b"\x1f\x8b" + b[2:], labels_gz=True),
        ("idx/train-labels-idx1-ubyte.gz", "gzip"),
        run="failed",
    ),
    Case(
        "idx-missing-labels-file",
        "fetch",
        then(idx_source(), remove("idx/train-labels-idx1-ubyte")),
        ("idx", "train-labels-idx1-ubyte"),
        run="failed",
    ),
    Case(
        "idx-images-0x0",
        "fetch",
        idx_source(images_mangle=idx_images((30, 0, 0))),
        ("idx/train-images-idx3-ubyte", "no pixels", "30 images of 0x0"),
        run="failed",
    ),
    Case(
        "idx-images-1x0",
        "fetch",
        idx_source(images_mangle=idx_images((30, 1, 0))),
        ("idx/train-images-idx3-ubyte", "no pixels", "1x0"),
        run="failed",
    ),
    Case(
        "idx-no-images",
        "fetch",
        idx_source(images_mangle=idx_images((0, 6, 6)), n_labels=0),
        ("idx/train-images-idx3-ubyte", "no pixels", "0 images"),
        run="failed",
    ),
    Case(
        "folder-missing",
        "fetch",
        set_params(("data.source", "image-folder"), ("data.path", "no_images_here")),
        ("no_images_here", "does not exist"),
        run="failed",
    ),
    Case(
        "folder-is-a-file",
        "fetch",
        then(
            overwrite("a_file", b"x"),
            set_params(("data.source", "image-folder"), ("data.path", "a_file")),
        ),
        ("a_file", "not a folder"),
        run="failed",
    ),
    Case("folder-empty", "fetch", image_folder({}), ("imgs", "no images"), run="failed"),
    Case(
        "folder-class-dir-empty",
        "fetch",
        image_folder({"cat/a.png": png_bytes()}, dirs=("dog",)),
        ("imgs/dog", "no images"),
        run="failed",
    ),
    Case(
        "png-truncated",
        "fetch",
        image_folder({**GOOD_PNGS, "img3.png": GOOD_PNGS["img3.png"][:40]}),
        ("imgs/img3.png", "cannot read image"),
        run="failed",
    ),
    Case(
        "png-not-an-image",
        "fetch",
        image_folder({**GOOD_PNGS, "notes.png": b"these are my notes, not a picture\n"}),
        ("imgs/notes.png", "cannot read image"),
        run="failed",
    ),
    Case(
        "png-mixed-sizes",
        "fetch",
        image_folder({**GOOD_PNGS, "wide.png": png_bytes(size=(9, 6))}),
        ("imgs/wide.png", "9x6", "data.image_size"),
        run="failed",
    ),
    Case(
        "folder-classes-and-loose-images",
        "fetch",
        image_folder({"cat/a.png": png_bytes(), "stray.png": png_bytes()}),
        ("imgs", "loose images", "stray.png"),
        run="failed",
    ),
    Case(
        "fetch-out-below-a-file",
        "fetch",
        then(overwrite("blocker", b"a file, not a folder\n"), args("--out", "blocker/raw")),
        ("blocker", "File exists"),
        run="failed",
    ),
    # --- prepare: data/raw as the fetch stage left it, then damaged
    Case("raw-missing", "prepare", args("--raw", "no_raw"), ("no_raw", "missing")),
    Case(
        "raw-npz-truncated",
        "prepare",
        truncate("data/raw/dataset.npz", 0.5),
        ("data/raw/dataset.npz", "corrupt"),
    ),
    Case(
        "raw-labels-beyond-classes",
        "prepare",
        raw_with(_labels_beyond_classes),
        ("data/raw/dataset.npz", "12", "0..9"),
    ),
    Case(
        "raw-negative-label",
        "prepare",
        raw_with(_negative_label),
        ("data/raw/dataset.npz", "-1", "0..9"),
    ),
    Case(
        "split-leaves-val-empty",
        "prepare",
        set_params(("data.val_fraction", 0.001), ("data.test_fraction", 0.2)),
        ("data.val_fraction", "val split", "200 images"),
    ),
    Case(
        "prepare-upscale-odd-sides",
        "prepare",
        then(raw_with(_odd_sides), set_param("data.task", "upscale")),
        ("digits[:200]", "data.task 'upscale'", "7x7"),
    ),
    Case(
        "prepare-class-without-labels",
        "prepare",
        then(raw_with(_no_labels), set_param("data.task", "class")),
        ("digits[:200]", "data.task 'class'", "labels"),
    ),
    Case(
        "raw-images-0x0",
        "prepare",
        raw_with(_zero_by_zero),
        ("data/raw/dataset.npz", "0x0", "at least 1x1"),
    ),
    Case("raw-no-images", "prepare", raw_with(_no_images), ("digits[:200]", "0 images")),
    Case(
        "prepare-out-below-a-file",
        "prepare",
        then(overwrite("blocker", b"a file, not a folder\n"), args("--out", "blocker/prepared")),
        ("blocker", "File exists"),
        run="failed",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_keeps_the_promise(case, bad_input_world, store, tmp_path):
    outcome = run_case(case, bad_input_world, tmp_path, store)
    assert outcome.problems == [], outcome.stderr[-2000:]
