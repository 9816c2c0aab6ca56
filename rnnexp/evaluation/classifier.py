"""A small CNN classifier of the prepared images, the feature extractor of sample scores.

Sample-quality scores (:mod:`rnnexp.evaluation.scores`) need a network that knows what the data
looks like: its penultimate features give a Fréchet distance between real and
generated images (as FID uses Inception features, here a classifier trained on the
same data), and its predictions tell whether a class-conditional sample shows the
class it was asked for. The classifier is plain ``torch.nn``, trained by a short,
seeded loop on the prepared train split and picked on the val split.

Checkpoints hold tensors and plain types only and load with
``torch.load(weights_only=True)``.

Example:
    >>> from rnnexp.data.prepare import prepare, write_prepared
    >>> from rnnexp.data.sources import load_digits
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "prepared"
    >>> _ = write_prepared(prepare(load_digits(), 17, 0, 0.1, 0.1), folder)
    >>> model, info = train_classifier(folder, epochs=2)
    >>> info["num_classes"], info["shape"], info["levels"]
    (10, [1, 8, 8], 17)
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rnnexp.data.prepare import read_arrays, read_meta
from rnnexp.errors import DataError, RnnexpError
from rnnexp.util.atomic import atomic_write_bytes
from rnnexp.util.safe_load import load_weights

__all__ = [
    "CHECKPOINT_FORMAT",
    "ClassifierUnavailable",
    "SmallCNN",
    "accuracy",
    "load_classifier",
    "save_classifier",
    "save_unavailable",
    "train_classifier",
]

CHECKPOINT_FORMAT = "rnnexp-classifier"
CHECKPOINT_VERSION = 1


class ClassifierUnavailable(RnnexpError):
    """The classifier stage found no way to train a classifier on this data (no labels)."""


class SmallCNN(nn.Module):
    """Four 3x3 conv + ReLU layers, a 2x2 max-pool in the middle (when the image is at
    least 8x8), global average pooling, a ReLU feature layer and a linear head.

    Input: level-index images (B, C, H, W), integer in 0..levels-1, scaled to [-1, 1]
    inside. ``features(x)`` -> (B, feature_dim), ``forward(x)`` -> logits (B, K).

    Example:
        >>> net = SmallCNN(channels=1, height=8, width=8, levels=17, num_classes=10)
        >>> x = torch.randint(0, 17, (5, 1, 8, 8))
        >>> net.features(x).shape, net(x).shape
        (torch.Size([5, 64]), torch.Size([5, 10]))
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        levels: int,
        num_classes: int,
        hidden: int = 32,
        feature_dim: int = 64,
    ) -> None:
        super().__init__()
        if levels < 2 or num_classes < 1 or min(channels, height, width, hidden, feature_dim) < 1:
            raise ValueError(
                f"bad SmallCNN size: channels={channels}, height={height}, width={width}, "
                f"levels={levels}, num_classes={num_classes}, hidden={hidden}, "
                f"feature_dim={feature_dim}"
            )
        self.config = {
            "channels": int(channels),
            "height": int(height),
            "width": int(width),
            "levels": int(levels),
            "num_classes": int(num_classes),
            "hidden": int(hidden),
            "feature_dim": int(feature_dim),
        }
        pool: nn.Module = nn.MaxPool2d(2) if min(height, width) >= 8 else nn.Identity()
        h2 = 2 * hidden
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),  # (B, h, H, W)
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            pool,  # (B, h, H/2, W/2) when H, W >= 8
            nn.Conv2d(hidden, h2, 3, padding=1),  # (B, 2h, H', W')
            nn.ReLU(),
            nn.Conv2d(h2, h2, 3, padding=1),
            nn.ReLU(),
        )
        self.feature = nn.Linear(h2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def levels(self) -> int:
        return self.config["levels"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the classifier was built for."""
        c = self.config
        return (c["channels"], c["height"], c["width"])

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Level indices -> float in [-1, 1] (as the generators see them)."""
        return x.float() * (2.0 / (self.levels - 1)) - 1.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim), after ReLU."""
        h = self.body(self.scale(x))  # (B, 2h, H', W')
        return F.relu(self.feature(h.mean(dim=(2, 3))))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, K)


@torch.no_grad()
def _predict(model: SmallCNN, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(torch.from_numpy(images[i : i + batch_size].astype(np.int64)).to(device))
        .argmax(1)
        .cpu()
        .numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy(model: SmallCNN, images: np.ndarray, labels: np.ndarray) -> float | None:
    """Fraction of ``images`` (N, C, H, W) classified as ``labels``; None if N is 0."""
    if len(images) == 0:
        return None
    return float((_predict(model, images) == labels).mean())


def train_classifier(
    prepared_dir: str | os.PathLike[str],
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    hidden: int = 32,
    feature_dim: int = 64,
    on_epoch: Callable[[int, float | None], None] | None = None,
) -> tuple[SmallCNN, dict[str, Any]]:
    """Train a :class:`SmallCNN` on the train split of ``prepared_dir``.

    Adam under a one-cycle learning-rate schedule (warm-up to ``lr`` over the first
    15% of the steps, then cosine decay); the batches of each epoch are a seeded
    permutation of the train split. The weights kept are
    those of the epoch with the best val accuracy (the earliest among equals), or of
    the last epoch when the val split is empty. The same data, arguments and seed
    give the same model (the global torch RNG is left as it was). ``on_epoch(epoch,
    val_accuracy)`` is called after each epoch (1-based; accuracy None for an empty
    val split), e.g. to show progress.

    Returns:
        (model in eval mode, info) where info holds ``test_accuracy`` and
        ``val_accuracy`` (None for an empty split), ``epochs``, ``best_epoch``
        (1-based), ``data_hash`` (the prepared data's content hash), ``levels``,
        ``shape`` [C, H, W] and ``num_classes``.

    Raises:
        DataError: the prepared data has no labels, or no training image, or is
            missing/corrupt (from :func:`rnnexp.data.prepare.read_meta`).
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"epochs, batch_size and lr must be positive: {epochs}, {batch_size}, {lr}"
        )
    meta = read_meta(prepared_dir)
    if not meta.get("has_labels") or not meta.get("num_classes"):
        raise DataError(
            f"prepared data {prepared_dir} has no labels, so no classifier can be trained "
            "on it (classifier-based scores need labelled data: digits, idx with labels, "
            "or an image folder with class subfolders)"
        )
    arrays = {s: read_arrays(prepared_dir, s, meta) for s in ("train", "val", "test")}
    for split, a in arrays.items():
        if "labels" not in a:
            raise DataError(f"prepared data {prepared_dir}: {split}.npz has no labels")
    train_x, train_y = arrays["train"]["images"], arrays["train"]["labels"]
    if len(train_x) == 0:
        raise DataError(f"prepared data {prepared_dir}: the train split is empty")
    c, h, w = (int(v) for v in meta["shape"])
    levels, num_classes = int(meta["levels"]), int(meta["num_classes"])

    x_all = torch.from_numpy(train_x.astype(np.int64))
    y_all = torch.from_numpy(train_y.astype(np.int64))
    order_rng = np.random.default_rng([seed, 7])  # batch order, apart from torch's RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(c, h, w, levels, num_classes, hidden, feature_dim)
    steps = epochs * -(-len(train_x) // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.15
    )
    val_x, val_y = arrays["val"]["images"], arrays["val"]["labels"]
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.from_numpy(order_rng.permutation(len(train_x)))
        for batch in perm.split(batch_size):
            loss = F.cross_entropy(model(x_all[batch]), y_all[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        val_acc = accuracy(model, val_x, val_y)
        if on_epoch is not None:
            on_epoch(epoch, val_acc)
        if val_acc is None:
            continue
        if best is None or val_acc > best[0]:
            best = (val_acc, epoch, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    info: dict[str, Any] = {
        "test_accuracy": accuracy(model, arrays["test"]["images"], arrays["test"]["labels"]),
        "val_accuracy": None if best is None else best[0],
        "epochs": int(epochs),
        "best_epoch": int(epochs) if best is None else best[1],
        "data_hash": meta["content_hash"],
        "levels": levels,
        "shape": [c, h, w],
        "num_classes": num_classes,
    }
    return model, info


def save_classifier(model: SmallCNN, info: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the classifier (config, weights, ``info``) to ``path`` atomically.

    ``info`` must hold plain types only (str, int, float, bool, None, lists, dicts):
    the file is read with ``torch.load(weights_only=True)``.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "info": dict(info),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_unavailable(reason: str, data_hash: str, path: str | os.PathLike[str]) -> None:
    """Write, in place of a classifier, why none could be trained on this data.

    The classifier stage always writes its output (DVC expects it); for unlabelled
    data it is this marker, and :func:`load_classifier` raises
    :class:`ClassifierUnavailable` with the reason, so evaluate skips the scores.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "unavailable": str(reason),
        "info": {"data_hash": data_hash},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_classifier(path: str | os.PathLike[str]) -> tuple[SmallCNN, dict[str, Any]]:
    """Read a classifier written by :func:`save_classifier`: (model in eval mode, info).

    Raises:
        ClassifierUnavailable: the file is the marker of :func:`save_unavailable`.
        RnnexpError: the file is missing, unreadable, refused by the safe loader
            (a pickle that would run code), or not a classifier checkpoint of this
            code — with the path in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise RnnexpError(f"{path}: classifier checkpoint not found")
    raw = load_weights(path, "classifier checkpoint")
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise RnnexpError(f"{path}: not an rnnexp classifier checkpoint")
    if raw.get("version") != CHECKPOINT_VERSION:
        raise RnnexpError(
            f"{path}: classifier checkpoint version {raw.get('version')!r}, this code reads "
            f"version {CHECKPOINT_VERSION}; retrain the classifier"
        )
    if "unavailable" in raw:
        raise ClassifierUnavailable(f"{path}: no classifier: {raw['unavailable']}")
    try:
        model = SmallCNN(**raw["config"])
        model.load_state_dict(raw["state_dict"])
        info = dict(raw["info"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RnnexpError(
            f"{path}: classifier checkpoint does not match the classifier code: {first}"
        ) from None
    model.eval()
    return model, info
