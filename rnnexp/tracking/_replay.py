"""``rnnexp replay``: send ``mlflow-undelivered/<run_id>.json`` to the store once it is back.

A file (written by :func:`rnnexp.tracking._buffer.save_undelivered`) holds the items
one run could not log, oldest first: metric batches, params, tags, images,
artifacts, texts, dataset inputs, and last the run's end status. The rules:

- **Check first, then send.** Every file is read and checked, and every store
  answers and holds the file's run, before anything is sent (one quick try per
  request, :func:`~rnnexp.tracking._store.fail_fast`). A malformed file or an
  unreachable store changes nothing: no file is touched.
- **In order, progress on disk.** Items go in the order they were logged; after
  each one the file is rewritten atomically without it. A replay that stops (the
  store goes away again, a kill) leaves exactly the items not yet known delivered.
- **Exactly once.** A kill between sending an item and rewriting the file leaves
  a delivered item in the file, so each item is checked against the run before it
  is sent: a metric is skipped when the run already has that key at that step with
  that timestamp and value (MLflow's metric history is append-only, so sending it
  again would log it twice; a logging call that reached the store although its
  answer was lost is skipped the same way); an image when the run has an image of
  that key at that step; an end status when the run is no longer RUNNING. Tags,
  texts and artifacts (written to the same path again) and dataset inputs (the
  store keeps one per run, name and digest) are idempotent as they are.
- **A file goes only when all of it is delivered.** Items that cannot be sent now
  stay in the file with the reason (``not_replayed``) and the command exits 1:
  an artifact whose local file is gone or changed (the file records its sha256),
  an image the file holds no picture for,
  the end status of a run that a live process has reopened since. Delete the file
  to give them up.
- **The end status.** The run is ended with the status the file records when it
  is still RUNNING, or was ended KILLED by the stale-run reaper, and its owner is
  still the process that wrote the file (which closed it); see :func:`_end`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from rnnexp.errors import RnnexpError
from rnnexp.tracking._buffer import UNDELIVERED_DIR, _sha256
from rnnexp.tracking._liveness import MACHINE_TAG, STALE_TAG, owner_dead
from rnnexp.tracking._store import (
    UNREACHABLE,
    check_sqlite_file,
    fail_fast,
    first_line,
    reason,
    shown,
    sqlite_path,
)
from rnnexp.util.atomic import atomic_write_text
from rnnexp.util.paths import workspace_root

KINDS = ("metrics", "params", "tags", "image", "artifact", "text", "dataset", "status")
STATUSES = ("FINISHED", "FAILED", "KILLED")
OWNER_KEYS = ("rnnexp.host", MACHINE_TAG, "rnnexp.pid", "rnnexp.pid_start")


class Malformed(ValueError):
    """What is wrong with an undelivered file."""


def _check_item(item: Any, n: int) -> None:
    """Raise :class:`Malformed` unless ``item`` is one record ``save_undelivered`` writes."""
    where = f"item {n}"
    if not isinstance(item, dict) or not isinstance(item.get("what"), str):
        raise Malformed(f"{where}: expected an object with a 'what' text")
    kinds = [k for k in KINDS if k in item]
    if len(kinds) != 1:
        raise Malformed(f"{where} ({item['what']}): expected one of {', '.join(KINDS)}")
    kind, value = kinds[0], item[kinds[0]]

    def ok(cond: bool) -> None:
        if not cond:
            raise Malformed(f"{where} ({item['what']}): bad {kind!r} record")

    if kind == "metrics":
        ok(isinstance(value, list) and bool(value))
        for m in value:
            ok(isinstance(m, list) and len(m) == 4 and isinstance(m[0], str))
            ok(all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in m[1:]))
            ok(all(isinstance(x, int) for x in m[2:]))
    elif kind in ("params", "tags"):
        ok(isinstance(value, dict) and all(isinstance(v, str) for v in value.values()))
    elif kind == "image":
        ok(isinstance(value, str) and isinstance(item.get("step", 0), int))
        try:
            base64.b64decode(item.get("png", ""), validate=True)
        except (TypeError, ValueError):
            ok(False)
    elif kind == "artifact":
        ok(isinstance(value, str) and isinstance(item.get("artifact_path") or "", str))
    elif kind == "text":
        ok(isinstance(value, str) and isinstance(item.get("artifact_file"), str))
    elif kind == "dataset":
        ok(all(isinstance(item.get(k), str) for k in ("dataset", "digest", "context")))
    else:
        ok(value in STATUSES)


def read_undelivered(path: Path) -> dict[str, Any]:
    """The checked contents of one undelivered file; :class:`RnnexpError` naming it if bad."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise Malformed("expected a JSON object")
        for key in ("run_id", "tracking_uri"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise Malformed(f"no {key!r}")
        items = data.get("undelivered")
        if not isinstance(items, list):
            raise Malformed("no 'undelivered' list")
        if not isinstance(data.get("owner", {}), dict):
            raise Malformed("'owner' is not an object")
        for n, item in enumerate(items):
            _check_item(item, n)
    except (OSError, UnicodeDecodeError) as exc:
        raise RnnexpError(f"{path}: cannot read it: {first_line(exc)}") from None
    except ValueError as exc:  # json's errors and Malformed
        raise RnnexpError(f"{path}: not an undelivered-logging file: {first_line(exc)}") from None
    return data


def _rewrite(path: Path, data: dict[str, Any], items: list[dict[str, Any]]) -> None:
    atomic_write_text(path, json.dumps({**data, "undelivered": items}, indent=2) + "\n")


def _same(value: float) -> str:
    return repr(float(value))  # NaN equals NaN here, as the store gives it back


@dataclass
class _Run:
    """What one file's replay knows of its run: the client, the run, what it holds."""

    client: MlflowClient
    run: Run
    folder: Path  # the file's folder, in the workspace that logged the run
    owner: dict[str, str]
    metrics: dict[str, set[tuple[int, int, str]]] = field(default_factory=dict)
    images: set[str] | None = None

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def metric_points(self, key: str) -> set[tuple[int, int, str]]:
        if key not in self.metrics:
            history = self.client.get_metric_history(self.run_id, key)
            self.metrics[key] = {(m.step, m.timestamp, _same(m.value)) for m in history}
        return self.metrics[key]

    def has_image(self, key: str, step: int) -> bool:
        if self.images is None:
            self.images = {
                Path(a.path).name for a in self.client.list_artifacts(self.run_id, "images")
            }
        safe = key.replace("/", "~")  # as MlflowClient.log_image names the file
        return any(
            n.startswith((f"{safe}+step+{step}+", f"{safe}%step%{step}%")) for n in self.images
        )


def _send(ctx: _Run, item: dict[str, Any]) -> str | None:
    """Deliver one item unless the run has it already; the reason when it cannot be sent.

    Returns None when the run has the item now, a reason when it cannot be sent;
    store failures raise.
    """
    client, run_id = ctx.client, ctx.run_id
    if "metrics" in item:
        new = []
        for key, value, step, timestamp in item["metrics"]:
            point = (int(step), int(timestamp), _same(value))
            if point not in ctx.metric_points(key):
                new.append((key, point, Metric(key, float(value), int(timestamp), int(step))))
        if new:
            client.log_batch(run_id, metrics=[m for _, _, m in new])
            for key, point, _ in new:
                ctx.metrics[key].add(point)
    elif "params" in item:
        logged = client.get_run(run_id).data.params
        clash = [k for k, v in item["params"].items() if k in logged and logged[k] != v]
        if clash:
            return f"params {', '.join(clash)} are logged with other values"
        new_params = [Param(k, v) for k, v in item["params"].items() if k not in logged]
        if new_params:
            client.log_batch(run_id, params=new_params)
    elif "tags" in item:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in item["tags"].items()])
    elif "image" in item:
        if not item.get("png"):
            return "the file holds no picture for it"
        step = int(item.get("step", 0))
        if not ctx.has_image(item["image"], step):
            from PIL import Image

            with Image.open(io.BytesIO(base64.b64decode(item["png"]))) as picture:
                picture.load()
                client.log_image(run_id, picture, key=item["image"], step=step)
            ctx.images.add(f"{item['image'].replace('/', '~')}+step+{step}+")
    elif "artifact" in item:
        local = Path(item["artifact"])
        if not local.is_absolute():  # a file written before paths were absolute
            local = ctx.folder.parent / local  # relative to the workspace that logged it
        if not local.is_file():
            return f"the file {local} no longer exists"
        if item.get("sha256") and _sha256(local) != item["sha256"]:
            return f"the file {local} changed since the run logged it"
        client.log_artifact(run_id, str(local), item.get("artifact_path"))
    elif "text" in item:
        client.log_text(run_id, item["text"], item["artifact_file"])
    elif "dataset" in item:
        source = json.dumps({"uri": "unknown (sent by rnnexp replay)"})
        dataset = Dataset(item["dataset"], item["digest"], "local", source)
        context = InputTag(MLFLOW_DATASET_CONTEXT, item["context"])
        client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])
    else:
        return _end(ctx, item["status"])
    return None


def _end(ctx: _Run, status: str) -> str | None:
    """End the run ``status`` when its writer's close is what it still waits for.

    That is when the run is RUNNING, or was ended KILLED by the stale-run reaper
    (tag ``rnnexp.stale``: the writer exited before the status got through), and
    its owner tags still name the process that wrote the file (a file without
    ``owner``: a run whose owner is provably dead). A run reopened since by another
    process, or ended by its owner or a person, keeps its status.
    """
    run = ctx.client.get_run(ctx.run_id)
    tags = run.data.tags
    if ctx.owner:
        writer_owns = all(ctx.owner.get(k) == tags.get(k) for k in OWNER_KEYS)
    else:
        writer_owns = owner_dead(tags)
    if run.info.status == "RUNNING":
        if not writer_owns:
            return (
                f"the run is RUNNING, owned by process {tags.get('rnnexp.pid', '?')} on "
                f"{tags.get('rnnexp.host', '?')}, which may still live: not ended"
            )
    elif not (writer_owns and STALE_TAG in tags):
        return None  # ended by its owner or a person since: that status stands
    ctx.client.set_terminated(ctx.run_id, status=status)
    if STALE_TAG in tags:
        ctx.client.delete_tag(ctx.run_id, STALE_TAG)
    return None


def _client(uri: str) -> MlflowClient:
    """A client on ``uri``; a SQLite store must exist and be one (else it would be created)."""
    if uri.startswith("sqlite:///"):
        db = sqlite_path(uri)
        if not db.is_file() or db.stat().st_size == 0:
            raise RnnexpError(f"the MLflow store {uri} does not exist; nothing was replayed")
        check_sqlite_file(db)  # a TrackingError naming the file
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as exc:  # a URI MLflow cannot open
        raise RnnexpError(f"the MLflow store {shown(uri)}: {reason(exc)}") from None


def _open_run(client: MlflowClient, uri: str, path: Path, run_id: str) -> Run:
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RnnexpError(f"{path}: run {run_id} is not in the MLflow store {shown(uri)}") from None
    if run.info.lifecycle_stage == "deleted":
        raise RnnexpError(f"{path}: run {run_id} is deleted in the MLflow store {shown(uri)}")
    return run


@contextlib.contextmanager
def _locked(folders: set[Path]) -> Iterator[None]:
    """One replay at a time per folder (two would send the same items).

    The lock is on the folder itself, so it leaves no file behind.
    """
    import fcntl

    with contextlib.ExitStack() as stack:
        for folder in sorted(folders):
            fd = os.open(folder, os.O_RDONLY)
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RnnexpError(f"another `rnnexp replay` is sending {folder}") from None
        yield


def _replay_file(ctx: _Run, path: Path, data: dict[str, Any]) -> str:
    """Deliver one checked file's items in order; remove it once all are delivered."""
    items, kept = list(data["undelivered"]), []
    for n, item in enumerate(items):
        try:
            why = _send(ctx, item)
        except Exception as exc:  # the store failed (or refused the item): stop here
            raise RnnexpError(
                f"{path}: sending {item['what']} failed: {reason(exc)}; {n} of "
                f"{len(items)} item(s) delivered, the rest stay in the file: run "
                "`rnnexp replay` again once the store answers"
            ) from None
        if why is not None:
            kept.append({**item, "not_replayed": why})
        _rewrite(path, data, kept + items[n + 1 :])  # progress on disk before the next
    done = len(items) - len(kept)
    head = f"run {ctx.run_id}: {done} of {len(items)} item(s) delivered"
    if kept:
        whats = "; ".join(f"{i['what']}: {i['not_replayed']}" for i in kept)
        return f"{head}; not delivered, kept in {path} (delete it to give them up): {whats}"
    path.unlink()
    return f"{head}; removed {path}"


def replay_undelivered(
    files: Sequence[str | os.PathLike[str]] = (), tracking_uri: str | None = None
) -> tuple[list[str], bool]:
    """Send undelivered-logging files to their stores: (lines for people, all delivered).

    ``files`` defaults to every ``<workspace>/mlflow-undelivered/*.json``; each goes
    to the store it names, or to ``tracking_uri`` when given (the server moved).
    Raises :class:`RnnexpError` for a malformed file (naming it) or a store that
    cannot be reached or lacks the run, before anything is sent; and when a store
    fails midway, after recording what was delivered. See the module's rules.
    """
    if files:
        paths = [Path(f) for f in files]
    else:
        folder = workspace_root() / UNDELIVERED_DIR
        paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not paths:
            return [f"nothing to replay: no undelivered logging in {folder}"], True
    checked = [(p.resolve(), read_undelivered(p)) for p in paths]
    lines, complete = [], True
    with fail_fast():
        clients: dict[str, MlflowClient] = {}
        runs = []
        for path, data in checked:
            uri = tracking_uri or data["tracking_uri"]
            try:
                client = clients.get(uri) or clients.setdefault(uri, _client(uri))
                run = _open_run(client, uri, path, data["run_id"])
            except UNREACHABLE as exc:
                raise RnnexpError(
                    f"the MLflow store {shown(uri)} cannot be reached ({reason(exc)}); "
                    "nothing was replayed and the files are kept"
                ) from None
            except Exception as exc:  # SQLAlchemy's errors on a broken database file
                if isinstance(exc, RnnexpError):
                    raise
                raise RnnexpError(f"the MLflow store {shown(uri)}: {reason(exc)}") from None
            runs.append(_Run(client, run, path.parent, dict(data.get("owner", {}))))
        with _locked({p.parent for p, _ in checked}):
            for (path, data), ctx in zip(checked, runs, strict=True):
                if not path.exists():  # sent by a replay that held the lock before us
                    lines.append(f"run {ctx.run_id}: already replayed, {path} is gone")
                    continue
                data = read_undelivered(path)  # as it is now that this replay holds the lock
                lines.append(_replay_file(ctx, path, data))
                complete = complete and not path.exists()
    return lines, complete
