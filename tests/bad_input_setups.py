"""Bad-input setups shared by the stage modules: params edits, file damage, payloads.

A setup takes the copied workspace, writes one bad input into it and returns the
extra CLI arguments (see ``bad_input_harness.Case``). Setups used by one stage only
live in that stage's ``test_bad_input_<stage>.py``. Not collected by pytest.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

# --------------------------------------------------------------------------- params.yaml


def read_params(ws: Path) -> dict:
    """The workspace's params.yaml as plain data."""
    return yaml.safe_load((ws / "params.yaml").read_text())


def write_params(ws: Path, params: dict) -> None:
    """Write ``params`` as the workspace's params.yaml (key order kept)."""
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
    """Setup: :func:`set_param` for each ``(where, value)`` pair, in order."""

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


# --------------------------------------------------------------------------- files


def png_bytes(size: tuple[int, int] = (6, 6), value: int = 128) -> bytes:
    """A valid grey PNG of ``size`` (width, height), every pixel ``value``."""
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def truncate(path: str, keep: float) -> Callable[[Path], list[str]]:
    """Setup: the file ``path`` cut to its first ``keep`` fraction of bytes."""

    def setup(ws: Path) -> list[str]:
        blob = (ws / path).read_bytes()
        (ws / path).write_bytes(blob[: int(len(blob) * keep)])
        return []

    return setup


def overwrite(path: str, blob: bytes) -> Callable[[Path], list[str]]:
    """Setup: the file ``path`` (created with its folders if need be) holds ``blob``."""

    def setup(ws: Path) -> list[str]:
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_bytes(blob)
        return []

    return setup


def remove(path: str) -> Callable[[Path], list[str]]:
    """Setup: the file ``path`` deleted."""

    def setup(ws: Path) -> list[str]:
        (ws / path).unlink()
        return []

    return setup


# --------------------------------------------------------------------------- payloads


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


# --------------------------------------------------------------------------- composition


def args(*argv: str) -> Callable[[Path], list[str]]:
    """Setup that writes nothing: the bad input is in the arguments."""
    return lambda ws: list(argv)


def then(*setups: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    """Run setups in order; their extra arguments are concatenated."""

    def setup(ws: Path) -> list[str]:
        return [a for s in setups for a in s(ws)]

    return setup
