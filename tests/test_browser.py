"""What a person sees in MLflow's UI: our train runs in the runs list and the compare view.

A real ``mlflow server`` over a SQLite store with two train runs logged through
:func:`rnnexp.tracking.tracked_run`, driven by headless Chromium (Debian's
``chromium``: ``sudo bash scripts/browser``) through Playwright for Python
(``pip install -e .[dev]``). Skips, saying why, when either is missing.
Screenshots land in each test's ``tmp_path``.

MLflow 3.x routes (hash router, see ``Routes`` in mlflow/server/js): the runs list is
``#/experiments/<id>/runs``, the compare view
``#/compare-runs?runs=["<id>",...]&experiments=["<id>"]``.

The second half (issue 13's "Done when") opens the store of a project copy after two
``dvc exp run``s with different learning rates: the runs table with names, datasets,
and the registered model's page with its champion. Their screenshots are kept in
``$RNNEXP_TEST_ARTIFACTS/browser`` if that is set, else in a ``ui-screenshots`` folder
under pytest's basetemp (pytest keeps the last 3); each test prints the paths.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import (
    free_port,
    make_git_project,
    project_env,
    run,
    start_server,
    stop_server,
    tiny_mapping,
)

from rnnexp import tracking
from rnnexp.config import Params

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("RNNEXP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Values MLflow's UI prints as they are (it rounds metrics below 10 to 3 decimals).
RUNS = {"row-lstm-a": 1.234, "pixelcnn-b": 2.468}
UI_WAIT_MS = 60_000


@pytest.fixture(scope="module")
def sync_playwright():
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's chromium (sudo bash scripts/browser) "
            "or point RNNEXP_TEST_CHROMIUM at a Chromium binary"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install -e .[dev])")
    return sync_playwright


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Two finished train runs in a fresh SQLite store: (uri, experiment id, {name: run id})."""
    root = tmp_path_factory.mktemp("ui-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        for name, bpd in RUNS.items():
            with tracking.tracked_run(Params(), "train", run_name=name) as run:
                run.log_metrics({"test/bpd": bpd})
            ids[name] = run.run_id
            time.sleep(0.01)  # distinct start times: the list sorts by them
    return uri, run.experiment_id, ids


def _serve(uri: str, tmp_path_factory):
    """``mlflow server`` on a free localhost port over the store ``uri``: yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("ui-server") / "server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        proc = start_server(cmd, log, url)
    except AssertionError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        stop_server(proc)


@contextmanager
def _browser_page(sync_playwright):
    """A fresh Chromium page (no stored settings) with the UI wait as its default timeout."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_WAIT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(sync_playwright, logged, tmp_path_factory):
    """``mlflow server`` on a free localhost port over ``logged``'s store: its base URL."""
    yield from _serve(logged[0], tmp_path_factory)


@pytest.fixture
def page(sync_playwright, server):
    with _browser_page(sync_playwright) as page:
        yield page


def _wait_for_texts(page, texts: list[str]) -> None:
    page.wait_for_function(
        "texts => texts.every(t => document.body.innerText.includes(t))", arg=texts
    )


def _box(page, text: str) -> dict:
    """Bounding box of the one element whose whole text is ``text``."""
    found = page.get_by_text(text, exact=True)
    assert found.count() == 1, f"{found.count()} elements read {text!r}"
    return found.bounding_box()


def _close_assistant(page) -> None:
    """MLflow 3's assistant side panel hides the right of the table: close it if open."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count() == 1 and close.is_visible():
        close.click()


def _screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # a rendered page, not a blank one
    print(f"screenshot: {path}")


def test_runs_list_shows_each_run_with_its_test_bpd(page, server, logged, tmp_path):
    _, experiment_id, _ = logged
    page.goto(f"{server}/#/experiments/{experiment_id}/runs")
    _wait_for_texts(page, list(RUNS))
    _close_assistant(page)
    # Metrics are not columns by default: add test/bpd as a person would.
    page.get_by_role("button", name="Columns").click()
    page.get_by_text("test/bpd", exact=True).click()
    page.keyboard.press("Escape")
    values = [str(v) for v in RUNS.values()]
    _wait_for_texts(page, values)
    for name, bpd in RUNS.items():  # each value on its run's row
        assert abs(_box(page, name)["y"] - _box(page, str(bpd))["y"]) < 3, name
    _screenshot(page, tmp_path / "runs.png")


def test_compare_view_puts_runs_side_by_side(page, server, logged, tmp_path):
    _, experiment_id, ids = logged
    runs = json.dumps(list(ids.values()))
    # The page scrolls inside a panel: a tall window shows run details to tags at once.
    page.set_viewport_size({"width": 1600, "height": 2200})
    page.goto(f"{server}/#/compare-runs?runs={runs}&experiments={json.dumps([experiment_id])}")
    values = [str(v) for v in RUNS.values()]
    _wait_for_texts(page, [*RUNS, *ids.values(), "test/bpd", *values])
    _close_assistant(page)
    for name, bpd in RUNS.items():  # each value in its run's column
        column = _box(page, ids[name])["x"]
        assert abs(_box(page, name)["x"] - column) < 3, name
        assert abs(_box(page, str(bpd))["x"] - column) < 3, name
    _screenshot(page, tmp_path / "compare.png")


# Issue 13: two DVC experiments of a project copy, seen in the UI. A learning rate 100x
# too small leaves the model far behind after 2 epochs (test NLL ~170 against ~105
# nats/image), so which version is champion does not depend on chance. DVC writes the
# values back into params.yaml, where they must read as floats: 0.0001, not 1e-05.
EXP_LRS = {"lr-good": 0.01, "lr-bad": 0.0001}
EXP_PARAMS = tiny_mapping(
    {
        "tune.n_trials": 0,
        "train.max_epochs": 2,
        "train.sample_every": 0,
        "train.progress_bar": "never",
        "evaluate.score_samples": 0,
        "evaluate.classifier_epochs": 1,
    }
)
MODEL_TRAINING_QUERY = "workflowType=machine_learning"


@pytest.fixture(scope="module")
def experiments(sync_playwright, tmp_path_factory):
    """Two ``dvc exp run``s (EXP_LRS) of a tiny project copy logged to its own SQLite store.

    Returns a dict: ``uri``, ``experiment_id``, ``train`` ({DVC experiment: train run}),
    ``model`` (the registered model's name), ``versions`` ({version: test NLL}),
    ``version_runs`` ({version: run id}), ``champion`` (its version), ``log`` (dvc's output).
    """
    from mlflow import MlflowClient

    env = project_env()
    repo = make_git_project(tmp_path_factory.mktemp("ui-exps") / "repo", EXP_PARAMS, env)
    log = "".join(
        run(["dvc", "exp", "run", "-n", name, "-S", f"train.lr={lr}"], repo, env)
        for name, lr in EXP_LRS.items()
    )
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rnnexp")
    runs = client.search_runs([experiment.experiment_id], "tags.`rnnexp.stage` = 'train'")
    train = {r.data.tags.get("rnnexp.dvc_exp"): r for r in runs}
    assert set(train) == set(EXP_LRS) and len(runs) == 2, log[-3000:]
    model = "rnnexp"  # tracking.registered_model null: the experiment's name
    registered = client.search_model_versions(f"name = '{model}'")
    versions = {
        int(v.version): client.get_run(v.run_id).data.metrics["test/nll_nats"] for v in registered
    }
    return {
        "uri": uri,
        "experiment_id": experiment.experiment_id,
        "experiment_tags": experiment.tags,
        "train": train,
        "model": model,
        "versions": versions,
        "version_runs": {int(v.version): v.run_id for v in registered},
        "champion": int(client.get_model_version_by_alias(model, "champion").version),
        "log": log,
    }


@pytest.fixture(scope="module")
def exp_server(sync_playwright, experiments, tmp_path_factory):
    """``mlflow server`` over the experiments' store: its base URL."""
    yield from _serve(experiments["uri"], tmp_path_factory)


@pytest.fixture
def exp_page(sync_playwright, exp_server):
    with _browser_page(sync_playwright) as page:
        yield page


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """Where screenshots stay after the session: $RNNEXP_TEST_ARTIFACTS/browser, else basetemp."""
    root = os.environ.get("RNNEXP_TEST_ARTIFACTS")
    if root:
        folder = Path(root) / "browser"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("ui-screenshots", numbered=False)


def _center_y(box: dict) -> float:
    return box["y"] + box["height"] / 2


def _boxes(page, text: str) -> list[dict]:
    """Bounding boxes of the visible elements whose text is ``text`` (exactly)."""
    found = page.get_by_text(text, exact=True)
    return [found.nth(i).bounding_box() for i in range(found.count()) if found.nth(i).is_visible()]


def _open_runs_table(page, server: str, experiments: dict) -> list[str]:
    """The experiment page through a Model-training link; waits for the train runs' names."""
    names = [r.info.run_name for r in experiments["train"].values()]
    page.goto(f"{server}/#/experiments/{experiments['experiment_id']}?{MODEL_TRAINING_QUERY}")
    _wait_for_texts(page, names)
    _close_assistant(page)
    return names


def _landing_tab(page, server: str, route: str) -> str:
    """Where ``route`` redirects to: the hash once it names a tab (runs, overview, traces)."""
    page.goto(f"{server}/{route}")
    page.wait_for_function("() => /^#\\/experiments\\/[^/?]+\\/[a-z-]+/.test(location.hash)")
    return page.evaluate("location.hash")


def test_experiment_declares_model_training(experiments):
    assert experiments["experiment_tags"].get("mlflow.experimentKind") == (
        "custom_model_development"
    )


@pytest.mark.xfail(
    strict=True,
    reason="MLflow 3.17's UI ignores mlflow.experimentKind when routing: a browser without "
    "a stored 'Model training' choice (localStorage mlflow.workflowType, default genai) "
    "opens every experiment on the GenAI overview",
)
def test_experiment_opens_on_the_runs_table_in_a_fresh_browser(
    exp_page, exp_server, experiments, artifacts
):
    tab = _landing_tab(exp_page, exp_server, f"#/experiments/{experiments['experiment_id']}")
    _screenshot(exp_page, artifacts / "experiment-fresh-browser.png")
    assert tab.split("?")[0].endswith("/runs"), tab


def test_model_training_link_opens_the_runs_table(exp_page, exp_server, experiments, artifacts):
    route = f"#/experiments/{experiments['experiment_id']}?{MODEL_TRAINING_QUERY}"
    tab = _landing_tab(exp_page, exp_server, route)
    assert tab.split("?")[0].endswith("/runs"), tab
    names = _open_runs_table(exp_page, exp_server, experiments)
    text = exp_page.evaluate("document.body.innerText")
    for header in ("Run Name", "Dataset"):
        assert header in text
    for genai in ("Token Usage", "Tool calls"):  # the GenAI overview's panels
        assert genai not in text
    assert len(names) == 2
    _screenshot(exp_page, artifacts / "runs-table.png")


def test_run_names_are_distinct_and_name_the_arch(exp_page, exp_server, experiments, artifacts):
    names = _open_runs_table(exp_page, exp_server, experiments)
    assert len(set(names)) == len(names) == len(EXP_LRS)
    for exp, r in experiments["train"].items():
        name = r.info.run_name
        assert "row_lstm" in name and f"[exp {exp}]" in name, name
        assert len(_boxes(exp_page, name)) == 1, name  # one row each
    good, bad = (experiments["train"][e].info.run_name for e in EXP_LRS)
    assert "lr1e-2" in good and "lr1e-4" in bad
    _screenshot(exp_page, artifacts / "run-names.png")


def test_datasets_column_shows_the_prepared_data(exp_page, exp_server, experiments, artifacts):
    _open_runs_table(exp_page, exp_server, experiments)
    for r in experiments["train"].values():
        (dataset,) = [i.dataset for i in r.inputs.dataset_inputs]
        assert dataset.name == "digits-17"
        label = f"{dataset.name} ({dataset.digest})"  # how the column prints it
        _wait_for_texts(exp_page, [label])
        row = _center_y(_box(exp_page, r.info.run_name))
        assert any(abs(_center_y(b) - row) < 3 for b in _boxes(exp_page, label)), (
            f"{label!r} not on the row of {r.info.run_name!r}"
        )
    _screenshot(exp_page, artifacts / "datasets.png")


def test_registered_model_page_shows_champion_on_the_better_version(
    exp_page, exp_server, experiments, artifacts
):
    versions, champion = experiments["versions"], experiments["champion"]
    assert len(versions) == len(EXP_LRS)
    best = min(versions, key=versions.get)
    assert champion == best, versions
    # the better version is the lr-good experiment's model
    assert experiments["version_runs"][best] == experiments["train"]["lr-good"].info.run_id
    assert f"registered {experiments['model']} version {best}: champion" in experiments["log"]
    exp_page.goto(f"{exp_server}/#/models/{experiments['model']}")
    _wait_for_texts(exp_page, [f"Version {v}" for v in versions] + ["champion", "challenger"])
    _close_assistant(exp_page)
    for version in versions:
        row = exp_page.get_by_role("row").filter(has_text=f"Version {version}")
        assert row.count() == 1, version
        alias = "champion" if version == best else "challenger"
        assert f"@\xa0{alias}" in row.inner_text(), (version, row.inner_text())
        # the alias lies within the version's row, as a person sees it
        row_box = row.bounding_box()
        alias_box = row.get_by_text(alias).bounding_box()
        assert row_box["y"] <= _center_y(alias_box) <= row_box["y"] + row_box["height"]
        assert abs(_center_y(_box(exp_page, f"Version {version}")) - _center_y(alias_box)) < 5
    _screenshot(exp_page, artifacts / "registered-model.png")


def test_models_tab_lists_each_trained_model_with_its_test_nll(
    exp_page, exp_server, experiments, artifacts
):
    route = f"#/experiments/{experiments['experiment_id']}/models?{MODEL_TRAINING_QUERY}"
    exp_page.set_viewport_size({"width": 3200, "height": 1000})  # the grid draws visible columns
    exp_page.goto(f"{exp_server}/{route}")
    names = [r.info.run_name for r in experiments["train"].values()]
    _wait_for_texts(exp_page, names)
    _close_assistant(exp_page)
    try:
        _wait_for_texts(exp_page, ["test/nll_nats"])  # the linked metrics' column
    finally:
        (artifacts / "models-tab.txt").write_text(exp_page.evaluate("document.body.innerText"))
        _screenshot(exp_page, artifacts / "models-tab.png")
    # each model's row (the one naming its source run) shows the test NLL linked to it
    for r in experiments["train"].values():
        row = exp_page.get_by_role("row").filter(has_text=r.info.run_name)
        assert row.count() == 1, r.info.run_name
        assert str(r.data.metrics["test/nll_nats"]) in row.inner_text(), row.inner_text()
