"""Shared fixtures: tiny prepared digits, tiny params, one MLflow SQLite store per session.

Creating an MLflow SQLite store costs seconds, so the session shares one; each test
module points ``MLFLOW_TRACKING_URI`` at it through the module-scoped ``store``
fixture (and works in its own temporary directory), and tests that count runs
compare the store before and after.
"""

from __future__ import annotations

from pathlib import Path

import helpers
import pytest
from helpers import TRAINED, tiny
from mlflow import MlflowClient
from mlflow.entities import ViewType

from rnnexp.config import load_params
from rnnexp.data.prepare import prepare, write_prepared
from rnnexp.data.sources import RawDataset

REPO = Path(__file__).resolve().parents[1]
PARAMS_YAML = REPO / "params.yaml"


@pytest.fixture(scope="session")
def tiny_params():
    """``tiny_params("train.seed=1", ...)``: params.yaml with tiny(TRAINED) and extra overrides.

    TINY and TRAINED are in helpers.py; a later override of a key wins.
    """

    def make(*overrides: str):
        return load_params(PARAMS_YAML, tiny(TRAINED, *overrides))

    return make


@pytest.fixture(scope="session")
def digits_subsample() -> RawDataset:
    return helpers.digits_subsample()


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory, digits_subsample) -> Path:
    """data/prepared of the digits subsample: 17 levels, 60/20/20 split."""
    out = tmp_path_factory.mktemp("data") / "prepared"
    write_prepared(prepare(digits_subsample, 17, 0, 0.2, 0.2), out)
    return out


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A SQLite store shared by the session (its tables are created once, here)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture(scope="module")
def store(mlflow_uri, tmp_path_factory):
    """MLFLOW_TRACKING_URI -> the session store and cwd -> a scratch dir, for one module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield MlflowClient(mlflow_uri)


@pytest.fixture(scope="session")
def all_runs():
    """``all_runs(client)``: every run of every experiment in the client's store."""

    def runs(client: MlflowClient) -> list:
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        return client.search_runs(ids, run_view_type=ViewType.ALL) if ids else []

    return runs


@pytest.fixture(scope="session")
def bad_input_world(tmp_path_factory) -> Path:
    """The good workspace of the bad-input tests (tests/bad_input_harness.py), built once.

    Every case copies it before writing its bad input, so the session shares one.
    """
    from bad_input_harness import build_world

    return build_world(tmp_path_factory.mktemp("bad_input") / "world")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, prepared_dir, mlflow_uri, tiny_params):
    """One tiny training run (3 epochs) on the digits subsample: (TrainResult, Params)."""
    from rnnexp.training.fit import run_training

    params = tiny_params()
    out = tmp_path_factory.mktemp("trained") / "models"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        mp.chdir(out.parent)
        result = run_training(params, prepared_dir, out)
    return result, params


@pytest.fixture(scope="module")
def checkpoint(trained):
    return trained[0].best_checkpoint


@pytest.fixture
def model_run(store, trained, checkpoint):
    """``model_run(data_hash)``: a finished run with a logged generator model; its handle."""
    from rnnexp.tracking import RunHandle, tracked_run
    from rnnexp.training.checkpoint import load_checkpoint

    params = trained[1]
    loaded = load_checkpoint(checkpoint)
    c = loaded.generator.config
    metadata = {
        "arch": c.arch,
        "levels": c.levels,
        "image_shape": list(loaded.image_shape),
        "num_classes": c.num_classes,
        "source_channels": c.source_channels,
        "task": "unconditional",
    }

    def make(data_hash: str, with_model: bool = True) -> RunHandle:
        with tracked_run(
            params, "train", tags={"rnnexp.data_hash": data_hash, "rnnexp.arch": c.arch}
        ) as run:
            if with_model:
                assert run.log_generator_model(checkpoint, metadata) is not None
        return RunHandle(store, run.run_id, run.experiment_id)

    return make


POSTGRES_URL = "postgresql+psycopg://rnnexp:rnnexp@127.0.0.1:5432/rnnexp"


@pytest.fixture
def postgres_url():
    """SQLAlchemy URL of a fresh PostgreSQL database, dropped after the test.

    The server is ``RNNEXP_TEST_POSTGRES_URL`` (default: POSTGRES_URL, what
    ``scripts/postgres`` sets up); its role needs CREATEDB. Skips when the server is
    unreachable or psycopg is missing, except in CI with the URL set (``.ci/run`` set
    the server up, so a failure to reach it is a broken setup): there it fails.
    """
    import os
    import secrets

    from sqlalchemy.engine import make_url

    url = os.environ.get("RNNEXP_TEST_POSTGRES_URL", POSTGRES_URL)
    must_run = os.environ.get("CI") == "true" and "RNNEXP_TEST_POSTGRES_URL" in os.environ
    give_up = pytest.fail if must_run else pytest.skip
    how = "start one with `sudo bash scripts/postgres` or set RNNEXP_TEST_POSTGRES_URL"
    try:
        import psycopg
    except ImportError:
        give_up(f"psycopg missing (pip install -e .[postgres]); PostgreSQL tests need {url}")
    u = make_url(url)
    connect = dict(
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        connect_timeout=3,
        autocommit=True,  # CREATE/DROP DATABASE cannot run in a transaction
    )
    try:
        admin = psycopg.connect(dbname=u.database or "postgres", **connect)
    except psycopg.OperationalError as e:
        give_up(f"no PostgreSQL server at {u.render_as_string()} ({e}); {how}")
    name = f"rnnexp_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        server_version = admin.info.server_version
    try:
        yield u.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dbname=u.database or "postgres", **connect) as admin:
            if server_version >= 130000:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
