"""``rnnexp compare``: train runs read back from a real MLflow store, as text, CSV, Markdown."""

from __future__ import annotations

import csv
import io
import re
import time
import uuid

import pytest

from rnnexp import tracking
from rnnexp.commands.compare import (
    KEY_METRICS,
    KEY_PARAMS,
    compare_runs,
    compare_table,
    format_number,
    format_table,
)
from rnnexp.errors import RnnexpError

# Metric values with more digits than the human formats show.
A_METRICS = {
    "best/val_bpd": 1.2999876,
    "test/bpd": 1.234567891,
    "test/nll_nats": 91.87654321,
    "baseline/nll_nats": 140.5,
}
B_METRICS = {"best/val_bpd": 2.0004999}  # not evaluated: no test/baseline metrics


@pytest.fixture(scope="module")
def logged(store, tiny_params):
    """In a fresh experiment of the session store: train runs A (DVC exp-one) and B
    (exp-two), a tune run, and a train run of another experiment, in that order."""
    experiment = f"compare-{uuid.uuid4().hex[:8]}"
    params_a = tiny_params(f"tracking.experiment={experiment}")
    params_b = tiny_params(
        f"tracking.experiment={experiment}", "model.arch=pixelcnn", "model.hidden=8"
    )
    other = tiny_params(f"tracking.experiment={experiment}-other")
    ids = {}

    def log(key, params, stage, metrics, dvc_exp=None, name=None):
        with pytest.MonkeyPatch.context() as mp:
            if dvc_exp:
                mp.setenv("DVC_EXP_NAME", dvc_exp)
            else:
                mp.delenv("DVC_EXP_NAME", raising=False)
            with tracking.tracked_run(params, stage, run_name=name or key) as run:
                for step, value in enumerate(metrics.pop("curve", [])):
                    run.log_metrics({"val/bpd": value}, step=step)
                run.log_metrics(metrics)
        ids[key] = run.run_id
        time.sleep(0.01)  # distinct start times (ms): "newest first" is well defined

    log("a", params_a, "train", {**A_METRICS, "curve": [3.0, 2.5, 2.25]}, "exp-one", "row-a")
    log("b", params_b, "train", dict(B_METRICS), "exp-two", "pixel-b")
    log("tune", params_a, "tune", {"best/val_bpd": 1.1}, "exp-one")
    log("other", other, "train", {"test/bpd": 9.0}, "exp-one")
    return params_a, ids


def test_experiment_selects_its_train_runs_newest_first(store, logged):
    params, ids = logged
    runs = tracking.find_runs(params)
    assert [r["run_id"] for r in runs] == [ids["b"], ids["a"]]
    b, a = runs
    assert a["run_name"] == "row-a" and a["status"] == "FINISHED"
    assert a["tags"]["rnnexp.stage"] == "train"
    assert a["params"]["model.arch"] == "row_lstm" and b["params"]["model.arch"] == "pixelcnn"
    assert a["metrics"]["test/bpd"] == A_METRICS["test/bpd"]
    assert a["metrics"]["val/bpd"] == 2.25  # the latest step of a curve
    assert b["start_time"] > a["start_time"]


def test_experiment_by_name_and_by_uri(store, logged):
    params, ids = logged
    other = f"{params.tracking.experiment}-other"
    by_uri = tracking.find_runs(tracking.tracking_uri(params), experiment=other)
    assert [r["run_id"] for r in by_uri] == [ids["other"]]
    # Any stage when asked: the tune run joins the train runs.
    any_stage = tracking.find_runs(params, stage=None)
    assert [r["run_id"] for r in any_stage] == [ids["tune"], ids["b"], ids["a"]]


def test_every_page_of_search_results_is_read(store, logged, monkeypatch):
    params, ids = logged
    monkeypatch.setattr(tracking._queries, "SEARCH_PAGE", 1)
    runs = tracking.find_runs(params, stage=None)
    assert [r["run_id"] for r in runs] == [ids["tune"], ids["b"], ids["a"]]


def test_run_ids_select_exactly_those_runs_in_order(store, logged):
    params, ids = logged
    runs = tracking.find_runs(params, [ids["other"], ids["a"], ids["tune"]])
    assert [r["run_id"] for r in runs] == [ids["other"], ids["a"], ids["tune"]]


def test_dvc_experiment_tag_filters_train_runs(store, logged):
    params, ids = logged
    assert [r["run_id"] for r in tracking.find_runs(params, dvc_exp="exp-one")] == [ids["a"]]
    assert [r["run_id"] for r in tracking.find_runs(params, dvc_exp="exp-two")] == [ids["b"]]
    assert tracking.find_runs(params, dvc_exp="no-such-exp") == []
    assert tracking.find_runs(params, dvc_exp='it\'s "quoted"') == []  # no filter-string error


def test_unknown_run_or_experiment_is_a_clear_error(store, logged):
    params, ids = logged
    with pytest.raises(RnnexpError, match="run '0{32}' not found in the MLflow store sqlite"):
        tracking.find_runs(params, [ids["a"], "0" * 32])
    with pytest.raises(RnnexpError, match="experiment 'nope' not found"):
        tracking.find_runs(params, experiment="nope")
    with pytest.raises(RnnexpError, match="not both"):
        tracking.find_runs(params, [ids["a"]], dvc_exp="exp-one")


def test_compare_checks_the_store_first_and_creates_nothing(store, logged, monkeypatch):
    params, _ = logged
    name = f"absent-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RnnexpError, match=f"experiment '{name}' not found"):
        compare_runs(params, experiment=name)
    assert store.get_experiment_by_name(name) is None  # the store check only reads
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError, match="127.0.0.1:9: the MLflow tracking store"):
        compare_runs(params)
    assert time.monotonic() - start < 30  # no minutes of MLflow's HTTP retries


def test_table_has_key_params_and_metrics_with_empty_cells_for_missing(store, logged):
    params, ids = logged
    columns, rows = compare_table(tracking.find_runs(params))
    assert columns == ["run_id", "run_name", "status", "dvc_exp", *KEY_PARAMS, *KEY_METRICS]
    b, a = (dict(zip(columns, row, strict=True)) for row in rows)
    assert a == {
        "run_id": ids["a"],
        "run_name": "row-a",
        "status": "FINISHED",
        "dvc_exp": "exp-one",
        "model.arch": "row_lstm",
        "model.hidden": "4",
        "model.layers": "1",
        "train.lr": "0.01",
        "train.max_epochs": "3",
        "data.task": "unconditional",
        **A_METRICS,
    }
    assert (b["model.arch"], b["model.hidden"], b["best/val_bpd"]) == ("pixelcnn", "8", 2.0004999)
    assert b["test/bpd"] is None and b["baseline/nll_nats"] is None


def test_csv_round_trips_exact_values(store, logged):
    params, ids = logged
    text = format_table(*compare_table(tracking.find_runs(params)), "csv")
    b, a = list(csv.DictReader(io.StringIO(text)))
    assert a["run_id"] == ids["a"] and a["dvc_exp"] == "exp-one" and a["model.arch"] == "row_lstm"
    for key, value in A_METRICS.items():
        assert float(a[key]) == value, key
    assert float(b["best/val_bpd"]) == B_METRICS["best/val_bpd"]
    assert b["test/bpd"] == "" and b["test/nll_nats"] == "" and b["baseline/nll_nats"] == ""


def test_markdown_table(store, logged):
    params, ids = logged
    lines = format_table(*compare_table(tracking.find_runs(params)), "markdown").splitlines()
    assert len(lines) == 4  # header, separator, two runs
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, rule, b, a = cells
    assert header[:4] == ["run_id", "run_name", "status", "dvc_exp"]
    assert all(re.fullmatch(r"---:?", c) for c in rule) and len(rule) == len(header)
    row = dict(zip(header, a, strict=True))
    assert row["run_id"] == ids["a"] and row["model.arch"] == "row_lstm"
    assert row["test/bpd"] == "1.2346" and row["test/nll_nats"] == "91.8765"
    assert row["baseline/nll_nats"] == "140.5000"
    assert dict(zip(header, b, strict=True))["test/bpd"] == ""
    aligned = dict(zip(header, rule, strict=True))
    assert aligned["test/bpd"] == "---:" and aligned["model.hidden"] == "---:"
    assert aligned["model.arch"] == "---" and aligned["run_name"] == "---"


def test_text_table_columns_are_aligned(store, logged):
    params, ids = logged
    columns, rows = compare_table(tracking.find_runs(params))
    lines = format_table(columns, rows, "text").splitlines()
    header, rule, b, a = lines
    spans = [m.span() for m in re.finditer(r"-+", rule)]  # one dash run per column
    assert len(spans) == len(columns)
    for line in lines:  # nothing crosses the gutters between columns
        assert all(line[end : end + 2].strip() == "" for _, end in spans[:-1]), line

    def cells(line):
        return [line[start:end].strip() for start, end in spans]

    assert cells(header) == columns
    row = dict(zip(columns, cells(a), strict=True))
    assert row["run_id"] == ids["a"] and row["model.arch"] == "row_lstm"
    assert row["test/bpd"] == "1.2346" and row["best/val_bpd"] == "1.3000"
    assert dict(zip(columns, cells(b), strict=True))["test/bpd"] == ""
    # Numbers are right-aligned (end at their column's end), words left-aligned.
    i, j = columns.index("test/nll_nats"), columns.index("run_name")
    assert a[: spans[i][1]].endswith("91.8765")
    assert a[spans[j][0] :].startswith("row-a")


def test_compare_runs_renders_or_says_why_not(store, logged):
    params, ids = logged
    out = compare_runs(params, [ids["a"]], fmt="markdown")
    assert out.startswith("| run_id |") and ids["a"] in out and len(out.splitlines()) == 3
    assert compare_runs(params, dvc_exp="exp-two", fmt="csv").count(ids["b"]) == 1
    with pytest.raises(RnnexpError, match="no train runs in experiment .*, DVC experiment 'x'"):
        compare_runs(params, dvc_exp="x")
    with pytest.raises(RnnexpError, match="unknown table format 'json'"):
        compare_runs(params, fmt="json")


@pytest.mark.parametrize(
    "value, text",
    [
        (1.234567891, "1.2346"),
        (1523.456789, "1523.4568"),
        (0.0, "0.0000"),
        (-0.5, "-0.5000"),
        (1.5e-5, "1.5e-05"),
        (3.0e12, "3e+12"),
        (float("nan"), "nan"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_format_table_without_rows_is_the_header():
    columns, rows = compare_table([], params=["model.arch"], metrics=["test/bpd"])
    assert format_table(columns, rows, "csv") == ",".join(columns) + "\n"
    assert format_table(columns, rows, "text").splitlines()[0].split() == columns
