"""Bad input, end to end: every case runs a real ``rnnexp`` stage and must keep the promise.

The promise (issue 7, DESIGN.md "Quality bars"): a bad params file, data file or
checkpoint stops the stage with

- exit status 2 and one message on stderr (``rnnexp <stage>: error: ...``, no
  traceback) that names what is wrong and where (key and file, file path,
  checkpoint path);
- no partial output: the workspace is byte-identical afterwards (previous outputs
  kept as they were, no new file, no temporary file left behind);
- no MLflow run left RUNNING: for most cases no run is opened at all (validation
  comes first); where the stage's work itself finds the problem (fetch reading
  the source), the one run it opened ended FAILED.

Each case is a declarative :class:`Case` (a setup that writes the bad input into a
copy of a good workspace, the stage and its arguments, the words the message must
hold). :func:`run_case` runs one and lists the broken promises;
``benchmarks/bad_inputs.py`` imports :data:`CASES` and :func:`run_case` and prints
the count. The stages run in-process (``rnnexp.cli.main``) for speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import ViewType
from PIL import Image

from rnnexp.cli import main
from rnnexp.config import load_params, params_to_yaml
from rnnexp.data.prepare import prepare, write_prepared
from rnnexp.data.sources import RawDataset, load_digits, write_raw
from rnnexp.models.generator import GeneratorConfig, PixelRNN
from rnnexp.system import PixelRNNSystem

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "bad-input"
N_IMAGES = 200  # digits subsample: 120 train, 40 val, 40 test
# The real params.yaml, shrunk to a model that evaluates in a blink.
GOOD_SET = [
    "model.hidden=4",
    "model.layers=1",
    "model.head_hidden=8",
    "model.input_kernel=3",
    "train.max_epochs=1",
    "train.batch_size=32",
    "train.use_tuned=false",
    "train.progress_bar=never",
    "train.sample_every=0",
    "tune.n_trials=1",
    "tune.epochs=1",
    "evaluate.n_samples=4",
    "evaluate.batch_size=64",
    "evaluate.score_samples=0",
    f"tracking.experiment={EXPERIMENT}",
]
PREVIOUS = b"previous output, must survive a failed stage\n"


# --------------------------------------------------------------------------- the good workspace


def write_checkpoint(
    path: Path,
    *,
    arch: str = "row_lstm",
    levels: int = 17,
    shape: tuple[int, int, int] = (1, 8, 8),
    num_classes: int = 0,
    source_channels: int = 0,
    task: str = "unconditional",
) -> None:
    """A checkpoint as the train stage writes it (Lightning's keys plus ``rnnexp``)."""
    config = GeneratorConfig(
        arch=arch,
        channels=shape[0],
        levels=levels,
        hidden=4,
        layers=1,
        kernel=3,
        input_kernel=3,
        head_hidden=8,
        num_classes=num_classes,
        source_channels=source_channels,
    )
    torch.manual_seed(0)
    data_info = {"content_hash": "0" * 64, "levels": levels, "shape": list(shape), "task": task}
    data_info.update(occlusion="lower_half", noise_level=0.2)
    system = PixelRNNSystem(PixelRNN(config), shape, 0.01, data_info=data_info)
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "state_dict": system.state_dict(),
        "hyper_parameters": dict(system.hparams),
        "rnnexp": {"history": [], "run_id": None, "data": data_info},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def build_world(path: Path) -> Path:
    """A workspace where every stage would succeed: params, raw, prepared, a checkpoint.

    Previous outputs (reports, sample grids) are in place too, so that a failed stage
    is seen to leave them byte-identical.
    """
    path.mkdir(parents=True)
    params = load_params(REPO / "params.yaml", GOOD_SET)
    (path / "params.yaml").write_text(params_to_yaml(params))
    digits = load_digits()
    raw = RawDataset(
        digits.images[:N_IMAGES],
        digits.labels[:N_IMAGES],
        digits.max_value,
        digits.class_names,
        digits.source,
        "digits[:200]",
    )
    write_raw(raw, path / "data" / "raw")
    write_prepared(prepare(raw, 17, 0, 0.2, 0.2), path / "data" / "prepared")
    write_checkpoint(path / "models" / "best.ckpt")
    for name in ("reports/metrics.json", "samples.png", "completions.png"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(PREVIOUS)
    return path


# --------------------------------------------------------------------------- bad-input writers


def read_params(ws: Path) -> dict:
    return yaml.safe_load((ws / "params.yaml").read_text())


def write_params(ws: Path, params: dict) -> None:
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def set_param(where: str | tuple[str, ...], value: Any) -> Callable[[Path], list[str]]:
    """Setup: params.yaml with ``section.key`` (or the key path ``where``) set to ``value``."""

    def setup(ws: Path) -> list[str]:
        params = read_params(ws)
        *parents, key = where.split(".") if isinstance(where, str) else where
        node = params
        for name in parents:
            node = node.setdefault(name, {})
        node[key] = value
        write_params(ws, params)
        return []

    return setup


def set_params(*pairs: tuple[str, Any]) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        for dotted, value in pairs:
            set_param(dotted, value)(ws)
        return []

    return setup


def replace_in_params(old: str, new: str) -> Callable[[Path], list[str]]:
    """Setup: params.yaml with the text ``old`` (must occur) replaced by ``new``."""

    def setup(ws: Path) -> list[str]:
        text = (ws / "params.yaml").read_text()
        assert old in text, f"{old!r} not in params.yaml"
        (ws / "params.yaml").write_text(text.replace(old, new, 1))
        return []

    return setup


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


def png_bytes(size: tuple[int, int] = (6, 6), value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    return buffer.getvalue()


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
        import json

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


def prepared_without_test_split(ws: Path) -> list[str]:
    """Setup: data/prepared rebuilt from data/raw with data.test_fraction 0."""
    from rnnexp.data.sources import read_raw

    raw = read_raw(ws / "data" / "raw")
    write_prepared(prepare(raw, 17, 0, 0.2, 0.0), ws / "data" / "prepared")
    return []


def tuned(text: str | None) -> Callable[[Path], list[str]]:
    """Setup: train.use_tuned on, reports/best_params.yaml holding ``text`` (None: absent)."""

    def setup(ws: Path) -> list[str]:
        set_param("train.use_tuned", True)(ws)
        if text is not None:
            (ws / "reports" / "best_params.yaml").write_text(text)
        return []

    return setup


def truncate(path: str, keep: float) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        blob = (ws / path).read_bytes()
        (ws / path).write_bytes(blob[: int(len(blob) * keep)])
        return []

    return setup


def overwrite(path: str, blob: bytes) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_bytes(blob)
        return []

    return setup


def remove(path: str) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        (ws / path).unlink()
        return []

    return setup


def foreign_torch_file(ws: Path) -> list[str]:
    """Setup: models/best.ckpt is a readable torch file, but not a train-stage checkpoint."""
    torch.save({"weights": torch.zeros(3)}, ws / "models" / "best.ckpt")
    return []


def empty_folder(path: str) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        (ws / path).mkdir(parents=True)
        return []

    return setup


def checkpoint(**kwargs: Any) -> Callable[[Path], list[str]]:
    """Setup: models/best.ckpt replaced by a valid checkpoint of another model."""

    def setup(ws: Path) -> list[str]:
        write_checkpoint(ws / "models" / "best.ckpt", **kwargs)
        return []

    return setup


def checkpoint_with_weights_of(arch: str) -> Callable[[Path], list[str]]:
    """Setup: a checkpoint whose hyper_parameters say row_lstm but whose weights are ``arch``'s."""

    def setup(ws: Path) -> list[str]:
        path = ws / "models" / "best.ckpt"
        write_checkpoint(path, arch=arch)
        raw = torch.load(path, weights_only=True)
        raw["hyper_parameters"]["generator"]["arch"] = "row_lstm"
        torch.save(raw, path)
        return []

    return setup


MARKER = "PWNED"  # the file a payload creates if it ever runs


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker`` (unless refused)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(ws: Path) -> list[str]:
    """Setup: models/best.ckpt is our checkpoint with a code-running object inside."""
    path = ws / "models" / "best.ckpt"
    raw = torch.load(path, weights_only=True)
    raw["rnnexp"] = {"history": RunsCode(ws / MARKER), "run_id": None, "data": {}}
    torch.save(raw, path)
    return []


def malicious_yaml(ws: Path) -> list[str]:
    """Setup: params.yaml with a tag that would run a shell command under yaml.load."""
    return replace_in_params(
        "max_epochs: 1", f"max_epochs: !!python/object/apply:os.system ['touch {ws / MARKER}']"
    )(ws)


def args(*argv: str) -> Callable[[Path], list[str]]:
    """Setup that writes nothing: the bad input is in the arguments."""
    return lambda ws: list(argv)


def then(*setups: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    """Run setups in order; their extra arguments are concatenated."""

    def setup(ws: Path) -> list[str]:
        return [a for s in setups for a in s(ws)]

    return setup


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        name: unique id (pytest's and the benchmark's).
        stage: the ``rnnexp`` subcommand run.
        setup: writes the bad input into the workspace; returns extra CLI arguments.
        words: what the error message must mention (the thing and where it is).
        run: "none": no MLflow run may be created; "failed": exactly one, ended FAILED.
        marker: a file the bad input would create if its code ever ran.
        absent: what the message must not say (noise, misleading advice).
        env: environment variables set (None: unset) while the stage runs.
    """

    name: str
    stage: str
    setup: Callable[[Path], list[str]]
    words: tuple[str, ...]
    run: str = "none"
    marker: str | None = None
    absent: tuple[str, ...] = ()
    env: tuple[tuple[str, str | None], ...] = ()


P = "params.yaml"
CKPT = "models/best.ckpt"
CASES: list[Case] = [
    # --- params.yaml: every stage validates all of it before any work or run
    Case(
        "params-malformed-yaml",
        "train",
        replace_in_params("max_epochs: 1", "max_epochs: [1"),
        (P, "malformed YAML", "line"),
    ),
    Case(
        "params-missing-file",
        "prepare",
        args("--params", "nowhere.yaml"),
        ("nowhere.yaml", "not found"),
    ),
    Case("params-top-level-list", "fetch", overwrite(P, b"- data\n- model\n"), (P, "mapping")),
    Case(
        "params-unknown-key",
        "train",
        set_param("train.learning_rate", 0.1),
        (P, "train.learning_rate", "unknown key"),
    ),
    Case(
        "params-unknown-section",
        "evaluate",
        set_param("optimizer", {"lr": 0.1}),
        (P, "optimizer", "unknown section"),
    ),
    Case("params-section-not-mapping", "prepare", set_param("model", 5), (P, "model")),
    Case(
        "params-wrong-type-int",
        "train",
        set_param("model.hidden", "big"),
        (P, "model.hidden", "integer", "big"),
    ),
    Case(
        "params-wrong-type-bool",
        "train",
        set_param("train.use_tuned", "yes please"),
        (P, "train.use_tuned", "true or false"),
    ),
    Case(
        "params-1e-3-string",
        "tune",
        replace_in_params("lr: 0.003", "lr: 1e-3"),
        (P, "train.lr", "1e-3", "string"),
    ),
    Case(
        "params-negative-epochs",
        "train",
        set_param("train.max_epochs", -1),
        (P, "train.max_epochs", "-1", "out of range"),
    ),
    Case(
        "params-levels-below-2",
        "prepare",
        set_param("data.levels", 1),
        (P, "data.levels", "out of range"),
    ),
    Case(
        "params-image-size-0",
        "fetch",
        set_param("data.image_size", 0),
        (P, "data.image_size", "out of range"),
    ),
    Case(
        "params-even-kernel",
        "train",
        set_param("model.kernel", 4),
        (P, "model.kernel", "odd"),
        absent=("tune.space",),
    ),
    Case(
        "params-fractions-sum-1",
        "prepare",
        set_params(("data.val_fraction", 0.5), ("data.test_fraction", 0.5)),
        (P, "data.val_fraction", "data.test_fraction"),
    ),
    Case("params-idx-without-path", "fetch", set_param("data.source", "idx"), (P, "data.path")),
    Case(
        "space-low-above-high",
        "tune",
        set_param(("tune", "space", "train.lr"), {"type": "float", "low": 0.1, "high": 0.01}),
        (P, "tune.space.train.lr", "low"),
    ),
    Case(
        "space-log-low-not-positive",
        "tune",
        set_param(
            ("tune", "space", "train.lr"), {"type": "float", "low": 0.0, "high": 0.01, "log": True}
        ),
        (P, "tune.space.train.lr", "log"),
    ),
    Case(
        "space-int-low-above-high",
        "tune",
        set_param(("tune", "space", "model.layers"), {"type": "int", "low": 3, "high": 1}),
        (P, "tune.space.model.layers", "low"),
    ),
    Case(
        "space-unknown-param",
        "tune",
        set_param(("tune", "space", "model.depth"), {"type": "int", "low": 1, "high": 3}),
        (P, "tune.space.model.depth", "not a tunable"),
    ),
    Case(
        "space-value-out-of-range",
        "tune",
        set_param(("tune", "space", "model.layers"), {"type": "int", "low": 0, "high": 3}),
        (P, "tune.space.model.layers", "0"),
    ),
    Case(
        "tune-storage-unknown-scheme",
        "tune",
        set_param("tune.storage", "bogus://nowhere"),
        ("tune.storage", "bogus://nowhere", "cannot open"),
    ),
    Case(
        "tune-workers-on-sqlite",
        "tune",
        args("--workers", "2"),
        ("tune.storage", "SQLite", "2 workers"),
    ),
    Case(
        "tracking-uri-unknown-scheme",
        "fetch",
        set_param("tracking.uri", "bogus://nowhere"),
        ("tracking.uri", "bogus://nowhere", "cannot open the MLflow tracking store"),
        env=(("MLFLOW_TRACKING_URI", None),),
    ),
    Case(
        "mlflow-tracking-uri-env-unknown-scheme",
        "prepare",
        args(),
        ("MLFLOW_TRACKING_URI", "bogus://nowhere", "cannot open the MLflow tracking store"),
        env=(("MLFLOW_TRACKING_URI", "bogus://nowhere"),),
    ),
    Case(
        "override-wrong-type",
        "train",
        args("--set", "train.max_epochs=abc"),
        (P, "--set", "train.max_epochs", "abc"),
    ),
    Case(
        "override-not-key-value",
        "sample",
        args("--set", "max_epochs"),
        ("--set", "max_epochs", "section.key=value"),
    ),
    Case(
        "yaml-python-tag-refused",
        "train",
        malicious_yaml,
        (P, "refused YAML tag", "python/object/apply:os.system", "line"),
        marker=MARKER,
    ),
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
        "prepare-out-below-a-file",
        "prepare",
        then(overwrite("blocker", b"a file, not a folder\n"), args("--out", "blocker/prepared")),
        ("blocker", "File exists"),
        run="failed",
    ),
    # --- train / tune: prepared data
    Case(
        "data-smaller-than-batch-train",
        "train",
        set_param("train.batch_size", 500),
        ("data/prepared/train.npz", "train.batch_size=500", "120 images"),
    ),
    Case(
        "data-smaller-than-batch-tune",
        "tune",
        set_param("train.batch_size", 500),
        ("data/prepared/train.npz", "train.batch_size=500", "120 images"),
    ),
    Case(
        "prepared-modified",
        "train",
        overwrite("data/prepared/val.npz", b"PK\x03\x04junk"),
        ("data/prepared/val.npz", "does not match"),
    ),
    Case(
        "prepared-meta-missing",
        "train",
        remove("data/prepared/meta.json"),
        ("data/prepared/meta.json", "missing"),
    ),
    Case(
        "prepared-missing",
        "tune",
        args("--prepared", "nothing_prepared"),
        ("nothing_prepared/meta.json", "missing"),
    ),
    Case(
        "tuned-params-missing",
        "train",
        tuned(None),
        ("reports/best_params.yaml", "not found", "train.use_tuned"),
    ),
    Case(
        "tuned-params-malformed",
        "train",
        tuned("params: {train.lr: [0.1\n"),
        ("reports/best_params.yaml", "malformed YAML"),
    ),
    Case(
        "tuned-params-unknown-key",
        "train",
        tuned("params:\n  train.learning_rate: 0.1\n"),
        ("reports/best_params.yaml", "train.learning_rate", "unknown key"),
    ),
    Case(
        "tuned-params-out-of-range",
        "train",
        tuned("params:\n  model.layers: 0\n"),
        ("reports/best_params.yaml", "model.layers", "out of range"),
    ),
    Case(
        "classifier-stage-prepared-missing",
        "classifier",
        args("--prepared", "nothing_prepared"),
        ("nothing_prepared/meta.json", "missing"),
    ),
    Case(
        "evaluate-empty-test-split",
        "evaluate",
        prepared_without_test_split,
        ("data/prepared/test.npz", "test split is empty", "data.test_fraction"),
    ),
    Case(
        "evaluate-classifier-not-a-checkpoint",
        "evaluate",
        overwrite("models/classifier.pt", b"not a classifier\n"),
        ("models/classifier.pt", "not a readable classifier"),
    ),
    # --- checkpoints: evaluate, sample and complete
    Case(
        "ckpt-missing",
        "evaluate",
        args("--checkpoint", "models/nope.ckpt"),
        ("models/nope.ckpt", "not found"),
    ),
    Case(
        "ckpt-not-a-checkpoint-evaluate",
        "evaluate",
        overwrite(CKPT, b"epoch: 3\nloss: 0.1\n"),
        (CKPT, "not a readable checkpoint"),
    ),
    Case(
        "ckpt-not-a-checkpoint-sample",
        "sample",
        overwrite(CKPT, b"\x89PNG\r\n\x1a\n" + b"0" * 99),
        (CKPT, "not a readable checkpoint"),
    ),
    Case(
        "ckpt-foreign-torch-file",
        "sample",
        foreign_torch_file,
        (CKPT, "not an rnnexp checkpoint"),
    ),
    Case("ckpt-truncated-evaluate", "evaluate", truncate(CKPT, 0.6), (CKPT, "truncated")),
    Case("ckpt-truncated-sample", "sample", truncate(CKPT, 0.3), (CKPT, "truncated")),
    Case(
        "ckpt-truncated-complete",
        "complete",
        then(truncate(CKPT, 0.9), overwrite("in.png", png_bytes()), args("--input", "in.png")),
        (CKPT, "truncated"),
    ),
    Case(
        "ckpt-weights-of-other-arch",
        "evaluate",
        checkpoint_with_weights_of("pixelcnn"),
        (CKPT, "does not match the generator", "row_lstm generator"),
    ),
    Case(
        "ckpt-other-arch-sample",
        "sample",
        checkpoint_with_weights_of("diagonal_bilstm"),
        (CKPT, "does not match the generator", "row_lstm generator"),
    ),
    Case(
        "ckpt-other-levels",
        "evaluate",
        checkpoint(levels=256),
        (CKPT, "256 levels", "data/prepared", "17"),
    ),
    Case(
        "ckpt-other-image-size",
        "evaluate",
        checkpoint(shape=(1, 6, 6)),
        (CKPT, "(1, 6, 6)", "data/prepared", "(1, 8, 8)"),
    ),
    Case(
        "ckpt-completion-model-unconditional-data",
        "evaluate",
        checkpoint(source_channels=2, task="completion"),
        (CKPT, "completion", "data/prepared", "unconditional"),
    ),
    Case(
        "ckpt-class-model-other-class-count",
        "evaluate",
        checkpoint(num_classes=3, task="class"),
        (CKPT, "3 classes", "data/prepared", "10"),
    ),
    Case(
        "ckpt-runs-code-sample",
        "sample",
        malicious_checkpoint,
        (CKPT, "refused", f"{os.system.__module__}.system", "weights_only=True"),
        marker=MARKER,
        absent=("set to `False`",),  # torch's advice to load unsafely
    ),
    Case(
        "ckpt-runs-code-evaluate",
        "evaluate",
        malicious_checkpoint,
        (CKPT, "refused", f"{os.system.__module__}.system"),
        marker=MARKER,
        absent=("set to `False`",),
    ),
    Case(
        "ckpt-runs-code-complete",
        "complete",
        then(malicious_checkpoint, overwrite("in.png", png_bytes()), args("--input", "in.png")),
        (CKPT, "refused"),
        marker=MARKER,
    ),
    Case(
        "sample-class-of-unconditional-model",
        "sample",
        args("--class", "3"),
        ("--class", CKPT, "not a class-conditional model"),
    ),
    Case(
        "complete-as-source-of-unconditional-model",
        "complete",
        then(overwrite("in.png", png_bytes()), args("--input", "in.png", "--as-source")),
        ("--as-source", "image-to-image"),
    ),
    Case(
        "complete-input-missing",
        "complete",
        args("--input", "no_such.png"),
        ("no_such.png", "does not exist"),
    ),
    Case(
        "complete-input-not-an-image",
        "complete",
        then(overwrite("in.png", b"not a png"), args("--input", "in.png")),
        ("in.png", "cannot read image"),
    ),
    Case(
        "complete-input-truncated-png",
        "complete",
        then(overwrite("in.png", png_bytes()[:30]), args("--input", "in.png")),
        ("in.png", "cannot read image"),
    ),
    Case(
        "complete-input-empty-folder",
        "complete",
        then(empty_folder("inputs"), args("--input", "inputs")),
        ("inputs", "no .png"),
    ),
]


# --------------------------------------------------------------------------- the check


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> sha256 (folders: "dir")."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def all_runs(client: MlflowClient) -> list:
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(ids, run_view_type=ViewType.ALL) if ids else []


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def environment(changes: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables; restore them afterwards."""

    def apply(values: dict[str, str | None]) -> None:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    saved = {name: os.environ.get(name) for name in changes}
    apply(changes)
    try:
        yield
    finally:
        apply(saved)


@dataclass
class Outcome:
    """What a case did and which promises it broke (``problems`` empty: all kept)."""

    case: Case
    status: int | None
    stderr: str
    problems: list[str]


def in_process(argv: list[str]) -> tuple[int | None, str, str | None]:
    """Run ``rnnexp argv`` through ``rnnexp.cli.main``: (status, stderr, exception raised)."""
    out, err = io.StringIO(), io.StringIO()
    status, raised = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except BaseException as exc:  # noqa: BLE001 - a raw exception is a broken promise
            raised = f"{type(exc).__name__}: {exc}"
    return status, err.getvalue(), raised


def in_subprocess(argv: list[str]) -> tuple[int | None, str, str | None]:
    """Run ``rnnexp argv`` as its own Python process (the console script's path)."""
    code = "import sys; from rnnexp.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stderr, None


def run_case(
    case: Case,
    world: Path,
    scratch: Path,
    client: MlflowClient,
    runner: Callable[[list[str]], tuple[int | None, str, str | None]] = in_process,
) -> Outcome:
    """Copy ``world`` to ``scratch/<name>``, write the bad input, run the stage, check it.

    ``MLFLOW_TRACKING_URI`` must point at ``client``'s store.
    """
    ws = scratch / case.name
    shutil.copytree(world, ws)
    with working_dir(ws):
        extra = case.setup(ws)
        before_files = snapshot(ws)
        before_runs = {r.info.run_id for r in all_runs(client)}
        with environment(dict(case.env)):
            status, stderr, raised = runner([case.stage, *extra])
    problems = []
    if raised is not None:
        problems.append(f"raised instead of exiting: {raised}")
    elif status != 2:
        problems.append(f"exit status {status}, expected 2")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    prefix = f"rnnexp {case.stage}: error: "
    message = stderr[stderr.find(prefix) :] if prefix in stderr else ""
    if not message:
        problems.append(f"no '{prefix}...' line on stderr")
    missing = [w for w in case.words if w not in message]
    if missing:
        problems.append(f"message lacks {missing}")
    noise = [w for w in case.absent if w in message]
    if noise:
        problems.append(f"message says {noise}")
    after_files = snapshot(ws)
    changed = sorted(
        k
        for k in before_files.keys() | after_files.keys()
        if before_files.get(k) != after_files.get(k)
    )
    if changed:
        problems.append(f"workspace changed: {changed}")
    if case.marker and (ws / case.marker).exists():
        problems.append(f"the payload ran: {case.marker} exists")
    new = [r for r in all_runs(client) if r.info.run_id not in before_runs]
    statuses = sorted(r.info.status for r in new)
    if "RUNNING" in statuses:
        problems.append(f"run left RUNNING: {statuses}")
    expected = [] if case.run == "none" else ["FAILED"]
    if statuses != expected:
        problems.append(f"new MLflow runs {statuses}, expected {expected}")
    return Outcome(case, status, stderr, problems)


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("bad_input") / "world")


def test_cases_are_many_and_distinct():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 25
    assert {c.stage for c in CASES} >= {"fetch", "prepare", "train", "tune", "evaluate", "sample"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_keeps_the_promise(case, world, store, tmp_path):
    outcome = run_case(case, world, tmp_path, store)
    assert outcome.problems == [], outcome.stderr[-2000:]


# One case per kind of input, as a real process: the exit status is the process's.
PROCESS_CASES = [
    "params-1e-3-string",
    "yaml-python-tag-refused",
    "png-truncated",
    "data-smaller-than-batch-train",
    "ckpt-runs-code-evaluate",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", PROCESS_CASES)
def test_bad_input_keeps_the_promise_as_a_process(name, world, store, tmp_path):
    (case,) = [c for c in CASES if c.name == name]
    outcome = run_case(case, world, tmp_path, store, runner=in_subprocess)
    assert outcome.problems == [], outcome.stderr[-2000:]


@pytest.mark.parametrize("stage", ["evaluate", "sample"])
def test_the_good_workspace_works(stage, world, store, tmp_path):
    """Control: without the defect the same stage succeeds, so each case fails for its defect."""
    ws = tmp_path / "good"
    shutil.copytree(world, ws)
    before = {r.info.run_id for r in all_runs(store)}
    with working_dir(ws), contextlib.redirect_stdout(io.StringIO()):
        assert main([stage, *(["--n", "4"] if stage == "sample" else [])]) == 0
    written = {"evaluate": "reports/metrics.json", "sample": "samples.png"}[stage]
    assert (ws / written).read_bytes() != PREVIOUS
    new = [r for r in all_runs(store) if r.info.run_id not in before]
    assert all(r.info.status == "FINISHED" for r in new)


def test_the_payloads_are_live(tmp_path):
    """Control: the malicious pickle and YAML really run code when loaded unsafely."""
    ws = tmp_path / "ws"
    (ws / "models").mkdir(parents=True)
    write_checkpoint(ws / "models" / "best.ckpt")
    malicious_checkpoint(ws)
    torch.load(ws / "models" / "best.ckpt", weights_only=False)
    assert (ws / MARKER).exists()
    (ws / MARKER).unlink()
    (ws / "params.yaml").write_text("train:\n  max_epochs: 1\n")
    malicious_yaml(ws)
    yaml.unsafe_load((ws / "params.yaml").read_text())
    assert (ws / MARKER).exists()


def test_the_check_catches_a_broken_promise(world, store, tmp_path):
    """Control: a stage that succeeds (exit 0, writes its output) is reported as such."""
    case = Case("not-bad-at-all", "sample", args("--n", "2"), ("samples.png",))
    problems = run_case(case, world, tmp_path, store).problems
    assert "exit status 0, expected 2" in problems
    assert "workspace changed: ['samples.png']" in problems
    assert not any(p.startswith("new MLflow runs") for p in problems)  # sample opens none
