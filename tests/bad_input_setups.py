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


def params_bytes(edit: Callable[[bytes], bytes]) -> Callable[[Path], list[str]]:
    """Setup: params.yaml's bytes replaced by ``edit(bytes)`` (for bytes that are not UTF-8)."""

    def setup(ws: Path) -> list[str]:
        path = ws / "params.yaml"
        blob = edit(path.read_bytes())
        assert blob != path.read_bytes(), "the edit changed nothing"
        path.write_bytes(blob)
        return []

    return setup


def tuned_params(blob: bytes) -> Callable[[Path], list[str]]:
    """Setup: train.use_tuned on, reports/best_params.yaml (the tune stage's output) ``blob``."""

    def setup(ws: Path) -> list[str]:
        set_param("train.use_tuned", True)(ws)
        (ws / "reports" / "best_params.yaml").write_bytes(blob)
        return []

    return setup


def alias_bomb(levels: int) -> str:
    """A YAML flow list whose anchors nest ``levels`` deep: 9**levels 'lol' once expanded
    ("billion laughs"), in a few hundred characters."""
    parts = [f"&l0 [{', '.join(['lol'] * 9)}]"]
    parts += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"[{', '.join(parts)}]"


# --------------------------------------------------------------------------- machines


def absent_accelerator() -> str:
    """A ``train.accelerator`` this machine lacks: ``gpu`` where it has neither CUDA nor
    MPS (the usual mistake), else ``cuda`` or ``mps``, whichever is missing."""
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return "gpu" if not (cuda or mps) else "mps" if not mps else "cuda"


# Unset: what tells a process it is one of several machines (launchers and Lightning's
# own variables), so that train.num_nodes > 1 finds no other member.
LAUNCHER_ENV: tuple[tuple[str, str | None], ...] = tuple(
    (name, None)
    for name in (
        "MASTER_ADDR",
        "MASTER_PORT",
        "NODE_RANK",
        "TORCHELASTIC_RUN_ID",
        "SLURM_NTASKS",
        "LSB_JOBID",
    )
)


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
