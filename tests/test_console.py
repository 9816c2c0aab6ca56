"""The console of the entry points: quiet libraries, one line per trial, per-epoch
progress off a terminal, --verbose, the rank-zero filter, and the evaluation device."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import subprocess
import warnings

import pytest
import torch
from conftest import PARAMS_YAML
from helpers import BIN, TRAINED, project_env, set_args, tiny
from optuna.exceptions import ExperimentalWarning

from rnnexp import console
from rnnexp.cli import main
from rnnexp.errors import RnnexpError
from rnnexp.util.devices import torch_device

NOISE = ("Tip:", "LeafSpec", "ExperimentalWarning", "GPU available", "TPU available")
SPACE = "tune.space={train.lr: {type: float, low: 1.0e-5, high: 3.0e-2, log: true}}"
ETA = r"\(elapsed \d+:\d\d:\d\d, eta \d+:\d\d:\d\d\)"


@pytest.fixture
def fresh_console():
    """Undo a test's console set-up: the rnnexp handler and the libraries' levels."""
    yield
    logger = logging.getLogger(console.LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, console.ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    for name in console.QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def rnnexp_cmd(stage, tmp_path, prepared_dir, *extra):
    """``rnnexp <stage>`` on the digits subsample, outputs under ``tmp_path``."""
    out = ["--out", str(tmp_path / ("reports" if stage == "tune" else "models"))]
    return [str(BIN / "rnnexp"), stage, "--params", str(PARAMS_YAML),
            "--prepared", str(prepared_dir), *out, *extra]  # fmt: skip


def console_of(cmd, tmp_path, uri, **env):
    """The lines a person would see (stdout and stderr) of a successful ``cmd``."""
    out = subprocess.run(
        cmd, cwd=tmp_path, env=project_env(MLFLOW_TRACKING_URI=uri, **env),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return (out.stdout + out.stderr).splitlines()


# --------------------------------------------------------------------------- end to end


def test_tune_prints_one_line_per_trial_and_no_library_noise(tmp_path, prepared_dir, mlflow_uri):
    n_trials = 2
    sets = set_args(tiny(TRAINED, SPACE, "tune.n_trials=2", "tune.epochs=2",
                         f"tune.storage=sqlite:///{tmp_path}/optuna.db"))  # fmt: skip
    lines = console_of(rnnexp_cmd("tune", tmp_path, prepared_dir, *sets), tmp_path, mlflow_uri)
    noisy = [line for line in lines if any(word in line for word in NOISE)]
    assert noisy == [], "\n".join(lines)
    for n in range(n_trials):
        about = [line for line in lines if line.startswith(f"tune: trial {n} ")]
        assert 1 <= len(about) <= 2, "\n".join(lines)
        assert re.fullmatch(
            rf"tune: trial {n} complete val/bpd \d+\.\d{{4}} \(2 epochs, \d+\.\d s\) lr=\S+",
            about[-1],
        ), about
    # the trials' lines and the study's summary: nothing else
    assert len(lines) <= 2 * n_trials + 1, "\n".join(lines)
    assert lines[-1].startswith("tune: study rnnexp-") and "2 trials" in lines[-1]


def test_train_and_evaluate_print_their_lines_and_no_mlflow_chatter(
    tmp_path, prepared_dir, mlflow_uri
):
    # train logs a pyfunc model, evaluate registers it: MLflow's own lines stay quiet
    sets = set_args(tiny(TRAINED, "train.use_tuned=false", "evaluate.score_samples=0"))
    lines = console_of(rnnexp_cmd("train", tmp_path, prepared_dir, *sets), tmp_path, mlflow_uri)
    checkpoint = str(tmp_path / "models" / "best.ckpt")
    evaluate = [str(BIN / "rnnexp"), "evaluate", "--params", str(PARAMS_YAML),
                "--checkpoint", checkpoint, "--prepared", str(prepared_dir),
                "--out", str(tmp_path / "reports"), *sets]  # fmt: skip
    lines += console_of(evaluate, tmp_path, mlflow_uri)
    ours = ("train: ", "evaluate: ")
    assert [line for line in lines if not line.startswith(ours)] == [], "\n".join(lines)
    assert any(re.match(r"evaluate: registered \S+ version \d+: (champion|challenger)", line)
               for line in lines), lines  # fmt: skip


def test_verbose_brings_back_debug_lines_and_the_libraries_output(
    tmp_path, prepared_dir, mlflow_uri
):
    sets = set_args(tiny(TRAINED, "train.max_epochs=1", "train.use_tuned=false"))
    # (without --verbose the tune test above sees neither: at most its own lines)
    cmd = rnnexp_cmd("train", tmp_path, prepared_dir, *sets, "--verbose")
    lines = console_of(cmd, tmp_path, mlflow_uri)
    debug = [line for line in lines if line.startswith("rnnexp: debug: rnnexp.training.fit:")]
    assert len(debug) == 1 and "accelerator auto" in debug[0], lines
    assert [line for line in lines if line.startswith("GPU available: ")], lines
    assert [line for line in lines if line.startswith("train: 1 epochs")], lines


def test_off_a_terminal_training_logs_each_epoch_with_an_eta(
    store, prepared_dir, tmp_path, monkeypatch, fresh_console
):
    monkeypatch.delenv("CI", raising=False)
    sets = set_args(tiny(TRAINED, "train.progress_bar=auto", "train.use_tuned=false"))
    err = io.StringIO()  # not a terminal
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(rnnexp_cmd("train", tmp_path, prepared_dir, *sets)[1:]) == 0
    epochs = [line for line in err.getvalue().splitlines() if line.startswith("train: epoch ")]
    assert len(epochs) == 3, err.getvalue()
    for n, line in enumerate(epochs, start=1):
        assert re.fullmatch(rf"train: epoch {n}/3 val/bpd \d+\.\d{{4}} {ETA}", line), line
    assert epochs[-1].endswith("eta 0:00:00)")


# --------------------------------------------------------------------------- units


def test_rank_zero_filter_drops_info_of_other_ranks(monkeypatch, fresh_console):
    console.setup(verbose=False)
    log = logging.getLogger("rnnexp.tests")

    def shown():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            log.info("an info line")
            log.warning("a warning")
        return err.getvalue().splitlines()

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    assert shown() == ["an info line", "rnnexp: a warning"]
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's DDP launcher, second process
    assert shown() == ["rnnexp: a warning"]
    monkeypatch.setenv("RANK", "0")  # torchrun's rank wins
    assert shown() == ["an info line", "rnnexp: a warning"]
    monkeypatch.setenv("RANK", "3")
    assert shown() == ["rnnexp: a warning"]


def test_setup_is_replaced_not_repeated_and_env_turns_on_debug(monkeypatch, fresh_console):
    logger = logging.getLogger(console.LOGGER)
    monkeypatch.delenv(console.ENV, raising=False)
    assert console.setup(verbose=False) is False
    assert console.setup(verbose=False) is False
    assert sum(isinstance(h, console.ConsoleHandler) for h in logger.handlers) == 1
    assert logger.getEffectiveLevel() == logging.INFO
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert rank_zero.getEffectiveLevel() == logging.WARNING
    monkeypatch.setenv(console.ENV, "debug")
    assert console.setup(verbose=False) is True and console.current() is True
    assert logger.getEffectiveLevel() == logging.DEBUG
    assert rank_zero.level == logging.NOTSET  # Lightning's own INFO again
    monkeypatch.setenv(console.ENV, "warning")
    console.setup(verbose=False)
    assert logger.getEffectiveLevel() == logging.WARNING


def test_quiet_console_ignores_optunas_and_lightnings_known_warnings(fresh_console):
    message = "RetryHeartbeatStaleTrialCallback is experimental (supported from v2.8.0). The"
    with warnings.catch_warnings(record=True) as seen:
        console.setup(verbose=False)
        warnings.warn(message, ExperimentalWarning, stacklevel=1)
        warnings.warn("Argument ``heartbeat_interval`` is an experimental feature.",
                      ExperimentalWarning, stacklevel=1)  # fmt: skip
        checkpoint_dir = "Checkpoint directory /x/models exists and is not empty."
        warnings.warn(checkpoint_dir, UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
        assert [str(w.message) for w in seen] == ["something else"]
        console.setup(verbose=True)
        warnings.warn(message, ExperimentalWarning, stacklevel=1)
        assert [w.category for w in seen] == [UserWarning, ExperimentalWarning]


def test_progress_line_and_its_eta():
    line = console.progress_line("train:", 3, 30, "val/bpd 1.2345", 62.0, 3)
    assert line == "train: epoch 3/30 val/bpd 1.2345 (elapsed 0:01:02, eta 0:09:18)"
    # resumed after epoch 10: 2 epochs ran in this process, 20 s each
    resumed = console.progress_line("tune: trial 4", 12, 15, "", 40.0, 2)
    assert resumed == "tune: trial 4 epoch 12/15 (elapsed 0:00:40, eta 0:01:00)"


def test_trial_line_names_params_by_key_unless_ambiguous():
    params = {"train.lr": 0.004238, "model.hidden": 32, "model.arch": "row_lstm"}
    line = console.trial_line(3, "complete", "val/bpd", 1.23456, 10, 12.34, params)
    assert line == (
        "tune: trial 3 complete val/bpd 1.2346 (10 epochs, 12.3 s) "
        "lr=0.004238, hidden=32, arch=row_lstm"
    )
    both = {"train.seed": 1, "model.seed": 2}  # the same key in two sections: full names
    pruned = console.trial_line(4, "pruned", "val/nll", 80.5, 2, 3.0, both)
    assert (
        pruned
        == "tune: trial 4 pruned at epoch 2 val/nll 80.5000 (3.0 s) train.seed=1, model.seed=2"
    )


def test_classifier_stage_logs_epochs_with_its_thread_count(
    prepared_dir, tiny_params, monkeypatch, caplog
):
    import rnnexp.stages.classifier as stage

    seen = []
    real = stage.train_classifier

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "train_classifier", spy)
    monkeypatch.delenv("CI", raising=False)
    params = tiny_params("evaluate.classifier_epochs=2", "evaluate.classifier_threads=1",
                         "train.progress_bar=auto")  # fmt: skip
    before = torch.get_num_threads()
    with caplog.at_level(logging.INFO, logger="rnnexp"):
        _, info = stage.run(str(prepared_dir), params)
    assert seen == [1] and torch.get_num_threads() == before
    lines = [r.getMessage() for r in caplog.records if r.name == "rnnexp.stages.classifier"]
    assert len(lines) == 2 and info["epochs"] == 2
    for n, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"classifier: epoch {n}/2 val accuracy \d\.\d{{4}} {ETA}", line)


@pytest.mark.parametrize(
    ("accelerator", "cuda", "mps", "expected"),
    [
        ("auto", False, False, "cpu"),  # a CPU-only machine: as before
        ("cpu", True, False, "cpu"),
        ("auto", True, False, "cuda"),
        ("gpu", True, False, "cuda"),
        ("cuda", True, False, "cuda"),
        ("auto", False, True, "mps"),
        ("gpu", False, True, "mps"),
    ],
)
def test_accelerator_setting_maps_to_the_device_training_uses(
    monkeypatch, accelerator, cuda, mps, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert torch_device(accelerator) == torch.device(expected)


@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "mps"])
def test_accelerator_without_its_device_is_a_clear_error(monkeypatch, accelerator):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RnnexpError, match=f"train.accelerator: '{accelerator}'.*auto"):
        torch_device(accelerator)
