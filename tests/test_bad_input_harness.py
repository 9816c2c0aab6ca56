"""Self-tests of the bad-input harness, and its cases run as real processes.

The controls show that each case fails for its defect: the good workspace works,
the payloads really run code when loaded unsafely, and the check reports a stage
that succeeds. The table check keeps the stage modules' cases distinct and in their
modules' stages.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import shutil

import pytest
import torch
import yaml
from bad_input_harness import (
    CASE_MODULES,
    PREVIOUS,
    Case,
    all_cases,
    all_runs,
    in_subprocess,
    run_case,
    working_dir,
    write_checkpoint,
)
from bad_input_setups import MARKER, args, malicious_checkpoint, malicious_yaml

from rnnexp.cli import main


def test_cases_are_many_and_distinct():
    cases = all_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    assert len(cases) >= 25
    assert {c.stage for c in cases} >= {"fetch", "prepare", "train", "tune", "evaluate", "sample"}
    for module, stages in CASE_MODULES.items():
        if stages is not None:
            assert {c.stage for c in importlib.import_module(module).CASES} <= stages, module


# One case per kind of input, as a real process: the exit status is the process's.
PROCESS_CASES = [
    "params-1e-3-string",
    "yaml-python-tag-refused",
    "png-truncated",
    "data-smaller-than-batch-train",
    "ckpt-runs-code-evaluate",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", PROCESS_CASES)
def test_bad_input_keeps_the_promise_as_a_process(name, bad_input_world, store, tmp_path):
    (case,) = [c for c in all_cases() if c.name == name]
    outcome = run_case(case, bad_input_world, tmp_path, store, runner=in_subprocess)
    assert outcome.problems == [], outcome.stderr[-2000:]


@pytest.mark.parametrize("stage", ["evaluate", "sample"])
def test_the_good_workspace_works(stage, bad_input_world, store, tmp_path):
    """Control: without the defect the same stage succeeds, so each case fails for its defect."""
    ws = tmp_path / "good"
    shutil.copytree(bad_input_world, ws)
    before = {r.info.run_id for r in all_runs(store)}
    with working_dir(ws), contextlib.redirect_stdout(io.StringIO()):
        assert main([stage, *(["--n", "4"] if stage == "sample" else [])]) == 0
    written = {"evaluate": "reports/metrics.json", "sample": "samples.png"}[stage]
    assert (ws / written).read_bytes() != PREVIOUS
    new = [r for r in all_runs(store) if r.info.run_id not in before]
    assert all(r.info.status == "FINISHED" for r in new)


def test_the_payloads_are_live(tmp_path):
    """Control: the malicious pickle and YAML really run code when loaded unsafely."""
    ws = tmp_path / "ws"
    (ws / "models").mkdir(parents=True)
    write_checkpoint(ws / "models" / "best.ckpt")
    malicious_checkpoint(ws)
    torch.load(ws / "models" / "best.ckpt", weights_only=False)
    assert (ws / MARKER).exists()
    (ws / MARKER).unlink()
    (ws / "params.yaml").write_text("train:\n  max_epochs: 1\n")
    malicious_yaml(ws)
    yaml.unsafe_load((ws / "params.yaml").read_text())
    assert (ws / MARKER).exists()


def test_the_check_catches_a_broken_promise(bad_input_world, store, tmp_path):
    """Control: a stage that succeeds (exit 0, writes its output) is reported as such."""
    case = Case("not-bad-at-all", "sample", args("--n", "2"), ("samples.png",))
    problems = run_case(case, bad_input_world, tmp_path, store).problems
    assert "exit status 0, expected 2" in problems
    assert "workspace changed: ['samples.png']" in problems
    assert not any(p.startswith("new MLflow runs") for p in problems)  # sample opens none
