"""Bad input to evaluation and generation, end to end: evaluate, sample and complete.

Checkpoints that are missing, damaged, foreign, of another model or data, or that
would run code when loaded; an empty test split; a bad scoring classifier; bad
inputs to ``complete``; generation arguments that would crash the sampler (nan
temperatures, seeds beyond 2^32-1) or run for hours (``--n`` beyond the grid cap,
folders of more images). The promise checked is ``bad_input_harness``'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from bad_input_harness import CKPT, Case, run_case, write_checkpoint
from bad_input_setups import (
    MARKER,
    args,
    malicious_checkpoint,
    overwrite,
    png_bytes,
    then,
    truncate,
)

from rnnexp.data.prepare import prepare, write_prepared
from rnnexp.data.sources import read_raw

# --------------------------------------------------------------------------- setups


def prepared_without_test_split(ws: Path) -> list[str]:
    """Setup: data/prepared rebuilt from data/raw with data.test_fraction 0."""
    raw = read_raw(ws / "data" / "raw")
    write_prepared(prepare(raw, 17, 0, 0.2, 0.0), ws / "data" / "prepared")
    return []


def foreign_torch_file(ws: Path) -> list[str]:
    """Setup: models/best.ckpt is a readable torch file, but not a train-stage checkpoint."""
    torch.save({"weights": torch.zeros(3)}, ws / "models" / "best.ckpt")
    return []


def empty_folder(path: str) -> Callable[[Path], list[str]]:
    """Setup: an empty folder ``path``."""

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


def many_pngs(folder: str, count: int) -> Callable[[Path], list[str]]:
    """Setup: ``folder`` holding ``count`` copies of a small PNG."""

    def setup(ws: Path) -> list[str]:
        blob = png_bytes()
        (ws / folder).mkdir()
        for k in range(count):
            (ws / folder / f"{k:05d}.png").write_bytes(blob)
        return []

    return setup


INPUT = then(overwrite("in.png", png_bytes()), args("--input", "in.png"))  # complete's input

# --------------------------------------------------------------------------- the cases

CASES: list[Case] = [
    # --- evaluate: prepared data and the scoring classifier
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
    # --- generation arguments: values that would crash the sampler or run for hours
    *(
        Case(
            f"{command}-temperature-{name}",
            command,
            then(input_png, args("--temperature", value)),
            ("--temperature", value, "above 0 and at most 100"),
        )
        for command, input_png in (("sample", args()), ("complete", INPUT))
        for name, value in (("nan", "nan"), ("inf", "inf"), ("zero", "0.0"), ("negative", "-1"))
    ),
    Case("sample-temperature-huge", "sample", args("--temperature", "1e6"), ("--temperature",)),
    Case(
        "sample-n-above-cap",
        "sample",
        args("--n", "100000"),
        ("--n", "at most 10000", "100000"),
    ),
    Case("sample-n-zero", "sample", args("--n", "0"), ("--n", "at least 1", "got 0")),
    Case(
        "sample-seed-above-uint64",
        "sample",
        args("--seed", str(2**64)),
        ("--seed", "0..4294967295", str(2**64)),
    ),
    Case("sample-seed-negative", "sample", args("--seed", "-1"), ("--seed", "got -1")),
    Case(
        "complete-seed-negative",
        "complete",
        then(INPUT, args("--seed", "-5")),
        ("--seed", "got -5"),
    ),
    Case(
        "complete-seed-above-uint32",
        "complete",
        then(INPUT, args("--seed", str(2**32))),
        ("--seed", str(2**32)),
    ),
    Case(
        "complete-input-too-many-images",
        "complete",
        then(many_pngs("inputs", 10_001), args("--input", "inputs")),
        ("--input", "inputs", "10001 images", "10000"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_keeps_the_promise(case, bad_input_world, store, tmp_path):
    outcome = run_case(case, bad_input_world, tmp_path, store)
    assert outcome.problems == [], outcome.stderr[-2000:]
