"""The evaluate stage's registry champion through ``rnnexp server --auth`` (basic auth).

Starts a real ``rnnexp server --auth``, runs the train and evaluate stages through the
CLI against it with the admin's credentials in the environment, and reads the
``champion`` alias back and loads ``models:/<name>@champion`` through the same server.
"""

from __future__ import annotations

import shutil

import mlflow
import pandas as pd
import pytest
from helpers import (
    BIN,
    ROOT,
    TRAINED,
    free_port,
    project_env,
    run,
    set_args,
    start_server,
    stop_server,
    tiny,
)
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

pytestmark = pytest.mark.slow

ADMIN_PASSWORD = "registry-admin-pw-1"
NAME = "auth-champ"


def test_evaluate_registers_a_champion_on_an_auth_server(tmp_path, prepared_dir, monkeypatch):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = project_env(MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD)
    cmd = [str(BIN / "rnnexp"), "server", "--root", str(tmp_path / "srv"), "--port", str(port)]
    proc = start_server([*cmd, "--auth"], tmp_path / "server.log", url, env=server_env)
    try:
        work = tmp_path / "work"
        work.mkdir()
        shutil.copy(ROOT / "params.yaml", work / "params.yaml")
        credentials = {
            "MLFLOW_TRACKING_URI": url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
        }
        env = project_env(**credentials)
        sets = set_args(
            tiny(
                TRAINED,
                "train.use_tuned=false",
                "evaluate.score_samples=0",
                f"tracking.registered_model={NAME}",
            )
        )
        rnnexp = str(BIN / "rnnexp")
        run([rnnexp, "train", *sets, "--prepared", str(prepared_dir), "--out", "models"], work, env)
        out = run(
            [rnnexp, "evaluate", *sets, "--prepared", str(prepared_dir)]
            + ["--checkpoint", "models/best.ckpt", "--out", "reports"],
            work,
            env,
        )
        assert f"registered {NAME} version 1: champion" in out, out
        assert not (work / "mlflow.db").exists()  # nothing went to a local store

        # the server enforces auth: without credentials the alias lookup is refused
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        with pytest.raises(MlflowException, match="401|[Uu]nauthori[sz]ed"):
            MlflowClient(url).get_model_version_by_alias(NAME, "champion")

        for key, value in credentials.items():
            monkeypatch.setenv(key, value)
        client = MlflowClient(url)
        version = client.get_model_version_by_alias(NAME, "champion")
        assert str(version.version) == "1"
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        predicted = model.predict(pd.DataFrame([{"n": 2, "seed": 0}]))
        images = [pd.Series(image).tolist() for image in predicted["image"]]
        assert len(images) == 2
        for image in images:
            assert (len(image), len(image[0]), len(image[0][0])) == (1, 8, 8)
    finally:
        stop_server(proc)
