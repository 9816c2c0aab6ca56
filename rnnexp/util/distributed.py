"""Which process of a distributed run this is.

Under ``train.strategy: ddp`` Lightning starts one process per device by running the
same command again with ``LOCAL_RANK`` (and ``NODE_RANK`` on other machines) set;
``torchrun`` and SLURM set ``RANK`` themselves. Every process runs the stage's code,
so the decision "log to MLflow and write outputs, or not" must be taken from the
environment *before* the Trainer exists: only global rank 0 opens an MLflow run.
The others (and every process when ``tracking.enabled`` is false) get a
:class:`rnnexp.tracking.NullRunHandle`, which accepts the same calls and does nothing.

A training across machines (``train.num_nodes`` > 1) waits for every member before
its first step; started where no launcher says who the members are, it would wait
forever. :func:`check_launch` refuses that before any run opens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from rnnexp.errors import RnnexpError

# What Lightning's own environment needs on each machine of a multi-node training
# (README, "Several GPUs and nodes"); launchers (torchrun, srun, jsrun) set their own.
NODE_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")
_LSF_VARIABLES = (
    "LSB_JOBID",
    "LSB_DJOB_RANKFILE",
    "JSM_NAMESPACE_LOCAL_RANK",
    "JSM_NAMESPACE_SIZE",
)


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


def launcher(env: Mapping[str, str] | None = None) -> str | None:
    """The cluster launcher that started this process, as Lightning detects it, or None.

    ``torchrun`` (``TORCHELASTIC_RUN_ID``), SLURM's ``srun`` (``SLURM_NTASKS``, not in an
    interactive job named ``bash`` or ``interactive``) or LSF's ``jsrun``.
    """
    env = os.environ if env is None else env
    if env.get("TORCHELASTIC_RUN_ID") is not None:
        return "torchrun"
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return "srun"
    if all(name in env for name in _LSF_VARIABLES):
        return "jsrun"
    return None


def check_launch(num_nodes: int, env: Mapping[str, str] | None = None) -> None:
    """Refuse ``train.num_nodes`` > 1 where no member could ever join.

    Under a launcher (:func:`launcher`) the launcher knows the members. Else each
    machine needs ``MASTER_ADDR`` and ``MASTER_PORT`` (node 0's address) and its own
    ``NODE_RANK`` in ``0..num_nodes-1``; without them Lightning would start a
    one-machine group of ``num_nodes`` members and wait for the others forever.

    Raises:
        RnnexpError: naming ``train.num_nodes`` and what is missing.

    Example:
        >>> check_launch(2, {"MASTER_ADDR": "node0", "MASTER_PORT": "29500", "NODE_RANK": "1"})
    """
    env = os.environ if env is None else env
    if num_nodes <= 1 or launcher(env) is not None:
        return
    missing = [name for name in NODE_VARIABLES if not env.get(name, "").strip()]
    where = (
        "run it on each machine with MASTER_ADDR and MASTER_PORT of node 0 and that "
        f"machine's NODE_RANK (0..{num_nodes - 1}), or under torchrun or srun; on one "
        "machine set train.num_nodes: 1"
    )
    if missing:
        raise RnnexpError(
            f"train.num_nodes: {num_nodes}, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set, so the training would wait "
            f"forever for the other machines: {where}"
        )
    rank = env["NODE_RANK"].strip()
    if not rank.isdigit() or int(rank) >= num_nodes:
        raise RnnexpError(
            f"train.num_nodes: {num_nodes}, but NODE_RANK is {rank!r}, not one of "
            f"0..{num_nodes - 1}: {where}"
        )
