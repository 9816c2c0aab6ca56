"""Generation commands: sample by class, complete / translate images."""

import json
import math
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from PIL import Image

from rnnexp.cli import main
from rnnexp.data.sources import load_images
from rnnexp.data.tasks import build_source
from rnnexp.evaluation.generation import (
    TaskInfo,
    class_labels,
    sample_picture,
    translate,
    triplet_grid,
)
from rnnexp.models.generator import GeneratorConfig, PixelRNN
from rnnexp.training.checkpoint import load_checkpoint

LEVELS = 5


def tiny(**kw) -> PixelRNN:
    torch.manual_seed(0)
    config = dict(levels=LEVELS, hidden=4, layers=1, head_hidden=4, input_kernel=3)
    return PixelRNN(GeneratorConfig(**{**config, **kw})).eval()


def save_checkpoint(path, generator, task="unconditional", shape=(1, 6, 6)):
    """A checkpoint in the train stage's format (what Lightning writes, reduced)."""
    state = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": {
                "generator": generator.config.to_dict(),
                "image_shape": list(shape),
            },
            "rnnexp": {"history": [], "run_id": None, "data": {"task": task}},
            "epoch": 0,
        },
        path,
    )
    return path


def targets(n=3, c=1, h=6, w=6):
    return np.random.default_rng(1).integers(0, LEVELS, (n, c, h, w)).astype(np.uint8)


def test_class_labels_cycle_through_classes():
    assert class_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_unconditional_completion_keeps_visible_pixels():
    x = targets()
    sources, out = translate(tiny(), x, TaskInfo("unconditional"), seed=3)
    assert out.shape == x.shape and out.max() < LEVELS
    np.testing.assert_array_equal(out[:, :, :3], x[:, :, :3])  # upper half given
    assert (sources[:, -1, 3:] == 0).all()  # lower half was hidden
    again = translate(tiny(), x, TaskInfo("unconditional"), seed=3)[1]
    np.testing.assert_array_equal(out, again)


def test_image_to_image_sources_are_built_like_prepare():
    x = targets()
    model = tiny(source_channels=2)
    sources, out = translate(model, x, TaskInfo("completion"), seed=0)
    expected = build_source("completion", x, LEVELS, np.random.default_rng([0, 1]))
    np.testing.assert_array_equal(sources, expected)
    assert out.shape == x.shape


def test_upscale_outputs_twice_the_source_size():
    small = targets(h=3, w=3)
    model = tiny(source_channels=1)
    sources, out = translate(model, None, TaskInfo("upscale"), sources=small, seed=0)
    assert out.shape == (3, 1, 6, 6)
    np.testing.assert_array_equal(sources, small)


def test_class_grid_has_one_column_per_class():
    model = tiny(num_classes=3)
    picture = sample_picture(model, TaskInfo("class"), {"images": targets(0)}, 6, 0, 1.0)
    tile = 2 + 6 * 6  # 6x6 images enlarged 6x, plus padding
    assert picture.size == (3 * tile + 2, 2 * tile + 2)


def test_triplet_grid_rows_are_source_output_target():
    s, o, t = (np.full((2, 1, 4, 4), v, np.uint8) for v in (0, 2, 4))
    grid = np.asarray(triplet_grid(s, o, t, LEVELS))
    tile = 2 + 4 * 8
    # first row: columns hold levels 0, 2, 4 -> grey 0, 128, 255
    assert [grid[2, 2 + k * tile] for k in range(3)] == [0, 128, 255]


def test_load_images_file_and_folder(tmp_path):
    Image.fromarray(np.full((10, 10, 3), [255, 0, 0], np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((12, 12), 7, np.uint8)).save(tmp_path / "b.png")
    one = load_images(tmp_path / "a.png", 6, 1)
    assert one.shape == (1, 6, 6, 1) and int(one[0, 0, 0, 0]) == 76  # luma of pure red
    both = load_images(tmp_path, 6, 3)
    assert both.shape == (2, 6, 6, 3) and (both[1] == 7).all()


def test_complete_command_writes_triplets(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "m.ckpt", tiny(source_channels=2), task="completion")
    for k in range(2):
        Image.fromarray(np.full((6, 6), 40 * k, np.uint8)).save(tmp_path / f"in{k}.png")
    out = tmp_path / "grid.png"
    args = ["complete", "--checkpoint", str(ckpt), "--input", str(tmp_path), "--out", str(out)]
    assert main(args + ["--params", "params.yaml"]) == 0
    tile = 2 + 6 * 6
    assert Image.open(out).size == (3 * tile + 2, 2 * tile + 2)
    assert "source | output | target" in capsys.readouterr().err  # the console: stderr


def test_sample_class_errors_are_clear(tmp_path, capsys):
    plain = save_checkpoint(tmp_path / "plain.ckpt", tiny())
    assert main(["sample", "--checkpoint", str(plain), "--class", "1"]) == 2
    assert "not a class-conditional model" in capsys.readouterr().err
    cond = save_checkpoint(tmp_path / "cond.ckpt", tiny(num_classes=3), task="class")
    assert main(["sample", "--checkpoint", str(cond), "--class", "3"]) == 2
    assert "--class must lie in 0..2" in capsys.readouterr().err
    out = tmp_path / "s.png"
    args = ["sample", "--checkpoint", str(cond), "--class", "2", "--n", "4", "--out", str(out)]
    assert main(args) == 0 and out.is_file()


@pytest.mark.parametrize("flag", [[], ["--as-source"]])
def test_complete_refuses_class_models(tmp_path, capsys, flag):
    cond = save_checkpoint(tmp_path / "cond.ckpt", tiny(num_classes=3), task="class")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "x.png")
    args = ["complete", "--checkpoint", str(cond), "--input", str(tmp_path / "x.png")]
    assert main(args + flag) == 2
    assert "class-conditional" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arch, task",
    [("row_lstm", "class"), ("diagonal_bilstm", "completion"), ("pixelcnn", "upscale")],
)
def test_rgb_image_folder_through_every_stage(tmp_path, monkeypatch, mlflow_uri, arch, task):
    """RGB images with class folders: fetch, prepare (task), tune (0), train, evaluate."""
    rng = np.random.default_rng(0)
    for k, colour in enumerate(([200, 30, 30], [30, 30, 200])):
        (tmp_path / "images" / f"class{k}").mkdir(parents=True)
        for n in range(20):
            noisy = np.clip(np.array(colour) + rng.integers(-30, 30, (6, 6, 3)), 0, 255)
            Image.fromarray(noisy.astype(np.uint8)).save(tmp_path / "images" / f"class{k}/{n}.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    overrides = helpers.tiny(
        "data.source=image-folder",
        f"data.path={tmp_path / 'images'}",
        "data.image_size=4",
        "data.levels=4",
        f"data.task={task}",
        f"model.arch={arch}",
        "model.hidden=6",  # RGB: hidden sizes divisible by the 3 channels
        "model.head_hidden=6",
        "tune.n_trials=0",
        "train.max_epochs=1",
        "train.batch_size=8",
        "evaluate.score_samples=8",
        "evaluate.classifier_epochs=2",
    )
    sets = helpers.set_args(overrides)
    params = ["--params", str(Path(__file__).parents[1] / "params.yaml")]
    for stage in ("fetch", "prepare", "tune", "classifier", "train", "evaluate"):
        assert main([stage, *params, *sets]) == 0, stage
    meta = json.loads((tmp_path / "data/prepared/meta.json").read_text())
    assert meta["shape"] == [3, 4, 4] and meta["task"] == task
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert math.isfinite(metrics["test"]["nll_nats"])
    loaded = load_checkpoint(tmp_path / "models/best.ckpt")
    assert loaded.generator.config.channels == 3
    assert loaded.generator.config.num_classes == (2 if task == "class" else 0)
    assert Image.open(tmp_path / "reports/samples.png").mode == "RGB"
    # sample scores: classes asked for (class), the sources' labels (image-to-image)
    sample = metrics["sample"]
    test_images = meta["splits"]["test"]
    assert sample["samples"] == (8 if task == "class" else min(8, test_images))
    assert math.isfinite(sample["frechet"]) and math.isfinite(metrics["baseline"]["frechet"])
    accuracy = "class_accuracy" if task == "class" else "translation_accuracy"
    assert 0 <= sample[accuracy] <= 1
    if task == "class":
        assert set(sample["per_class_accuracy"]) == {"0", "1"}
        mean = sum(sample["per_class_accuracy"].values()) / 2  # 4 samples of each class
        assert sample["class_accuracy"] == pytest.approx(mean)
    with Image.open(tmp_path / "reports/completions.png") as grid:
        rows = min(4, test_images)  # evaluate.n_samples test images, one per row
        assert grid.size == (3 * 34 + 2, rows * 34 + 2)  # 4x4 tiles enlarged to 32 px
