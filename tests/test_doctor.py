"""`rnnexp doctor`: each check passes on a good setup and fails, saying why, on a bad one."""

from __future__ import annotations

import shutil
import time

import pytest
import torch
from conftest import PARAMS_YAML
from helpers import free_port, project_env, run

from rnnexp import cli
from rnnexp.commands.doctor import (
    check_accelerators,
    check_allocator,
    check_data,
    check_dvc_remote,
    check_optuna,
    check_tracking,
    check_versions,
    doctor,
    run_checks,
)


def _boom(params, root):
    raise RuntimeError("store on fire\nsecond line")


def test_a_raising_check_fails_alone_and_sets_the_exit_code(tiny_params, tmp_path, capsys):
    checks = (("good", lambda p, r: (True, "fine")), ("bad", _boom))
    results = run_checks(tiny_params(), tmp_path, checks)
    assert results == [("good", True, "fine"), ("bad", False, "RuntimeError: store on fire")]


def test_doctor_prints_pass_fail_lines_and_exits_1_on_a_failure(
    tiny_params, tmp_path, capsys, monkeypatch
):
    import rnnexp.commands.doctor as doctor_module

    monkeypatch.setattr(doctor_module, "CHECKS", (("ok", lambda p, r: (True, "a")),))
    assert doctor(tiny_params(), tmp_path) == 0
    monkeypatch.setattr(doctor_module, "CHECKS", (("ok", lambda p, r: (True, "a")), ("x", _boom)))
    assert doctor(tiny_params(), tmp_path) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].startswith("PASS  ok") and lines[-2].startswith("FAIL  x")
    assert lines[-1] == "doctor: 1/2 checks passed; failed: x"


def test_tracking_store_check_writes_to_the_store(store, tiny_params, tmp_path):
    ok, detail = check_tracking(tiny_params(), tmp_path)
    assert ok and "writable" in detail
    experiment = store.get_experiment_by_name("rnnexp")
    assert abs(int(experiment.tags["rnnexp.last_probe"]) - time.time()) < 120


def test_unreachable_tracking_server_fails_fast(tiny_params, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    start = time.monotonic()
    (result,) = run_checks(tiny_params(), tmp_path, (("tracking", check_tracking),))
    assert result[1] is False and url in result[2]
    assert time.monotonic() - start < 60  # no minutes of HTTP retries


def test_sqlite_study_storage_fails_for_several_workers(tiny_params, tmp_path):
    ok, detail = check_optuna(tiny_params("tune.workers=2"), tmp_path)
    assert not ok and "takes one writer" in detail and "journal:" in detail


def test_journal_storage_passes_for_several_workers(tiny_params, tmp_path):
    journal = tmp_path / "optuna-journal.log"
    ok, detail = check_optuna(
        tiny_params("tune.workers=4", f"tune.storage=journal:{journal}"), tmp_path
    )
    assert ok and "4 workers" in detail


def test_data_check_needs_the_prepared_data(tiny_params, tmp_path, prepared_dir):
    ok, detail = check_data(tiny_params(), tmp_path)
    assert not ok and "dvc pull" in detail
    shutil.copytree(prepared_dir, tmp_path / "data/prepared")
    ok, detail = check_data(tiny_params(), tmp_path)
    assert ok and "prepared data" in detail
    missing = tiny_params("data.source=idx", f"data.path={tmp_path / 'nowhere'}")
    ok, detail = check_data(missing, tmp_path)
    assert not ok and "nowhere does not exist" in detail


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU case")
def test_asking_for_a_gpu_without_one_fails(tiny_params, tmp_path):
    assert check_accelerators(tiny_params(), tmp_path)[0]
    ok, detail = check_accelerators(tiny_params("train.accelerator=gpu"), tmp_path)
    assert not ok and "cuda: 0" in detail


def test_the_allocator_line_says_which_malloc_training_gets(tiny_params, tmp_path, monkeypatch):
    monkeypatch.delenv("RNNEXP_ALLOCATOR", raising=False)
    monkeypatch.setattr("rnnexp.util.allocator.find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    monkeypatch.setattr("sys.platform", "linux")
    assert check_allocator(tiny_params(), tmp_path) == (
        True,
        "tcmalloc (libtcmalloc_minimal.so.4) for train and tune",
    )
    monkeypatch.setattr("rnnexp.util.allocator.find_tcmalloc", lambda: None)
    ok, detail = check_allocator(tiny_params(), tmp_path)
    assert ok and "no tcmalloc found" in detail and "libtcmalloc-minimal4" in detail
    monkeypatch.setenv("RNNEXP_ALLOCATOR", "system")
    monkeypatch.setattr("rnnexp.util.allocator.find_tcmalloc", lambda: "libtcmalloc.so.4")
    ok, detail = check_allocator(tiny_params(), tmp_path)
    assert ok and "RNNEXP_ALLOCATOR=system" in detail and "tcmalloc (" not in detail


def test_versions_name_the_stack(tiny_params, tmp_path):
    ok, detail = check_versions(tiny_params(), tmp_path)
    assert ok
    for name in ("python", "torch", "lightning", "mlflow", "optuna", "dvc"):
        assert f"{name} " in detail


@pytest.mark.slow
def test_dvc_remote_check_and_the_command_end_to_end(tmp_path, tiny_params, capsys, monkeypatch):
    env = project_env()
    run(["git", "init", "-q"], tmp_path, env)
    run(["dvc", "init", "-q"], tmp_path, env)
    ok, detail = check_dvc_remote(tiny_params(), tmp_path)
    assert not ok and "no default DVC remote" in detail
    run(["dvc", "remote", "add", "-d", "team", "../team-remote"], tmp_path, env)
    ok, detail = check_dvc_remote(tiny_params(), tmp_path)
    # the folder beside the repository (given relative to the cwd), not there yet
    assert ok and f"team: {tmp_path.parent / 'team-remote'} (" in detail
    assert "created by the first dvc push" in detail

    shutil.copy(PARAMS_YAML, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert cli.main(["doctor", "--set", "tune.workers=2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  optuna storage" in out and "PASS  dvc remote" in out
    assert "FAIL  dataset" in out and "PASS  tracking store" in out
