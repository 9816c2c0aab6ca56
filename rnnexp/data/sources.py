"""Raw image data sources: scikit-learn digits, MNIST-format IDX files, image folders.

Every loader returns a :class:`RawDataset` (uint8 images in (N, H, W, C) layout),
which the fetch stage stores with :func:`write_raw` under ``data/raw`` and the
prepare stage reads back with :func:`read_raw`. Anything wrong with the input
raises :class:`~rnnexp.errors.DataError` naming the file or folder.

Example:
    >>> ds = fetch("digits")
    >>> ds.images.shape, ds.max_value, ds.class_names[:3]
    ((1797, 8, 8, 1), 16, ['0', '1', '2'])
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rnnexp.atomic import atomic_dir, atomic_save_npz, atomic_write_json
from rnnexp.errors import DataError

__all__ = [
    "IDX_FILES",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "RawDataset",
    "fetch",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "read_raw",
    "write_raw",
]

SOURCES = ("digits", "idx", "image-folder")

# (images, labels) file names of the train and test parts, as MNIST publishes them.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

RAW_DATASET_FILE = "dataset.npz"
RAW_INFO_FILE = "info.json"

_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass
class RawDataset:
    """Images as loaded from a source, before quantization and splitting.

    Attributes:
        images: uint8 array (N, H, W, C), C is 1 (grayscale) or 3 (RGB).
        labels: int64 array (N,), or None for unlabelled data.
        max_value: Largest possible pixel value (16 for digits, 255 otherwise).
        class_names: Names of labels 0..K-1, or None.
        source: The source kind: "digits", "idx" or "image-folder".
        origin: Where the data came from (folder or URL), for the record.
    """

    images: np.ndarray
    labels: np.ndarray | None
    max_value: int
    class_names: list[str] | None
    source: str
    origin: str | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got shape {self.images.shape}")
        if self.labels is not None:
            if self.labels.dtype != np.int64 or self.labels.shape != self.images.shape[:1]:
                raise ValueError(
                    f"labels must be int64 ({self.images.shape[0]},), "
                    f"got {self.labels.dtype} {self.labels.shape}"
                )
        if not 1 <= self.max_value <= 255:
            raise ValueError(f"max_value must be in 1..255, got {self.max_value}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- digits


def load_digits() -> RawDataset:
    """scikit-learn's bundled 8x8 digits: 1797 images, values 0..16, classes "0".."9"."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = bunch.images.astype(np.uint8)[..., None]  # (N, 8, 8, 1), exact: values are 0..16
    labels = bunch.target.astype(np.int64)
    names = [str(n) for n in bunch.target_names]
    return RawDataset(images, labels, 16, names, "digits", "sklearn.datasets.load_digits")


# --------------------------------------------------------------------------- IDX


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
    expected = int(np.prod(shape, dtype=np.int64))
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


# --------------------------------------------------------------------------- image folder

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _is_image_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _load_image(path: Path, image_size: int | None) -> np.ndarray:
    """Decode one image to uint8 (H, W) for grayscale or (H, W, 3) for colour."""
    try:
        with Image.open(path) as im:
            im.verify()  # checks PNG chunk CRCs / structure; the image is unusable after
        with Image.open(path) as im:
            im.load()  # full decode: raises on truncated data
            if im.mode.startswith("I") and im.mode != "I;8":
                # 16-bit grayscale: scale 0..65535 to 0..255 (convert("L") would clip)
                arr = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8))
            elif im.mode in _GRAY_MODES:
                im = im.convert("L")
            else:
                im = im.convert("RGB")
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # UnidentifiedImageError is an OSError; truncation raises OSError or SyntaxError
        raise DataError(f"cannot read image {path}: {e}") from e


def load_image_folder(path: str | os.PathLike[str], image_size: int | None) -> RawDataset:
    """Load the .png/.jpg/.jpeg images of a folder, with one sub-folder per class if any.

    With sub-folders, each (sorted by name) is a class: labels 0..K-1 and
    ``class_names`` are the folder names (images are searched recursively inside
    each). Without, the images directly in ``path`` are loaded, unlabelled.
    Images are grayscale (C=1) if all of them are, else all are RGB (C=3); alpha
    is dropped. With ``image_size`` every image is resized (LANCZOS, aspect ratio
    not kept) to image_size x image_size; without, all must have the same size.
    Files are read in sorted order, so the result is deterministic.

    Example:
        >>> ds = load_image_folder("photos", image_size=32)  # doctest: +SKIP
        >>> ds.images.shape  # N images, 32x32, RGB  # doctest: +SKIP
        (120, 32, 32, 3)
    """
    folder = Path(path)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"image folder {folder} {what} (check data.path)")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    ext_list = "/".join(IMAGE_EXTENSIONS)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in folder.iterdir() if _is_image_file(p))
    files: list[tuple[Path, int | None]] = []
    class_names: list[str] | None = None
    if subdirs:
        if loose:
            raise DataError(
                f"image folder {folder} has both class sub-folders ({subdirs[0].name}, ...) and "
                f"loose images ({loose[0].name}, ...): move the images into class folders"
            )
        class_names = [d.name for d in subdirs]
        for label, d in enumerate(subdirs):
            found = sorted(p for p in d.rglob("*") if _is_image_file(p))
            if not found:
                raise DataError(f"class folder {d} holds no images ({ext_list})")
            files.extend((p, label) for p in found)
    else:
        files = [(p, None) for p in loose]
    if not files:
        raise DataError(f"image folder {folder} holds no images ({ext_list}, any case)")

    arrays: list[np.ndarray] = []
    first_size: tuple[Path, tuple[int, int]] | None = None
    for p, _ in files:
        arr = _load_image(p, image_size)
        size = (arr.shape[1], arr.shape[0])  # (W, H) as PIL reports it
        if first_size is None:
            first_size = (p, size)
        elif size != first_size[1]:
            (p0, s0) = first_size
            raise DataError(
                f"image {p} is {size[0]}x{size[1]} (WxH) but {p0} is {s0[0]}x{s0[1]}: images "
                f"must share one size; set data.image_size to resize them all to a square size"
            )
        arrays.append(arr)

    if all(a.ndim == 2 for a in arrays):
        images = np.stack(arrays)[..., None]  # (N, H, W, 1)
    else:
        rgb = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
        images = np.stack(rgb)  # (N, H, W, 3)
    labels = None if class_names is None else np.array([lab for _, lab in files], np.int64)
    return RawDataset(images, labels, 255, class_names, "image-folder", str(folder))


# --------------------------------------------------------------------------- dispatch


def fetch(
    source: str,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    sha256: dict[str, str] | None = None,
    image_size: int | None = None,
    download_dir: str | os.PathLike[str] | None = None,
) -> RawDataset:
    """Load the dataset ``source`` ("digits", "idx" or "image-folder") from params.

    Args mirror the ``data`` section of params.yaml: ``path`` is a local folder,
    ``url`` a base URL (idx only, with ``sha256``), ``image_size`` resizes
    image-folder images, ``download_dir`` keeps downloads.

    Example:
        >>> fetch("digits").images.shape
        (1797, 8, 8, 1)
    """
    if source == "digits":
        return load_digits()
    if source == "idx":
        if path is None and url is None:
            raise DataError(
                "data.source 'idx' needs data.path (a folder of IDX files) or data.url "
                "(a base URL, with data.sha256 for each file): set one of them"
            )
        if path is not None and url is not None:
            raise DataError("data.source 'idx': set either data.path or data.url, not both")
        return load_idx(path=path, url=url, sha256=sha256, download_dir=download_dir)
    if source == "image-folder":
        if path is None:
            raise DataError("data.source 'image-folder' needs data.path (a folder of images)")
        if url is not None:
            raise DataError(
                "data.source 'image-folder' reads a local folder only: unset data.url "
                "and set data.path"
            )
        return load_image_folder(path, image_size)
    raise DataError(f"unknown data.source {source!r}: choose one of {', '.join(SOURCES)}")


# --------------------------------------------------------------------------- storage


def write_raw(ds: RawDataset, out_dir: str | os.PathLike[str]) -> None:
    """Write ``dataset.npz`` and ``info.json`` to ``out_dir`` atomically (all or nothing)."""
    arrays: dict[str, np.ndarray] = {"images": ds.images}
    if ds.labels is not None:
        arrays["labels"] = ds.labels
    info = {
        "source": ds.source,
        "origin": ds.origin,
        "max_value": int(ds.max_value),
        "class_names": ds.class_names,
        "shape": [int(s) for s in ds.images.shape[1:]],  # [H, W, C]
        "count": len(ds),
        "has_labels": ds.labels is not None,
    }
    with atomic_dir(out_dir) as tmp:
        atomic_save_npz(tmp / RAW_DATASET_FILE, **arrays)
        atomic_write_json(tmp / RAW_INFO_FILE, info)


def read_raw(raw_dir: str | os.PathLike[str]) -> RawDataset:
    """Read what :func:`write_raw` wrote; DataError if missing, corrupt or inconsistent."""
    folder = Path(raw_dir)
    info_path = folder / RAW_INFO_FILE
    data_path = folder / RAW_DATASET_FILE
    for p in (info_path, data_path):
        if not p.is_file():
            raise DataError(f"raw data file {p} is missing; run the fetch stage (`dvc repro`)")
    try:
        info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        max_value = int(info["max_value"])
        source = str(info["source"])
        class_names = info.get("class_names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"raw data file {info_path} is corrupt ({e}); rebuild with `dvc repro`"
        ) from e
    try:
        with np.load(io.BytesIO(data_path.read_bytes()), allow_pickle=False) as npz:
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(
            f"raw data file {data_path} is corrupt ({e}); rebuild with `dvc repro`"
        ) from e
    expected = [int(info.get("count", -1)), *info.get("shape", [])]
    if list(images.shape) != expected or (labels is None) == bool(info.get("has_labels")):
        raise DataError(
            f"raw data file {data_path} does not match {info_path} (images {images.shape}, "
            f"info says {expected}); rebuild with `dvc repro`"
        )
    if labels is not None and labels.size and class_names:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= len(class_names):
            bad = low if low < 0 else high
            raise DataError(
                f"raw data file {data_path} holds label {bad}, outside 0..{len(class_names) - 1} "
                f"(the {len(class_names)} classes of {info_path}); rebuild with `dvc repro`"
            )
    try:
        return RawDataset(images, labels, max_value, class_names, source, info.get("origin"))
    except ValueError as e:
        raise DataError(f"raw data file {data_path} is invalid: {e}") from e


def load_images(path: str | os.PathLike[str], size: int, channels: int) -> np.ndarray:
    """Images to feed a trained model: a file, or every image in a folder (recursive).

    Each image is resized to ``size`` x ``size`` and converted to ``channels``
    channels (1: grayscale, 3: RGB). Returns uint8 (N, size, size, channels).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _is_image_file(p))
        if not files:
            raise DataError(f"no .png/.jpg/.jpeg images found in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"input {path} does not exist")
    images = []
    for file in files:
        pixels = _load_image(file, size)  # (H, W) grey or (H, W, 3)
        if pixels.ndim == 2:
            pixels = pixels[..., None].repeat(channels, axis=2)
        elif channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
            pixels = np.rint(pixels @ np.array([0.299, 0.587, 0.114]))[..., None]
        images.append(pixels.astype(np.uint8))
    return np.stack(images)
