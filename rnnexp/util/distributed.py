"""Which process of a distributed run this is.

Under ``train.strategy: ddp`` Lightning starts one process per device by running the
same command again with ``LOCAL_RANK`` (and ``NODE_RANK`` on other machines) set;
``torchrun`` and SLURM set ``RANK`` themselves. Every process runs the stage's code,
so the decision "log to MLflow and write outputs, or not" must be taken from the
environment *before* the Trainer exists: only global rank 0 opens an MLflow run.
The others (and every process when ``tracking.enabled`` is false) get a
:class:`rnnexp.tracking.NullRunHandle`, which accepts the same calls and does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


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
