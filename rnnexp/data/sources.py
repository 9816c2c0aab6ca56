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

import os
from pathlib import Path

import numpy as np
from PIL import Image

from rnnexp.data.idx import IDX_FILES, load_idx
from rnnexp.data.raw import RawDataset, read_raw, write_raw
from rnnexp.errors import DataError

__all__ = [
    "IDX_FILES",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "RawDataset",
    "fetch",
    "image_files",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "read_raw",
    "write_raw",
]

SOURCES = ("digits", "idx", "image-folder")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


# --------------------------------------------------------------------------- digits


def load_digits() -> RawDataset:
    """scikit-learn's bundled 8x8 digits: 1797 images, values 0..16, classes "0".."9"."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = bunch.images.astype(np.uint8)[..., None]  # (N, 8, 8, 1), exact: values are 0..16
    labels = bunch.target.astype(np.int64)
    names = [str(n) for n in bunch.target_names]
    return RawDataset(images, labels, 16, names, "digits", "sklearn.datasets.load_digits")


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


def image_files(path: str | os.PathLike[str]) -> list[Path]:
    """The image file ``path``, or the images in the folder ``path`` (recursive, sorted).

    Raises:
        DataError: ``path`` does not exist, or is a folder without images.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _is_image_file(p))
        if not files:
            raise DataError(f"no .png/.jpg/.jpeg images found in {path}")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"input {path} does not exist")


def load_images(path: str | os.PathLike[str], size: int, channels: int) -> np.ndarray:
    """Images to feed a trained model: a file, or every image in a folder (recursive).

    Each image is resized to ``size`` x ``size`` and converted to ``channels``
    channels (1: grayscale, 3: RGB). Returns uint8 (N, size, size, channels).
    """
    images = []
    for file in image_files(path):
        pixels = _load_image(file, size)  # (H, W) grey or (H, W, 3)
        if pixels.ndim == 2:
            pixels = pixels[..., None].repeat(channels, axis=2)
        elif channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
            pixels = np.rint(pixels @ np.array([0.299, 0.587, 0.114]))[..., None]
        images.append(pixels.astype(np.uint8))
    return np.stack(images)
