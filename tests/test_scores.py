"""Sample-quality scores: Fréchet distance, the data classifier, the per-pixel baseline."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch

from rnnexp.data.prepare import prepare, read_meta, read_split, write_prepared
from rnnexp.data.sources import RawDataset
from rnnexp.errors import DataError, RnnexpError
from rnnexp.evaluation.classifier import (
    SmallCNN,
    load_classifier,
    save_classifier,
    train_classifier,
)
from rnnexp.evaluation.likelihood import independent_pixel_nll
from rnnexp.evaluation.scores import (
    classifier_features,
    classifier_predictions,
    frechet_distance,
    independent_pixel_samples,
    pixel_histograms,
    sample_scores,
)

# --------------------------------------------------------------------------- Fréchet distance


def exact_gaussian_set(rng, n: int, mean: np.ndarray, cov_root: np.ndarray) -> np.ndarray:
    """n points whose sample mean is exactly ``mean`` and whose unbiased sample
    covariance is exactly ``cov_root @ cov_root.T``."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # cov(z) = I
    return z @ cov_root.T + mean


def test_frechet_distance_matches_closed_form_of_diagonal_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    var_a, var_b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    a = exact_gaussian_set(rng, 500, mu_a, np.diag(np.sqrt(var_a)))
    b = exact_gaussian_set(rng, 300, mu_b, np.diag(np.sqrt(var_b)))
    # diagonal covariances commute: Tr(S_a + S_b - 2 sqrt(S_a S_b)) = sum (sqrt a - sqrt b)^2
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # a common rotation of both sets changes nothing (covariances no longer diagonal)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    assert frechet_distance(a @ q, b @ q) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_non_commuting_covariances_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 0.5
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = np.real(linalg.sqrtm(cov_a @ cov_b))
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * cross)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_is_symmetric_zero_on_identical_sets_and_grows_with_shift():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(150, 8)) * 2.0
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # a shift moves only the means: FD(a, a + s) = |s|^2, so it grows with the shift
    shift = rng.normal(size=8)
    distances = [frechet_distance(a, a + t * shift) for t in (0.5, 1.0, 2.0)]
    assert distances == pytest.approx([t * t * (shift**2).sum() for t in (0.5, 1.0, 2.0)])
    assert distances[0] < distances[1] < distances[2]


def test_frechet_distance_copes_with_singular_covariances_and_rejects_bad_input():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 20))  # 5 points in 20 dims: rank-4 covariance
    collapsed = np.zeros((10, 20))  # zero covariance
    fd = frechet_distance(a, collapsed)
    # S_b = 0: FD = |mu_a|^2 + Tr(S_a)
    expected = (a.mean(0) ** 2).sum() + np.trace(np.cov(a, rowvar=False))
    assert fd == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="must be \\(N, D\\)"):
        frechet_distance(a, rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], a)


# --------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def classifier(prepared_dir):
    """A classifier trained on the digits subsample (120 train, 40 val, 40 test)."""
    return train_classifier(prepared_dir, epochs=30, batch_size=16, lr=3e-3, seed=0)


def test_small_cnn_shapes_for_digits_and_28x28():
    for shape, pooled in (((1, 8, 8), True), ((3, 28, 28), True), ((1, 5, 7), False)):
        net = SmallCNN(*shape, levels=4, num_classes=7, feature_dim=16)
        assert any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == pooled
        x = torch.randint(0, 4, (3, *shape))
        features = net.features(x)
        assert features.shape == (3, 16) and (features >= 0).all()  # after ReLU
        assert net(x).shape == (3, 7)
        assert torch.allclose(net(x), net.head(features))


def test_classifier_learns_digits_well_above_chance(classifier, prepared_dir):
    model, info = classifier
    meta = read_meta(prepared_dir)
    assert info["test_accuracy"] >= 0.6  # chance is 0.1
    assert info["val_accuracy"] >= 0.6
    assert info["data_hash"] == meta["content_hash"]
    assert (info["levels"], info["shape"], info["num_classes"]) == (17, [1, 8, 8], 10)
    assert info["epochs"] == 30 and 1 <= info["best_epoch"] <= 30
    # the reported accuracy is that of the returned model on the test split
    test, labels = read_split(prepared_dir, "test", meta)
    preds = classifier_predictions(model, test, batch_size=7)
    assert info["test_accuracy"] == pytest.approx(float((preds == labels).mean()))


def test_training_is_deterministic_for_a_seed_and_leaves_the_global_rng(prepared_dir):
    state = torch.random.get_rng_state()
    a, _ = train_classifier(prepared_dir, epochs=2, seed=5)
    b, _ = train_classifier(prepared_dir, epochs=2, seed=5)
    c, _ = train_classifier(prepared_dir, epochs=2, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_save_load_round_trip_gives_identical_predictions(classifier, prepared_dir, tmp_path):
    model, info = classifier
    path = tmp_path / "sub" / "classifier.pt"
    save_classifier(model, info, path)
    assert [p.name for p in path.parent.iterdir()] == ["classifier.pt"]  # no temp file left
    torch.load(path, weights_only=True)  # plain tensors and types only
    loaded, loaded_info = load_classifier(path)
    assert loaded_info == info and not loaded.training
    images, _ = read_split(prepared_dir, "test")
    np.testing.assert_array_equal(
        classifier_features(loaded, images), classifier_features(model, images)
    )
    np.testing.assert_array_equal(
        classifier_predictions(loaded, images), classifier_predictions(model, images)
    )


class _WritesAFile:
    """A pickle that creates a file when unpickled by an unsafe loader."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_load_refuses_missing_corrupt_foreign_and_code_pickles(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(RnnexpError, match="missing.pt.*not found"):
        load_classifier(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(RnnexpError, match="garbage.pt"):
        load_classifier(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, foreign)
    with pytest.raises(RnnexpError, match="foreign.pt: not an rnnexp classifier"):
        load_classifier(foreign)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "rnnexp-classifier", "info": _WritesAFile(str(marker))}, evil)
    with pytest.raises(RnnexpError, match="evil.pt: refused to load"):
        load_classifier(evil)
    assert not marker.exists()


def test_load_refuses_a_checkpoint_whose_weights_do_not_fit(classifier, tmp_path):
    model, info = classifier
    path = tmp_path / "c.pt"
    save_classifier(model, info, path)
    raw = torch.load(path, weights_only=True)
    raw["config"]["hidden"] = 8
    torch.save(raw, path)
    with pytest.raises(RnnexpError, match="c.pt: classifier checkpoint does not match"):
        load_classifier(path)


def test_unlabelled_data_raises_data_error_naming_the_folder(digits_subsample, tmp_path):
    raw = RawDataset(digits_subsample.images, None, 16, None, "digits", "no labels")
    folder = tmp_path / "unlabelled"
    write_prepared(prepare(raw, 17, 0, 0.2, 0.2), folder)
    with pytest.raises(DataError, match=f"{folder}.*no labels"):
        train_classifier(folder, epochs=1)


# --------------------------------------------------------------------------- scores


def test_sample_scores_frechet_and_class_accuracy(classifier, prepared_dir):
    model, _ = classifier
    meta = read_meta(prepared_dir)
    train, _ = read_split(prepared_dir, "train", meta)
    test, _ = read_split(prepared_dir, "test", meta)
    same = sample_scores(model, test, test)
    assert same["frechet"] == pytest.approx(0.0, abs=1e-6)
    assert "class_accuracy" not in same and same["samples"] == len(test)
    # real train images are much closer to the test images than structureless samples
    real = sample_scores(model, test, train)["frechet"]
    baseline = sample_scores(model, test, independent_pixel_samples(train, 17, 400, 0))
    assert baseline["frechet"] > 3 * real
    # class accuracy: labels equal to the predictions score 1, shifted labels 0
    preds = classifier_predictions(model, train)
    right = sample_scores(model, test, train, labels=preds)
    assert right["class_accuracy"] == 1.0
    assert right["per_class_accuracy"] == [1.0 if (preds == c).any() else None for c in range(10)]
    wrong = sample_scores(model, test, train, labels=(preds + 1) % 10)
    assert wrong["class_accuracy"] == 0.0
    # four samples the classifier sees as 3s, asked for as 3, 3, 4, 4: half right
    samples = train[preds == 3][:4]
    assert len(samples) == 4
    mixed = sample_scores(model, test, samples, labels=np.array([3, 3, 4, 4]))
    assert mixed["class_accuracy"] == 0.5
    assert mixed["per_class_accuracy"][3] == 1.0 and mixed["per_class_accuracy"][4] == 0.0
    assert mixed["per_class_accuracy"][0] is None


def test_scores_refuse_images_the_classifier_was_not_trained_for(classifier):
    model, _ = classifier
    real = np.zeros((4, 1, 8, 8), np.uint8)
    with pytest.raises(RnnexpError, match="samples: images of shape \\(1, 7, 7\\)"):
        sample_scores(model, real, np.zeros((4, 1, 7, 7), np.uint8))
    with pytest.raises(RnnexpError, match="samples: levels 17..17 outside the classifier's 0..16"):
        sample_scores(model, real, np.full((4, 1, 8, 8), 17, np.uint8))
    with pytest.raises(RnnexpError, match="classes 0..9"):
        sample_scores(model, real, real, labels=np.array([0, 1, 2, 10]))


# --------------------------------------------------------------------------- baseline


def test_pixel_histograms_hand_computed_and_agree_with_the_baseline_nll():
    # pixel 0 saw 0, 0, 1 -> (3, 2, 1) / 6;  pixel 1 saw 1, 2, 1 -> (1, 3, 2) / 6
    train = np.array([[0, 1], [0, 2], [1, 1]], np.uint8).reshape(3, 1, 1, 2)
    np.testing.assert_allclose(
        np.exp(pixel_histograms(train, 3)), np.array([[3, 2, 1], [1, 3, 2]]) / 6, rtol=1e-12
    )
    rng = np.random.default_rng(0)
    train = rng.integers(0, 5, size=(30, 2, 3, 4)).astype(np.uint8)
    test = rng.integers(0, 5, size=(7, 2, 3, 4)).astype(np.uint8)
    log_probs = pixel_histograms(train, 5)
    nll = -log_probs[np.arange(24), test.reshape(7, 24)].sum(axis=1).mean()
    assert nll == pytest.approx(independent_pixel_nll(train, test, 5), rel=1e-12)


def test_independent_pixel_samples_follow_the_histograms(digits_subsample):
    train = prepare(digits_subsample, 17, 0, 0.2, 0.2).splits["train"][0]  # (120, 1, 8, 8)
    n = 4000
    samples = independent_pixel_samples(train, 17, n, seed=0)
    assert samples.shape == (n, 1, 8, 8) and samples.dtype == np.uint8
    assert samples.max() <= 16
    np.testing.assert_array_equal(samples, independent_pixel_samples(train, 17, n, seed=0))
    assert not np.array_equal(samples, independent_pixel_samples(train, 17, n, seed=1))
    probs = np.exp(pixel_histograms(train, 17))  # (64, 17)
    flat = samples.reshape(n, 64)
    freqs = np.stack([np.bincount(flat[:, d], minlength=17) for d in range(64)]) / n
    # binomial std <= 0.5 / sqrt(n) = 0.008; 5 std
    assert np.abs(freqs - probs).max() < 5 * 0.5 / math.sqrt(n)
    # a pixel always 0 in train (digits' left column) is 0 with prob (120+1)/(120+17)
    always_zero = (train.reshape(120, 64) == 0).all(axis=0)
    assert always_zero.any()
    assert (flat[:, always_zero] == 0).mean() == pytest.approx(121 / 137, abs=0.02)
    # and an RGB shape comes back in (n, C, H, W)
    rgb = np.random.default_rng(0).integers(0, 4, size=(10, 3, 2, 5)).astype(np.uint8)
    assert independent_pixel_samples(rgb, 4, 6, seed=0).shape == (6, 3, 2, 5)
