"""Training settings this machine cannot start: absent devices, absent machines.

``check_training_devices`` and ``check_launch`` run before any MLflow run or Optuna
study opens; here they are checked against simulated machines (CUDA and MPS counts
patched, launcher environments given as mappings). The end-to-end cases are in
``test_bad_input_params.py``.
"""

from __future__ import annotations

import pytest
import torch

from rnnexp.errors import RnnexpError
from rnnexp.util import devices
from rnnexp.util.distributed import check_launch, launcher

NODE_ENV = {"MASTER_ADDR": "node0.lan", "MASTER_PORT": "29500", "NODE_RANK": "1"}


@pytest.fixture
def machine(monkeypatch):
    """``machine(cuda=N, mps=bool)``: what torch reports about this machine's devices."""

    def set_machine(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(devices, "_mps_available", lambda: mps)

    return set_machine


@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "mps"])
def test_a_kind_of_device_the_machine_lacks_is_refused(machine, accelerator):
    machine(cuda=0, mps=False)
    with pytest.raises(RnnexpError) as info:
        devices.check_training_devices(accelerator, 1)
    assert str(info.value).startswith(
        f"train.accelerator: {accelerator!r}, but this machine has only the CPU (no CUDA or MPS)"
    )


@pytest.mark.parametrize(
    "accelerator, asked, message",
    [
        ("gpu", 2, "train.devices: 2 with train.accelerator: 'gpu', but this machine has 1 CUDA"),
        ("cuda", 3, "has 1 CUDA device (CUDA_VISIBLE_DEVICES limits"),
        ("auto", 2, "set train.devices to at most 1"),  # auto takes the GPU when there is one
    ],
)
def test_more_gpus_than_visible_are_refused(machine, accelerator, asked, message):
    machine(cuda=1)
    with pytest.raises(RnnexpError, match="train.devices") as info:
        devices.check_training_devices(accelerator, asked)
    assert message in str(info.value)


def test_mps_is_one_device(machine):
    machine(mps=True)
    devices.check_training_devices("mps", 1)
    with pytest.raises(RnnexpError, match="has 1 MPS device"):
        devices.check_training_devices("auto", 2)


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_any_number_of_cpu_processes_is_accepted(machine, accelerator):
    machine(cuda=0)
    devices.check_training_devices(accelerator, 8)
    machine(cuda=2)
    devices.check_training_devices("gpu", 2)


def test_one_node_needs_no_launcher():
    check_launch(1, {})


def test_several_nodes_without_launcher_or_variables_are_refused():
    with pytest.raises(RnnexpError) as info:
        check_launch(2, {})
    assert str(info.value).startswith(
        "train.num_nodes: 2, but MASTER_ADDR, MASTER_PORT, NODE_RANK are not set, so the "
        "training would wait forever for the other machines"
    )
    assert "NODE_RANK (0..1)" in str(info.value)


def test_each_missing_variable_is_named():
    with pytest.raises(RnnexpError, match="but NODE_RANK is not set"):
        check_launch(2, {**NODE_ENV, "NODE_RANK": " "})


@pytest.mark.parametrize("rank", ["2", "-1", "one"])
def test_node_rank_outside_the_nodes_is_refused(rank):
    with pytest.raises(RnnexpError, match=f"NODE_RANK is '{rank}', not one of 0..1"):
        check_launch(2, {**NODE_ENV, "NODE_RANK": rank})


def test_lightning_variables_on_each_node_are_accepted():
    check_launch(2, NODE_ENV)
    check_launch(3, {**NODE_ENV, "NODE_RANK": "2"})


@pytest.mark.parametrize(
    "env, name",
    [
        ({"TORCHELASTIC_RUN_ID": "abc"}, "torchrun"),
        ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "train"}, "srun"),
        ({"SLURM_NTASKS": "8"}, "srun"),
        (
            {
                "LSB_JOBID": "1",
                "LSB_DJOB_RANKFILE": "f",
                "JSM_NAMESPACE_LOCAL_RANK": "0",
                "JSM_NAMESPACE_SIZE": "8",
            },
            "jsrun",
        ),
    ],
)
def test_a_launcher_knows_the_members(env, name):
    assert launcher(env) == name
    check_launch(4, env)


def test_an_interactive_slurm_shell_is_not_a_launcher():
    # Lightning's rule: a job named bash or interactive runs its processes by hand
    env = {"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "interactive"}
    assert launcher(env) is None
    with pytest.raises(RnnexpError, match="MASTER_ADDR"):
        check_launch(2, env)


def test_check_training_machine_checks_devices_and_nodes(machine, monkeypatch):
    machine(cuda=0)
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    from rnnexp.config import Params, with_overrides

    devices.check_training_machine(Params().train)
    gpu = with_overrides(Params(), {"train.accelerator": "gpu"})
    with pytest.raises(RnnexpError, match="train.accelerator"):
        devices.check_training_machine(gpu.train)
    nodes = with_overrides(Params(), {"train.num_nodes": 2})
    with pytest.raises(RnnexpError, match="train.num_nodes"):
        devices.check_training_machine(nodes.train)
