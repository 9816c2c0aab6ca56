"""The logged pyfunc model of image-to-image generators: completion, denoise, upscale.

For each task a tiny generator is trained (1 epoch) on the digits subsample prepared
for that task, by ``run_training`` as the train stage does; the model it logs is
loaded by ``models:/<model id>`` and asked to complete or translate a test image.
Its answer must be what rnnexp's own code (``evaluation.generation.translate``, used
by ``rnnexp complete`` and the evaluate stage) gives for the same checkpoint, image
and seed. Bad images get one clear RnnexpError naming the row and the fault.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from rnnexp.data.prepare import prepare, write_prepared
from rnnexp.data.prepared import read_split
from rnnexp.data.tasks import build_source
from rnnexp.errors import RnnexpError
from rnnexp.evaluation.generation import TaskInfo, translate
from rnnexp.training.checkpoint import load_checkpoint
from rnnexp.training.fit import run_training

TASKS = ("completion", "denoise", "upscale")
LEVELS = 17  # the digits' levels (prepared_dir and the fixtures below)
SHAPE = (1, 8, 8)


def pyfunc_of(client, run_id: str):
    """The logged model of run ``run_id``, loaded as MLflow serves it."""
    model_id = client.get_run(run_id).data.tags["rnnexp.model_id"]
    return mlflow.pyfunc.load_model(f"models:/{model_id}")


@pytest.fixture(scope="module")
def task_model(store, digits_subsample, tiny_params, tmp_path_factory):
    """``task_model(task)``: (pyfunc model, best checkpoint, test images (N, C, H, W)), cached."""
    cache: dict[str, tuple] = {}

    def make(task: str):
        if task not in cache:
            root = tmp_path_factory.mktemp(task)
            # lower_half occlusion (prepare's and params.yaml's default): rows 4..7 hidden
            write_prepared(prepare(digits_subsample, LEVELS, 0, 0.2, 0.2, task=task), root / "p")
            params = tiny_params(f"data.task={task}", "train.max_epochs=1")
            result = run_training(params, root / "p", root / "models")
            images, _ = read_split(root / "p", "test")
            cache[task] = (pyfunc_of(store, result.run_id), result.best_checkpoint, images)
        return cache[task]

    return make


def ask(model, image: np.ndarray, **row) -> np.ndarray:
    """predict() for one request row with ``image``: its images (n, C, H, W) as int64."""
    out = model.predict(pd.DataFrame([{"n": 1, **row, "image": image.astype(int).tolist()}]))
    return np.array([np.array(pd.Series(im).tolist()) for im in out["image"]], dtype=np.int64)


@pytest.mark.parametrize("task", TASKS)
def test_predict_equals_rnnexp_translation(task_model, task):
    model, checkpoint, images = task_model(task)
    image = images[0]  # (C, H, W) uint8 level indices
    out = model.predict(
        pd.DataFrame([{"n": 3, "seed": 5, "temperature": 1.0, "image": image.tolist()}])
    )
    assert list(out["levels"]) == [LEVELS] * 3
    assert list(out["class"]) == [-1] * 3 and list(out["seed"]) == [5] * 3
    got = ask(model, image, n=3, seed=5)
    assert got.shape == (3, *SHAPE)  # upscale too: the target's size, twice the source's
    assert got.min() >= 0 and got.max() <= LEVELS - 1
    assert got.tolist() == [pd.Series(im).tolist() for im in out["image"]]  # same seed

    # rnnexp's own completion / translation of the same image, seed and checkpoint
    loaded = load_checkpoint(checkpoint)
    assert loaded.data["task"] == task
    targets = np.repeat(image[None], 3, axis=0)
    _, expected = translate(loaded.generator, targets, TaskInfo.from_data_info(loaded.data), seed=5)
    np.testing.assert_array_equal(got, expected)

    # another seed, other images; the n images of one request are drawn, not copied
    assert not np.array_equal(ask(model, image, n=3, seed=6), got)
    assert not (got == got[0]).all()


@pytest.mark.parametrize("task", TASKS)
def test_the_image_reaches_the_generator_as_its_task_source(task_model, task):
    # A 1-epoch model barely looks at its source (another image, same seed: same
    # output), so the equality above cannot show the image was used: watch what the
    # pyfunc's generator is conditioned on instead.
    model, _, images = task_model(task)
    image = images[0].astype(np.int64)  # (C, H, W)
    encoder = model.unwrap_python_model().loaded.generator.conditioning.encoder
    seen = []
    hook = encoder.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        ask(model, image, n=2, seed=5)
    finally:
        hook.remove()
    source = np.rint((seen[0].numpy() + 1) / 2 * (LEVELS - 1)).astype(int)  # [-1, 1] -> levels
    # built as the prepare stage builds sources, from a generator seeded by the seed
    targets = np.repeat(image[None], 2, axis=0).astype(np.uint8)
    rng = np.random.default_rng([5, 1])
    np.testing.assert_array_equal(source, build_source(task, targets, LEVELS, rng))
    if task == "completion":  # the image with rows 4..7 hidden (0), and the visibility flags
        assert source.shape == (2, 2, 8, 8)
        np.testing.assert_array_equal(source[:, 0, :4], np.repeat(image[None, 0, :4], 2, 0))
        assert (source[:, 0, 4:] == 0).all()
        assert (source[:, 1, :4] == LEVELS - 1).all() and (source[:, 1, 4:] == 0).all()
    elif task == "upscale":  # the 2x2 means, (1, 4, 4)
        means = np.rint(image.reshape(1, 4, 2, 4, 2).mean(axis=(2, 4)))
        np.testing.assert_array_equal(source, np.repeat(means[None], 2, 0))
    else:  # denoise: the image with noise, other noise in each copy
        assert source.shape == (2, *SHAPE)
        assert (source != image).any(axis=(1, 2, 3)).all() and (source[0] != source[1]).any()


def test_completion_keeps_the_visible_pixels_and_fills_the_hidden_ones(task_model):
    model, _, images = task_model("completion")
    image = images[0]
    first, second = ask(model, image, n=4, seed=1), ask(model, image, n=4, seed=2)
    assert not np.array_equal(first[:, :, 4:], second[:, :, 4:])  # the hidden lower half
    for out in (first, second):
        np.testing.assert_array_equal(out[:, :, :4], np.repeat(image[None, :, :4], 4, axis=0))


@pytest.mark.parametrize(
    "image, fault",
    [
        (np.zeros((1, 4, 4), int).tolist(), r"got shape \(1, 4, 4\)"),
        (np.zeros((2, 8, 8), int).tolist(), r"got shape \(2, 8, 8\)"),
        (np.full(SHAPE, LEVELS).tolist(), r"got levels 17\.\.17"),
        ([[[1, 2], [3]]], r"got a ragged or non-numeric list"),
    ],
    ids=["small", "channels", "level", "ragged"],
)
def test_bad_image_is_a_clear_error_naming_row_and_fault(task_model, image, fault):
    model, _, images = task_model("denoise")
    good = images[0].tolist()
    frame = pd.DataFrame([{"n": 1, "image": good}, {"n": 1, "image": image}])
    want = r"row 1: `image` must be a nested list \(C, H, W\) = \(1, 8, 8\) of levels 0\.\.16"
    with pytest.raises(RnnexpError, match=f"^{want}, {fault}$"):
        model.predict(frame)


def test_image_to_image_model_needs_an_image(task_model):
    model, _, _ = task_model("upscale")
    with pytest.raises(Exception, match=r"missing inputs \['image'\]"):  # MLflow's schema check
        model.predict(pd.DataFrame([{"n": 1, "seed": 0}]))


def test_image_for_a_model_that_takes_none_is_refused(store, trained):
    model = pyfunc_of(store, trained[0].run_id)  # unconditional (conftest's trained)
    image = np.zeros(SHAPE, int).tolist()
    with pytest.raises(RnnexpError, match=r"^row 0: .*data\.task unconditional.*takes no `image`"):
        model.predict(pd.DataFrame([{"n": 2, "seed": 0, "image": image}]))
    # without it, the same model still draws images; a missing image in a row of several too
    frame = pd.DataFrame([{"n": 2, "seed": 0}, {"n": 1, "seed": 1, "image": None}])
    assert len(model.predict(frame)) == 3
