"""Bad input to ``rnnexp serve``: model references that name no servable generator.

A run that logged no model, a registry name, alias or version that does not exist, a
logged model of another program or one whose logging never finished, references of
no known form, and bad options. Each is refused before MLflow's scoring server
starts. The promise checked is ``bad_input_harness``'s (no run is created, the
workspace is unchanged). The store is the harness's; each setup writes what its
reference names into it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from bad_input_harness import EXPERIMENT, Case, run_case
from bad_input_setups import args
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus


def _experiment(client: MlflowClient) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    return found.experiment_id if found else client.create_experiment(EXPERIMENT)


def run_without_model(form: str) -> Callable[[Path], list[str]]:
    """Setup: a finished run that logged no model; its reference in ``form`` ({id})."""

    def setup(ws: Path) -> list[str]:
        client = MlflowClient()
        run = client.create_run(_experiment(client), run_name="train nothing logged")
        client.set_terminated(run.info.run_id)
        return [form.format(id=run.info.run_id)]

    return setup


def registered_without_versions(name: str, ref: str) -> Callable[[Path], list[str]]:
    """Setup: registered model ``name`` with no version (so no alias); arguments ``ref``."""

    def setup(ws: Path) -> list[str]:
        MlflowClient().create_registered_model(name)
        return [ref]

    return setup


def logged_model(tags: dict[str, str], ready: bool) -> Callable[[Path], list[str]]:
    """Setup: a logged model with ``tags`` (READY or left PENDING); ``models:/<its id>``."""

    def setup(ws: Path) -> list[str]:
        client = MlflowClient()
        model = client.create_logged_model(_experiment(client), name="other", tags=tags)
        if ready:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return [f"models:/{model.model_id}"]

    return setup


GENERATOR = {"rnnexp.arch": "row_lstm"}

CASES: list[Case] = [
    Case(
        "serve-run-without-model",
        "serve",
        run_without_model("{id}"),
        ("has no logged model", "train nothing logged"),
    ),
    Case(
        "serve-runs-uri-without-model",
        "serve",
        run_without_model("runs:/{id}/generator"),
        ("runs:/", "has no logged model"),
    ),
    Case(
        "serve-run-missing",
        "serve",
        args("0123456789abcdef0123456789abcdef"),
        ("0123456789abcdef0123456789abcdef", "no run"),
    ),
    Case(
        "serve-default-nothing-registered",
        "serve",
        args("--set", "tracking.registered_model=nobody-yet"),
        ("models:/nobody-yet@champion", "no registered model 'nobody-yet'", "evaluate"),
    ),
    Case(
        "serve-unknown-registered-model",
        "serve",
        args("models:/never-registered@champion"),
        ("models:/never-registered@champion", "no registered model"),
    ),
    Case(
        "serve-alias-missing",
        "serve",
        registered_without_versions("lonely", "models:/lonely@champion"),
        ("models:/lonely@champion", "has no alias 'champion'"),
    ),
    Case(
        "serve-version-missing",
        "serve",
        registered_without_versions("lonely-v", "models:/lonely-v/7"),
        ("models:/lonely-v/7", "has no version 7"),
    ),
    Case(
        "serve-version-not-a-number",
        "serve",
        args("models:/rnnexp/latest"),
        ("models:/rnnexp/latest", "a version is a number"),
    ),
    Case(
        "serve-name-without-version",
        "serve",
        args("models:/rnnexp"),
        ("models:/rnnexp", "which version?", "models:/<name>@<alias>"),
    ),
    Case(
        "serve-unknown-form",
        "serve",
        args("s3://bucket/generator"),
        ("s3://bucket/generator", "expected one of"),
    ),
    Case(
        "serve-runs-uri-bad-id",
        "serve",
        args("runs:/not-a-run/generator"),
        ("runs:/not-a-run/generator", "no run id"),
    ),
    Case(
        "serve-logged-model-missing",
        "serve",
        args("models:/m-0123456789abcdef0123456789abcdef"),
        ("models:/m-0123456789abcdef0123456789abcdef", "logged model"),
    ),
    Case(
        "serve-foreign-logged-model",
        "serve",
        logged_model({}, ready=True),
        ("is not an rnnexp generator",),
    ),
    Case(
        "serve-model-never-finished",
        "serve",
        logged_model(GENERATOR, ready=False),
        ("PENDING", "not READY"),
    ),
    Case("serve-port-zero", "serve", args("--port", "0"), ("--port", "1..65535", "got 0")),
    Case("serve-host-empty", "serve", args("--host", ""), ("--host", "empty")),
    Case("serve-timeout-zero", "serve", args("--timeout", "0"), ("--timeout", "got 0")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_keeps_the_promise(case, bad_input_world, store, tmp_path):
    outcome = run_case(case, bad_input_world, tmp_path, store)
    assert outcome.problems == [], outcome.stderr[-2000:]
