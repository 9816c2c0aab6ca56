"""The registry champion: a worse model never takes ``champion``, a better one does.

Each model is a run with a logged generator model (conftest's ``model_run``: the
``trained`` fixture's best checkpoint, logged again per run), registered with a given
test NLL through ``RunHandle.register_champion``; the aliases are read back through
MlflowClient, and the champion is loaded by ``models:/<name>@champion`` and asked for images.
"""

from __future__ import annotations

import contextlib
import io
import shutil

import mlflow
import pandas as pd
import pytest
from helpers import ROOT
from mlflow.exceptions import MlflowException

from rnnexp.cli import main
from rnnexp.errors import RnnexpError
from rnnexp.tracking import RunHandle

HASH_A, HASH_B = "a" * 64, "b" * 64


def register(run: RunHandle, name: str, nll: float) -> str:
    return run.register_champion(name, {"test/nll_nats": nll, "test/bpd": nll / 100}, {})


def aliased(client, name: str, alias: str) -> str:
    return str(client.get_model_version_by_alias(name, alias).version)


def test_worse_model_never_takes_champion_and_better_one_does(store, model_run):
    name = "rule"
    first, worse, better = model_run(HASH_A), model_run(HASH_A), model_run(HASH_A)

    assert (
        register(first, name, 100.0)
        == f"registered {name} version 1: champion (no champion before)"
    )
    decision = register(worse, name, 120.0)
    assert decision.startswith(f"registered {name} version 2: challenger (test NLL 120.0000 >=")
    assert (aliased(store, name, "champion"), aliased(store, name, "challenger")) == ("1", "2")
    assert store.get_run(worse.run_id).data.tags["rnnexp.registry"] == decision

    assert "champion (test NLL 90.0000 < 100.0000" in register(better, name, 90.0)
    assert aliased(store, name, "champion") == "3"
    version = store.get_model_version(name, "3")
    assert version.tags["rnnexp.data_hash"] == HASH_A
    assert version.tags["rnnexp.test_nll_nats"] == "90.0"
    assert version.tags["rnnexp.arch"] == "row_lstm"
    better_model = store.get_run(better.run_id).data.tags["rnnexp.model_id"]
    # the model lies in its run's experiment (whose Models tab lists it), from that run
    logged = store.get_logged_model(better_model)
    assert (logged.experiment_id, logged.source_run_id) == (better.experiment_id, better.run_id)
    assert better_model in version.source, version.source
    # the test metrics are linked to the logged model (the UI's Models tab)
    linked = {m.key: m.value for m in store.get_logged_model(better_model).metrics}
    assert linked["test/nll_nats"] == 90.0

    # an equal NLL is not better: the champion stays
    assert "challenger" in register(model_run(HASH_A), name, 90.0)
    assert aliased(store, name, "champion") == "3"

    # the champion loads by alias and generates images of the data's shape
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.model_id == better_model
    out = model.predict(pd.DataFrame([{"n": 3, "seed": 1, "temperature": 1.0}]))
    images = [pd.Series(image).tolist() for image in out["image"]]
    assert len(images) == 3
    for image in images:
        assert (len(image), len(image[0]), len(image[0][0])) == (1, 8, 8)
        assert all(0 <= v <= 16 for row in image[0] for v in row)
    assert set(out["levels"]) == {17}
    # the same seed gives the same images
    again = model.predict(pd.DataFrame([{"n": 3, "seed": 1}]))
    assert again["image"].tolist() == out["image"].tolist()


def test_champion_on_other_data_gives_way(store, model_run):
    name = "rule-data"
    register(model_run(HASH_A), name, 50.0)
    decision = register(model_run(HASH_B), name, 500.0)
    assert decision == f"registered {name} version 2: champion (version 1 was scored on other data)"
    assert aliased(store, name, "champion") == "2"


def test_refused_name_is_a_clear_error_and_registers_nothing(store, model_run):
    run = model_run(HASH_A)
    before = len(store.search_registered_models())
    with pytest.raises(RnnexpError, match=r"tracking.registered_model 'bad/name'.*'/'"):
        register(run, "bad/name", 1.0)
    assert len(store.search_registered_models()) == before
    with pytest.raises(MlflowException):
        store.get_registered_model("bad/name")


def test_evaluate_refuses_the_name_before_any_work(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["evaluate", "--out", "reports", "--set", "tracking.registered_model=a:b"])
    assert code == 2
    assert "tracking.registered_model 'a:b': MLflow refuses" in err.getvalue()
    assert not (tmp_path / "reports").exists()


def test_run_without_logged_model_is_not_registered(store, model_run):
    run = model_run(HASH_A, with_model=False)
    assert (
        register(run, "rule-none", 1.0) == f"not registered: run {run.run_id} has no logged model"
    )
    with pytest.raises(MlflowException):
        store.get_registered_model("rule-none")
