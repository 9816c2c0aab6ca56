"""``rnnexp doctor``: is this checkout ready to work with the team's stores?

Each check is a small function ``check(params, root) -> (ok, detail)``; the command
prints one ``PASS``/``FAIL`` line per check and exits 1 if any failed. A check that
raises counts as failed, with the exception as its detail, so one broken tool does
not hide the others.

Example:
    >>> print(format_line("tracking store", True, "sqlite:///mlflow.db"))
    PASS  tracking store   sqlite:///mlflow.db
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnnexp.config import Params

Check = Callable[[Params, Path], tuple[bool, str]]
STACK = ("torch", "lightning", "mlflow", "optuna", "optuna-integration", "dvc")
DVC_TIMEOUT_S = 120


def check_tracking(params: Params, root: Path) -> tuple[bool, str]:
    """The MLflow store answers and takes a write (an experiment tag, no run)."""
    if not params.tracking.enabled:
        return True, "tracking.enabled is false: nothing is logged"
    from rnnexp import tracking

    return True, tracking.probe_store(params)


def check_optuna(params: Params, root: Path) -> tuple[bool, str]:
    """The study storage suits ``tune.workers`` (SQLite: one writer) and opens."""
    from rnnexp.stages.tune import open_storage, storage_url

    url, workers = storage_url(params), params.tune.workers
    if url.startswith("sqlite") and workers > 1:
        return False, (
            f"{url} takes one writer but tune.workers is {workers}; use "
            "journal:<file> (one machine) or postgresql+psycopg://... (several machines)"
        )
    open_storage(params, workers).get_all_studies()
    return True, f"{url} ({workers} worker{'s' if workers > 1 else ''})"


def _dvc(root: Path, *args: str, timeout: float = DVC_TIMEOUT_S) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dvc")
    cmd = [str(exe) if exe.is_file() else "dvc", *args]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)


def check_dvc_remote(params: Params, root: Path) -> tuple[bool, str]:
    """A default DVC remote is configured; a local one exists or can be created,
    another answers ``dvc status --cloud``."""
    out = _dvc(root, "remote", "default")
    name = out.stdout.strip()
    if out.returncode != 0 or not name:
        return False, "no default DVC remote: dvc remote add -d <name> <url>"
    urls = {}  # `dvc remote list`: "name<TAB>url[ (default)]", local paths resolved
    for line in _dvc(root, "remote", "list").stdout.splitlines():
        if line.strip():
            key, _, value = line.partition("\t") if "\t" in line else line.partition(" ")
            urls[key.strip()] = value.strip().removesuffix("(default)").strip()
    url = urls.get(name, "")
    if "://" not in url:  # a local directory; relative paths are relative to .dvc/
        path = Path(url) if Path(url).is_absolute() else (root / ".dvc" / url).resolve()
        if path.is_dir():
            ok = os.access(path, os.W_OK)
            return ok, f"{name}: {path} ({'writable' if ok else 'not writable'})"
        parent = next((p for p in path.parents if p.exists()), None)
        ok = parent is not None and os.access(parent, os.W_OK)
        state = "created by the first dvc push" if ok else f"cannot be created under {parent}"
        return ok, f"{name}: {path} ({state})"
    status = _dvc(root, "status", "--cloud", "--quiet")
    if status.returncode not in (0, 1):  # 1: outputs differ from the remote, still reachable
        why = (status.stderr.strip().splitlines() or ["no answer"])[-1]
        return False, f"{name}: {url} unreachable: {why}"
    return True, f"{name}: {url} (reachable)"


def check_data(params: Params, root: Path) -> tuple[bool, str]:
    """The data source is available and ``data/prepared`` exists."""
    d = params.data
    if d.source != "digits" and d.path and not Path(d.path).exists():
        return False, f"data.path {d.path} does not exist"
    source = "digits (bundled with scikit-learn)" if d.source == "digits" else d.path or d.url
    meta = root / "data" / "prepared" / "meta.json"
    if not meta.is_file():
        return False, f"source {source}; {meta.parent} missing: dvc pull, or dvc repro prepare"
    digest = json.loads(meta.read_text()).get("content_hash", "?")[:12]
    return True, f"source {source}; prepared data {digest}"


def check_accelerators(params: Params, root: Path) -> tuple[bool, str]:
    """The devices ``train.accelerator``/``train.devices`` ask for are visible."""
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    seen = f"cuda: {cuda}, mps: {'yes' if mps else 'no'}, cpu cores: {os.cpu_count()}"
    t = params.train
    if t.accelerator in ("gpu", "cuda") and cuda < t.devices:
        return False, f"train.accelerator={t.accelerator} devices={t.devices}, but {seen}"
    if t.accelerator == "mps" and not mps:
        return False, f"train.accelerator=mps, but {seen}"
    return True, f"{seen} (train.accelerator={t.accelerator}, devices={t.devices})"


def check_allocator(params: Params, root: Path) -> tuple[bool, str]:
    """Which malloc the train and tune stages run under; informational, never fails."""
    from rnnexp.util.allocator import SWITCH, tcmalloc_for_training

    library = tcmalloc_for_training()
    if library:
        return True, f"tcmalloc ({library}) for train and tune"
    if os.environ.get(SWITCH, "") == "system":
        return True, f"the C library's malloc for train and tune ({SWITCH}=system)"
    return True, (
        "the C library's malloc for train and tune: no tcmalloc found (Debian, Ubuntu: "
        "apt-get install libtcmalloc-minimal4; 1.15-1.33x faster training on the CPU)"
    )


def check_versions(params: Params, root: Path) -> tuple[bool, str]:
    """Python and the stack's versions (fails if a package is missing)."""
    found, missing = [f"python {platform.python_version()}"], []
    for name in STACK:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return False, f"missing: {', '.join(missing)} (pip install -e .)"
    return True, ", ".join(found)


CHECKS: tuple[tuple[str, Check], ...] = (
    ("tracking store", check_tracking),
    ("optuna storage", check_optuna),
    ("dvc remote", check_dvc_remote),
    ("dataset", check_data),
    ("accelerators", check_accelerators),
    ("allocator", check_allocator),
    ("versions", check_versions),
)


def format_line(name: str, ok: bool, detail: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {name:<15}  {detail}"


def run_checks(
    params: Params, root: Path, checks: tuple[tuple[str, Check], ...] | None = None
) -> list[tuple[str, bool, str]]:
    """Run ``checks`` (default :data:`CHECKS`); one raising fails with its exception."""
    results = []
    for name, check in CHECKS if checks is None else checks:
        try:
            ok, detail = check(params, root)
        except Exception as exc:  # a broken check is a failed check
            text = str(exc).strip().splitlines()
            ok, detail = False, f"{type(exc).__name__}: {text[0] if text else ''}"[:400]
        results.append((name, ok, detail))
    return results


def doctor(params: Params, root: Path) -> int:
    """Print a PASS/FAIL line per check; 0 if all passed, else 1."""
    results = run_checks(params, root)
    for name, ok, detail in results:
        print(format_line(name, ok, detail), flush=True)
    failed = [name for name, ok, _ in results if not ok]
    summary = f"doctor: {len(results) - len(failed)}/{len(results)} checks passed"
    print(summary + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(args: Any, params: Params) -> int:
    """Run every check from the workspace root; the exit status (1 when one failed)."""
    from rnnexp.util.paths import workspace_root

    return doctor(params, workspace_root())
