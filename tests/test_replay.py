"""``rnnexp replay``: undelivered logging reaches its run exactly once, even across kills.

Fast tests make ``mlflow-undelivered/<run_id>.json`` by logging through a client
whose store went away (as ``tests/test_tracking_buffer.py`` does) and replay it into
the session's SQLite store in-process; the slow one trains through a real
``mlflow server`` outage, starts the server again and SIGKILLs a replay halfway.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import BIN, TRAINED, free_port, set_args, tiny
from mlflow import MlflowClient
from PIL import Image

from rnnexp import cli, tracking
from rnnexp.tracking import _replay
from rnnexp.tracking._buffer import Pending, save_undelivered


class StoreDown:
    """An MlflowClient whose server went away: every call raises ConnectionError (an OSError)."""

    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise ConnectionError(f"{name}: connection refused")

        return call


def outage(params, workspace: Path, extra=None) -> tuple[str, Path]:
    """A train run that logs epoch 0, loses its store, logs more; (run id, its file)."""
    artifact = workspace / "models" / "best.ckpt"
    artifact.parent.mkdir(exist_ok=True)
    artifact.write_bytes(b"weights")
    with pytest.raises(tracking.TrackingError, match="were not logged"):
        with tracking.tracked_run(params, "train") as run:
            run.log_metrics({"val/bpd": 3.0, "val/nll": 30.0}, step=0)  # delivered
            run.client = StoreDown()
            for epoch in (1, 2, 3):
                run.log_metrics({"val/bpd": 3.0 - epoch / 4, "val/nll": float(30 - epoch)}, epoch)
            run.set_tags({"rnnexp.note": "after the outage"})
            run.log_text("hello", "notes/hello.txt")
            run.log_artifact(Path("models/best.ckpt"), "checkpoints")  # relative, as fit.py may
            if extra:
                extra(run)
    return run.run_id, workspace / "mlflow-undelivered" / f"{run.run_id}.json"


ITEMS = 7  # 3 metric batches, tags, text, artifact, end status


@pytest.fixture
def workspace(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the workspace root: the undelivered files live here
    return tmp_path


def curve(client, run_id, key="val/bpd"):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def replay(*args: str) -> int:
    return cli.main(["replay", *args])


def test_replay_sends_each_item_once_ends_the_run_and_removes_the_file(
    store, tiny_params, workspace, capsys
):
    run_id, saved = outage(tiny_params(), workspace)
    assert store.get_run(run_id).info.status == "RUNNING"
    assert len(json.loads(saved.read_text())["undelivered"]) == ITEMS
    assert replay() == 0
    out = capsys.readouterr().out
    assert f"run {run_id}: {ITEMS} of {ITEMS} item(s) delivered; removed {saved}" in out
    assert not saved.exists()
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert curve(store, run_id) == [(0, 3.0), (1, 2.75), (2, 2.5), (3, 2.25)]
    assert curve(store, run_id, "val/nll") == [(0, 30.0), (1, 29.0), (2, 28.0), (3, 27.0)]
    assert run.data.tags["rnnexp.note"] == "after the outage"
    assert [a.path for a in store.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/best.ckpt"
    ]
    assert Path(store.download_artifacts(run_id, "notes/hello.txt")).read_text() == "hello"

    assert replay() == 0  # nothing left: says so, sends nothing
    assert "nothing to replay" in capsys.readouterr().out
    assert curve(store, run_id) == [(0, 3.0), (1, 2.75), (2, 2.5), (3, 2.25)]


@pytest.mark.parametrize("when", ["before-send", "after-send"])
@pytest.mark.parametrize("n", range(ITEMS))
def test_a_replay_interrupted_at_any_item_and_rerun_logs_nothing_twice(
    store, tiny_params, workspace, monkeypatch, capsys, when, n
):
    """Interrupted before sending item ``n``, or after sending it but before recording it."""
    run_id, saved = outage(tiny_params(), workspace)
    calls = {"send": 0, "rewrite": 0}
    send, rewrite = _replay._send, _replay._rewrite

    def interrupt(name):
        calls[name] += 1
        if calls[name] == n + 1:
            raise KeyboardInterrupt

    def send_or_stop(*args):
        if when == "before-send":
            interrupt("send")
        return send(*args)

    def rewrite_or_stop(*args):
        if when == "after-send":
            interrupt("rewrite")  # item n reached the store; the file still holds it
        return rewrite(*args)

    with monkeypatch.context() as m:
        m.setattr(_replay, "_send", send_or_stop)
        m.setattr(_replay, "_rewrite", rewrite_or_stop)
        assert replay() == 130
    assert len(json.loads(saved.read_text())["undelivered"]) == ITEMS - n
    assert replay() == 0
    assert f"{ITEMS - n} of {ITEMS - n} item(s) delivered" in capsys.readouterr().out
    assert curve(store, run_id) == [(0, 3.0), (1, 2.75), (2, 2.5), (3, 2.25)]
    assert curve(store, run_id, "val/nll") == [(0, 30.0), (1, 29.0), (2, 28.0), (3, 27.0)]
    assert store.get_run(run_id).info.status == "FINISHED" and not saved.exists()


def test_a_store_that_cannot_be_reached_changes_nothing(store, tiny_params, workspace, capsys):
    run_id, saved = outage(tiny_params(), workspace)
    before = saved.read_bytes()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    capsys.readouterr()
    started = time.monotonic()
    assert replay("--tracking-uri", url) == 2
    assert time.monotonic() - started < 30  # the promise: fast, one quick try
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rnnexp replay: error: the MLflow store {url} cannot be reached")
    assert "nothing was replayed" in err and len(err.splitlines()) == 1
    assert saved.read_bytes() == before
    missing = workspace / "elsewhere" / "mlflow.db"  # a SQLite store that is not there
    assert replay("--tracking-uri", f"sqlite:///{missing}") == 2
    assert "does not exist; nothing was replayed" in capsys.readouterr().err
    assert not missing.parent.exists()  # not created on the way
    assert saved.read_bytes() == before
    assert curve(store, run_id) == [(0, 3.0)] and store.get_run(run_id).info.status == "RUNNING"
    store.set_terminated(run_id)


def test_a_store_lost_midway_keeps_what_was_not_sent(
    store, tiny_params, workspace, monkeypatch, capsys
):
    run_id, saved = outage(tiny_params(), workspace)
    send, sent = _replay._send, []

    def lost_after_two(*args):
        if len(sent) == 2:
            raise ConnectionError("[Errno 111] Connection refused")
        sent.append(1)
        return send(*args)

    monkeypatch.setattr(_replay, "_send", lost_after_two)
    capsys.readouterr()
    assert replay() == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"rnnexp replay: error: {saved}: sending metrics val/bpd, val/nll (step 3) failed: "
        f"Connection refused; 2 of {ITEMS} item(s) delivered, the rest stay in the file: "
        "run `rnnexp replay` again once the store answers"
    )
    assert len(json.loads(saved.read_text())["undelivered"]) == ITEMS - 2
    monkeypatch.setattr(_replay, "_send", send)
    assert replay() == 0
    assert curve(store, run_id) == [(0, 3.0), (1, 2.75), (2, 2.5), (3, 2.25)]


def test_a_malformed_file_is_named_and_nothing_is_sent(store, tiny_params, workspace, capsys):
    run_id, saved = outage(tiny_params(), workspace)
    before = saved.read_bytes()
    capsys.readouterr()
    bad = saved.with_name("0-broken.json")
    bad.write_text('{"run_id": "x", "undelivered": [')
    assert replay() == 2
    err = capsys.readouterr().err
    assert f"rnnexp replay: error: {bad}: not an undelivered-logging file" in err
    assert saved.read_bytes() == before and curve(store, run_id) == [(0, 3.0)]
    bad.write_text(json.dumps({"run_id": run_id, "tracking_uri": "x", "undelivered": [{}]}))
    assert replay() == 2
    assert f"{bad}: not an undelivered-logging file: item 0" in capsys.readouterr().err
    store.set_terminated(run_id)


def test_no_files_is_nothing_to_replay(store, workspace, capsys):
    assert replay() == 0
    assert "nothing to replay" in capsys.readouterr().out
    assert not (workspace / "mlflow-undelivered").exists()


def test_what_cannot_be_sent_stays_in_the_file_with_its_reason(
    store, tiny_params, workspace, capsys
):
    def more(run):
        run.log_artifact(Path("models/gone.ckpt"))
        run.log_image(Image.new("L", (4, 4)), key="samples", step=3)  # its record: no pixels

    (workspace / "models").mkdir()
    (workspace / "models" / "gone.ckpt").write_bytes(b"x")
    run_id, saved = outage(tiny_params(), workspace, more)
    (workspace / "models" / "gone.ckpt").unlink()
    (workspace / "models" / "best.ckpt").write_bytes(b"a later training's weights")
    assert replay() == 1
    out = capsys.readouterr().out
    assert f"{ITEMS - 1} of {ITEMS + 2} item(s) delivered; not delivered, kept in {saved}" in out
    kept = json.loads(saved.read_text())["undelivered"]
    models = workspace / "models"
    assert [(i["what"], i["not_replayed"]) for i in kept] == [
        (f"artifact {Path('models/best.ckpt')}",
         f"the file {models / 'best.ckpt'} changed since the run logged it"),
        (f"artifact {Path('models/gone.ckpt')}",
         f"the file {models / 'gone.ckpt'} no longer exists"),
        ("image samples (step 3)", "the file holds no picture for it"),
    ]  # fmt: skip
    assert store.list_artifacts(run_id, "checkpoints") == []  # not the later weights
    assert curve(store, run_id) == [(0, 3.0), (1, 2.75), (2, 2.5), (3, 2.25)]
    assert store.get_run(run_id).info.status == "FINISHED"  # the end status went through
    (workspace / "models" / "best.ckpt").write_bytes(b"weights")  # put back as it was
    assert replay() == 1 and "1 of 3 item(s) delivered" in capsys.readouterr().out
    assert [a.path for a in store.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/best.ckpt"
    ]


def test_an_image_saved_with_its_picture_is_replayed_once(
    store, tiny_params, workspace, monkeypatch
):
    with tracking.tracked_run(tiny_params(), "train") as run:
        pass
    picture = Image.new("L", (8, 8), color=200)
    items = [
        Pending("image samples (step 2)", None, {"image": "samples", "step": 2, "pixels": picture}),
        Pending("run status FINISHED", None, {"status": "FINISHED"}),
    ]
    save_undelivered(run.run_id, tracking.tracking_uri(), "FINISHED", items)
    saved = workspace / "mlflow-undelivered" / f"{run.run_id}.json"
    (item, _) = json.loads(saved.read_text())["undelivered"]
    assert Image.open(io.BytesIO(base64.b64decode(item["png"]))).getpixel((0, 0)) == 200
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # one file per run
    # Sent, then killed before the file was rewritten: the rerun must not send it again.
    calls = []
    rewrite = _replay._rewrite

    def stop_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return rewrite(*args)

    with monkeypatch.context() as m:
        m.setattr(_replay, "_rewrite", stop_once)
        assert replay() == 130
    assert replay() == 0
    names = [Path(a.path).name for a in store.list_artifacts(run.run_id, "images")]
    assert len([n for n in names if n.startswith("samples+step+2+") and n.endswith(".png")]) == 1
    assert not saved.exists()


def test_a_dataset_input_is_replayed_once(store, tiny_params, workspace, prepared_dir, monkeypatch):
    from rnnexp.data.prepared import read_meta

    meta = read_meta(prepared_dir)
    run_id, saved = outage(
        tiny_params(), workspace, lambda run: run.log_dataset(meta, prepared_dir, "training", "d")
    )
    rewrite = _replay._rewrite

    def stop_after_the_dataset(path, data, items):
        if not any("dataset" in i for i in items):  # the dataset was sent, not recorded yet
            raise KeyboardInterrupt
        return rewrite(path, data, items)

    with monkeypatch.context() as m:
        m.setattr(_replay, "_rewrite", stop_after_the_dataset)
        assert replay() == 130
    assert replay() == 0
    inputs = store.get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [
        (f"d-{meta['levels']}", str(meta["content_hash"])[:12])
    ]
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "training")]


def test_the_end_status_goes_to_a_run_the_reaper_ended_but_not_to_a_reopened_one(
    store, tiny_params, workspace, capsys
):
    reaped, reaped_file = outage(tiny_params(), workspace)
    store.set_tag(reaped, "rnnexp.stale", "process 1 on x died without ending the run")
    store.set_terminated(reaped, "KILLED")  # the writer exited; the next stage reaped it
    reopened, reopened_file = outage(tiny_params(), workspace)
    store.set_tag(reopened, "rnnexp.pid", "1")  # a resumed training in another process owns it
    assert replay() == 1
    run = store.get_run(reaped)
    assert run.info.status == "FINISHED" and "rnnexp.stale" not in run.data.tags
    assert not reaped_file.exists()
    assert store.get_run(reopened).info.status == "RUNNING"
    (kept,) = json.loads(reopened_file.read_text())["undelivered"]
    assert kept["status"] == "FINISHED" and "may still live: not ended" in kept["not_replayed"]
    assert curve(store, reopened) == [(0, 3.0), (1, 2.75), (2, 2.5), (3, 2.25)]
    store.set_terminated(reopened)


def test_a_second_save_for_a_run_keeps_the_first_items_and_one_end_status(workspace):
    first = [Pending("metrics a (step 0)", None, {"metrics": [["a", 1.0, 0, 5]]})]
    save_undelivered(
        "r1", "sqlite:///x.db", "KILLED", [*first, Pending("s", None, {"status": "KILLED"})]
    )
    second = [Pending("metrics a (step 1)", None, {"metrics": [["a", 2.0, 1, 6]]})]
    save_undelivered(
        "r1", "sqlite:///x.db", "FINISHED", [*second, Pending("s", None, {"status": "FINISHED"})]
    )
    record = json.loads((workspace / "mlflow-undelivered" / "r1.json").read_text())
    assert record["status"] == "FINISHED"
    assert [i.get("metrics", i.get("status")) for i in record["undelivered"]] == [
        [["a", 1.0, 0, 5]],
        [["a", 2.0, 1, 6]],
        "FINISHED",
    ]


# A replay that SIGKILLs itself right after sending item KILL_AFTER, before recording it.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from rnnexp import cli
    from rnnexp.tracking import _replay

    sent, send = [], _replay._send

    def send_then_die(*args):
        result = send(*args)
        sent.append(1)
        if len(sent) == int(os.environ["KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    _replay._send = send_then_die
    sys.exit(cli.main(["replay"]))
    """
)


@pytest.mark.slow
def test_metrics_of_a_training_during_an_outage_reach_the_run_once_after_a_killed_replay(
    tmp_path, prepared_dir
):
    from conftest import PARAMS_YAML
    from test_server_down import TRAINER, Server

    root = tmp_path / "server"
    root.mkdir()
    server = Server(root)
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",  # the final delivery: one retry, no backoff
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    }
    changes = {"train.max_epochs": 4, "train.sample_every": 0, "train.use_tuned": False}
    args = ["train", "--params", str(PARAMS_YAML), "--prepared", str(prepared_dir)]
    args += ["--out", str(work / "models"), *set_args(tiny(TRAINED, changes))]
    server.start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", TRAINER, str(work), *args],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while proc.poll() is None:  # the server dies after epoch 0 and comes back only later
            if (work / "down.request").exists() and not (work / "down.done").exists():
                server.kill()
                (work / "down.done").touch()
            if (work / "up.request").exists() and not (work / "up.done").exists():
                (work / "up.done").touch()
            time.sleep(0.1)
        err = proc.communicate(timeout=60)[1]
        assert proc.returncode == 2 and "were not logged" in err, err
        (saved,) = (work / "mlflow-undelivered").glob("*.json")
        run_id, items = saved.stem, json.loads(saved.read_text())["undelivered"]
        assert len(items) > 3 and items[-1]["what"] == "run status FINISHED"

        server.start()
        client = MlflowClient(server.url)
        assert len(curve(client, run_id)) < 4  # some epochs never got through
        killed = subprocess.run(
            [sys.executable, "-c", KILLER], cwd=work, env={**env, "KILL_AFTER": "3"},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        left = json.loads(saved.read_text())["undelivered"]
        assert len(left) == len(items) - 2  # the third was sent, not yet recorded
        assert "metrics" in left[0]  # so the rerun must recognise a metric batch it has
        again = subprocess.run(
            [str(BIN / "rnnexp"), "replay"], cwd=work, env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert f"removed {saved}" in again.stdout and not saved.exists()
        rows = torch.load(work / "models" / "last.ckpt", weights_only=True)["rnnexp"]["history"]
        assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
        assert curve(client, run_id) == [(r["epoch"], r["val_bpd"]) for r in rows]  # once each
        assert client.get_run(run_id).info.status == "FINISHED"
        artifacts = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
        assert artifacts == ["checkpoints/best.ckpt"]
    finally:
        server.kill()
