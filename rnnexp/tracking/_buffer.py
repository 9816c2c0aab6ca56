"""Logging that survives a tracking server outage: keep, retry in order, or save to a file.

A run opened by :func:`rnnexp.tracking.tracked_run` sends each metric, tag, image and
artifact once, failing fast (:func:`~rnnexp.tracking._store.fail_fast`). What cannot
be delivered waits in a :class:`RetryBuffer`, in order, and is retried with a later
logging call (at most every :data:`RETRY_EVERY_S` seconds) and, with MLflow's own
retries, when the run ends. Whatever is still undelivered then is written, values
included, to ``<workspace>/mlflow-undelivered/<run_id>.json``
(:func:`save_undelivered`): never silently lost. ``rnnexp replay``
(``rnnexp.tracking._replay``) sends that file once the store is back.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnexp.tracking._liveness import owner_tags
from rnnexp.tracking._store import UNREACHABLE, fail_fast, first_line
from rnnexp.util.atomic import atomic_write_text
from rnnexp.util.paths import workspace_root

log = logging.getLogger(__name__)

RETRY_EVERY_S = 10.0  # while undelivered items wait, retry at most this often
UNDELIVERED_DIR = "mlflow-undelivered"


@dataclass
class Pending:
    """A logging call that failed and waits to be retried, with what it carried."""

    what: str  # for people: "metrics val/bpd, val/nll (step 3)"
    send: Callable[[], Any] | None  # None: nothing left to send (the run's end status)
    record: dict[str, Any]  # for the undelivered file: the values themselves


@dataclass
class RetryBuffer:
    """The undelivered logging calls of run ``run_id``, oldest first."""

    run_id: str
    pending: list[Pending] = field(default_factory=list)
    _last_try: float = field(default=0.0)

    def deliver(self, what: str, send: Callable[[], Any], record: dict[str, Any]) -> None:
        """Send now (failing fast) unless older items wait; keep it if it cannot be sent.

        Items are delivered in order: while older ones wait, a new one joins the queue
        (after a retry of the queue, if the last try is :data:`RETRY_EVERY_S` old).
        """
        if self.pending and time.monotonic() - self._last_try >= RETRY_EVERY_S:
            self._retry(fast=True)
        if not self.pending:
            try:
                with fail_fast():
                    send()
                return
            except UNREACHABLE as exc:
                self._last_try = time.monotonic()
                log.warning(
                    "MLflow store unreachable, keeping %s to retry: %s", what, first_line(exc)
                )
        self.pending.append(Pending(what, send, record))

    def _retry(self, fast: bool) -> None:
        """Send pending items in order; stop at the first failure."""
        self._last_try = time.monotonic()
        while self.pending:
            send = self.pending[0].send
            try:
                if fast:
                    with fail_fast():
                        send()
                else:
                    send()
            except UNREACHABLE:
                return
            self.pending.pop(0)
        # WARNING like the note it answers: a console showing only warnings must not
        # leave the outage looking unresolved.
        log.warning("MLflow store reachable again: delivered what run %s kept", self.run_id)

    def flush(self) -> list[Pending]:
        """Deliver what is pending, with MLflow's own retries; return what is still not."""
        if self.pending:
            self._retry(fast=False)
        return list(self.pending)


def undelivered_path(run_id: str) -> Path:
    """``<workspace>/mlflow-undelivered/<run_id>.json``: where a run's undelivered items go."""
    return workspace_root() / UNDELIVERED_DIR / f"{run_id}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _artifact(item: dict[str, Any]) -> None:
    """Pin an artifact item to its file: an absolute path (a DVC experiment's temporary
    workspace is not where the file lands) and, while it exists, its sha256, so that a
    replay never uploads another file that took its name since."""
    path = Path(item["artifact"]).absolute()
    item["artifact"] = str(path)
    if path.is_file():
        item["sha256"] = _sha256(path)


def _picture(item: dict[str, Any]) -> None:
    """An image item's picture (``pixels``, a PIL image) as PNG bytes in base64 (``png``)."""
    pixels = item.pop("pixels", None)
    if pixels is not None:
        data = io.BytesIO()
        pixels.save(data, format="PNG")
        item["png"] = base64.b64encode(data.getvalue()).decode("ascii")


def _earlier_items(path: Path) -> list[dict[str, Any]]:
    """The items (not the end status) of a run's earlier undelivered file, if there is one.

    A file that cannot be read as one is moved aside, not overwritten: the replay
    then refuses it by name, and a person decides.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    try:
        items = json.loads(text)["undelivered"]
        return [dict(i) for i in items if "status" not in i]
    except (ValueError, TypeError, KeyError):
        path.rename(path.with_name(f"{path.stem}.unreadable-{secrets.token_hex(4)}.json"))
        return []


def save_undelivered(run_id: str, uri: str, status: str, items: list[Pending]) -> str:
    """Save what the store never got to a JSON file; return a message saying what and where.

    The file (``rnnexp replay`` sends it; see ``rnnexp.tracking._replay``) holds the
    store, the run, its end status, ``owner`` (the tags naming this process, which
    closed the run) and the items in the order they were logged, each with its
    ``what`` and its record. An image record that carries its picture (``pixels``)
    keeps it in the file, as base64 PNG (``png``): one file holds all of a run's items.
    An artifact record gets its file's absolute path and sha256.
    If a file for the run is already there (a resumed run that lost the store
    again), its items come first and its end status is replaced: nothing it held is
    lost.
    """
    path = undelivered_path(run_id)
    earlier = _earlier_items(path)
    records = []
    for p in items:
        item = {"what": p.what, **p.record}
        _picture(item)
        if "artifact" in item:
            _artifact(item)
        records.append(item)
    record = {
        "tracking_uri": uri,
        "run_id": run_id,
        "status": status,
        "owner": owner_tags(),
        "undelivered": earlier + records,
    }
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    whats = "; ".join(p.what for p in items)
    return (
        f"the MLflow store {uri} could not be reached: {len(items)} item(s) of run "
        f"{run_id} were not logged ({whats}); they are saved in {path} "
        "(`rnnexp replay` sends them once the store is back)"
    )
