"""Which process of a distributed run this is, and a run handle that logs nothing.

Under ``train.strategy: ddp`` Lightning starts one process per device by running the
same command again with ``LOCAL_RANK`` (and ``NODE_RANK`` on other machines) set;
``torchrun`` and SLURM set ``RANK`` themselves. Every process runs the stage's code,
so the decision "log to MLflow and write outputs, or not" must be taken from the
environment *before* the Trainer exists: only global rank 0 opens an MLflow run.
The others (and every process when ``tracking.enabled`` is false) get a
:class:`NullRunHandle`, which accepts the same calls and does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def global_rank(devices_per_node: int = 1, env: Mapping[str, str] | None = None) -> int:
    """Global rank of this process, read from the launcher's environment variables.

    ``RANK`` (torchrun) or ``SLURM_PROCID`` when set; else Lightning's own launcher's
    ``NODE_RANK * devices_per_node + LOCAL_RANK``; 0 in a plain single process.

    Example:
        >>> global_rank(2, {"NODE_RANK": "1", "LOCAL_RANK": "1"})
        3
    """
    env = os.environ if env is None else env
    for key in ("RANK", "SLURM_PROCID"):
        if env.get(key, "").strip():
            return int(env[key])
    node = int(env.get("NODE_RANK", "0") or 0)
    local = int(env.get("LOCAL_RANK", "0") or 0)
    return node * devices_per_node + local


def is_global_zero(devices_per_node: int = 1, env: Mapping[str, str] | None = None) -> bool:
    """True in the one process that logs to MLflow and writes outputs."""
    return global_rank(devices_per_node, env) == 0


@dataclass
class NullRunHandle:
    """Stands in for :class:`rnnexp.tracking.RunHandle` where nothing may be logged.

    ``run_id`` is None (no MLflow run exists); every logging call is a no-op.
    """

    run_id: str | None = None
    experiment_id: str | None = None
    interrupted: bool = False
    resumed: bool = False  # never continues a run: there is none

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_image(self, image: Any, key: str, step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass
