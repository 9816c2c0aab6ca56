"""Tags saying where a run comes from: git commit and dirty flag, DVC experiment, its owner."""

from __future__ import annotations

import os
import subprocess

from rnnexp.tracking import _liveness


def _git(*args: str) -> str | None:
    """``git <args>``'s output, or None when git is missing or fails (not a checkout)."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def source_tags() -> dict[str, str]:
    """Git commit and dirty flag, DVC experiment name, and the process that owns the run.

    The owner is host, machine identity, pid and the pid's start time
    (:func:`rnnexp.tracking._liveness.owner_tags`; ``owner_dead`` reads them back).
    """
    tags = _liveness.owner_tags()
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags["rnnexp.git_dirty"] = str(bool(status)).lower()
    if os.environ.get("DVC_EXP_NAME"):
        tags["rnnexp.dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return tags
