"""Sample-quality scores of a generator: its outputs seen by the scoring classifier.

:func:`quality_scores` compares the classifier's features of real test images and of
the generator's outputs (Fréchet distance, class accuracy); :func:`read_scorer`
loads the classifier stage's output and checks it was trained on the same data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rnnexp.config import EvaluateParams
from rnnexp.errors import RnnexpError
from rnnexp.evaluation.classifier import ClassifierUnavailable, SmallCNN, load_classifier
from rnnexp.evaluation.generation import TaskInfo
from rnnexp.evaluation.likelihood import completions, model_outputs
from rnnexp.evaluation.scores import (
    classifier_features,
    frechet_distance,
    independent_pixel_samples,
    sample_scores,
)
from rnnexp.models.generator import PixelRNN


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
