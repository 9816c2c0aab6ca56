"""Sample-quality scores from a classifier trained on the data (:mod:`.classifier`).

- **Fréchet distance** between the classifier's penultimate features of real test
  images and of samples: the distance of two Gaussians fitted to the feature sets,
  as FID (Heusel et al. 2017) does with Inception features. Lower is better; real
  train vs real test images give the floor that sample size and over-fitting allow.
- **Class accuracy** of class-conditional samples: how often the classifier sees
  the class that was asked for.

The independent-per-pixel baseline (each sub-pixel drawn from its own histogram
over the train split) gives a reference sample set that has the right pixel
statistics but no structure.

Example:
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(5000, 2))
    >>> round(frechet_distance(a, a + [3.0, 4.0]), 2)
    25.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rnnexp.errors import RnnexpError
from rnnexp.evaluation.classifier import SmallCNN

__all__ = [
    "classifier_features",
    "classifier_predictions",
    "frechet_distance",
    "independent_pixel_samples",
    "pixel_histograms",
    "sample_scores",
]


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets (N, D) and (M, D).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` with unbiased
    covariances, in float64. The trace of ``(S_a S_b)^{1/2}`` is computed as the sum
    of square roots of the eigenvalues of ``S_a^{1/2} S_b S_a^{1/2}`` (symmetric PSD,
    with the same eigenvalues as ``S_a S_b``), clipped at 0: no complex parts and no
    failure on the singular covariances of small or collapsed sample sets.

    Example:
        >>> a = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
        >>> round(frechet_distance(a, a), 9), round(frechet_distance(a, a + 1.0), 9)
        (0.0, 2.0)
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) and (M, D), got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 feature vectors per set, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("feature sets hold non-finite values")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2.0  # symmetric up to rounding
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum()
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)
    return max(fd, 0.0)  # rounding can leave a tiny negative for identical sets


def _check_images(model: SmallCNN, images: np.ndarray, what: str) -> None:
    shape = tuple(images.shape[1:])
    if images.ndim != 4 or shape != model.image_shape:
        raise RnnexpError(
            f"{what}: images of shape {shape} do not match the classifier, which was "
            f"trained on images {model.image_shape}; retrain it on this data"
        )
    if images.size and (images.min() < 0 or images.max() >= model.levels):
        raise RnnexpError(
            f"{what}: levels {int(images.min())}..{int(images.max())} outside the "
            f"classifier's 0..{model.levels - 1}; retrain it on this data"
        )


@torch.no_grad()
def _batched(model: SmallCNN, images: np.ndarray, batch_size: int, fn: Any) -> list[np.ndarray]:
    model.eval()
    device = next(model.parameters()).device  # the batches go where the model is
    return [
        fn(torch.from_numpy(np.asarray(images[i : i + batch_size]).astype(np.int64)).to(device))
        .cpu()
        .numpy()
        for i in range(0, len(images), batch_size)
    ]


def classifier_features(model: SmallCNN, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate features (N, D) float32 of level-index images (N, C, H, W)."""
    _check_images(model, images, "classifier_features")
    parts = _batched(model, images, batch_size, model.features)
    dim = model.config["feature_dim"]
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def classifier_predictions(
    model: SmallCNN, images: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Predicted classes (N,) int64 of level-index images (N, C, H, W)."""
    _check_images(model, images, "classifier_predictions")
    parts = _batched(model, images, batch_size, lambda x: model(x).argmax(dim=1))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def sample_scores(
    classifier: SmallCNN,
    real_test_images: np.ndarray,
    samples: np.ndarray,
    labels: np.ndarray | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Scores of ``samples`` (N, C, H, W) against real test images (M, C, H, W).

    Returns:
        ``frechet``: Fréchet distance between the classifier features of the real
        test images and of the samples; ``samples``: N. When ``labels`` (N,), the
        classes the samples were asked for, are given: ``class_accuracy`` (fraction
        of samples classified as their label) and ``per_class_accuracy`` (one entry
        per class of the classifier, None for a class with no sample).
    """
    _check_images(classifier, real_test_images, "real test images")
    _check_images(classifier, samples, "samples")
    real = classifier_features(classifier, real_test_images, batch_size)
    fake = classifier_features(classifier, samples, batch_size)
    scores: dict[str, Any] = {"frechet": frechet_distance(real, fake), "samples": len(samples)}
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (len(samples),):
            raise ValueError(f"labels must be ({len(samples)},), got {labels.shape}")
        k = classifier.num_classes
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise RnnexpError(f"sample labels lie outside the classifier's classes 0..{k - 1}")
        correct = classifier_predictions(classifier, samples, batch_size) == labels
        scores["class_accuracy"] = float(correct.mean()) if len(correct) else None
        scores["per_class_accuracy"] = [
            float(correct[labels == c].mean()) if (labels == c).any() else None for c in range(k)
        ]
    return scores


def pixel_histograms(train: np.ndarray, levels: int) -> np.ndarray:
    """Log-probabilities (dims, levels) of each sub-pixel's level over ``train`` (N, C, H, W).

    Each (channel, row, column), flattened in C, H, W order, gets its own histogram
    of levels with add-one (Laplace) smoothing, so unseen levels keep a finite
    log-probability: the independent-per-pixel baseline model.

    Example:
        >>> train = np.array([[0, 1], [0, 2], [1, 1]], np.uint8).reshape(3, 1, 1, 2)
        >>> np.exp(pixel_histograms(train, 3)) * 6
        array([[3., 2., 1.],
               [1., 3., 2.]])
    """
    n, dims = train.shape[0], math.prod(train.shape[1:])
    flat_train = train.reshape(n, dims).astype(np.int64)
    counts = np.ones((dims, levels))  # add-one smoothing
    np.add.at(counts, (np.tile(np.arange(dims), n), flat_train.ravel()), 1.0)
    return np.log(counts / counts.sum(axis=1, keepdims=True))  # (dims, levels)


def independent_pixel_samples(
    train_images: np.ndarray, levels: int, n: int, seed: int
) -> np.ndarray:
    """``n`` samples (n, C, H, W) uint8 of the independent-per-pixel baseline.

    Each sub-pixel is drawn on its own from its histogram (:func:`pixel_histograms`)
    over ``train_images`` (N, C, H, W), reproducibly by ``seed``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    shape = tuple(train_images.shape[1:])
    cdf = np.cumsum(np.exp(pixel_histograms(train_images, levels)), axis=1)  # (dims, levels)
    u = np.random.default_rng(seed).random((n, len(cdf)))  # (n, dims)
    out = np.empty((n, len(cdf)), np.int64)
    for d in range(len(cdf)):  # inverse CDF, one sub-pixel at a time (memory n x dims)
        out[:, d] = np.searchsorted(cdf[d], u[:, d], side="right")
    return np.minimum(out, levels - 1).astype(np.uint8).reshape(n, *shape)
