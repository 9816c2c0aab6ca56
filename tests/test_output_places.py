"""Output places: a failed write names the user's path (never the temporary file), places
that cannot be written are refused before the work, and commit guards stop a write.

Also the fail-fast settings of the tracking store, which several threads share.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import mlflow.store.db.utils as db_utils
import pytest

from rnnexp.errors import InputChangedError, RnnexpError
from rnnexp.tracking._store import fail_fast
from rnnexp.training.callbacks import AtomicCheckpointIO
from rnnexp.util import atomic
from rnnexp.util.atomic import (
    OutputWriteError,
    atomic_dir,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    guarded,
    unguarded,
)
from rnnexp.util.watch import unchanged_while


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_folder_where_the_checkpoint_goes_is_named_not_the_temp_file(tmp_path):
    target = tmp_path / "models" / "best.ckpt"
    target.mkdir(parents=True)
    with pytest.raises(OutputWriteError) as info:
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, target)
    message = str(info.value)
    assert message.startswith(f"{target}: not written: ")
    assert ".tmp-" not in message and info.value.filename == str(target)
    assert listing(tmp_path) == ["models", "models/best.ckpt"]  # no temp file left


@pytest.mark.parametrize("step", ["mkstemp", "replace"])
def test_permission_denied_names_the_output(tmp_path, monkeypatch, step):
    """As root chmod cannot deny a write, so the system's refusal is injected where it
    happens: creating the temp file, or renaming it into place."""
    target = tmp_path / "best.ckpt"
    target.write_bytes(b"previous")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".best.ckpt.tmp-x"))

    monkeypatch.setattr(atomic.tempfile if step == "mkstemp" else atomic.os, step, denied)
    with pytest.raises(RnnexpError) as info:
        atomic_write_bytes(target, b"new")
    assert str(info.value) == (
        f"{target}: not written: Permission denied; the previous best.ckpt (if any) is unchanged"
    )
    assert isinstance(info.value, OSError) and info.value.errno == errno.EACCES
    assert target.read_bytes() == b"previous"
    assert listing(tmp_path) == ["best.ckpt"]


def test_a_file_where_a_parent_folder_goes_is_named(tmp_path):
    (tmp_path / "reports").write_text("a file")
    with pytest.raises(OutputWriteError, match="reports/metrics.json: not written: ") as info:
        atomic_write_text(tmp_path / "reports" / "metrics.json", "{}")
    assert str(tmp_path / "reports") in str(info.value)  # the parent the system complained of
    with pytest.raises(OutputWriteError, match=r"reports/prepared: not written"):
        with atomic_dir(tmp_path / "reports" / "prepared"):
            pass


def test_an_error_of_the_block_inside_atomic_dir_is_raised_as_it_is(tmp_path):
    """Only the folder's own writes are renamed to its path; a missing source is not."""
    with pytest.raises(FileNotFoundError) as info:
        with atomic_dir(tmp_path / "out") as folder:
            (tmp_path / "missing.ckpt").read_bytes()
            (folder / "x").write_text("x")
    assert not isinstance(info.value, RnnexpError)
    assert listing(tmp_path) == []


def test_check_writable_refuses_before_the_work_and_changes_nothing(tmp_path):
    (tmp_path / "blocker").write_text("a file")
    (tmp_path / "models" / "last.ckpt").mkdir(parents=True)
    before = listing(tmp_path)
    check_writable(files=[tmp_path / "new" / "deep" / "a.json"], folders=[tmp_path / "data"])
    assert listing(tmp_path) == before  # no folder created, no probe file left
    with pytest.raises(OutputWriteError, match="blocker is a file, not a folder"):
        check_writable(files=[tmp_path / "blocker" / "sub" / "m.json"])
    with pytest.raises(OutputWriteError, match="models/last.ckpt: is a folder"):
        check_writable(files=[tmp_path / "models" / "last.ckpt"])
    with pytest.raises(OutputWriteError, match="blocker is a file"):
        check_writable(folders=[tmp_path / "blocker" / "tuned"])
    assert listing(tmp_path) == before


def test_check_writable_names_a_folder_that_takes_no_files(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    with pytest.raises(OutputWriteError) as info:
        check_writable(files=[tmp_path / "models" / "best.ckpt"])
    assert str(info.value) == (
        f"{tmp_path / 'models' / 'best.ckpt'}: cannot be written: Permission denied "
        f"(folder {tmp_path})"
    )


def test_a_guard_stops_the_write_and_keeps_the_previous_output(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def refuse() -> None:
        raise InputChangedError("params.yaml: changed")

    with guarded(refuse):
        with pytest.raises(InputChangedError):
            atomic_write_text(target, "new")
        with pytest.raises(InputChangedError):
            with atomic_dir(tmp_path / "prepared") as folder:
                (folder / "a").write_text("a")
        with unguarded():  # records that are no stage output still get written
            atomic_write_text(tmp_path / "undelivered.json", "{}")
    atomic_write_text(tmp_path / "after.txt", "guard gone")
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["after.txt", "metrics.json", "undelivered.json"]


def test_unchanged_while_catches_an_edit_between_hashing_and_the_block(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train: {lr: 0.01}\n")
    watch = unchanged_while(params, "the train stage")  # hashed now, as the CLI does
    params.write_text("train: {lr: 0.02}\n")  # while load_params reads it
    with pytest.raises(InputChangedError, match="params.yaml: changed while the train stage"):
        with watch:
            pass


def test_fail_fast_blocks_overlapping_in_threads_restore_the_settings(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    attempts = db_utils.MAX_RETRY_COUNT
    inside, leave = threading.Event(), threading.Event()

    def other_thread() -> None:
        with fail_fast():
            inside.set()
            leave.wait(30)

    with fail_fast():
        thread = threading.Thread(target=other_thread)
        thread.start()
        assert inside.wait(30)
    # the first block closed while the other is open: still fast for it
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert db_utils.MAX_RETRY_COUNT == 1
    leave.set()
    thread.join(30)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    assert db_utils.MAX_RETRY_COUNT == attempts
