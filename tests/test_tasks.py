"""Conditioning inputs built by the prepare stage for each data.task."""

import numpy as np
import pytest

from rnnexp.data.prepare import content_hash, prepare, read_arrays, read_meta, write_prepared
from rnnexp.data.sources import RawDataset, load_digits
from rnnexp.data.tasks import (
    build_source,
    occlusion_mask,
    source_channels,
    source_to_float,
    visible_mask,
)
from rnnexp.errors import DataError


def images(n=5, c=1, h=4, w=6, levels=8, seed=0):
    return np.random.default_rng(seed).integers(0, levels, size=(n, c, h, w)).astype(np.uint8)


def test_unconditional_and_class_have_no_source():
    x = images()
    rng = np.random.default_rng(0)
    assert build_source("unconditional", x, 8, rng) is None
    assert build_source("class", x, 8, rng) is None


def test_completion_lower_half_hides_lower_rows_and_flags_them():
    x = images(c=3) + 1  # no zeros, so hidden pixels are recognisable
    src = build_source("completion", x, 9, np.random.default_rng(0), "lower_half")
    assert src.shape == (5, 4, 4, 6) and src.dtype == np.uint8
    np.testing.assert_array_equal(src[:, :3, :2], x[:, :, :2])  # upper half kept
    assert (src[:, :3, 2:] == 0).all()  # lower half hidden
    assert (src[:, 3, :2] == 8).all() and (src[:, 3, 2:] == 0).all()  # visibility flag
    np.testing.assert_array_equal(visible_mask(src)[:, 0, :, 0], [[True, True, False, False]] * 5)


def test_random_boxes_are_seeded_and_cover_a_quarter_to_a_half_per_side():
    a = occlusion_mask(50, 8, 8, "random_box", np.random.default_rng(3))
    b = occlusion_mask(50, 8, 8, "random_box", np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    hidden = (~a[:, 0]).sum(axis=(1, 2))
    assert hidden.min() >= 2 * 2 and hidden.max() <= 4 * 4
    assert len({m.tobytes() for m in a}) > 10  # boxes differ between images


def test_denoise_adds_clipped_noise_of_the_requested_level():
    x = np.full((200, 1, 8, 8), 8, dtype=np.uint8)
    src = build_source("denoise", x, 17, np.random.default_rng(0), noise_level=0.1)
    diff = src.astype(float) - x
    assert src.max() <= 16
    assert diff.std() == pytest.approx(0.1 * 16, rel=0.05)
    assert abs(diff.mean()) < 0.05


def test_upscale_source_is_the_2x2_mean():
    x = np.array([[[[0, 2, 4, 4], [2, 4, 4, 4]]]], dtype=np.uint8)  # (1, 1, 2, 4)
    src = build_source("upscale", x, 8, np.random.default_rng(0))
    np.testing.assert_array_equal(src, [[[[2, 4]]]])
    with pytest.raises(DataError, match="even image sides"):
        build_source("upscale", images(h=5), 8, np.random.default_rng(0))


def test_source_channels_and_float_range():
    assert [source_channels(t, 3) for t in ("unconditional", "class", "completion")] == [0, 0, 4]
    assert source_channels("upscale", 1) == 1
    f = source_to_float(np.array([0, 8, 16], dtype=np.uint8), 17)
    np.testing.assert_allclose(f, [-1.0, 0.0, 1.0])


def test_prepare_writes_sources_and_records_task(tmp_path):
    data = prepare(load_digits(), 17, 0, 0.1, 0.1, task="completion")
    meta = write_prepared(data, tmp_path / "p")
    assert meta["task"] == "completion" and meta["source_shape"] == [2, 8, 8]
    arrays = read_arrays(tmp_path / "p", "test")
    np.testing.assert_array_equal(arrays["source"][:, 0, :4], arrays["images"][:, 0, :4])
    assert read_meta(tmp_path / "p")["content_hash"] == content_hash(data)
    plain = prepare(load_digits(), 17, 0, 0.1, 0.1)
    assert content_hash(plain) != content_hash(data)
    # the split does not depend on the task
    np.testing.assert_array_equal(plain.splits["test"][0], data.splits["test"][0])


def test_class_task_needs_labels():
    raw = RawDataset(
        images=np.zeros((10, 4, 4, 1), np.uint8),
        labels=None,
        max_value=255,
        class_names=None,
        source="image-folder",
    )
    with pytest.raises(DataError, match="needs labels"):
        prepare(raw, 4, 0, 0.1, 0.1, task="class")
