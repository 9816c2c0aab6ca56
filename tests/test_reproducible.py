"""Run-to-run reproducible CPU numerics: the MKL settings that rnnexp makes.

A resumed training must equal an uninterrupted one bit for bit, and the two run in
different processes. Without MKL's Conditional Numerical Reproducibility (MKL_CBWR)
about 1 process in 10 trained to weights 1e-8..6e-8 off (benchmarks/RESULTS.md); the
tests here check the settings that prevent it, through MKL's own report of each call
(MKL_VERBOSE prints ``CNR:<mode>`` and ``Dyn:<0|1>`` per call).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

needs_mkl = pytest.mark.skipif(
    not torch.backends.mkl.is_available(), reason="torch built without MKL"
)

# One matrix product (MKL's sgemm on x86 torch builds) after importing rnnexp, and one
# inside torch_threads(0).
CHILD = """
import torch
import rnnexp.util.threads
a = torch.ones(256, 256)
a @ a
print("inside", flush=True)
with rnnexp.util.threads.torch_threads(0):
    a @ a
"""


def mkl_calls(**env: str) -> tuple[str, str]:
    """MKL_VERBOSE's report of CHILD's two products, before and inside torch_threads(0)."""
    child_env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    child_env.update(MKL_VERBOSE="1", **env)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=child_env, check=True
    ).stdout
    before, _, inside = out.partition("inside")
    return before, inside


@needs_mkl
def test_importing_rnnexp_turns_mkl_conditional_reproducibility_on():
    before, inside = mkl_calls()
    assert re.findall(r"SGEMM.*CNR:(\w+)", before) == ["AUTO"]  # MKL's default is OFF
    assert re.findall(r"SGEMM.*CNR:(\w+)", inside) == ["AUTO"]


@needs_mkl
def test_a_users_mkl_cbwr_wins():
    before, _ = mkl_calls(MKL_CBWR="COMPATIBLE")
    assert re.findall(r"SGEMM.*CNR:(\w+)", before) == ["COMPATIBLE"]


@needs_mkl
def test_default_thread_count_turns_mkl_dynamic_threading_off():
    # Intel's other condition: a fixed thread count with MKL_DYNAMIC off. Torch leaves
    # it on until set_num_threads is called, which train.threads: 0 used not to do.
    before, inside = mkl_calls()
    assert re.findall(r"SGEMM.*Dyn:(\d)", before) == ["1"]
    assert re.findall(r"SGEMM.*Dyn:(\d)", inside) == ["0"]
