"""Atomic file and directory writes.

A stage writes every output under a temporary sibling name and renames it into
place only once it is complete, so an interrupted or failing stage never leaves
a half-written output behind (the previous output, if any, stays as it was).

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
import errno
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from rnnexp.errors import RnnexpError

__all__ = [
    "atomic_dir",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
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


class DiskFullError(RnnexpError, OSError):
    """No space (or quota) left while writing ``filename``: the previous file is intact.

    Both an :class:`OSError` (``errno`` ENOSPC or EDQUOT, as the system raised it)
    and an :class:`RnnexpError`, so the CLI prints its message and exits 2.
    """

    def __init__(self, path: Path, code: int) -> None:
        OSError.__init__(self, code, os.strerror(code), str(path))
        self.message = (
            f"{path}: not written: {os.strerror(code)}; "
            f"the previous {path.name} (if any) is unchanged — free space and rerun"
        )

    def __str__(self) -> str:
        return self.message


def _disk_full(path: Path, exc: OSError) -> DiskFullError:
    return DiskFullError(path, exc.errno or errno.ENOSPC)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, then rename it to ``path``.

    A full disk (ENOSPC, EDQUOT) raises :class:`rnnexp.errors.RnnexpError` naming
    ``path``; the temp file is removed in every case.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise _disk_full(path, exc) from exc
        raise
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            raise _disk_full(path, exc) from exc
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
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.tmp-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        yield tmp
        _fsync_dir(tmp)
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
