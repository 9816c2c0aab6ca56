"""Bad params, end to end: params.yaml, --set and the tracking store, at every stage.

Every stage validates all of params.yaml (and its --set overrides) before any work
or MLflow run, so each case names the stage it happens to run; the promise checked
is ``bad_input_harness``'s. Tune-only settings that fail when the tune stage opens
them (tune.storage, --workers) are in ``test_bad_input_train.py``.
"""

from __future__ import annotations

import pytest
from bad_input_harness import Case, P, run_case
from bad_input_setups import (
    MARKER,
    args,
    malicious_yaml,
    overwrite,
    replace_in_params,
    set_param,
    set_params,
)

CASES: list[Case] = [
    # --- params.yaml: every stage validates all of it before any work or run
    Case(
        "params-malformed-yaml",
        "train",
        replace_in_params("max_epochs: 1", "max_epochs: [1"),
        (P, "malformed YAML", "line"),
    ),
    Case(
        "params-missing-file",
        "prepare",
        args("--params", "nowhere.yaml"),
        ("nowhere.yaml", "not found"),
    ),
    Case("params-top-level-list", "fetch", overwrite(P, b"- data\n- model\n"), (P, "mapping")),
    Case(
        "params-unknown-key",
        "train",
        set_param("train.learning_rate", 0.1),
        (P, "train.learning_rate", "unknown key"),
    ),
    Case(
        "params-unknown-section",
        "evaluate",
        set_param("optimizer", {"lr": 0.1}),
        (P, "optimizer", "unknown section"),
    ),
    Case("params-section-not-mapping", "prepare", set_param("model", 5), (P, "model")),
    Case(
        "params-wrong-type-int",
        "train",
        set_param("model.hidden", "big"),
        (P, "model.hidden", "integer", "big"),
    ),
    Case(
        "params-wrong-type-bool",
        "train",
        set_param("train.use_tuned", "yes please"),
        (P, "train.use_tuned", "true or false"),
    ),
    Case(
        "params-1e-3-string",
        "tune",
        replace_in_params("lr: 0.003", "lr: 1e-3"),
        (P, "train.lr", "1e-3", "string"),
    ),
    Case(
        "params-negative-epochs",
        "train",
        set_param("train.max_epochs", -1),
        (P, "train.max_epochs", "-1", "out of range"),
    ),
    Case(
        "params-dropout-1",
        "tune",
        set_param("model.dropout", 1.0),
        (P, "model.dropout", "out of range"),
    ),
    Case(
        "params-unknown-lr-schedule",
        "train",
        set_param("train.lr_schedule", "linear"),
        (P, "train.lr_schedule", "'constant', 'cosine'"),
    ),
    Case(
        "params-warmup-fills-the-budget",
        "train",
        set_params(("train.lr_schedule", "cosine"), ("train.warmup_epochs", 1)),
        (P, "train.warmup_epochs", "no epoch of the cosine schedule"),
    ),
    Case(
        "params-negative-patience",
        "tune",
        set_param("train.patience", -2),
        (P, "train.patience", "out of range"),
    ),
    Case(
        "params-levels-below-2",
        "prepare",
        set_param("data.levels", 1),
        (P, "data.levels", "out of range"),
    ),
    Case(
        "params-image-size-0",
        "fetch",
        set_param("data.image_size", 0),
        (P, "data.image_size", "out of range"),
    ),
    Case(
        "params-even-kernel",
        "train",
        set_param("model.kernel", 4),
        (P, "model.kernel", "odd"),
        absent=("tune.space",),
    ),
    Case(
        "params-fractions-sum-1",
        "prepare",
        set_params(("data.val_fraction", 0.5), ("data.test_fraction", 0.5)),
        (P, "data.val_fraction", "data.test_fraction"),
    ),
    Case("params-idx-without-path", "fetch", set_param("data.source", "idx"), (P, "data.path")),
    Case(
        "space-low-above-high",
        "tune",
        set_param(("tune", "space", "train.lr"), {"type": "float", "low": 0.1, "high": 0.01}),
        (P, "tune.space.train.lr", "low"),
    ),
    Case(
        "space-log-low-not-positive",
        "tune",
        set_param(
            ("tune", "space", "train.lr"), {"type": "float", "low": 0.0, "high": 0.01, "log": True}
        ),
        (P, "tune.space.train.lr", "log"),
    ),
    Case(
        "space-int-low-above-high",
        "tune",
        set_param(("tune", "space", "model.layers"), {"type": "int", "low": 3, "high": 1}),
        (P, "tune.space.model.layers", "low"),
    ),
    Case(
        "space-unknown-param",
        "tune",
        set_param(("tune", "space", "model.depth"), {"type": "int", "low": 1, "high": 3}),
        (P, "tune.space.model.depth", "not a tunable"),
    ),
    Case(
        "space-value-out-of-range",
        "tune",
        set_param(("tune", "space", "model.layers"), {"type": "int", "low": 0, "high": 3}),
        (P, "tune.space.model.layers", "0"),
    ),
    Case(
        "tracking-uri-unknown-scheme",
        "fetch",
        set_param("tracking.uri", "bogus://nowhere"),
        ("tracking.uri", "bogus://nowhere", "cannot open the MLflow tracking store"),
        env=(("MLFLOW_TRACKING_URI", None),),
    ),
    Case(
        "mlflow-tracking-uri-env-unknown-scheme",
        "prepare",
        args(),
        ("MLFLOW_TRACKING_URI", "bogus://nowhere", "cannot open the MLflow tracking store"),
        env=(("MLFLOW_TRACKING_URI", "bogus://nowhere"),),
    ),
    Case(
        "override-wrong-type",
        "train",
        args("--set", "train.max_epochs=abc"),
        (P, "--set", "train.max_epochs", "abc"),
    ),
    Case(
        "override-not-key-value",
        "sample",
        args("--set", "max_epochs"),
        ("--set", "max_epochs", "section.key=value"),
    ),
    Case(
        "yaml-python-tag-refused",
        "train",
        malicious_yaml,
        (P, "refused YAML tag", "python/object/apply:os.system", "line"),
        marker=MARKER,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_keeps_the_promise(case, bad_input_world, store, tmp_path):
    outcome = run_case(case, bad_input_world, tmp_path, store)
    assert outcome.problems == [], outcome.stderr[-2000:]
