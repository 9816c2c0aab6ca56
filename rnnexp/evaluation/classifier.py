"""A small CNN classifier of the prepared images, the feature extractor of sample scores.

Sample-quality scores (:mod:`rnnexp.evaluation.scores`) need a network that knows what the data
looks like: its penultimate features give a Fréchet distance between real and
generated images (as FID uses Inception features, here a classifier trained on the
same data), and its predictions tell whether a class-conditional sample shows the
class it was asked for. The classifier is plain ``torch.nn``, trained by a short,
seeded loop on the prepared train split, stopped early and picked on the val split;
its epochs have a fixed size, so that the stage stays cheap on large data sets.

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
from collections.abc import Callable, Iterator
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
    "EPOCH_IMAGES",
    "ClassifierUnavailable",
    "SmallCNN",
    "accuracy",
    "load_classifier",
    "save_classifier",
    "save_unavailable",
    "train_classifier",
]

CHECKPOINT_FORMAT = "rnnexp-classifier"
CHECKPOINT_VERSION = 2  # 2: BatchNorm, strided stem for large images, flattened map

# Train images per classifier epoch: the early-stopping check comes this often, however
# large the data (a full pass over 8,000 MNIST images per check made patience costly).
EPOCH_IMAGES = 2048


class ClassifierUnavailable(RnnexpError):
    """The classifier stage found no way to train a classifier on this data (no labels)."""


class SmallCNN(nn.Module):
    """Four 3x3 conv + BatchNorm + ReLU layers, a 2x2 max-pool in the middle (when the
    map is at least 8x8), a ReLU feature layer over the flattened map and a linear head.

    Images of at least 16x16 (e.g. MNIST's 28x28) enter through a stride-2 first
    convolution (5x5), so the other layers run on a quarter of the pixels: 28x28 ->
    14x14 -> (pool) 7x7. The flattened map keeps where a stroke is, which a global
    average would lose: it learns digits in far fewer steps. Maps larger than 7x7
    after the pool are average-pooled to 7x7 first, so the feature layer stays small.

    Input: level-index images (B, C, H, W), integer in 0..levels-1 (any dtype),
    scaled to [-1, 1] inside. ``features(x)`` -> (B, feature_dim),
    ``forward(x)`` -> logits (B, K).

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
        stride = 2 if min(height, width) >= 16 else 1
        k1 = 5 if stride == 2 else 3
        h1, w1 = (height - 1) // stride + 1, (width - 1) // stride + 1  # "same" padding
        pooled = min(h1, w1) >= 8
        hp, wp = (h1 // 2, w1 // 2) if pooled else (h1, w1)
        hf, wf = min(hp, 7), min(wp, 7)
        h2 = 2 * hidden

        def block(cin: int, cout: int, k: int = 3, s: int = 1) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, k, stride=s, padding=k // 2, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU()]  # BN: a bias of its own

        self.body = nn.Sequential(
            *block(channels, hidden, k1, stride),  # (B, h, H1, W1), H1 = H or ceil(H/2)
            *block(hidden, hidden),
            nn.MaxPool2d(2) if pooled else nn.Identity(),  # (B, h, Hp, Wp)
            *block(hidden, h2),  # (B, 2h, Hp, Wp)
            *block(h2, h2),
            nn.AdaptiveAvgPool2d((hf, wf)) if (hf, wf) != (hp, wp) else nn.Identity(),
        )
        self.feature = nn.Linear(h2 * hf * wf, feature_dim)
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
        h = self.body(self.scale(x))  # (B, 2h, Hf, Wf)
        return F.relu(self.feature(h.flatten(1)))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, K)


@torch.no_grad()
def _predict(
    model: SmallCNN, images: np.ndarray | torch.Tensor, batch_size: int = 512
) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(torch.as_tensor(images[i : i + batch_size]).to(device)).argmax(1).cpu().numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy(
    model: SmallCNN, images: np.ndarray | torch.Tensor, labels: np.ndarray
) -> float | None:
    """Fraction of ``images`` (N, C, H, W) classified as ``labels``; None if N is 0."""
    if len(images) == 0:
        return None
    return float((_predict(model, images) == np.asarray(labels)).mean())


def _epoch_batches(
    rng: np.random.Generator, n: int, epoch_images: int, batch_size: int
) -> Iterator[list[torch.Tensor]]:
    """The index batches of each epoch: ``epoch_images`` indices (at most ``n``) taken
    in turn from a stream of seeded permutations of ``range(n)``, so every image is
    seen once before any is seen twice, whatever the epoch size."""
    per_epoch = min(epoch_images, n)
    stream = np.zeros(0, np.int64)
    while True:
        while len(stream) < per_epoch:
            stream = np.concatenate([stream, rng.permutation(n)])
        take, stream = torch.from_numpy(stream[:per_epoch]), stream[per_epoch:]
        batches = list(take.split(batch_size))
        if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm needs 2 images
            batches[-2:] = [torch.cat(batches[-2:])]
        yield batches


def train_classifier(
    prepared_dir: str | os.PathLike[str],
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    hidden: int = 32,
    feature_dim: int = 64,
    on_epoch: Callable[[int, float | None], None] | None = None,
    patience: int = 0,
    epoch_images: int = EPOCH_IMAGES,
) -> tuple[SmallCNN, dict[str, Any]]:
    """Train a :class:`SmallCNN` on the train split of ``prepared_dir``.

    An epoch is ``epoch_images`` train images (all of them when the split is
    smaller), taken in turn from seeded permutations of the split, so that an
    epoch's cost and the early-stopping check do not grow with the data (a pass
    over 8,000 MNIST train images spans about four epochs of 2,048).
    Adam at ``lr``, halved after every epoch whose val accuracy is no better than
    the best so far (:class:`torch.optim.lr_scheduler.ReduceLROnPlateau`). With
    ``patience`` > 0, training stops after ``patience`` such epochs in a row
    (early stopping); it stops after ``epochs`` epochs in any case. The weights kept
    are those of the epoch with the best val accuracy (the earliest among equals), or
    of the last epoch when the val split is empty (then nothing stops early and the
    learning rate stays at ``lr``). The same data, arguments and seed give the same
    model (the global torch RNG is left as it was). ``on_epoch(epoch,
    val_accuracy)`` is called after each epoch (1-based; accuracy None for an empty
    val split), e.g. to show progress.

    Returns:
        (model in eval mode, info) where info holds ``test_accuracy`` and
        ``val_accuracy`` (of the kept weights; None for an empty split), ``epochs``
        (epochs run), ``best_epoch`` (1-based, the kept weights' epoch),
        ``stopped_early`` (True when patience ended training before ``epochs``),
        ``max_epochs``, ``patience``, ``epoch_images`` (train images per epoch),
        ``data_hash`` (the prepared data's content hash), ``levels``, ``shape``
        [C, H, W] and ``num_classes``.

    Raises:
        DataError: the prepared data has no labels, or no training image, or is
            missing/corrupt (from :func:`rnnexp.data.prepare.read_meta`).
    """
    if min(epochs, batch_size, epoch_images) < 1 or not lr > 0 or patience < 0:
        raise ValueError(
            f"epochs, batch_size, epoch_images and lr must be positive and patience >= 0: "
            f"{epochs}, {batch_size}, {epoch_images}, {lr}, {patience}"
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
    if len(arrays["train"]["images"]) == 0:
        raise DataError(f"prepared data {prepared_dir}: the train split is empty")
    c, h, w = (int(v) for v in meta["shape"])
    levels, num_classes = int(meta["levels"]), int(meta["num_classes"])

    # Level indices as float32 tensors once (not per batch); the model scales them.
    x_all = torch.from_numpy(arrays["train"]["images"]).float()  # (N, C, H, W)
    y_all = torch.from_numpy(arrays["train"]["labels"].astype(np.int64))  # (N,)
    val_x = torch.from_numpy(arrays["val"]["images"]).float()
    val_y = arrays["val"]["labels"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(c, h, w, levels, num_classes, hidden, feature_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.5, patience=0, threshold=0.0
    )  # threshold 0: "better" is strictly higher, as for the kept weights
    order_rng = np.random.default_rng([seed, 7])  # batch order, apart from torch's RNG
    epoch_batches = _epoch_batches(order_rng, len(x_all), epoch_images, batch_size)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    epoch = stale = 0
    while epoch < epochs and not (patience and stale >= patience):
        epoch += 1
        model.train()
        for batch in next(epoch_batches):
            loss = F.cross_entropy(model(x_all[batch]), y_all[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val_acc = accuracy(model, val_x, val_y)
        if on_epoch is not None:
            on_epoch(epoch, val_acc)
        if val_acc is None:
            continue
        plateau.step(val_acc)
        if best is None or val_acc > best[0]:
            best, stale = (val_acc, epoch, copy.deepcopy(model.state_dict())), 0
        else:
            stale += 1
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    info: dict[str, Any] = {
        "test_accuracy": accuracy(model, arrays["test"]["images"], arrays["test"]["labels"]),
        "val_accuracy": None if best is None else best[0],
        "epochs": epoch,
        "best_epoch": epoch if best is None else best[1],
        "stopped_early": epoch < epochs,
        "max_epochs": int(epochs),
        "patience": int(patience),
        "epoch_images": min(int(epoch_images), len(x_all)),
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
