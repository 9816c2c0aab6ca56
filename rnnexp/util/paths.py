"""Where the project's stores live: the workspace root, seen from inside DVC's copies."""

from __future__ import annotations

import os
from pathlib import Path


def workspace_root(start: str | Path | None = None) -> Path:
    """The project root that owns the stores, seen from ``start`` (default: cwd).

    Inside a DVC experiment copy (``<repo>/.dvc/tmp/exps/...``) this is ``<repo>``,
    so that queued experiments share the main workspace's MLflow store.
    """
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 1):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp":
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir() or (candidate / "dvc.yaml").is_file():
            return candidate
    return here
