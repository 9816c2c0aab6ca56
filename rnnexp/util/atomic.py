"""Atomic file and directory writes.

A stage writes every output under a temporary sibling name and renames it into
place only once it is complete, so an interrupted or failing stage never leaves
a half-written output behind (the previous output, if any, stays as it was).
A write that fails names the output's path, never the temporary one
(:class:`OutputWriteError`). Two guards keep a stage from working for nothing or
committing a lie: :func:`check_writable` refuses outputs that could not be written
before the work starts, and :func:`guarded` checks (the params file unchanged since
the stage read it: :mod:`rnnexp.util.watch`) run before each output is moved into place.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_json(d / "m.json", {"a": 1})
    >>> with atomic_dir(d / "out") as tmp:
    ...     atomic_write_text(tmp / "x.txt", "hello")
    >>> (d / "out" / "x.txt").read_text()
    'hello'
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from rnnexp.errors import RnnexpError

__all__ = [
    "DiskFullError",
    "OutputWriteError",
    "atomic_dir",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable",
    "guarded",
    "unguarded",
]

_UMASK: int | None = None


def _umask() -> int:
    """The process umask (read once; os.umask can only be read by setting it)."""
    global _UMASK
    if _UMASK is None:
        current = os.umask(0o022)
        os.umask(current)
        _UMASK = current
    return _UMASK


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: not all systems allow it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputWriteError(RnnexpError, OSError):
    """Output ``filename`` (the user's path, never the temporary one) could not be written.

    Both an :class:`OSError` (``errno`` as the system raised it) and an
    :class:`RnnexpError`, so the CLI prints its message and exits 2. The previous
    file (if any) is intact.
    """

    def __init__(self, path: Path, code: int, message: str) -> None:
        OSError.__init__(self, code, os.strerror(code), str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


class DiskFullError(OutputWriteError):
    """No space (or quota) left while writing ``filename``: the previous file is intact."""

    def __init__(self, path: Path, code: int) -> None:
        super().__init__(
            path,
            code,
            f"{path}: not written: {os.strerror(code)}; "
            f"the previous {path.name} (if any) is unchanged — free space and rerun",
        )


def _write_error(path: Path, exc: OSError) -> OutputWriteError:
    """``exc`` (raised on a temporary sibling of ``path``, or on a parent) named for ``path``."""
    code = exc.errno or errno.EIO
    if code in _DISK_FULL:
        return DiskFullError(path, code)
    where = ""
    if exc.filename and Path(os.fsdecode(exc.filename)) in path.parents:
        where = f" ({os.fsdecode(exc.filename)})"  # a parent folder the system complained of
    return OutputWriteError(
        path,
        code,
        f"{path}: not written: {exc.strerror or exc}{where}; "
        f"the previous {path.name} (if any) is unchanged",
    )


# --------------------------------------------------------------------------- checks before work


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (or is a link)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _probe_folder(folder: Path) -> None:
    """Create and remove a file in ``folder``: the only sure test of a write (root, ACLs,
    read-only mounts)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".rnnexp-write-check-")
    os.close(fd)
    os.unlink(name)


def check_writable(
    files: Sequence[str | os.PathLike[str]] = (), folders: Sequence[str | os.PathLike[str]] = ()
) -> None:
    """Refuse, before a stage's work starts, outputs that could not be written at its end.

    ``files`` are output files (written by :func:`atomic_write_bytes` and friends),
    ``folders`` output folders (:func:`atomic_dir`). Each must be creatable: no file
    where a parent folder must go, no folder where a file goes, and a folder that
    takes new files (a temporary file is created and removed; nothing else changes,
    no folder is created). Raises :class:`OutputWriteError` naming the output path.
    """
    for target, is_file in [
        *((Path(f), True) for f in files),
        *((Path(d), False) for d in folders),
    ]:
        if is_file and target.is_dir():
            raise OutputWriteError(
                target,
                errno.EISDIR,
                f"{target}: is a folder, but the output written there is a file",
            )
        existing = _nearest_existing(target.parent)
        if not existing.is_dir():
            raise OutputWriteError(
                target,
                errno.ENOTDIR,
                f"{target}: cannot be written: {existing} is a file, not a folder",
            )
        try:
            _probe_folder(existing)
        except OSError as exc:
            raise OutputWriteError(
                target,
                exc.errno or errno.EACCES,
                f"{target}: cannot be written: {exc.strerror or exc} (folder {existing})",
            ) from None


# --------------------------------------------------------------------------- commit guards

_GUARDS: list[Callable[[], None]] = []
_unguarded: contextvars.ContextVar[bool] = contextvars.ContextVar("unguarded", default=False)


@contextlib.contextmanager
def guarded(check: Callable[[], None]) -> Iterator[None]:
    """Inside, ``check()`` runs before every atomic write or folder is moved into place.

    ``check`` raises (an :class:`RnnexpError`) when outputs must not be committed any
    more, e.g. the params file changed since the stage read it
    (:func:`rnnexp.util.watch.unchanged_while`); the write then leaves the previous
    output as it was.
    """
    _GUARDS.append(check)
    try:
        yield
    finally:
        _GUARDS.remove(check)


@contextlib.contextmanager
def unguarded() -> Iterator[None]:
    """Inside, atomic writes skip the :func:`guarded` checks (records that are no
    stage output, such as what a failing run could not deliver to MLflow)."""
    token = _unguarded.set(True)
    try:
        yield
    finally:
        _unguarded.reset(token)


def _run_guards() -> None:
    if not _unguarded.get():
        for check in list(_GUARDS):
            check()


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, then rename it to ``path``.

    Any system error (a full disk, no access, a folder in the way) raises
    :class:`OutputWriteError` naming ``path``, never the temp file, which is removed
    in every case. The :func:`guarded` checks run before the rename.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    except OSError as exc:
        raise _write_error(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        _run_guards()
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, RnnexpError):
            raise _write_error(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    Parent folders are created. On any exception the temp file is removed and
    the previous content of ``path`` (if any) is left untouched.
    """
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON (sorted keys, trailing newline) to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_text(path, text)


# A fixed timestamp makes the .npz bytes a function of the arrays alone, so that
# the same data always gives the same file (and the same DVC/sha256 hash).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _write_npz(f: IO[bytes], arrays: dict[str, np.ndarray], compress: bool) -> None:
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(f, mode="w", compression=compression, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            with zf.open(info, mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def atomic_save_npz(path: str | os.PathLike[str], compress: bool = True, **arrays: Any) -> None:
    """Save arrays to an ``.npz`` file atomically, readable with ``np.load``.

    Unlike ``np.savez`` the file bytes are deterministic (no timestamps), and
    object arrays are refused (``np.load(..., allow_pickle=False)`` must read it).

    Args:
        path: Destination file (conventionally ending in ``.npz``).
        compress: Deflate the members (like ``np.savez_compressed``).
        **arrays: Arrays stored under their keyword names, in the given order.
    """
    if not arrays:
        raise ValueError("atomic_save_npz needs at least one array")
    _atomic_write(path, lambda f: _write_npz(f, arrays, compress))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder under a temporary sibling name and move it to ``path`` on success.

    Yields a fresh empty folder ``.{name}.tmp-XXXX`` next to ``path``. When the
    ``with`` block ends normally, the previous ``path`` (folder or file) is
    removed and the temporary folder renamed to ``path``. When the block raises
    (including KeyboardInterrupt), the temporary folder is deleted and the
    previous ``path`` is left untouched.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "prepared"
        >>> with atomic_dir(out) as tmp:
        ...     (tmp / "a.txt").write_text("a")
        1
        >>> sorted(p.name for p in out.iterdir())
        ['a.txt']
    """
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.tmp-"))
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        yield tmp
    except BaseException:  # the block's own error: not a write of `path`, raised as it is
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _fsync_dir(tmp)
        _run_guards()
        old: Path | None = None
        if path.exists() or path.is_symlink():
            # Move the old output aside first (one rename), so that a failure
            # below never leaves a half-deleted output at `path`.
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.old-")) / "old"
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)  # if even this fails, the old output stays in .old-*
                shutil.rmtree(old.parent, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
        _fsync_dir(parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, RnnexpError):
            raise _write_error(path, exc) from exc
        raise
