"""Evaluation figures, evaluate_checkpoint on a trained checkpoint, and safe loading."""

from __future__ import annotations

import ast
import io
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnnexp.config import EvaluateParams
from rnnexp.data.prepare import prepare, read_arrays, read_meta, read_split, write_prepared
from rnnexp.errors import RnnexpError
from rnnexp.evaluation.classifier import train_classifier
from rnnexp.evaluation.generation import TaskInfo, generate
from rnnexp.evaluation.likelihood import (
    bits_per_dim,
    independent_pixel_nll,
    model_nll,
    model_outputs,
)
from rnnexp.evaluation.sample_quality import quality_scores
from rnnexp.evaluation.scores import (
    classifier_features,
    frechet_distance,
    independent_pixel_samples,
)
from rnnexp.models.generator import GeneratorConfig, PixelRNN
from rnnexp.stages.evaluate import flat_metrics
from rnnexp.stages.evaluate import run as evaluate_checkpoint
from rnnexp.training.checkpoint import load_checkpoint

# --------------------------------------------------------------------------- figures


def test_independent_pixel_nll_hand_computed():
    # 3 training images of 1x1x2 pixels, 3 levels. With add-one smoothing:
    #   pixel 0 saw 0, 0, 1 -> counts (1+2, 1+1, 1+0) = (3, 2, 1) / 6
    #   pixel 1 saw 1, 2, 1 -> counts (1+0, 1+2, 1+1) = (1, 3, 2) / 6
    train = np.array([[0, 1], [0, 2], [1, 1]], np.uint8).reshape(3, 1, 1, 2)
    test = np.array([[0, 0], [1, 2]], np.uint8).reshape(2, 1, 1, 2)
    # image (0, 0): -log(3/6) - log(1/6) = log 12;  image (1, 2): -log(2/6) - log(2/6) = log 9
    expected = (math.log(12) + math.log(9)) / 2
    assert independent_pixel_nll(train, test, levels=3) == pytest.approx(expected, rel=1e-12)


def test_independent_pixel_nll_keeps_unseen_levels_finite_and_uses_levels():
    train = np.zeros((4, 1, 1, 1), np.uint8)
    test = np.full((1, 1, 1, 1), 4, np.uint8)  # never seen in training
    # counts (1+4, 1, 1, 1, 1) / 9 over 5 levels -> -log(1/9)
    assert independent_pixel_nll(train, test, levels=5) == pytest.approx(math.log(9))
    # and over 10 levels the smoothing mass grows: (1+4, 1 x 9) / 14
    assert independent_pixel_nll(train, test, levels=10) == pytest.approx(math.log(14))


def test_bits_per_dim():
    assert bits_per_dim(3 * 64 * math.log(2), 64) == pytest.approx(3.0, rel=1e-12)
    assert bits_per_dim(10.0, 5) == pytest.approx(10.0 / (5 * math.log(2)), rel=1e-12)


def test_model_nll_is_mean_of_generator_nll_over_batches():
    torch.manual_seed(0)
    generator = PixelRNN(GeneratorConfig(levels=5, hidden=4, layers=1, head_hidden=8))
    images = np.random.default_rng(0).integers(0, 5, size=(7, 1, 5, 5)).astype(np.uint8)
    with torch.no_grad():
        per_image = generator.nll(torch.from_numpy(images.astype(np.int64)))
    assert per_image.shape == (7,)
    expected = float(per_image.mean())
    # a batch size that does not divide 7, one that does, and one larger than the data
    for batch_size in (3, 7, 100):
        assert model_nll(generator, images, batch_size) == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- evaluate_checkpoint


@pytest.fixture(scope="module")
def evaluation(trained, prepared_dir):
    result, params = trained
    return evaluate_checkpoint(result.best_checkpoint, prepared_dir, params.evaluate)


def test_evaluate_checkpoint_metrics(trained, prepared_dir, evaluation):
    result, params = trained
    metrics = evaluation.metrics
    assert set(metrics) == {"test", "baseline", "train", "completion"}
    test, _ = read_split(prepared_dir, "test")
    train, _ = read_split(prepared_dir, "train")
    dims = 64
    loaded = load_checkpoint(result.best_checkpoint)
    with torch.no_grad():
        nll = float(loaded.generator.nll(torch.from_numpy(test.astype(np.int64))).mean())
    assert metrics["test"]["images"] == len(test) == read_meta(prepared_dir)["splits"]["test"]
    assert metrics["test"]["nll_nats"] == pytest.approx(nll, rel=1e-6)
    assert metrics["test"]["bpd"] == pytest.approx(nll / (dims * math.log(2)), rel=1e-6)
    baseline = independent_pixel_nll(train, test, 17)
    assert metrics["baseline"]["nll_nats"] == pytest.approx(baseline, rel=1e-12)
    assert metrics["baseline"]["bpd"] == pytest.approx(baseline / (dims * math.log(2)))
    # completion: the lower half's NLL given the upper half is part of the image NLL
    hidden = metrics["completion"]["hidden_nll_nats"]
    assert 0 < hidden < metrics["test"]["nll_nats"]
    assert metrics["completion"]["hidden_bpd"] == pytest.approx(hidden / (32 * math.log(2)))
    # both beat a uniform guess over 17 levels
    uniform = dims * math.log(17)
    assert metrics["test"]["nll_nats"] < uniform and metrics["baseline"]["nll_nats"] < uniform
    # the evaluated checkpoint is the best one: its epoch and its history
    best_epoch = result.metrics["best/epoch"]
    assert metrics["train"] == {"epochs": best_epoch + 1, "checkpoint_epoch": best_epoch}
    assert evaluation.curve == loaded.history
    assert evaluation.run_id == result.run_id


def test_evaluation_uses_evaluate_threads_and_restores_the_setting(
    trained, prepared_dir, monkeypatch
):
    import rnnexp.stages.evaluate

    seen = []
    scored = rnnexp.stages.evaluate.pixel_nll

    def probe(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return scored(*args, **kwargs)

    monkeypatch.setattr(rnnexp.stages.evaluate, "pixel_nll", probe)
    result, params = trained
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that 1 thread differs from the setting outside, on any machine
    try:
        one = params.evaluate.model_copy(update={"threads": 1, "score_samples": 0})
        evaluate_checkpoint(result.best_checkpoint, prepared_dir, one)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_evaluation_does_not_load_lightning():
    # Lightning's import costs ~3.5 s (benchmarks/startup.py); evaluate, sample and
    # complete only read checkpoints, so they must not pay it.
    modules = "rnnexp.cli, rnnexp.stages.evaluate, rnnexp.commands.sample, rnnexp.commands.complete"
    code = f"import sys, {modules}; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = ast.literal_eval(out.stdout)
    assert "rnnexp.stages.evaluate" in loaded and "torch" in loaded  # the probe saw the imports
    assert not [name for name in loaded if name.startswith("lightning")]


def test_evaluate_checkpoint_sample_grid(evaluation, trained):
    _, params = trained
    assert params.evaluate.n_samples == 4
    assert evaluation.samples.size == (2 * 34 + 2, 2 * 34 + 2)  # 2x2 tiles of 32 px, pad 2
    assert evaluation.samples.mode == "L"


def test_checkpoint_for_other_levels_is_refused(trained, digits_subsample, tmp_path):
    result, params = trained
    other = tmp_path / "prepared5"
    write_prepared(prepare(digits_subsample, 5, 0, 0.2, 0.2), other)
    with pytest.raises(RnnexpError) as info:
        evaluate_checkpoint(result.best_checkpoint, other, params.evaluate)
    message = str(info.value)
    assert "17 levels" in message and "5 levels" in message
    assert str(result.best_checkpoint) in message and str(other) in message


def test_empty_test_split_is_refused(trained, digits_subsample, tmp_path):
    result, params = trained
    no_test = tmp_path / "prepared"
    write_prepared(prepare(digits_subsample, 17, 0, 0.2, 0.0), no_test)
    with pytest.raises(RnnexpError, match="test split is empty") as info:
        evaluate_checkpoint(result.best_checkpoint, no_test, params.evaluate)
    assert str(no_test / "test.npz") in str(info.value)


# --------------------------------------------------------------------------- load_checkpoint


def test_load_checkpoint_rebuilds_the_trained_generator(trained):
    result, _ = trained
    loaded = load_checkpoint(result.last_checkpoint)
    raw = torch.load(result.last_checkpoint, weights_only=True)
    assert loaded.generator.config == GeneratorConfig(
        channels=1, levels=17, hidden=4, layers=1, kernel=3, input_kernel=3, head_hidden=8
    )
    assert not loaded.generator.training
    for name, tensor in loaded.generator.state_dict().items():
        assert torch.equal(tensor, raw["state_dict"][f"generator.{name}"])


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "nope.ckpt"
    with pytest.raises(RnnexpError, match="not found") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"hello, I am not a checkpoint\n", b"epoch: 3\n"])
def test_text_file_is_refused(tmp_path, content):
    path = tmp_path / "notes.ckpt"
    path.write_bytes(content)
    with pytest.raises(RnnexpError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_is_refused(trained, tmp_path, keep):
    result, _ = trained
    blob = result.best_checkpoint.read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(RnnexpError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


class _RunsCode:
    """Unpickling this would run a shell command (if the loader allowed it)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("wrap", ["checkpoint", "bare"])
def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path, wrap):
    marker = tmp_path / "PWNED"
    payload = _RunsCode(marker)
    if wrap == "checkpoint":  # looks like ours: state_dict and hyper_parameters
        payload = {"state_dict": {}, "hyper_parameters": payload}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = tmp_path / "evil.ckpt"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(RnnexpError, match="refused") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    assert shutil.which("touch")  # the payload would have worked had it run


def test_foreign_and_mismatched_checkpoints_are_refused(trained, tmp_path):
    result, _ = trained
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(RnnexpError, match="not an rnnexp checkpoint"):
        load_checkpoint(foreign)
    raw = torch.load(result.best_checkpoint, weights_only=True)
    raw["hyper_parameters"]["generator"]["hidden"] = 8  # weights are for hidden=4
    mismatched = tmp_path / "mismatched.ckpt"
    torch.save(raw, mismatched)
    with pytest.raises(RnnexpError, match="does not match the generator") as info:
        load_checkpoint(mismatched)
    assert str(mismatched) in str(info.value)
    del raw["hyper_parameters"]["image_shape"]
    raw["hyper_parameters"]["generator"]["hidden"] = 4
    torch.save(raw, mismatched)
    with pytest.raises(RnnexpError, match="does not match the generator"):
        load_checkpoint(mismatched)


def test_pixel_nll_sums_to_image_nll_and_hidden_region_is_lower_half():
    from rnnexp.evaluation.generation import TaskInfo
    from rnnexp.evaluation.likelihood import hidden_region, pixel_nll
    from rnnexp.models.generator import GeneratorConfig, PixelRNN

    torch.manual_seed(0)
    model = PixelRNN(GeneratorConfig(levels=5, hidden=4, layers=1, head_hidden=4)).eval()
    images = np.random.default_rng(0).integers(0, 5, (7, 1, 6, 4)).astype(np.uint8)
    per_pixel = pixel_nll(model, images, batch_size=3)
    with torch.no_grad():
        expected = model.nll(torch.from_numpy(images.astype(np.int64))).double().numpy()
    np.testing.assert_allclose(per_pixel.sum(axis=(1, 2, 3)), expected, rtol=1e-6)
    hidden = hidden_region(model.config, TaskInfo(), {"images": images})
    assert hidden.shape == (7, 1, 6, 4)
    assert not hidden[:, :, :3].any() and hidden[:, :, 3:].all()
    classy = PixelRNN(GeneratorConfig(levels=5, hidden=4, layers=1, head_hidden=4, num_classes=2))
    assert hidden_region(classy.config, TaskInfo("class"), {"images": images}) is None


def test_heat_map_runs_from_black_to_white():
    from rnnexp.evaluation.likelihood import heat_map

    picture = np.asarray(heat_map(np.array([[0.0, 1.0], [2.0, 3.0]]), scale=4))
    assert picture.shape == (8, 8, 3)
    assert picture[0, 0].tolist() == [0, 0, 0] and picture[7, 7].tolist() == [255, 255, 255]
    assert picture[0, 4].tolist() == [255, 0, 0]  # a third of the way: red


# --------------------------------------------------------------------------- sample scores


def test_flat_metrics_names_nested_groups_and_drops_missing_values():
    groups = {"sample": {"frechet": 2, "per_class_accuracy": {"0": 0.5}}, "x": {"gone": None}}
    assert flat_metrics(groups) == {"sample/frechet": 2.0, "sample/per_class_accuracy/0": 0.5}


def test_model_outputs_ask_each_class_in_turn_and_repeat_by_seed():
    torch.manual_seed(0)
    config = GeneratorConfig(levels=5, hidden=4, layers=1, head_hidden=4, num_classes=3)
    generator = PixelRNN(config).eval()
    arrays = {"images": np.zeros((2, 1, 4, 4), np.uint8)}
    params = EvaluateParams(score_samples=7, batch_size=3, seed=1)
    images, labels = model_outputs(generator, TaskInfo(), arrays, params)
    assert images.shape == (7, 1, 4, 4) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    again, _ = model_outputs(generator, TaskInfo(), arrays, params)
    assert np.array_equal(images, again)
    other, _ = model_outputs(generator, TaskInfo(), arrays, params.model_copy(update={"seed": 2}))
    assert not np.array_equal(images, other)
    # chunk 0 (seed 1) is what the cached sampler draws for those classes and seed
    first = generate(generator, 3, 4, 4, seed=1, labels=torch.tensor([0, 1, 2]))
    assert np.array_equal(images[:3], first.numpy())


def test_quality_scores_put_model_and_baseline_on_one_scale(trained, prepared_dir):
    result, params = trained
    classifier, info = train_classifier(prepared_dir, epochs=20, batch_size=16, seed=0)
    loaded = load_checkpoint(result.best_checkpoint)
    meta = read_meta(prepared_dir)
    test = read_arrays(prepared_dir, "test", meta)
    train, _ = read_split(prepared_dir, "train", meta)
    settings = params.evaluate.model_copy(update={"score_samples": 50})
    groups = quality_scores(loaded.generator, TaskInfo(), classifier, info, test, train, settings)
    real = classifier_features(classifier, test["images"])
    samples, _ = model_outputs(loaded.generator, TaskInfo(), test, settings)
    assert groups["sample"] == {
        "frechet": pytest.approx(frechet_distance(real, classifier_features(classifier, samples))),
        "samples": 50,
    }
    baseline = independent_pixel_samples(train, 17, 50, settings.seed)
    assert groups["baseline"]["frechet"] == pytest.approx(
        frechet_distance(real, classifier_features(classifier, baseline))
    )
    assert groups["classifier"]["test_accuracy"] == info["test_accuracy"]
    # the floor: real train images are much closer to the test images than the baseline
    assert groups["classifier"]["real_train_frechet"] < groups["baseline"]["frechet"] / 2
    assert 0 <= groups["completion"]["accuracy"] <= 1
