"""MNIST-format IDX files (MNIST, Fashion-MNIST, ...): a local folder or a base URL.

Files may be gzipped. Downloads go to a cache folder and are checked against
``data.sha256`` before use; every problem raises :class:`~rnnexp.errors.DataError`
naming the file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rnnexp.data.raw import RawDataset
from rnnexp.errors import DataError

# (images, labels) file names of the train and test parts, as MNIST publishes them.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped if it is gzip data (whatever its name says)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from e
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"IDX file {path} is not valid gzip data (corrupt or truncated): {e}"
        ) from e


def _parse_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse one IDX file (http://yann.lecun.com/exdb/mnist/ format) into a uint8 array."""
    data = _read_maybe_gzip(path)
    kind = "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"
    if len(data) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, no header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        hint = ""
        if magic in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
            hint = " (it looks like an IDX file of the other kind: images and labels swapped?)"
        raise DataError(
            f"IDX file {path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"for {kind} (unsigned bytes, {expected_magic & 0xFF}-D){hint}"
        )
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if kind == "images" and 0 in shape:  # nothing to train on, and shapes of 0 break models
        raise DataError(
            f"IDX file {path} holds no pixels: its header announces {shape[0]} images of "
            f"{shape[1]}x{shape[2]} pixels; an IDX images file needs at least one image "
            "of at least 1x1"
        )
    expected = math.prod(shape)  # Python ints: a forged header cannot overflow
    found = len(data) - header
    if found < expected:
        raise DataError(
            f"IDX file {path} is truncated: its header announces {kind} of shape {shape} "
            f"({expected} bytes of data) but only {found} bytes follow"
        )
    if found > expected:
        raise DataError(
            f"IDX file {path} has {found - expected} unexpected bytes after the {kind} "
            f"of shape {shape} its header announces"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _load_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = _parse_idx(images_path, IDX_IMAGES_MAGIC)
    labels = _parse_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"IDX files disagree: {images_path} holds {images.shape[0]} images but "
            f"{labels_path} holds {labels.shape[0]} labels"
        )
    return images[..., None], labels.astype(np.int64)


def _find_local(folder: Path, name: str) -> Path | None:
    for candidate in (name, name + ".gz"):
        p = folder / candidate
        if p.is_file():
            return p
    return None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path) -> bool:
    """Download ``url`` to ``dest`` (atomically); False if the server says 404/410."""
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            with part.open("wb") as f:
                shutil.copyfileobj(response, f, _CHUNK)
    except urllib.error.HTTPError as e:
        part.unlink(missing_ok=True)
        if e.code in (404, 410):
            return False
        raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DataError(f"cannot download {url}: {reason}") from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return True


def _check_sha256(path: Path, name: str, url: str, sha256: dict[str, str]) -> None:
    actual = _sha256_file(path)
    expected = sha256.get(name)
    if expected is None:
        raise DataError(
            f"no sha256 given for {name} (downloaded from {url}, its sha256 is {actual}); "
            f"downloads are only used when checked: add it to data.sha256, e.g. "
            f"data.sha256: {{{name}: {actual}}} (known entries: {sorted(sha256) or 'none'})"
        )
    if expected.strip().lower() != actual:
        raise DataError(
            f"sha256 mismatch for {name} downloaded from {url}: expected {expected.strip()}, "
            f"got {actual}"
        )


def _fetch_remote(
    base_url: str, name: str, sha256: dict[str, str], download_dir: Path
) -> Path | None:
    """Download ``name.gz`` (or else ``name``) from ``base_url``, verified; None if absent."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    for candidate in (name + ".gz", name):
        dest = download_dir / candidate
        url = urllib.parse.urljoin(base, candidate)
        expected = sha256.get(candidate)
        if dest.is_file() and expected and _sha256_file(dest) == expected.strip().lower():
            return dest  # already downloaded and verified
        if _download(url, dest):
            try:
                _check_sha256(dest, candidate, url, sha256)
            except DataError:
                dest.unlink(missing_ok=True)
                raise
            return dest
    return None


def load_idx(
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    sha256: dict[str, str] | None = None,
    download_dir: str | os.PathLike[str] | None = None,
) -> RawDataset:
    """Load MNIST-format IDX files (MNIST, Fashion-MNIST, ...), train part then t10k part.

    The files are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` and
    optionally ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
    plain or gzipped (``.gz``). Give either a local folder ``path`` or a base
    ``url`` (``name.gz`` is tried, then ``name``); every downloaded file must
    match its entry in ``sha256`` (file name -> hex digest).

    Args:
        path: Folder holding the files (e.g. /usr/share/datasets/fashion-mnist).
        url: Base URL the file names are appended to.
        sha256: Expected sha256 per file name. Required with ``url`` (every
            download is checked); with ``path``, files that have an entry are checked.
        download_dir: Where downloads are kept (reused when their hash matches);
            a temporary folder, deleted afterwards, if None.

    Example:
        >>> ds = load_idx("/usr/share/datasets/fashion-mnist")  # doctest: +SKIP
        >>> ds.images.shape  # doctest: +SKIP
        (70000, 28, 28, 1)
    """
    if (path is None) == (url is None):
        raise DataError("load_idx needs exactly one of data.path (a folder) or data.url")
    if url is not None:
        with _download_folder(download_dir) as ddir:
            files = {
                part: tuple(_fetch_remote(url, n, sha256 or {}, ddir) for n in names)
                for part, names in IDX_FILES.items()
            }
            return _assemble_idx(files, where=url)
    folder = Path(path)  # type: ignore[arg-type]
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"IDX folder {folder} {what} (check data.path)")
    files = {
        part: tuple(_find_local(folder, n) for n in names) for part, names in IDX_FILES.items()
    }
    for p in (p for found in files.values() for p in found if p is not None):
        expected = (sha256 or {}).get(p.name, "").strip().lower()
        if expected and expected != (actual := _sha256_file(p)):
            raise DataError(
                f"sha256 mismatch for IDX file {p}: data.sha256 says {expected}, "
                f"the file has {actual}"
            )
    return _assemble_idx(files, where=str(folder))


@contextlib.contextmanager
def _download_folder(download_dir: str | os.PathLike[str] | None) -> Iterator[Path]:
    """``download_dir`` (created) if given, else a temporary folder removed afterwards."""
    if download_dir is not None:
        Path(download_dir).mkdir(parents=True, exist_ok=True)
        yield Path(download_dir)
        return
    with tempfile.TemporaryDirectory(prefix="rnnexp-download-") as tmp:
        yield Path(tmp)


def _assemble_idx(files: dict[str, tuple[Path | None, ...]], where: str) -> RawDataset:
    images_parts, labels_parts = [], []
    for part, found in files.items():
        names = IDX_FILES[part]
        missing = [n for n, p in zip(names, found, strict=True) if p is None]
        if part == "t10k" and len(missing) == len(names):
            continue  # the test pair is optional
        if missing:
            looked = ", ".join(f"{n} or {n}.gz" for n in missing)
            why = "required" if part == "train" else "optional, but not half of it"
            raise DataError(f"IDX data at {where}: missing {looked} (the {part} pair is {why})")
        images, labels = _load_idx_pair(found[0], found[1])  # type: ignore[arg-type]
        if images_parts and images.shape[1:] != images_parts[0].shape[1:]:
            raise DataError(
                f"IDX file {found[0]} holds {images.shape[1]}x{images.shape[2]} images but the "
                f"train images are {images_parts[0].shape[1]}x{images_parts[0].shape[2]}"
            )
        images_parts.append(images)
        labels_parts.append(labels)
    images = np.concatenate(images_parts) if len(images_parts) > 1 else images_parts[0]
    labels = np.concatenate(labels_parts) if len(labels_parts) > 1 else labels_parts[0]
    if images.shape[0] == 0:
        raise DataError(f"IDX data at {where} holds no images")
    names = [str(i) for i in range(int(labels.max()) + 1)]
    return RawDataset(images, labels, 255, names, "idx", where)
