"""The ``rnnexp`` command: fetch -> prepare -> train -> evaluate, sample, and failures.

Stages run in a scratch working directory holding a copy of params.yaml, so no
output lands in the repository; MLflow logs to the session's SQLite store.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import tiny
from mlflow import MlflowClient
from PIL import Image

from rnnexp.cli import main
from rnnexp.evaluation.images import make_grid
from rnnexp.models.sampling import sample_naive
from rnnexp.training.checkpoint import load_checkpoint

TRAIN_SET = tiny({"train.batch_size": 128})  # 2 epochs, a 4-image grid after each
EVAL_SET = ["evaluate.n_samples=6", "evaluate.seed=3", "evaluate.score_samples=300"]
ENDED = {"FINISHED", "FAILED", "KILLED"}
PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def sets(overrides):
    return [arg for text in overrides for arg in ("--set", text)]


def run_cli(*argv):
    """(exit status, stdout, stderr) of ``rnnexp argv...``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def new_runs(client, all_runs, before):
    known = {r.info.run_id for r in before}
    return [r for r in all_runs(client) if r.info.run_id not in known]


@pytest.fixture(scope="module")
def workdir(store, tmp_path_factory):
    """A scratch cwd holding a copy of the repo's params.yaml (store: env + cwd set)."""
    path = tmp_path_factory.mktemp("workspace")
    shutil.copy(PARAMS_YAML, path / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        yield path


@pytest.fixture(scope="module")
def pipeline(workdir, store):
    """Run the stages in order (tune with 0 trials); each stage's (status, stdout, stderr)."""
    results = {}
    for stage, extra in [
        ("fetch", []),
        ("prepare", []),
        ("tune", sets(["tune.n_trials=0"])),
        ("classifier", sets(["evaluate.classifier_epochs=4"])),
        ("train", sets(TRAIN_SET)),
        ("evaluate", sets(EVAL_SET)),
    ]:
        results[stage] = run_cli(stage, *extra)
        assert results[stage][0] == 0, (stage, results[stage])
    return results


@pytest.fixture(scope="module")
def model_run_id(pipeline, workdir):
    return load_checkpoint(workdir / "models" / "last.ckpt").run_id


# --------------------------------------------------------------------------- bad params


def bad_params_text(kind):
    """params.yaml with one mistake: an unknown key, or ``lr: 1e-3`` (a YAML string)."""
    params = yaml.safe_load(PARAMS_YAML.read_text())
    if kind == "unknown key":
        params["train"]["learning_rate"] = 0.1
        return yaml.safe_dump(params, sort_keys=False), "train.learning_rate"
    params["train"]["lr"] = "LR_PLACEHOLDER"
    text = yaml.safe_dump(params, sort_keys=False).replace("LR_PLACEHOLDER", "1e-3")
    assert "lr: 1e-3\n" in text
    return text, "train.lr"


@pytest.mark.parametrize("stage", ["fetch", "train"])
@pytest.mark.parametrize("kind", ["unknown key", "string lr"])
def test_bad_params_exit_2_naming_key_and_file_without_run_or_output(
    store, all_runs, tmp_path, monkeypatch, stage, kind
):
    monkeypatch.chdir(tmp_path)
    text, key = bad_params_text(kind)
    (tmp_path / "bad.yaml").write_text(text)
    before = all_runs(store)
    code, out, err = run_cli(stage, "--params", "bad.yaml")
    assert code == 2
    assert key in err and "bad.yaml" in err
    if kind == "string lr":
        assert "1e-3" in err
    assert new_runs(store, all_runs, before) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


# --------------------------------------------------------------------------- the pipeline


def test_stages_write_their_outputs(pipeline, workdir):
    assert sorted(p.name for p in (workdir / "data" / "raw").iterdir()) == [
        "dataset.npz",
        "info.json",
    ]
    prepared = sorted(p.name for p in (workdir / "data" / "prepared").iterdir())
    assert prepared == ["meta.json", "test.npz", "train.npz", "val.npz"]
    assert sorted(p.name for p in (workdir / "models").iterdir()) == [
        "best.ckpt",
        "classifier.pt",
        "last.ckpt",
        "tuned",  # the tune stage's best trial (none here: tune.n_trials is 0)
    ]
    assert sorted(p.name for p in (workdir / "models" / "tuned").iterdir()) == ["trial.json"]
    assert sorted(p.name for p in (workdir / "reports").iterdir()) == [
        "best_params.yaml",
        "completions.png",
        "metrics.json",
        "nll_heatmap.png",
        "samples.png",
        "tune_trials.csv",
        "val_curve.csv",
    ]
    assert "fetch: 1797 images" in pipeline["fetch"][2]  # stage lines: stderr
    assert "train: 2 epochs" in pipeline["train"][2]


def test_metrics_json_is_nested_with_nll_and_bpd(pipeline, workdir):
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert {"test", "baseline"} <= set(metrics)
    meta = json.loads((workdir / "data" / "prepared" / "meta.json").read_text())
    assert metrics["test"]["images"] == meta["splits"]["test"]
    for group in ("test", "baseline"):
        nats, bpd = metrics[group]["nll_nats"], metrics[group]["bpd"]
        assert 0 < nats < 64 * math.log(17)  # better than uniform over 17 levels
        assert bpd == pytest.approx(nats / (64 * math.log(2)), rel=1e-12)


def test_metrics_json_has_sample_scores_of_the_stage_classifier(pipeline, workdir):
    from rnnexp.evaluation.classifier import load_classifier

    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    _, info = load_classifier(workdir / "models" / "classifier.pt")
    assert info["epochs"] == 4  # evaluate.classifier_epochs of the classifier stage
    assert metrics["classifier"]["test_accuracy"] == info["test_accuracy"]
    assert f"classifier: test accuracy {info['test_accuracy']:.4f}" in pipeline["classifier"][2]
    assert metrics["sample"]["samples"] == 300  # evaluate.score_samples
    # real train images sit far closer to real test images than per-pixel noise does
    floor, baseline = metrics["classifier"]["real_train_frechet"], metrics["baseline"]["frechet"]
    assert 0 < floor < baseline / 10
    assert 0 < metrics["sample"]["frechet"]
    # digits have labels: an unconditional model's completions of test images are scored
    assert 0 <= metrics["completion"]["accuracy"] <= 1
    assert f"over 300 samples, baseline {baseline:.2f}" in pipeline["evaluate"][2]


def test_completions_png_is_rows_of_source_output_target(pipeline, workdir):
    with Image.open(workdir / "reports" / "completions.png") as image:
        assert image.size == (3 * 34 + 2, 6 * 34 + 2)  # 6 test images, 3 columns


def test_val_curve_has_one_row_per_epoch(pipeline, workdir):
    with open(workdir / "reports" / "val_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    history = load_checkpoint(workdir / "models" / "last.ckpt").history
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for row, expected in zip(rows, history, strict=True):
        for column in ("train_nll", "train_bpd", "val_nll", "val_bpd"):
            assert float(row[column]) == expected[column]


def test_samples_png_is_the_requested_grid(pipeline, workdir):
    with Image.open(workdir / "reports" / "samples.png") as image:
        image.load()
        assert image.format == "PNG"
        assert image.size == (3 * 34 + 2, 2 * 34 + 2)  # 6 samples: 3 columns, 2 rows


def test_evaluate_logs_into_the_model_run(pipeline, workdir, store, model_run_id):
    run = store.get_run(model_run_id)
    assert run.data.tags["rnnexp.stage"] == "train"
    assert run.info.status == "FINISHED"
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert run.data.metrics["test/nll_nats"] == metrics["test"]["nll_nats"]
    assert run.data.metrics["baseline/bpd"] == metrics["baseline"]["bpd"]
    assert run.data.metrics["sample/frechet"] == metrics["sample"]["frechet"]
    assert run.data.metrics["classifier/test_accuracy"] == metrics["classifier"]["test_accuracy"]
    assert run.data.tags["rnnexp.evaluated"] == "true"
    assert f"model run {model_run_id}" in pipeline["evaluate"][2]
    # and the train run has its curves per epoch
    steps = [m.step for m in store.get_metric_history(model_run_id, "val/bpd")]
    assert sorted(steps) == [0, 1]


def test_evaluate_against_another_store_creates_a_tagged_run(
    pipeline, workdir, model_run_id, tmp_path, monkeypatch
):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, out, err = run_cli("evaluate", "--out", "reports_fresh", *sets(EVAL_SET))
    assert code == 0, err
    assert "model run not in this store" in err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rnnexp")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["rnnexp.model_run_id"] == model_run_id
    assert run.data.tags["rnnexp.stage"] == "evaluate"
    metrics = json.loads((workdir / "reports_fresh" / "metrics.json").read_text())
    assert run.data.metrics["test/nll_nats"] == metrics["test"]["nll_nats"]
    # the same checkpoint and seed give the same figures as the first evaluation
    first = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert metrics == first


# --------------------------------------------------------------------------- sample


def test_sample_writes_the_requested_count_deterministically(pipeline, workdir):
    ckpt = str(workdir / "models" / "best.ckpt")
    outputs = {}
    for name, seed in [("a", "3"), ("b", "3"), ("c", "4")]:
        code, out, err = run_cli(
            "sample", "--checkpoint", ckpt, "--n", "5", "--seed", seed, "--out", f"{name}.png"
        )
        assert code == 0, err
        with Image.open(workdir / f"{name}.png") as image:
            assert image.format == "PNG"
            outputs[name] = np.asarray(image)
    assert outputs["a"].shape == (2 * 34 + 2, 3 * 34 + 2)  # 5 images: 3 columns, 2 rows
    assert np.array_equal(outputs["a"], outputs["b"])
    assert not np.array_equal(outputs["a"], outputs["c"])
    # it is the generator's draw for that seed, not just any grid of 5
    loaded = load_checkpoint(ckpt)
    images = sample_naive(loaded.generator, 5, 8, 8, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(outputs["a"], np.asarray(make_grid(images.numpy(), 17)))


def test_classifier_of_other_data_is_refused(pipeline, workdir, tmp_path):
    from rnnexp.evaluation.classifier import load_classifier, save_classifier

    model, info = load_classifier(workdir / "models" / "classifier.pt")
    other = tmp_path / "other.pt"
    save_classifier(model, {**info, "data_hash": "0" * 64}, other)
    code, _, err = run_cli("evaluate", "--classifier", str(other), "--out", "reports_other")
    assert code == 2
    assert str(other) in err and "other data" in err and "dvc repro classifier" in err
    assert not (workdir / "reports_other").exists()


def test_evaluate_without_classifier_skips_scores_and_says_so(pipeline, workdir):
    code, out, err = run_cli(
        "evaluate", "--classifier", "missing.pt", "--out", "reports_nocls", *sets(EVAL_SET)
    )
    assert code == 0, err
    assert "sample scores skipped: missing.pt not found" in err
    metrics = json.loads((workdir / "reports_nocls" / "metrics.json").read_text())
    assert {"sample", "classifier"}.isdisjoint(metrics)
    assert "frechet" not in metrics["baseline"]
    first = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert metrics["test"] == first["test"]


def test_classifier_stage_on_unlabelled_data_writes_a_marker(workdir, store, all_runs, tmp_path):
    from rnnexp.evaluation.classifier import ClassifierUnavailable, load_classifier

    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for n in range(12):
        Image.fromarray(rng.integers(0, 255, (4, 4), dtype=np.uint8)).save(folder / f"{n}.png")
    data = sets(["data.source=image-folder", f"data.path={folder}", "data.levels=4"])
    assert run_cli("fetch", *data, "--out", "raw_flat")[0] == 0
    assert run_cli("prepare", *data, "--raw", "raw_flat", "--out", "prep_flat")[0] == 0
    before = all_runs(store)
    code, out, err = run_cli("classifier", "--prepared", "prep_flat", "--out", "flat/cls.pt")
    assert code == 0, err
    assert "none trained" in err and "has no labels" in err
    with pytest.raises(ClassifierUnavailable, match="has no labels"):
        load_classifier(workdir / "flat" / "cls.pt")
    assert new_runs(store, all_runs, before) == []  # nothing was trained


def test_sample_rejects_bad_count(workdir):
    code, _, err = run_cli("sample", "--n", "0", "--out", "zero.png")
    assert code == 2 and "--n" in err
    assert not (workdir / "zero.png").exists()


# --------------------------------------------------------------------------- failing stages


def test_prepare_on_missing_raw_dir_fails_cleanly(workdir, store, all_runs):
    before = all_runs(store)
    code, _, err = run_cli("prepare", "--raw", "no_such_raw", "--out", "prepared_x")
    assert code == 2
    assert "no_such_raw" in err and "Traceback" not in err
    assert not (workdir / "prepared_x").exists()
    assert not list(workdir.glob(".prepared_x*"))
    assert new_runs(store, all_runs, before) == []


def test_fetch_of_empty_image_folder_fails_cleanly(workdir, store, all_runs, tmp_path):
    empty = tmp_path / "no_images"
    empty.mkdir()
    before = all_runs(store)
    code, _, err = run_cli(
        "fetch",
        "--set",
        "data.source=image-folder",
        "--set",
        f"data.path={empty}",
        "--out",
        "raw_x",
    )
    assert code == 2
    assert str(empty) in err and "Traceback" not in err
    assert not (workdir / "raw_x").exists()
    assert not list(workdir.glob(".raw_x*"))
    (run,) = new_runs(store, all_runs, before)
    assert run.info.status == "FAILED"
    assert str(empty) in run.data.tags["rnnexp.error"]


def test_no_run_is_left_running(pipeline, store, all_runs):
    runs = all_runs(store)
    assert runs  # the pipeline's runs at least
    stages = {r.data.tags.get("rnnexp.stage") for r in runs}
    assert {"fetch", "prepare", "train"} <= stages
    assert {r.info.status for r in runs} <= ENDED


def test_console_script_flushes_its_output_and_keeps_the_exit_status(tmp_path):
    """The `rnnexp` script ends with os._exit: output through pipes must still arrive."""
    import subprocess
    import sys

    script = Path(sys.executable).parent / "rnnexp"
    ok = subprocess.run(
        [script, "server", "--dry-run", "--root", str(tmp_path / "srv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "mlflow server" in ok.stdout.replace("'", "")
    bad = subprocess.run(
        [script, "sample", "--n", "0", "--params", str(PARAMS_YAML)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert "--n must be at least 1" in bad.stderr
