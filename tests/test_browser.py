"""What a person sees in MLflow's UI: our train runs in the runs list and the compare view.

A real ``mlflow server`` over a SQLite store with two train runs logged through
:func:`rnnexp.tracking.tracked_run`, driven by headless Chromium (Debian's
``chromium``: ``sudo bash scripts/browser``) through Playwright for Python
(``pip install -e .[dev]``). Skips, saying why, when either is missing.
Screenshots land in each test's ``tmp_path``.

MLflow 3.x routes (hash router, see ``Routes`` in mlflow/server/js): the runs list is
``#/experiments/<id>/runs``, the compare view
``#/compare-runs?runs=["<id>",...]&experiments=["<id>"]``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port, start_server, stop_server

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


@pytest.fixture(scope="module")
def server(sync_playwright, logged, tmp_path_factory):
    """``mlflow server`` on a free localhost port over ``logged``'s store: its base URL."""
    uri, _, _ = logged
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


@pytest.fixture
def page(sync_playwright, server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_WAIT_MS)
            yield page
        finally:
            browser.close()


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
