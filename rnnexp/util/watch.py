"""Inputs that must not change while a stage runs: the params file DVC records.

DVC writes a stage's params values (read from ``params.yaml`` after the stage
ends) into ``dvc.lock`` next to its outputs' hashes. An edit of the file while the
stage runs would record values its outputs were not made with, and ``dvc status``
would call them up to date. :func:`unchanged_while` hashes the file's bytes when
the stage starts and checks them before every output is committed
(:func:`rnnexp.util.atomic.guarded`) and when the stage ends: a changed file fails
the stage, naming it, before the record can lie.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "params.yaml"
    >>> _ = p.write_text("train: {lr: 0.01}\\n")
    >>> with unchanged_while(p, "the train stage"):
    ...     _ = p.write_text("train: {lr: 0.02}\\n")
    Traceback (most recent call last):
    ...
    rnnexp.errors.InputChangedError: ...params.yaml: changed while the train stage ran ...
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from rnnexp.errors import InputChangedError
from rnnexp.util.atomic import guarded


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """The sha256 of the file's bytes, or None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def unchanged_check(path: str | os.PathLike[str], what: str) -> Callable[[], None]:
    """A check that raises :class:`InputChangedError` once ``path`` no longer holds the
    bytes it holds now (hashed here). A file that cannot be read now is not checked
    (whoever reads it reports that)."""
    digest = file_digest(path)

    def check() -> None:
        if digest is not None and file_digest(path) != digest:
            raise InputChangedError(
                f"{path}: changed while {what} ran (it ran with the earlier version); "
                "its outputs are not written, so that DVC does not record them with the "
                "new values: rerun it"
            )

    return check


@contextlib.contextmanager
def watching(check: Callable[[], None]) -> Iterator[None]:
    """Inside, ``check`` runs before every atomic output write; it runs on entry, and
    again when the block ends without an error (an edit after the last write)."""
    with guarded(check):
        check()
        yield
    check()


def unchanged_while(
    path: str | os.PathLike[str], what: str
) -> contextlib.AbstractContextManager[None]:
    """Fail (:class:`InputChangedError`, naming ``path``) if ``path`` changes inside.

    The bytes are hashed when this is called, not on entry: call it before reading the
    file, enter the block after, and a change in between is caught too. ``what`` names
    the work in the message (``the train stage``).
    """
    return watching(unchanged_check(path, what))
