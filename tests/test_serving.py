"""Serving round trip: the evaluate stage's champion, served by ``mlflow models serve``.

Trains a tiny model and evaluates it through the CLI into a temporary SQLite store
(evaluate registers it as ``champion``), serves ``models:/rnnexp@champion`` on a free
port with the local environment, and asks ``/invocations`` for images.
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

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/rnnexp@champion"]
    cmd += ["--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]
    server = start_server(cmd, tmp_path / "serve.log", url, env)
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
    rows = answer["predictions"]
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
