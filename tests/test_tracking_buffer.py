"""Logging while the store is unreachable: kept in order, delivered later, or saved to a file."""

from __future__ import annotations

import json
import logging

import pytest
from mlflow.exceptions import MlflowException

from rnnexp import tracking
from rnnexp.tracking import _buffer
from rnnexp.tracking._buffer import RetryBuffer


class FlakyClient:
    """An MlflowClient stand-in whose ``log_batch`` fails while ``down``; records deliveries."""

    def __init__(self) -> None:
        self.down, self.tries, self.delivered = True, 0, []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.tries += 1
        if self.down:
            raise MlflowException("connection refused")
        self.delivered += [(m.key, m.value, m.step) for m in metrics]
        self.delivered += [(t.key, t.value) for t in tags]


class StoreDown:
    """An MlflowClient whose server went away: every call raises ConnectionError (an OSError)."""

    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise ConnectionError(f"{name}: connection refused")

        return call


def test_undeliverable_logging_is_kept_in_order_and_delivered_on_flush(caplog, monkeypatch):
    monkeypatch.setattr(_buffer, "RETRY_EVERY_S", 1e9)  # no retry falls due before the flush
    client = FlakyClient()
    handle = tracking.RunHandle(client, "r1", "0", buffer=RetryBuffer("r1"))
    with caplog.at_level(logging.WARNING, logger="rnnexp.tracking"):
        handle.log_metrics({"val/bpd": 1.5}, step=2)
        handle.set_tags({"rnnexp.note": "x"})  # queued behind: not tried before a retry is due
        assert client.tries == 1 and client.delivered == []
        assert [p.what for p in handle.flush()] == [
            "metrics val/bpd (step 2)",
            "tags rnnexp.note",
        ]  # still down: nothing lost
        client.down = False
        assert handle.flush() == []
    assert client.delivered == [("val/bpd", 1.5, 2), ("rnnexp.note", "x")]
    notes = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert notes == [
        (
            "rnnexp.tracking._buffer",
            logging.WARNING,
            "MLflow store unreachable, keeping metrics val/bpd (step 2) to retry: "
            "connection refused",
        ),
        (
            "rnnexp.tracking._buffer",
            logging.WARNING,
            "MLflow store reachable again: delivered what run r1 kept",
        ),
    ]


def test_a_retry_due_delivers_the_queue_before_the_new_item(monkeypatch):
    monkeypatch.setattr(_buffer, "RETRY_EVERY_S", 0.0)  # every logging call retries the queue
    client = FlakyClient()
    handle = tracking.RunHandle(client, "r1", "0", buffer=RetryBuffer("r1"))
    handle.log_metrics({"a": 1.0}, step=0)
    handle.log_metrics({"a": 2.0}, step=1)  # retried the queue (still down), then queued
    assert client.tries == 2 and len(handle.buffer.pending) == 2
    client.down = False
    handle.log_metrics({"a": 3.0}, step=2)
    assert client.delivered == [("a", 1.0, 0), ("a", 2.0, 1), ("a", 3.0, 2)]
    assert handle.buffer.pending == []


def test_unbuffered_handle_raises_at_once():
    handle = tracking.RunHandle(FlakyClient(), "r1", "0")
    with pytest.raises(MlflowException, match="connection refused"):
        handle.log_metrics({"val/bpd": 1.5})


def test_store_lost_during_a_successful_run_raises_and_saves_what_was_not_logged(
    store, tiny_params, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the workspace root, where the undelivered file goes
    with pytest.raises(tracking.TrackingError, match="were not logged") as info:
        with tracking.tracked_run(tiny_params(), "train") as run:
            run.client = StoreDown()
            run.log_metrics({"val/bpd": 2.5}, step=1)
    saved = tmp_path / "mlflow-undelivered" / f"{run.run_id}.json"
    assert str(saved) in str(info.value) and "run status FINISHED" in str(info.value)
    record = json.loads(saved.read_text())
    assert record["status"] == "FINISHED"
    assert [item["what"] for item in record["undelivered"]] == [
        "metrics val/bpd (step 1)",
        "run status FINISHED",
    ]
    assert [m[:3] for m in record["undelivered"][0]["metrics"]] == [["val/bpd", 2.5, 1]]
    store.set_terminated(run.run_id)  # our process still lives: leave the store tidy


def test_store_lost_during_a_failing_run_keeps_its_error_and_warns(
    store, tiny_params, tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="rnnexp.tracking"):
        with pytest.raises(ValueError, match="bad batch"):
            with tracking.tracked_run(tiny_params(), "train") as run:
                run.client = StoreDown()
                raise ValueError("bad batch")
    record = json.loads((tmp_path / "mlflow-undelivered" / f"{run.run_id}.json").read_text())
    assert record["status"] == "FAILED"
    assert record["undelivered"][0]["tags"] == {"rnnexp.error": "ValueError: bad batch"}
    (warning,) = [r for r in caplog.records if r.name == "rnnexp.tracking._runs"]
    assert warning.levelno == logging.WARNING and "run status FAILED" in warning.getMessage()
    store.set_terminated(run.run_id)
