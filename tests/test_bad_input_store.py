"""Bad input around the stages: the MLflow store, the output places, params.yaml edited.

- The tracking store does not answer (nothing listens, a host that does not resolve,
  TLS to a closed port, a PostgreSQL store that refuses) or is damaged (``mlflow.db``
  of random bytes, another program's SQLite file, a table missing, a torn copy):
  every stage that logs, and ``rnnexp compare``, stops with one message naming the
  setting or the file, within seconds (issue 16: at most 30 s; the cases assert it).
- Output places that cannot be written (a file where a folder goes, a folder where
  a file goes) are refused before the work, naming the user's path.
- ``params.yaml`` edited while a stage runs: the stage fails, naming the file,
  before its outputs are committed, so DVC does not record the new values with them.

The promise checked is ``bad_input_harness``'s; the cases of this module run every
stage (``CASE_MODULES`` key ``test_bad_input_store``: any stage).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import yaml
from bad_input_harness import (
    PREVIOUS,
    Case,
    all_runs,
    in_process,
    in_subprocess,
    run_case,
    snapshot,
    working_dir,
)
from bad_input_setups import args, then
from bad_input_store_setups import (
    DB,
    REFUSED,
    REFUSED_POSTGRES,
    REFUSED_TLS,
    UNRESOLVABLE,
    a_file_at,
    a_folder_at,
    db_file,
    foreign_sqlite,
    random_bytes,
    store_env,
    truncated_store,
    without_table,
)

STAGES = ("fetch", "prepare", "tune", "classifier", "train", "evaluate")
TRACKING_DEADLINE_S = 30.0  # issue 16: an unreachable or damaged store answers within 30 s
# A whole process also imports torch and Lightning first (~10 s here, more on a loaded
# machine): held to the bad-input promise of an answer within 60 s.
PROCESS_DEADLINE_S = 60.0


def nothing(ws: Path) -> list[str]:
    return []


STORE_CASES: list[Case] = [
    # --- nothing listens: every stage that logs, and compare
    *(
        Case(
            f"store-refused-{stage}",
            stage,
            nothing,
            ("MLFLOW_TRACKING_URI", REFUSED, "does not answer", "Connection refused"),
            env=store_env(REFUSED),
        )
        for stage in (*STAGES, "compare", "serve")
    ),
    Case(
        "store-host-unresolvable-train",
        "train",
        nothing,
        ("MLFLOW_TRACKING_URI", UNRESOLVABLE, "does not answer"),
        env=store_env(UNRESOLVABLE),
    ),
    Case(
        "store-host-unresolvable-compare",
        "compare",
        nothing,
        ("MLFLOW_TRACKING_URI", UNRESOLVABLE, "does not answer"),
        env=store_env(UNRESOLVABLE),
    ),
    Case(
        "store-https-closed-port-evaluate",
        "evaluate",
        nothing,
        ("MLFLOW_TRACKING_URI", REFUSED_TLS, "does not answer"),
        env=store_env(REFUSED_TLS),
    ),
    Case(
        "store-postgres-refused-tune",
        "tune",
        nothing,
        ("MLFLOW_TRACKING_URI", "127.0.0.1", "Connection refused"),
        absent=("s3cret-pw",),  # the password is not printed
        env=store_env(REFUSED_POSTGRES),
    ),
    # --- the workspace's mlflow.db damaged (the default store)
    *(
        Case(
            f"store-db-random-bytes-{stage}",
            stage,
            db_file(random_bytes),
            (DB, "not a usable MLflow store"),
            env=store_env(None),
        )
        for stage in ("fetch", "train", "evaluate", "compare")
    ),
    Case(
        "store-db-foreign-sqlite-prepare",
        "prepare",
        db_file(foreign_sqlite),
        (DB, "not an MLflow tracking store", "inventory"),
        env=store_env(None),
    ),
    Case(
        "store-db-foreign-sqlite-tune",
        "tune",
        db_file(foreign_sqlite),
        (DB, "not an MLflow tracking store"),
        env=store_env(None),
    ),
    Case(
        "store-db-runs-table-missing-classifier",
        "classifier",
        db_file(without_table("runs")),
        (DB, "damaged MLflow store", "runs"),
        env=store_env(None),
    ),
    Case(
        "store-db-experiments-table-missing-compare",
        "compare",
        db_file(without_table("experiments")),
        (DB, "damaged MLflow store", "experiments"),
        env=store_env(None),
    ),
    Case(
        "store-db-truncated-train",
        "train",
        db_file(truncated_store),
        (DB, "malformed"),
        env=store_env(None),
    ),
    Case(
        "store-db-is-a-folder-evaluate",
        "evaluate",
        a_folder_at(DB),
        (DB, "a folder"),
        env=store_env(None),
    ),
]

OUTPUT_CASES: list[Case] = [
    Case(
        "evaluate-report-path-is-a-folder",
        "evaluate",
        a_folder_at("reports/val_curve.csv"),
        ("reports/val_curve.csv", "is a folder"),
    ),
    Case(
        "evaluate-out-parent-is-a-file",
        "evaluate",
        then(a_file_at("results"), args("--out", "results/reports")),
        ("results/reports/", "results is a file, not a folder"),
    ),
]

CASES: list[Case] = [*STORE_CASES, *OUTPUT_CASES]


def timed(seconds: list[float]):
    """A runner for :func:`run_case`: ``in_process``, its wall time appended to ``seconds``."""

    def runner(argv: list[str]):
        start = time.monotonic()
        try:
            return in_process(argv)
        finally:
            seconds.append(time.monotonic() - start)

    return runner


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_keeps_the_promise(case, bad_input_world, store, tmp_path):
    seconds: list[float] = []
    outcome = run_case(case, bad_input_world, tmp_path, store, runner=timed(seconds))
    assert outcome.problems == [], outcome.stderr[-2000:]
    if case in STORE_CASES:
        print(f"{case.name}: message after {seconds[0]:.2f} s")
        assert seconds[0] < TRACKING_DEADLINE_S, outcome.stderr[-500:]


def silent_server() -> socket.socket:
    """A localhost socket that takes connections and never answers a request."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # the kernel completes the handshakes; nobody reads or replies
    return sock


@pytest.mark.parametrize("stage", ["train", "compare"])
def test_a_server_that_never_answers_fails_within_30_s(stage, bad_input_world, store, tmp_path):
    with silent_server() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        case = Case(
            f"store-silent-{stage}", stage, nothing, (url, "does not answer", "timed out"),
            env=store_env(url),
        )  # fmt: skip
        seconds: list[float] = []
        outcome = run_case(case, bad_input_world, tmp_path, store, runner=timed(seconds))
    assert outcome.problems == [], outcome.stderr[-2000:]
    print(f"{case.name}: message after {seconds[0]:.2f} s")
    assert seconds[0] < TRACKING_DEADLINE_S


# --------------------------------------------------------------------------- params edited


def edit_params(ws: Path) -> None:
    """What a user does in another terminal: change a param the stage depends on."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] * 2
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage_editing(ws, client, monkeypatch, stage, target, when="before"):
    """Run ``stage`` in ``ws`` in-process, with ``target`` (module attribute path) wrapped
    to edit params.yaml before (or after) it runs: (status, stderr, files before, new runs)."""
    module_name, _, attr = target.rpartition(".")
    module = __import__(module_name, fromlist=[attr])
    original = getattr(module, attr)

    def wrapped(*a, **k):
        if when == "before":
            edit_params(ws)
        result = original(*a, **k)
        if when == "after":
            edit_params(ws)
        return result

    monkeypatch.setattr(module, attr, wrapped)
    before_runs = {r.info.run_id for r in all_runs(client)}
    with working_dir(ws):
        before = snapshot(ws)
        status, stderr, raised = in_process([stage])
    new = [r for r in all_runs(client) if r.info.run_id not in before_runs]
    assert raised is None, raised
    return status, stderr, before, sorted(r.info.status for r in new)


def changed(before: dict[str, str], ws: Path) -> list[str]:
    after = snapshot(ws)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def test_params_edited_during_training_fails_before_the_checkpoints(
    bad_input_world, store, tmp_path, monkeypatch
):
    ws = tmp_path / "ws"
    shutil.copytree(bad_input_world, ws)
    # the edit lands once the training has begun (its run is open, the data read)
    status, stderr, before, runs = run_stage_editing(
        ws, store, monkeypatch, "train", "rnnexp.training.fit._trainer"
    )
    assert status == 2, stderr[-2000:]
    assert "rnnexp train: error: params.yaml: changed while the train stage ran" in stderr
    assert "Traceback" not in stderr
    assert changed(before, ws) == ["params.yaml"]  # models/ as it was: no checkpoint
    assert runs == ["FAILED"]


def test_params_edited_during_evaluate_writes_no_report(
    bad_input_world, store, tmp_path, monkeypatch
):
    ws = tmp_path / "ws"
    shutil.copytree(bad_input_world, ws)
    status, stderr, before, runs = run_stage_editing(
        ws, store, monkeypatch, "evaluate", "rnnexp.stages.evaluate.run"
    )
    assert status == 2, stderr[-2000:]
    assert "rnnexp evaluate: error: params.yaml: changed while the evaluate stage ran" in stderr
    assert changed(before, ws) == ["params.yaml"]
    assert (ws / "reports" / "metrics.json").read_bytes() == PREVIOUS
    assert "RUNNING" not in runs


def test_params_edited_after_the_last_output_still_fails_the_stage(
    bad_input_world, store, tmp_path, monkeypatch
):
    """An edit after the outputs are in place: they stay, but the stage exits 2, so DVC
    records nothing (a rerun makes them again with the new values)."""
    ws = tmp_path / "ws"
    shutil.copytree(bad_input_world, ws)
    status, stderr, before, runs = run_stage_editing(
        ws, store, monkeypatch, "prepare", "rnnexp.stages.prepare.write_prepared", when="after"
    )
    assert status == 2, stderr[-2000:]
    assert "rnnexp prepare: error: params.yaml: changed while the prepare stage ran" in stderr
    # the run logged what was made, with the params it was made with
    assert runs == ["FINISHED"]


def test_unchanged_params_leave_the_stage_alone(bad_input_world, store, tmp_path):
    """Control: the same stage with params.yaml untouched writes its outputs."""
    ws = tmp_path / "ws"
    shutil.copytree(bad_input_world, ws)
    with working_dir(ws):
        status, stderr, raised = in_process(["evaluate"])
    assert (status, raised) == (0, None), stderr[-2000:]
    assert (ws / "reports" / "metrics.json").read_bytes() != PREVIOUS


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused_before_training(bad_input_world, store, tmp_path):
    def read_only_models(ws: Path) -> list[str]:
        (ws / "models").chmod(0o555)
        return []

    case = Case(
        "train-models-read-only", "train", read_only_models, ("models/best.ckpt", "Permission")
    )
    try:
        outcome = run_case(case, bad_input_world, tmp_path, store)
    finally:
        (tmp_path / case.name / "models").chmod(0o755)
    assert outcome.problems == [], outcome.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["store-refused-train", "store-db-random-bytes-compare"])
def test_as_a_process_the_message_comes_within_60_s(name, bad_input_world, store, tmp_path):
    """The whole command, interpreter start and imports included (issue 16: 249 s before)."""
    (case,) = [c for c in STORE_CASES if c.name == name]
    start = time.monotonic()
    outcome = run_case(case, bad_input_world, tmp_path, store, runner=in_subprocess)
    seconds = time.monotonic() - start
    assert outcome.problems == [], outcome.stderr[-2000:]
    print(f"{name} as a process: {seconds:.1f} s")
    assert seconds < PROCESS_DEADLINE_S
