"""Run names say what the run is (rnnexp.tracking._names): pure functions of params and tags."""

import pytest

from rnnexp.config import Params, with_overrides
from rnnexp.tracking._datasets import dataset_name
from rnnexp.tracking._names import short_float, stage_run_name, with_exp, with_note


def params(**overrides):
    return with_overrides(Params(), overrides, "test")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0085, "8.5e-3"),
        (0.001, "1e-3"),
        (0.00214, "2.1e-3"),
        (3e-5, "3e-5"),
        (0.5, "0.5"),
        (32.0, "32"),
        (0.0, "0"),
        (12345.0, "1.2e4"),
    ],
)
def test_short_float(value, text):
    assert short_float(value) == text


def test_train_name_names_arch_size_and_learning_rate():
    p = params(**{"model.arch": "row_lstm", "model.hidden": 48, "model.layers": 3})
    p = with_overrides(p, {"train.lr": 0.0085}, "test")
    assert stage_run_name("train", p, {}) == "train row_lstm h48x3 lr8.5e-3"


def test_trial_names_carry_the_trial_number_and_differ_by_params():
    a = params(**{"model.arch": "diagonal_bilstm", "model.hidden": 16, "model.layers": 1})
    b = with_overrides(a, {"train.lr": 0.0021}, "test")
    name_a = stage_run_name("trial", a, {"rnnexp.trial": "3"})
    name_b = stage_run_name("trial", b, {"rnnexp.trial": "4"})
    assert name_a.startswith("trial 3 diagonal_bilstm h16x1 lr")
    assert name_b == "trial 4 diagonal_bilstm h16x1 lr2.1e-3"


def test_other_stages_name_their_inputs():
    p = params(**{"data.source": "digits", "data.levels": 17})
    tags = {
        "rnnexp.study": "rnnexp-0123456789ab",
        "rnnexp.data_hash": "89abcdef0123456789",
        "rnnexp.model_run_id": "fedcba9876543210",
    }
    assert stage_run_name("prepare", p, tags) == "prepare digits 17 levels"
    assert stage_run_name("fetch", p, tags) == "fetch digits"
    assert stage_run_name("tune", p, tags) == "tune rnnexp-0123456789ab"
    assert stage_run_name("classifier", p, tags) == "classifier 89abcdef"
    assert stage_run_name("evaluate", p, tags) == "evaluate model fedcba98"
    assert stage_run_name("evaluate", p, {"rnnexp.model_run_id": "unknown"}) == "evaluate"
    completion = with_overrides(p, {"data.task": "completion"}, "test")
    assert stage_run_name("prepare", completion, {}) == "prepare digits 17 levels completion"


def test_experiment_suffix_and_notes():
    name = with_exp("train row_lstm h48x3 lr8.5e-3", "gawky-bump")
    assert name == "train row_lstm h48x3 lr8.5e-3 [exp gawky-bump]"
    assert with_exp(name, "gawky-bump") == name  # not twice
    assert with_exp("fetch digits", None) == "fetch digits"
    assert with_note(name, "pruned at epoch 5") == (
        "train row_lstm h48x3 lr8.5e-3 (pruned at epoch 5) [exp gawky-bump]"
    )
    assert with_note("trial 3", "pruned") == "trial 3 (pruned)"


def test_dataset_names():
    assert dataset_name("digits", {"levels": 17, "task": "unconditional"}) == "digits-17"
    assert dataset_name("idx", {"levels": 256, "task": "denoise"}) == "idx-256-denoise"
    assert dataset_name("digits", {"levels": 4}) == "digits-4"
