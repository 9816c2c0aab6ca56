"""Bad params, end to end: params.yaml, --set and the tracking store, at every stage.

Every stage validates all of params.yaml (and its --set overrides) before any work
or MLflow run, so each case names the stage it happens to run; the promise checked
is ``bad_input_harness``'s. Besides wrong keys, types and ranges: YAML that reads but
that DVC or a careful reader refuses (bytes that are not UTF-8, duplicate keys, alias
bombs), values a loose check lets through (nan, inf, seeds beyond 2^32-1, search-space
steps Optuna refuses), devices and machines this one lacks (refused before a run
opens: the training would fail inside it, or wait forever for absent members), and
download URLs urllib cannot open. Tune-only settings that fail when the tune stage
opens them (tune.storage, --workers) are in ``test_bad_input_train.py``.
"""

from __future__ import annotations

import math

import pytest
from bad_input_harness import Case, P, run_case
from bad_input_setups import (
    LAUNCHER_ENV,
    MARKER,
    absent_accelerator,
    alias_bomb,
    args,
    malicious_yaml,
    overwrite,
    params_bytes,
    replace_in_params,
    set_param,
    set_params,
    tuned_params,
)

LR = "lr: 0.003"  # train.lr's line in the workspace's params.yaml
LOLS = "'lol', 'lol', 'lol', 'lol', 'lol'"  # in a message only if it prints an expansion
NO_DEVICE = absent_accelerator()  # gpu on a machine without one; else a kind it lacks

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
    # --- YAML that reads, but that DVC or a careful reader refuses
    Case(
        "params-latin1-comment",
        "fetch",
        params_bytes(lambda b: b"# caf\xe9 au lait\n" + b),
        (P, "not UTF-8", "line 1, column 6", "0xe9"),
    ),
    Case(
        "params-latin1-value",
        "evaluate",
        params_bytes(lambda b: b.replace(b"experiment: bad-input", b"experiment: caf\xe9")),
        (P, "not UTF-8", "line", "0xe9"),
    ),
    Case(
        "tuned-params-latin1",
        "train",
        tuned_params(b"# r\xe9sultat\nparams: {}\n"),
        ("reports/best_params.yaml", "not UTF-8", "line 1"),
    ),
    Case(
        "params-duplicate-key",
        "train",
        replace_in_params(LR, f"{LR}\n  lr: 0.01"),
        (P, "duplicate key train.lr", "line"),
    ),
    Case(
        "params-duplicate-section",
        "prepare",
        params_bytes(lambda b: b + b"data:\n  levels: 5\n"),
        (P, "duplicate key data", "line"),
    ),
    Case(
        "params-duplicate-key-in-space",
        "tune",
        replace_in_params("      log: true\n", "      log: true\n      low: 0.001\n"),
        (P, "duplicate key tune.space.train.lr.low", "line"),
    ),
    Case(
        "tuned-params-duplicate-key",
        "train",
        tuned_params(b"params:\n  train.lr: 0.01\n  train.lr: 0.02\n"),
        ("reports/best_params.yaml", "duplicate key params.train.lr", "line 3"),
    ),
    Case(
        "override-duplicate-key",
        "tune",
        args("--set", "tune.space={model.layers: {type: int, low: 1, high: 2, high: 3}}"),
        ("--set", "duplicate key model.layers.high"),
    ),
    Case(
        "params-alias-bomb",
        "train",
        replace_in_params(LR, f"lr: {alias_bomb(7)}"),
        (P, "train.lr", "alias bomb", "line"),
        absent=(LOLS,),
    ),
    Case(
        "override-alias-bomb",
        "evaluate",
        args("--set", f"evaluate.temperature={alias_bomb(8)}"),
        ("--set", "evaluate.temperature", "alias bomb"),
        absent=(LOLS,),
    ),
    Case(
        "params-alias-value-message-bounded",
        "tune",
        replace_in_params(LR, f"lr: {alias_bomb(5)}"),  # 66,430 values: below the bomb limit
        (P, "train.lr", "expected a number", "(list)"),
        absent=(LOLS,),
    ),
    Case(
        "params-recursive-alias",
        "train",
        replace_in_params(LR, "lr: &r [*r]"),
        (P, "train.lr", "refers to itself"),
    ),
    Case(
        "params-nested-too-deep",
        "fetch",
        replace_in_params(LR, "lr: " + "[" * 5000 + "]" * 5000),
        (P, "nested too deeply"),
    ),
    # --- values that pass a loose check and then crash: nan, inf, 64-bit seeds, steps
    Case(
        "params-grad-clip-nan",
        "train",
        set_param("train.grad_clip", math.nan),
        (P, "train.grad_clip", "finite", "nan"),
    ),
    Case(
        "params-grad-clip-inf",
        "tune",
        set_param("train.grad_clip", math.inf),
        (P, "train.grad_clip", "finite", "inf"),
    ),
    Case("params-lr-nan", "train", set_param("train.lr", math.nan), (P, "train.lr", "finite")),
    Case(
        "params-weight-decay-inf",
        "tune",
        set_param("train.weight_decay", -math.inf),
        (P, "train.weight_decay", "finite"),
    ),
    Case("params-dropout-nan", "train", set_param("model.dropout", math.nan), (P, "model.dropout")),
    Case(
        "params-temperature-nan",
        "evaluate",
        set_param("evaluate.temperature", math.nan),
        (P, "evaluate.temperature", "finite"),
    ),
    Case(
        "params-noise-level-inf",
        "prepare",
        set_param("data.noise_level", math.inf),
        (P, "data.noise_level", "finite"),
    ),
    Case(
        "params-tune-timeout-inf",
        "tune",
        set_param("tune.timeout", math.inf),
        (P, "tune.timeout", "finite"),
    ),
    Case(
        "override-grad-clip-nan",
        "train",
        args("--set", "train.grad_clip=.nan"),
        (P, "--set", "train.grad_clip", "finite"),
    ),
    Case(
        "space-bound-nan",
        "tune",
        set_param(("tune", "space", "train.lr"), {"type": "float", "low": math.nan, "high": 0.1}),
        (P, "tune.space.train.lr", "finite"),
    ),
    Case(
        "space-bound-inf",
        "tune",
        set_param(
            ("tune", "space", "train.grad_clip"), {"type": "float", "low": 0.5, "high": math.inf}
        ),
        (P, "tune.space.train.grad_clip", "finite"),
    ),
    Case(
        "params-train-seed-above-uint32",
        "train",
        set_param("train.seed", 2**32),
        (P, "train.seed", "4294967296", "out of range"),
    ),
    Case(
        "params-data-seed-negative",
        "prepare",
        set_param("data.seed", -1),
        (P, "data.seed", "out of range"),
    ),
    Case(
        "params-tune-seed-above-uint32",
        "tune",
        set_param("tune.seed", 2**64),
        (P, "tune.seed", "out of range"),
    ),
    Case(
        "params-evaluate-seed-above-uint32",
        "evaluate",
        set_param("evaluate.seed", 2**32),
        (P, "evaluate.seed", "out of range"),
    ),
    Case(
        "space-int-step-0",
        "tune",
        set_param(
            ("tune", "space", "model.hidden"), {"type": "int", "low": 16, "high": 48, "step": 0}
        ),
        (P, "tune.space.model.hidden", "step must be a positive integer", "0"),
    ),
    Case(
        "space-int-step-negative",
        "tune",
        set_param(
            ("tune", "space", "model.hidden"), {"type": "int", "low": 16, "high": 48, "step": -16}
        ),
        (P, "tune.space.model.hidden", "step", "-16"),
    ),
    Case(
        "space-int-step-with-log",
        "tune",
        set_param(
            ("tune", "space", "model.hidden"),
            {"type": "int", "low": 16, "high": 64, "step": 16, "log": True},
        ),
        (P, "tune.space.model.hidden", "step and log"),
    ),
    Case(
        "space-float-step",
        "tune",
        set_param(
            ("tune", "space", "train.lr"),
            {"type": "float", "low": 0.001, "high": 0.01, "step": 0.001, "log": True},
        ),
        (P, "tune.space.train.lr", "step"),
    ),
    Case(
        "space-log-not-a-bool",
        "tune",
        set_param(
            ("tune", "space", "model.layers"), {"type": "int", "low": 1, "high": 3, "log": "no"}
        ),
        (P, "tune.space.model.layers.log", "true or false"),
    ),
    Case(
        "params-n-samples-above-cap",
        "evaluate",
        set_param("evaluate.n_samples", 100_000),
        (P, "evaluate.n_samples", "out of range"),
    ),
    # --- devices and machines this one does not have: refused before any run opens
    Case(
        "train-accelerator-absent",
        "train",
        set_param("train.accelerator", NO_DEVICE),
        ("train.accelerator", repr(NO_DEVICE), "this machine has"),
    ),
    Case(
        "tune-accelerator-absent",
        "tune",
        set_param("train.accelerator", NO_DEVICE),
        ("train.accelerator", repr(NO_DEVICE), "this machine has"),
    ),
    Case(
        "evaluate-accelerator-absent",
        "evaluate",
        set_param("train.accelerator", NO_DEVICE),
        ("train.accelerator", repr(NO_DEVICE), "this machine has"),
    ),
    Case(
        "train-num-nodes-without-launcher",
        "train",
        set_param("train.num_nodes", 2),
        ("train.num_nodes", "MASTER_ADDR", "NODE_RANK", "not set"),
        env=LAUNCHER_ENV,
    ),
    Case(
        "tune-num-nodes-without-launcher",
        "tune",
        set_param("train.num_nodes", 2),
        ("train.num_nodes", "MASTER_ADDR", "not set"),
        env=LAUNCHER_ENV,
    ),
    Case(
        "train-node-rank-out-of-range",
        "train",
        set_param("train.num_nodes", 2),
        ("train.num_nodes", "NODE_RANK", "'2'", "0..1"),
        env=(*LAUNCHER_ENV, ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1"), ("NODE_RANK", "2")),
    ),
    # --- data.url that urllib cannot download from
    Case(
        "data-url-without-scheme",
        "fetch",
        set_params(("data.source", "idx"), ("data.url", "example.com/mnist/x.gz")),
        (P, "data.url", "example.com/mnist/x.gz", "no scheme"),
    ),
    Case(
        "data-url-ftp",
        "fetch",
        set_params(("data.source", "idx"), ("data.url", "ftp://example.com/mnist/")),
        (P, "data.url", "'ftp'"),
    ),
    Case(
        "data-url-without-host",
        "prepare",
        set_params(("data.source", "idx"), ("data.url", "https:///mnist/")),
        (P, "data.url", "no host"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_keeps_the_promise(case, bad_input_world, store, tmp_path):
    outcome = run_case(case, bad_input_world, tmp_path, store)
    assert outcome.problems == [], outcome.stderr[-2000:]
