"""Evaluation: test likelihood beside a baseline, sample-quality scores, pictures.

``evaluate_checkpoint`` is pure (no files written, no MLflow); the stage entry point
in ``cli.py`` writes its results and logs them into the model's MLflow run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rnnexp.checkpoint import check_fits_data, load_checkpoint
from rnnexp.classifier import ClassifierUnavailable, SmallCNN, load_classifier
from rnnexp.config import EvaluateParams
from rnnexp.data.prepare import read_arrays, read_meta, read_split
from rnnexp.data.tasks import source_to_float, visible_mask
from rnnexp.errors import RnnexpError
from rnnexp.generate import (
    TaskInfo,
    class_labels,
    generate,
    sample_picture,
    source_preview,
    translate,
    triplet_grid,
)
from rnnexp.models.generator import PixelRNN
from rnnexp.scores import (
    classifier_features,
    frechet_distance,
    independent_pixel_samples,
    pixel_histograms,
    sample_scores,
)
from rnnexp.threads import torch_threads


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """bits/dim = nats / (pixels x channels x ln 2)."""
    return nats_per_image / (dims * math.log(2))


def independent_pixel_nll(train: np.ndarray, test: np.ndarray, levels: int) -> float:
    """Mean test NLL (nats/image) of a per-pixel, per-channel categorical fit on ``train``.

    Each (channel, row, column) gets its own histogram of levels over the training
    images (:func:`rnnexp.scores.pixel_histograms`, add-one smoothed so unseen levels
    keep finite NLL).
    """
    log_probs = pixel_histograms(train, levels)  # (dims, levels)
    dims = len(log_probs)
    flat_test = test.reshape(test.shape[0], dims).astype(np.int64)
    nll = -log_probs[np.arange(dims)[None, :], flat_test].sum(axis=1)
    return float(nll.mean())


@torch.no_grad()
def pixel_nll(
    generator: torch.nn.Module,
    images: np.ndarray,
    batch_size: int,
    labels: np.ndarray | None = None,
    source: np.ndarray | None = None,
) -> np.ndarray:
    """NLL in nats of every sub-pixel (N, C, H, W) given all before it (and conditioning).

    ``labels`` (N,) and ``source`` (N, S, Hs, Ws) float in [-1, 1] are the
    conditioning inputs of conditional generators.
    """
    generator.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        x = torch.from_numpy(images[part].astype(np.int64))
        cond = {}
        if labels is not None:
            cond["labels"] = torch.from_numpy(labels[part].astype(np.int64))
        if source is not None:
            cond["source"] = torch.from_numpy(source[part])
        logits = generator(x, **cond)  # (B, L, C, H, W)
        parts.append(F.cross_entropy(logits, x, reduction="none").double().numpy())
    return np.concatenate(parts)


def model_nll(
    generator: torch.nn.Module,
    images: np.ndarray,
    batch_size: int,
    labels: np.ndarray | None = None,
    source: np.ndarray | None = None,
) -> float:
    """Mean NLL in nats/image of level-index images (N, C, H, W) under the generator."""
    nll = pixel_nll(generator, images, batch_size, labels, source)
    return float(nll.sum(axis=(1, 2, 3)).mean())


def hidden_region(config: Any, task: TaskInfo, arrays: dict) -> np.ndarray | None:
    """Where completion is scored (N, 1, H, W), True = hidden; None if not exact here.

    Under raster order the NLL of the hidden lower half given the visible upper half
    is exact for any generator: it is the sum of the lower half's per-pixel NLLs. A
    completion model conditioned on a source sees the visible part of any region.
    """
    images = arrays["images"]
    if config.source_channels:
        if task.task != "completion":
            return None
        return ~visible_mask(arrays["source"])
    if config.num_classes:
        return None
    hidden = np.zeros((len(images), 1, *images.shape[2:]), dtype=bool)
    hidden[:, :, images.shape[2] // 2 :] = True
    return hidden


def heat_map(per_pixel: np.ndarray, scale: int = 16) -> Image.Image:
    """A (H, W) map as a black-red-yellow-white picture, each pixel ``scale`` wide."""
    t = (per_pixel - per_pixel.min()) / max(float(np.ptp(per_pixel)), 1e-12)
    rgb = np.clip(np.stack([3 * t, 3 * t - 1, 3 * t - 2], axis=-1), 0, 1)  # (H, W, 3)
    pixels = np.rint(rgb * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
    return Image.fromarray(pixels, mode="RGB")


def conditioning_arrays(config: Any, arrays: dict, levels: int) -> dict[str, np.ndarray]:
    """The ``labels`` / ``source`` arrays a generator with ``config`` is conditioned on."""
    cond = {}
    if config.num_classes:
        cond["labels"] = arrays["labels"]
    if config.source_channels:
        cond["source"] = source_to_float(arrays["source"], levels)
    return cond


def _in_chunks(n: int, size: int, make: Callable[[slice, int], np.ndarray]) -> np.ndarray:
    """``make(part, chunk_index)`` over ``range(n)`` in chunks of ``size``, concatenated."""
    return np.concatenate(
        [make(slice(s, min(s + size, n)), i) for i, s in enumerate(range(0, n, size))]
    )


def model_outputs(
    generator: PixelRNN, task: TaskInfo, arrays: dict, params: EvaluateParams
) -> tuple[np.ndarray, np.ndarray | None]:
    """What the generator makes, for scoring: (images (N, C, H, W) uint8, wanted labels).

    From noise: ``params.score_samples`` samples (one class after the other for a
    class-conditional model; the labels are the classes asked for). Image-to-image:
    the outputs for the first ``score_samples`` sources of ``arrays`` (a split); the
    labels are the sources' labels where the data has labels. Sampled with the
    cached sampler in chunks of ``params.batch_size``, reproducibly by ``params.seed``.
    """
    config = generator.config
    size, seed, temperature = params.batch_size, params.seed, params.temperature
    if config.source_channels:
        n = min(params.score_samples, len(arrays["source"]))
        sources = arrays["source"][:n]

        def make(part: slice, i: int) -> np.ndarray:
            return translate(
                generator, None, task, sources=sources[part], seed=seed + i, temperature=temperature
            )[1]

        return _in_chunks(n, size, make), arrays.get("labels", [None] * n)[:n]
    n = params.score_samples
    _, h, w = arrays["images"].shape[1:]
    labels = class_labels(n, config.num_classes) if config.num_classes else None

    def sample(part: slice, i: int) -> np.ndarray:
        wanted = labels[part] if labels is not None else None
        images = generate(
            generator,
            part.stop - part.start,
            h,
            w,
            seed=seed + i,
            temperature=temperature,
            labels=wanted,
        )
        return images.numpy().astype(np.uint8)

    return _in_chunks(n, size, sample), None if labels is None else labels.numpy()


def completions(
    generator: PixelRNN, task: TaskInfo, arrays: dict, n: int, seed: int, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of ``arrays`` as the generator completes or translates them.

    A generator from noise draws the lower halves (upper halves kept; a
    class-conditional one as the image's class); an image-to-image generator
    translates the sources. Returns (sources (n, S, Hs, Ws), outputs (n, C, H, W)).
    """
    if generator.config.source_channels:
        sources = arrays["source"][:n]
        return translate(generator, None, task, sources=sources, seed=seed, temperature=temperature)
    labels = arrays["labels"][:n] if generator.config.num_classes else None
    return translate(
        generator,
        arrays["images"][:n],
        TaskInfo("completion", "lower_half", task.noise_level),
        seed=seed,
        temperature=temperature,
        labels=labels,
    )


def completion_picture(
    generator: PixelRNN, task: TaskInfo, arrays: dict, n: int, seed: int, temperature: float
) -> Image.Image:
    """Rows of source | output | target for the first ``n`` images of ``arrays``."""
    sources, outputs = completions(generator, task, arrays, n, seed, temperature)
    targets = arrays["images"][: len(outputs)]
    preview = source_preview(sources, *targets.shape[1:])
    return triplet_grid(preview, outputs, targets, generator.config.levels)


def quality_scores(
    generator: PixelRNN,
    task: TaskInfo,
    classifier: SmallCNN,
    classifier_info: dict,
    test_arrays: dict,
    train_images: np.ndarray,
    params: EvaluateParams,
) -> dict[str, dict[str, Any]]:
    """Classifier-based scores of a generator's outputs, as metrics groups.

    ``sample``: Fréchet distance between the classifier's features of real test
    images and of the generator's outputs (:func:`model_outputs`), and the accuracy
    of the classes asked for (class-conditional) or of the sources' labels
    (image-to-image). ``baseline``: the Fréchet distance of as many samples of the
    independent-per-pixel model. ``classifier``: its test accuracy and the Fréchet
    distance of real train vs real test images (the floor a perfect generator would
    reach with this many images). ``completion`` (unconditional generators on
    labelled data): accuracy of test images whose lower half the generator drew.
    """
    real = test_arrays["images"]
    outputs, wanted = model_outputs(generator, task, test_arrays, params)
    has_labels = wanted is not None and all(label is not None for label in wanted)
    scores = sample_scores(
        classifier, real, outputs, np.asarray(wanted) if has_labels else None, params.batch_size
    )
    sample: dict[str, Any] = {"frechet": scores["frechet"], "samples": len(outputs)}
    if has_labels:
        name = "translation_accuracy" if generator.config.source_channels else "class_accuracy"
        sample[name] = scores["class_accuracy"]
        if not generator.config.source_channels:
            per_class = scores["per_class_accuracy"]
            sample["per_class_accuracy"] = {
                str(k): v for k, v in enumerate(per_class) if v is not None
            }
    baseline_images = independent_pixel_samples(
        train_images, generator.config.levels, len(outputs), params.seed
    )
    real_features = classifier_features(classifier, real, params.batch_size)
    groups: dict[str, dict[str, Any]] = {
        "sample": sample,
        "baseline": {
            "frechet": frechet_distance(
                real_features, classifier_features(classifier, baseline_images, params.batch_size)
            )
        },
        "classifier": {
            "test_accuracy": classifier_info.get("test_accuracy"),
            "real_train_frechet": frechet_distance(
                real_features,
                classifier_features(classifier, train_images[: len(outputs)], params.batch_size),
            ),
        },
    }
    config = generator.config
    if not config.source_channels and not config.num_classes and "labels" in test_arrays:
        n = min(params.score_samples, len(real))
        _, completed = completions(generator, task, test_arrays, n, params.seed, params.temperature)
        predicted = sample_scores(classifier, real, completed, test_arrays["labels"][:n])
        groups["completion"] = {"accuracy": predicted["class_accuracy"]}
    return groups


def read_scorer(path: str | Path | None, meta: dict) -> tuple[SmallCNN | None, dict, str]:
    """The scoring classifier at ``path`` for the data of ``meta``: (model, info, note).

    ``model`` is None when there is none to use; ``note`` then says why (no path,
    data without labels). A classifier of other data is an error: its scores would
    be meaningless.
    """
    if path is None:
        return None, {}, "no classifier given"
    if not Path(path).is_file():
        return None, {}, f"{path} not found (run the classifier stage: dvc repro classifier)"
    try:
        model, info = load_classifier(path)
    except ClassifierUnavailable as exc:
        return None, {}, str(exc)
    if info.get("data_hash") != meta["content_hash"]:
        raise RnnexpError(
            f"{path}: the classifier was trained on other data (hash "
            f"{str(info.get('data_hash'))[:12]}, the prepared data is "
            f"{meta['content_hash'][:12]}); rerun its stage (dvc repro classifier)"
        )
    return model, info, ""


def flat_metrics(groups: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics groups as MLflow keys ``group/key[/subkey]``; None values left out."""
    flat: dict[str, float] = {}
    for key, value in groups.items():
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{prefix}{key}/"))
        elif value is not None:
            flat[f"{prefix}{key}"] = float(value)
    return flat


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, float]]  # nested by group, as DVC metrics
    samples: Image.Image
    completions: Image.Image
    nll_heat_map: Image.Image
    curve: list[dict[str, float]]
    run_id: str | None
    notes: list[str]


def evaluate_checkpoint(
    checkpoint: str | Path,
    prepared_dir: str | Path,
    params: EvaluateParams,
    classifier: str | Path | None = None,
) -> Evaluation:
    """Score a checkpoint on the test split and draw its pictures.

    Likelihood always; with a ``classifier`` file (the classifier stage's output)
    and ``params.score_samples`` > 0 also the sample-quality scores of
    :func:`quality_scores`. ``Evaluation.notes`` says what was skipped and why.
    Torch uses ``params.threads`` CPU threads meanwhile (0: its default).
    """
    with torch_threads(params.threads):
        return _evaluate(checkpoint, prepared_dir, params, classifier)


def _evaluate(
    checkpoint: str | Path,
    prepared_dir: str | Path,
    params: EvaluateParams,
    classifier: str | Path | None,
) -> Evaluation:
    loaded = load_checkpoint(checkpoint)
    meta = read_meta(prepared_dir)
    check_fits_data(loaded, meta, checkpoint, prepared_dir)
    data_shape = (meta["channels"], meta["height"], meta["width"])
    config = loaded.generator.config
    test_arrays = read_arrays(prepared_dir, "test", meta)
    test = test_arrays["images"]
    train, _ = read_split(prepared_dir, "train", meta)
    if len(test) == 0:
        raise RnnexpError(
            f"{Path(prepared_dir) / 'test.npz'}: the test split is empty; set "
            "data.test_fraction above 0 and rerun the prepare stage"
        )
    dims = math.prod(data_shape)
    cond = conditioning_arrays(config, test_arrays, meta["levels"])
    per_pixel = pixel_nll(loaded.generator, test, params.batch_size, **cond)  # (N, C, H, W)
    nll = float(per_pixel.sum(axis=(1, 2, 3)).mean())
    baseline = independent_pixel_nll(train, test, meta["levels"])
    task = TaskInfo.from_data_info(loaded.data)
    picture = sample_picture(
        loaded.generator, task, test_arrays, params.n_samples, params.seed, params.temperature
    )
    metrics: dict[str, dict[str, Any]] = {
        "test": {"nll_nats": nll, "bpd": bits_per_dim(nll, dims), "images": len(test)},
        "baseline": {"nll_nats": baseline, "bpd": bits_per_dim(baseline, dims)},
        "train": {"epochs": len(loaded.history), "checkpoint_epoch": loaded.epoch},
    }
    hidden = hidden_region(config, task, test_arrays)
    if hidden is not None:
        hidden_dims = hidden.sum(axis=(1, 2, 3)) * data_shape[0]  # sub-pixels per image
        hidden_nll = (per_pixel * hidden).sum(axis=(1, 2, 3))
        metrics["completion"] = {
            "hidden_nll_nats": float(hidden_nll.mean()),
            "hidden_bpd": float((hidden_nll / (hidden_dims * math.log(2))).mean()),
        }
    notes = []
    scorer, scorer_info, why = read_scorer(classifier, meta)
    if params.score_samples == 0:
        notes.append("sample scores off (evaluate.score_samples: 0)")
    elif scorer is None:
        notes.append(f"sample scores skipped: {why}")
    else:
        scores = quality_scores(
            loaded.generator, task, scorer, scorer_info, test_arrays, train, params
        )
        for group, values in scores.items():
            metrics.setdefault(group, {}).update(values)
    completion_grid = completion_picture(
        loaded.generator,
        task,
        test_arrays,
        min(params.n_samples, 16),
        params.seed,
        params.temperature,
    )
    return Evaluation(
        metrics=metrics,
        samples=picture,
        completions=completion_grid,
        notes=notes,
        nll_heat_map=heat_map(per_pixel.mean(axis=(0, 1))),
        curve=loaded.history,
        run_id=loaded.run_id,
    )
