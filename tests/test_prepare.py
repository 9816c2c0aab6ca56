"""Atomic writes, quantization, splitting and the prepared-data files."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from rnnexp.data import prepared as prepared_module
from rnnexp.data.prepare import (
    PreparedData,
    content_hash,
    prepare,
    quantize,
    read_meta,
    read_prepared,
    read_split,
    write_prepared,
)
from rnnexp.data.sources import RawDataset, load_digits
from rnnexp.errors import DataError
from rnnexp.util import atomic
from rnnexp.util.atomic import (
    atomic_dir,
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- atomic files


def test_atomic_write_helpers(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "sub" / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo")
    atomic_write_json(tmp_path / "c.json", {"z": 1, "a": [1.5, None]})
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c.json").read_text()) == {"z": 1, "a": [1.5, None]}
    assert names(tmp_path) == ["b.txt", "c.json", "sub"]  # no temp files left
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("fail_in", ["fsync", "write"])
def test_atomic_write_failure_keeps_old_content(tmp_path: Path, monkeypatch, fail_in) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"version": 1})
    if fail_in == "fsync":
        monkeypatch.setattr(atomic.os, "fsync", disk_full)
        with pytest.raises(OSError) as err:
            atomic_write_json(target, {"version": 2})
    else:
        monkeypatch.setattr(np.lib.format, "write_array", disk_full)
        with pytest.raises(OSError) as err:
            atomic_save_npz(target, x=np.zeros(3))
    assert err.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"version": 1}
    assert names(tmp_path) == ["m.json"]


def test_atomic_save_npz_round_trip_and_deterministic(tmp_path: Path, monkeypatch) -> None:
    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    y = np.array([1, -2, 3], np.int64)
    atomic_save_npz(tmp_path / "a.npz", images=x, labels=y)
    later = time.time() + 3 * 86400  # written days later: still the same bytes
    monkeypatch.setattr(time, "time", lambda: later)
    atomic_save_npz(tmp_path / "b.npz", images=x, labels=y)
    atomic_save_npz(tmp_path / "c.npz", compress=False, images=x, labels=y)
    with np.load(tmp_path / "a.npz", allow_pickle=False) as f:
        assert f.files == ["images", "labels"]
        assert np.array_equal(f["images"], x) and f["images"].dtype == np.uint8
        assert np.array_equal(f["labels"], y)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        assert np.array_equal(f["images"], x)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    x2 = x.copy()
    x2[0, 0] = 99
    atomic_save_npz(tmp_path / "b.npz", images=x2, labels=y)
    assert (tmp_path / "a.npz").read_bytes() != (tmp_path / "b.npz").read_bytes()


# --------------------------------------------------------------------------- atomic folders


def _fill(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_atomic_dir_replaces_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _fill(out, {"old.txt": "old", "keep?.txt": "x"})
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
        assert list(tmp.iterdir()) == []
        assert _contents(out) == {"old.txt": "old", "keep?.txt": "x"}  # untouched meanwhile
        atomic_write_text(tmp / "new.txt", "new")
    assert _contents(out) == {"new.txt": "new"}
    assert names(tmp_path) == ["out"]


def test_atomic_dir_creates_missing_parents(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "a" / "b") as tmp:
        (tmp / "f").write_text("1")
    assert _contents(tmp_path / "a" / "b") == {"f": "1"}


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "disk full"), KeyboardInterrupt()])
def test_atomic_dir_exception_keeps_old_folder(tmp_path: Path, exc: BaseException) -> None:
    out = tmp_path / "out"
    _fill(out, {"old.txt": "old"})
    with pytest.raises(type(exc)):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise exc
    assert _contents(out) == {"old.txt": "old"}
    assert names(tmp_path) == ["out"]


def test_atomic_dir_exception_without_old_folder_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "out") as tmp:
            atomic_write_text(tmp / "a.txt", "a")
            disk_full()
    assert names(tmp_path) == []


def test_atomic_dir_failed_final_rename_restores_old(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    _fill(out, {"old.txt": "old"})
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".out.tmp-"):
            disk_full()
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
    assert _contents(out) == {"old.txt": "old"}
    assert names(tmp_path) == ["out"]


def test_atomic_dir_replaces_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("I was a file")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    assert _contents(tmp_path / "out") == {"x": "x"}
    assert names(tmp_path) == ["out"]


# --------------------------------------------------------------------------- quantize


def test_quantize_identities() -> None:
    digits = load_digits().images
    assert np.array_equal(quantize(digits, 16, 17), digits)
    every_byte = np.arange(256, dtype=np.uint8)
    assert np.array_equal(quantize(every_byte, 255, 256), every_byte)


def test_quantize_exact_values() -> None:
    x = np.array([0, 1, 63, 64, 127, 128, 191, 192, 254, 255], np.uint8)
    assert list(quantize(x, 255, 4)) == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    # equal-width bins: 64 values per level
    assert np.array_equal(quantize(np.arange(256, dtype=np.uint8), 255, 4), np.repeat(range(4), 64))
    # digits to 2 levels: 0..8 -> 0, 9..16 -> 1
    assert list(quantize(np.arange(17, dtype=np.uint8), 16, 2)) == [0] * 9 + [1] * 8
    assert quantize(x, 255, 4).dtype == np.uint8


def test_quantize_rejects_bad_arguments() -> None:
    x = np.zeros(3, np.uint8)
    for levels in (1, 257, 0):
        with pytest.raises(ValueError, match="levels"):
            quantize(x, 255, levels)
    with pytest.raises(ValueError, match="17 > max_value 16"):
        quantize(np.array([17], np.uint8), 16, 17)


# --------------------------------------------------------------------------- prepare


def id_dataset(n: int, labelled: bool = True, channels: int = 1) -> RawDataset:
    """Images that carry their own index: pixel (0, 0) = i // 256, pixel (0, 1) = i % 256."""
    images = np.zeros((n, 2, 3, channels), np.uint8)
    ids = np.arange(n)
    images[:, 0, 0, :] = (ids // 256)[:, None]
    images[:, 0, 1, :] = (ids % 256)[:, None]
    labels = (ids % 3).astype(np.int64) if labelled else None
    names = ["a", "b", "c"] if labelled else None
    return RawDataset(images, labels, 255, names, "test")


def ids_of(images: np.ndarray) -> np.ndarray:  # images (N, C, H, W), 256 levels
    return images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 0, 1]


def test_prepare_sizes_layout_and_labels() -> None:
    data = prepare(id_dataset(200), levels=256, seed=0, val_fraction=0.1, test_fraction=0.2)
    sizes = {s: len(data.splits[s][0]) for s in ("train", "val", "test")}
    assert sizes == {"train": 140, "val": 20, "test": 40}
    assert (data.channels, data.height, data.width, data.levels) == (1, 2, 3, 256)
    assert data.num_classes == 3 and data.class_names == ["a", "b", "c"]
    for images, labels in data.splits.values():
        assert images.shape[1:] == (1, 2, 3) and images.dtype == np.uint8
        assert images.flags.c_contiguous
        assert np.array_equal(labels, ids_of(images) % 3)  # each label follows its image


def test_prepare_rounds_sizes_and_quantizes() -> None:
    data = prepare(load_digits(), levels=2, seed=3, val_fraction=0.1, test_fraction=0.1)
    assert [len(data.splits[s][0]) for s in ("train", "val", "test")] == [1437, 180, 180]
    all_images = np.concatenate([data.splits[s][0] for s in ("train", "val", "test")])
    assert set(np.unique(all_images)) == {0, 1}
    assert data.num_classes == 10


def test_prepare_channels_first() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (10, 4, 5, 3), dtype=np.uint8)
    rgb[:, 0, 0, 0] = np.arange(10)  # identify images by red pixel (0, 0)
    raw = RawDataset(rgb, None, 255, None, "test")
    data = prepare(raw, levels=256, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert data.num_classes is None and data.shape == (3, 4, 5)
    for images, labels in data.splits.values():
        assert labels is None
        for img in images:
            assert np.array_equal(img, rgb[img[0, 0, 0]].transpose(2, 0, 1))


def test_split_is_deterministic_disjoint_and_complete() -> None:
    raw = id_dataset(300)
    a = prepare(raw, levels=256, seed=7, val_fraction=0.15, test_fraction=0.15)
    b = prepare(raw, levels=256, seed=7, val_fraction=0.15, test_fraction=0.15)
    c = prepare(raw, levels=256, seed=8, val_fraction=0.15, test_fraction=0.15)
    ids = {s: ids_of(a.splits[s][0]) for s in a.splits}
    for s in a.splits:
        assert np.array_equal(a.splits[s][0], b.splits[s][0])
        assert np.array_equal(a.splits[s][1], b.splits[s][1])
    assert not np.array_equal(np.sort(ids["test"]), np.sort(ids_of(c.splits["test"][0])))
    everything = np.concatenate(list(ids.values()))
    assert len(everything) == 300 and np.array_equal(np.sort(everything), np.arange(300))
    # matches the documented recipe: test first, then val, then train
    perm = np.random.default_rng(7).permutation(300)
    assert np.array_equal(ids["test"], perm[:45]) and np.array_equal(ids["val"], perm[45:90])


def test_prepare_too_small_and_bad_fractions() -> None:
    with pytest.raises(DataError, match="too small.*5 images.*val"):
        prepare(id_dataset(5), levels=256, seed=0, val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(DataError, match="train"):
        prepare(id_dataset(2), levels=256, seed=0, val_fraction=0.5, test_fraction=0.4)
    for val, test in ((-0.1, 0.1), (1.0, 0.0), (0.5, 0.5), (0.1, 1.2)):
        with pytest.raises(ValueError, match="fraction"):
            prepare(id_dataset(50), levels=256, seed=0, val_fraction=val, test_fraction=test)
    # a zero fraction is an intentionally empty split
    data = prepare(id_dataset(10), levels=256, seed=0, val_fraction=0.0, test_fraction=0.3)
    assert [len(data.splits[s][0]) for s in ("train", "val", "test")] == [7, 0, 3]


# --------------------------------------------------------------------------- prepared files


def test_write_read_prepared(tmp_path: Path) -> None:
    data = prepare(id_dataset(100), levels=256, seed=1, val_fraction=0.1, test_fraction=0.1)
    meta = write_prepared(data, tmp_path / "prepared")
    assert names(tmp_path / "prepared") == ["meta.json", "test.npz", "train.npz", "val.npz"]
    assert names(tmp_path) == ["prepared"]
    on_disk = read_meta(tmp_path / "prepared")
    assert on_disk == meta
    assert on_disk["shape"] == [1, 2, 3] and on_disk["levels"] == 256
    assert (on_disk["channels"], on_disk["height"], on_disk["width"]) == (1, 2, 3)
    assert on_disk["num_classes"] == 3 and on_disk["class_names"] == ["a", "b", "c"]
    assert on_disk["splits"] == {"train": 80, "val": 10, "test": 10}
    assert on_disk["content_hash"] == content_hash(data)
    for s in ("train", "val", "test"):
        path = tmp_path / "prepared" / f"{s}.npz"
        assert on_disk["files"][f"{s}.npz"] == hashlib.sha256(path.read_bytes()).hexdigest()
        images, labels = read_split(tmp_path / "prepared", s)
        assert np.array_equal(images, data.splits[s][0])
        assert np.array_equal(labels, data.splits[s][1]) and labels.dtype == np.int64
    back = read_prepared(tmp_path / "prepared")
    assert content_hash(back) == meta["content_hash"]


def test_unlabelled_prepared_round_trip(tmp_path: Path) -> None:
    data = prepare(id_dataset(20, labelled=False), 256, 0, 0.1, 0.1)
    meta = write_prepared(data, tmp_path / "p")
    assert meta["num_classes"] is None and meta["has_labels"] is False
    images, labels = read_split(tmp_path / "p", "val")
    assert labels is None and np.array_equal(images, data.splits["val"][0])


def test_content_hash_stable_and_sensitive(tmp_path: Path) -> None:
    raw = id_dataset(60)
    a = prepare(raw, levels=256, seed=0, val_fraction=0.2, test_fraction=0.2)
    b = prepare(raw, levels=256, seed=0, val_fraction=0.2, test_fraction=0.2)
    meta_a = write_prepared(a, tmp_path / "a")
    meta_b = write_prepared(b, tmp_path / "b")
    assert meta_a["content_hash"] == meta_b["content_hash"] == content_hash(a)
    for s in ("train", "val", "test"):  # the same inputs give byte-identical files
        file = f"{s}.npz"
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()

    b.splits["val"][0][3, 0, 1, 2] ^= 1  # one pixel of one image
    assert content_hash(b) != content_hash(a)
    c = prepare(raw, levels=256, seed=0, val_fraction=0.2, test_fraction=0.2)
    c.splits["test"][1][0] += 1  # one label
    assert content_hash(c) != content_hash(a)
    other_seed = prepare(raw, levels=256, seed=1, val_fraction=0.2, test_fraction=0.2)
    assert content_hash(other_seed) != content_hash(a)
    fewer_levels = prepare(raw, levels=128, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert content_hash(fewer_levels) != content_hash(a)


def test_modified_prepared_file_is_detected(tmp_path: Path) -> None:
    data = prepare(id_dataset(50), levels=256, seed=0, val_fraction=0.2, test_fraction=0.2)
    write_prepared(data, tmp_path / "p")
    images, labels = data.splits["train"]
    images = images.copy()
    images[0, 0, 1, 1] += 1
    # a valid .npz, with one pixel changed, written over train.npz
    atomic_save_npz(tmp_path / "p" / "train.npz", images=images, labels=labels)
    with pytest.raises(DataError, match=r"train\.npz.*modified.*dvc repro"):
        read_split(tmp_path / "p", "train")
    assert read_split(tmp_path / "p", "val")[0].shape == (10, 1, 2, 3)  # others still fine

    (tmp_path / "p" / "test.npz").unlink()
    with pytest.raises(DataError, match=r"test\.npz is missing.*dvc repro"):
        read_split(tmp_path / "p", "test")
    (tmp_path / "p" / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match=r"meta\.json is corrupt"):
        read_meta(tmp_path / "p")
    with pytest.raises(DataError, match=r"meta\.json is missing.*dvc repro"):
        read_split(tmp_path / "nowhere", "val")


def test_write_prepared_failure_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    data = prepare(id_dataset(30), levels=256, seed=0, val_fraction=0.2, test_fraction=0.2)
    write_prepared(data, tmp_path / "p")
    before = {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()}
    monkeypatch.setattr(prepared_module, "atomic_write_json", disk_full)
    other = prepare(id_dataset(30), levels=16, seed=5, val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(OSError):
        write_prepared(other, tmp_path / "p")
    with pytest.raises(OSError):
        write_prepared(other, tmp_path / "fresh")
    assert {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()} == before
    assert names(tmp_path) == ["p"]


def test_prepared_data_shape_property() -> None:
    d = PreparedData({}, 4, 3, 5, 6, None, None)
    assert d.shape == (3, 5, 6)
