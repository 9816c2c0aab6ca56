"""Data sources: digits, IDX files (local and over HTTP), image folders, raw storage."""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rnnexp.data import raw
from rnnexp.data.sources import (
    RawDataset,
    fetch,
    load_digits,
    load_idx,
    load_image_folder,
    read_raw,
    write_raw,
)
from rnnexp.errors import DataError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file holding the uint8 ``array`` (magic 0x08nn by default)."""
    if magic is None:
        magic = 0x0800 | array.ndim
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + np.ascontiguousarray(array, np.uint8).tobytes()


def write_file(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_dir(
    folder: Path, gz: bool | tuple[bool, bool] = True, with_test: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Write a small IDX data set (5 train + 3 t10k images of 4x3); return all images, labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    train_y = np.array([0, 3, 1, 2, 3], np.uint8)
    test_x = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    test_y = np.array([2, 0, 1], np.uint8)
    gz_train, gz_test = (gz, gz) if isinstance(gz, bool) else gz
    write_file(folder / TRAIN_IMAGES, idx_bytes(train_x), gz_train)
    write_file(folder / TRAIN_LABELS, idx_bytes(train_y), gz_train)
    if not with_test:
        return train_x, train_y
    write_file(folder / TEST_IMAGES, idx_bytes(test_x), gz_test)
    write_file(folder / TEST_LABELS, idx_bytes(test_y), gz_test)
    return np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y])


def fetch_stage(out: Path, **params) -> None:
    """What the fetch stage does: load, then write data/raw (nothing written on error)."""
    write_raw(fetch(**params), out)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# --------------------------------------------------------------------------- digits


def test_digits_shape_values_and_labels() -> None:
    from sklearn.datasets import load_digits as sk_load_digits

    ds = load_digits()
    expected = sk_load_digits()
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    assert np.array_equal(ds.images[..., 0], expected.images.astype(np.uint8))
    assert ds.images.min() == 0 and ds.images.max() == 16
    assert ds.max_value == 16
    assert ds.labels.dtype == np.int64
    assert np.array_equal(ds.labels, expected.target)
    assert list(ds.labels[:10]) == list(range(10))
    assert ds.class_names == [str(i) for i in range(10)]
    assert ds.source == "digits"


# --------------------------------------------------------------------------- IDX, local


@pytest.mark.parametrize("gz", [True, False, (True, False)], ids=["gz", "plain", "mixed"])
def test_idx_round_trip(tmp_path: Path, gz) -> None:
    images, labels = make_idx_dir(tmp_path / "idx", gz=gz)
    ds = load_idx(path=tmp_path / "idx")
    assert ds.images.shape == (8, 4, 3, 1)
    assert np.array_equal(ds.images[..., 0], images)  # train first, then t10k
    assert ds.labels.dtype == np.int64
    assert list(ds.labels) == [0, 3, 1, 2, 3, 2, 0, 1]
    assert ds.max_value == 255
    assert ds.class_names == ["0", "1", "2", "3"]
    assert ds.source == "idx"


def test_idx_train_pair_only(tmp_path: Path) -> None:
    images, labels = make_idx_dir(tmp_path / "idx", with_test=False)
    ds = fetch("idx", path=str(tmp_path / "idx"))
    assert np.array_equal(ds.images[..., 0], images)
    assert list(ds.labels) == list(labels)


def test_idx_local_files_checked_against_given_sha256(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "idx", gz=True)
    sha = _sha256s(tmp_path / "idx")
    assert len(load_idx(path=tmp_path / "idx", sha256=sha)) == 8
    wrong = {TEST_LABELS + ".gz": "ab" * 32}
    with pytest.raises(DataError) as err:
        load_idx(path=tmp_path / "idx", sha256=wrong)
    message = str(err.value)
    assert TEST_LABELS + ".gz" in message and "ab" * 32 in message
    assert sha[TEST_LABELS + ".gz"] in message


def test_idx_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    images, _ = make_idx_dir(tmp_path / "idx", gz=True, with_test=False)
    # a gzipped file without .gz in its name is still read
    gz_file = tmp_path / "idx" / (TRAIN_IMAGES + ".gz")
    gz_file.rename(tmp_path / "idx" / TRAIN_IMAGES)
    ds = load_idx(path=tmp_path / "idx")
    assert np.array_equal(ds.images[..., 0], images)


def _rewrite(name: str, data: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Mutation: replace the (plain) IDX file ``name`` by ``data(old bytes)``."""

    def mutate(folder: Path) -> None:
        path = folder / name
        path.write_bytes(data(path.read_bytes()))

    return mutate


def _delete(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _gzip_damage(name: str, damage: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        plain = folder / name
        (folder / (name + ".gz")).write_bytes(damage(gzip.compress(plain.read_bytes())))
        plain.unlink()

    return mutate


def _flip_middle(b: bytes) -> bytes:
    mid = len(b) // 2
    return b[:mid] + bytes([b[mid] ^ 0xFF]) + b[mid + 1 :]


BAD_IDX = {
    "images-wrong-magic": (
        _rewrite(TRAIN_IMAGES, lambda b: b"\x00\x00\x08\x01" + b[4:]),
        TRAIN_IMAGES,
        "magic",
    ),
    "labels-wrong-magic": (
        _rewrite(TEST_LABELS, lambda b: b"\x00\x00\x0d\x01" + b[4:]),
        TEST_LABELS,
        "magic",
    ),
    "images-truncated": (_rewrite(TRAIN_IMAGES, lambda b: b[:-5]), TRAIN_IMAGES, "truncated"),
    "header-truncated": (_rewrite(TRAIN_IMAGES, lambda b: b[:10]), TRAIN_IMAGES, "truncated"),
    "empty-file": (_rewrite(TEST_IMAGES, lambda b: b""), TEST_IMAGES, "truncated"),
    "labels-trailing": (_rewrite(TRAIN_LABELS, lambda b: b + b"\x00"), TRAIN_LABELS, "unexpected"),
    "label-count": (
        _rewrite(TRAIN_LABELS, lambda b: idx_bytes(np.zeros(4, np.uint8))),
        TRAIN_LABELS,
        "4 labels",
    ),
    "t10k-image-size": (
        _rewrite(TEST_IMAGES, lambda b: idx_bytes(np.zeros((3, 5, 3), np.uint8))),
        TEST_IMAGES,
        "5x3",
    ),
    "missing-train-labels": (_delete(TRAIN_LABELS), TRAIN_LABELS, "missing"),
    "missing-half-t10k": (_delete(TEST_IMAGES), TEST_IMAGES, "missing"),
    "gzip-truncated": (
        _gzip_damage(TRAIN_IMAGES, lambda b: b[: len(b) // 2]),
        TRAIN_IMAGES + ".gz",
        "gzip",
    ),
    "gzip-corrupt": (_gzip_damage(TEST_LABELS, _flip_middle), TEST_LABELS + ".gz", "gzip"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDX))
def test_bad_idx_file_is_named_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    mutate, culprit, what = BAD_IDX[case]
    folder = tmp_path / "idx"
    make_idx_dir(folder, gz=False)
    mutate(folder)
    out = tmp_path / "data" / "raw"
    with pytest.raises(DataError) as err:
        fetch_stage(out, source="idx", path=str(folder))
    message = str(err.value)
    assert culprit in message
    assert what in message
    assert not out.exists()
    assert not (tmp_path / "data").exists() or leftovers(tmp_path / "data") == []


def test_bad_idx_keeps_previous_raw_output(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    fetch_stage(out, source="digits")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    folder = tmp_path / "idx"
    make_idx_dir(folder, gz=False)
    (folder / TRAIN_IMAGES).write_bytes(b"\x00\x00\x08\x03")  # header cut short
    with pytest.raises(DataError, match=TRAIN_IMAGES):
        fetch_stage(out, source="idx", path=str(folder))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_idx_missing_folder_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        load_idx(path=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_idx(path=tmp_path / "empty")
    message = str(err.value)
    assert str(tmp_path / "empty") in message
    assert f"{TRAIN_IMAGES} or {TRAIN_IMAGES}.gz" in message
    assert f"{TRAIN_LABELS} or {TRAIN_LABELS}.gz" in message


# --------------------------------------------------------------------------- fetch dispatch


def test_fetch_parameter_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="digits, idx, image-folder") as err:
        fetch("cifar")
    assert "'cifar'" in str(err.value)
    with pytest.raises(DataError, match=r"data\.path.*data\.url"):
        fetch("idx")
    with pytest.raises(DataError, match="not both"):
        fetch("idx", path=str(tmp_path), url="http://127.0.0.1:9/")
    with pytest.raises(DataError, match=r"needs data\.path"):
        fetch("image-folder")
    with pytest.raises(DataError, match=r"unset data\.url"):
        fetch("image-folder", path=str(tmp_path), url="http://127.0.0.1:9/")


# --------------------------------------------------------------------------- IDX over HTTP


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/mnist"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _sha256s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_idx_url_download_with_sha256(http_root, tmp_path: Path) -> None:
    root, url = http_root
    # train served gzipped, t10k only plain: exercises the name.gz -> name fallback
    images, labels = make_idx_dir(root / "mnist", gz=(True, False))
    sha = _sha256s(root / "mnist")
    downloads = tmp_path / "downloads"
    ds = fetch("idx", url=url, sha256=sha, download_dir=str(downloads))
    assert np.array_equal(ds.images[..., 0], images)
    assert list(ds.labels) == list(labels)
    assert ds.origin == url
    assert sorted(p.name for p in downloads.iterdir()) == sorted(sha)

    # verified downloads are reused: works with the server's files gone
    for p in (root / "mnist").iterdir():
        p.unlink()
    again = load_idx(url=url + "/", sha256=sha, download_dir=downloads)
    assert np.array_equal(again.images, ds.images)


def test_idx_url_sha256_mismatch_and_missing(http_root, tmp_path: Path) -> None:
    root, url = http_root
    make_idx_dir(root / "mnist", gz=True)
    sha = _sha256s(root / "mnist")
    good = sha[TRAIN_LABELS + ".gz"]
    wrong = dict(sha)
    wrong[TRAIN_LABELS + ".gz"] = "0" * 64
    out = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        fetch_stage(out, source="idx", url=url, sha256=wrong, download_dir=str(tmp_path / "dl"))
    message = str(err.value)
    assert TRAIN_LABELS + ".gz" in message and "0" * 64 in message and good in message
    assert not out.exists()
    assert not (tmp_path / "dl" / (TRAIN_LABELS + ".gz")).exists()  # bad download discarded

    partial = {k: v for k, v in sha.items() if not k.startswith("t10k-images")}
    with pytest.raises(DataError) as err:
        fetch("idx", url=url, sha256=partial)
    message = str(err.value)
    assert TEST_IMAGES + ".gz" in message and sha[TEST_IMAGES + ".gz"] in message
    assert "data.sha256" in message


def test_idx_url_missing_train_file(http_root) -> None:
    root, url = http_root
    make_idx_dir(root / "mnist", gz=True)
    sha = _sha256s(root / "mnist")
    (root / "mnist" / (TRAIN_IMAGES + ".gz")).unlink()
    with pytest.raises(DataError, match=f"missing {TRAIN_IMAGES} or {TRAIN_IMAGES}.gz"):
        load_idx(url=url, sha256=sha)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(),
    reason=f"{FASHION_MNIST} absent (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_local_folder() -> None:
    ds = fetch("idx", path=str(FASHION_MNIST))
    assert ds.images.shape == (70000, 28, 28, 1)
    assert ds.images.dtype == np.uint8 and ds.max_value == 255
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    assert list(np.bincount(ds.labels)) == [7000] * 10  # 6000 train + 1000 test per class
    assert ds.labels[0] == 9  # the first training image is an ankle boot
    assert ds.class_names == [str(i) for i in range(10)]


# --------------------------------------------------------------------------- image folder


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_image_folder_with_classes(tmp_path: Path) -> None:
    a0, a1, b0 = noise((6, 5), 0), noise((6, 5), 1), noise((6, 5), 2)
    save(tmp_path / "cats" / "b.png", a1)
    save(tmp_path / "cats" / "a.PNG", a0)
    save(tmp_path / "dogs" / "x.png", b0)
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    ds = fetch("image-folder", path=str(tmp_path))
    assert ds.class_names == ["cats", "dogs"]
    assert list(ds.labels) == [0, 0, 1] and ds.labels.dtype == np.int64
    assert ds.images.shape == (3, 6, 5, 1)  # all grayscale -> one channel
    assert np.array_equal(ds.images[..., 0], np.stack([a0, a1, b0]))  # sorted by name
    assert ds.max_value == 255 and ds.source == "image-folder"


def test_image_folder_flat_mixed_gray_and_rgb(tmp_path: Path) -> None:
    gray, rgb = noise((4, 4), 3), noise((4, 4, 3), 4)
    save(tmp_path / "1.png", gray)
    save(tmp_path / "2.png", rgb)
    ds = load_image_folder(tmp_path, None)
    assert ds.labels is None and ds.class_names is None
    assert ds.images.shape == (2, 4, 4, 3)
    assert np.array_equal(ds.images[0], np.repeat(gray[..., None], 3, axis=-1))
    assert np.array_equal(ds.images[1], rgb)


def test_image_folder_jpeg_any_case(tmp_path: Path) -> None:
    save(tmp_path / "a.JPG", np.full((8, 8, 3), (200, 40, 10), np.uint8))
    save(tmp_path / "b.jpeg", np.full((8, 8, 3), (10, 40, 200), np.uint8))
    ds = load_image_folder(tmp_path, None)
    assert ds.images.shape == (2, 8, 8, 3)
    assert np.abs(ds.images[0].astype(int) - (200, 40, 10)).max() <= 3  # JPEG is lossy


def test_image_folder_resizing(tmp_path: Path) -> None:
    save(tmp_path / "wide.png", np.full((6, 10, 3), (255, 0, 100), np.uint8))
    save(tmp_path / "tall.png", np.full((12, 5), 77, np.uint8))
    ds = load_image_folder(tmp_path, image_size=4)
    assert ds.images.shape == (2, 4, 4, 3)
    # constant images stay constant when resized; files are read in sorted order
    assert (ds.images[0] == 77).all()
    assert (ds.images[1] == (255, 0, 100)).all()


def test_image_folder_mixed_sizes_error(tmp_path: Path) -> None:
    save(tmp_path / "a.png", noise((8, 8), 0))
    save(tmp_path / "b.png", noise((6, 10), 1))
    with pytest.raises(DataError) as err:
        fetch_stage(tmp_path / "raw", source="image-folder", path=str(tmp_path))
    message = str(err.value)
    assert "b.png" in message and "10x6" in message and "8x8" in message
    assert "data.image_size" in message
    assert not (tmp_path / "raw").exists()


def test_image_folder_truncated_png(tmp_path: Path) -> None:
    save(tmp_path / "good.png", noise((32, 32), 0))
    bad = save(tmp_path / "bad.png", noise((32, 32), 1))
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    out = tmp_path / "out" / "raw"
    with pytest.raises(DataError, match="bad.png"):
        fetch_stage(out, source="image-folder", path=str(tmp_path))
    assert not out.exists()


def test_image_folder_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_bytes(b"this is not a PNG")
    with pytest.raises(DataError, match="fake.png"):
        load_image_folder(tmp_path, None)


def test_image_folder_empty_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path, None)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path, None)
    with pytest.raises(DataError, match="missing_dir.*does not exist"):
        load_image_folder(tmp_path / "missing_dir", None)
    (tmp_path / "classes" / "empty_class").mkdir(parents=True)
    save(tmp_path / "classes" / "full" / "a.png", noise((2, 2), 0))
    with pytest.raises(DataError, match="empty_class.*no images"):
        load_image_folder(tmp_path / "classes", None)


def test_image_folder_loose_images_beside_classes(tmp_path: Path) -> None:
    save(tmp_path / "cls" / "a.png", noise((2, 2), 0))
    save(tmp_path / "loose.png", noise((2, 2), 1))
    with pytest.raises(DataError, match="loose.png"):
        load_image_folder(tmp_path, None)


# --------------------------------------------------------------------------- raw storage


def test_write_read_raw_round_trip(tmp_path: Path) -> None:
    ds = load_digits()
    write_raw(ds, tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["dataset.npz", "info.json"]
    info = json.loads((tmp_path / "raw" / "info.json").read_text())
    assert info["source"] == "digits" and info["max_value"] == 16
    assert info["shape"] == [8, 8, 1] and info["count"] == 1797
    assert info["class_names"] == [str(i) for i in range(10)]
    back = read_raw(tmp_path / "raw")
    assert np.array_equal(back.images, ds.images) and np.array_equal(back.labels, ds.labels)
    assert back.max_value == 16 and back.class_names == ds.class_names
    # same data, same bytes (DVC sees an unchanged output)
    first = (tmp_path / "raw" / "dataset.npz").read_bytes()
    write_raw(ds, tmp_path / "raw")
    assert (tmp_path / "raw" / "dataset.npz").read_bytes() == first


def test_write_read_raw_unlabelled(tmp_path: Path) -> None:
    ds = RawDataset(noise((3, 2, 2, 3), 0), None, 255, None, "image-folder")
    write_raw(ds, tmp_path / "raw")
    back = read_raw(tmp_path / "raw")
    assert back.labels is None and np.array_equal(back.images, ds.images)


def test_read_raw_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="info.json is missing"):
        read_raw(tmp_path / "raw")
    write_raw(load_digits(), tmp_path / "raw")
    npz = tmp_path / "raw" / "dataset.npz"
    npz.write_bytes(npz.read_bytes()[:1000])
    with pytest.raises(DataError, match="dataset.npz is corrupt"):
        read_raw(tmp_path / "raw")


def test_write_raw_failure_keeps_previous_output(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "raw"
    write_raw(load_digits(), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(raw, "atomic_write_json", disk_full)  # after dataset.npz is written
    other = RawDataset(noise((2, 3, 3, 1), 0), None, 255, None, "image-folder")
    with pytest.raises(OSError) as err:
        write_raw(other, out)
    assert err.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []
