"""Serving round trip: the evaluate stage's champion, served by ``mlflow models serve``.

Trains a tiny model and evaluates it through the CLI into a temporary SQLite store
(evaluate registers it as ``champion``), serves ``models:/rnnexp@champion`` on a free
port with the local environment, and asks ``/invocations`` for images; then the same
through ``rnnexp serve``, which serves the champion by default.
"""

from __future__ import annotations

import json
import shutil
import urllib.request

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


@pytest.mark.slow
def test_served_champion_returns_images_of_the_data_shape(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    env = project_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    sets = set_args(tiny(TRAINED, "train.use_tuned=false"))
    for stage in ("fetch", "prepare", "train", "evaluate"):
        out = run([str(BIN / "rnnexp"), stage, *sets], work, env)
    assert "evaluate: registered rnnexp version 1: champion (no champion before)" in out

    # MLflow's own command, and `rnnexp serve` (the champion by default, checked first)
    mlflow_cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/rnnexp@champion"]
    mlflow_cmd += ["--env-manager", "local"]
    by_mlflow = ask_for_images(mlflow_cmd, work, env, tmp_path)
    check_images(by_mlflow, work)
    # the same model: the same images for the same seeds
    assert ask_for_images([str(BIN / "rnnexp"), "serve"], work, env, tmp_path) == by_mlflow


def ask_for_images(cmd: list[str], work, env, tmp_path) -> list[dict]:
    """Serve with ``cmd`` (plus host and port) and POST two request rows; the answer rows."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [*cmd, "--port", str(port), "--host", "127.0.0.1"]
    server = start_server(cmd, tmp_path / f"serve-{port}.log", url, env, cwd=work)
    try:
        body = {"dataframe_records": [{"n": 3, "seed": 0}, {"n": 2, "seed": 1, "temperature": 0.8}]}
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    finally:
        stop_server(server)
    return answer["predictions"]


def check_images(rows: list[dict], work) -> None:
    assert len(rows) == 5
    assert [row["seed"] for row in rows] == [0, 0, 0, 1, 1]
    meta = json.loads((work / "data" / "prepared" / "meta.json").read_text())
    levels = meta["levels"]
    for row in rows:
        image = row["image"]
        shape = (len(image), len(image[0]), len(image[0][0]))
        assert shape == (meta["channels"], meta["height"], meta["width"]) == (1, 8, 8)
        values = [v for plane in image for line in plane for v in line]
        assert all(0 <= v < levels for v in values)
        assert row["levels"] == levels
    # distinct images, not one repeated
    assert len({json.dumps(row["image"]) for row in rows}) == 5
