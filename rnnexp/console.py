"""The console of the ``rnnexp`` entry points: one logger, quiet libraries, progress lines.

Everything the package tells a person goes through the ``rnnexp`` logger
(``logging.getLogger(__name__)`` in each module). The library itself configures
nothing; :func:`setup`, called once by :func:`rnnexp.cli.main` (so by every stage DVC
runs and every command), gives that logger its console:

- a handler on stderr (logging's usual place; stdout stays free for what a command
  prints as its result, such as ``compare``'s table or ``doctor``'s report);
- INFO lines as plain messages (stage lines carry their own ``train: `` ...
  prefix), WARNING and ERROR lines prefixed ``rnnexp: ``, DEBUG lines ``rnnexp: debug: ``;
- a rank-zero filter: under DDP every process runs the stage, and only global rank 0
  prints INFO lines; warnings and errors pass from every rank;
- third-party noise silenced (see :data:`QUIET_LOGGERS` and :data:`QUIET_WARNINGS`):
  Lightning's banners and adverts, torch's ``LeafSpec`` deprecation warning met in
  Lightning, Optuna's experimental-feature warnings and its per-trial log lines (the
  tune stage logs its own line per trial).

``--verbose`` (every subcommand) or ``RNNEXP_LOG=debug`` turns on DEBUG lines and
brings the silenced output back.

Off a terminal (output redirected, or ``CI`` set) there is no progress bar, so long
work logs one line per epoch instead; :func:`progress_line` is their form.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import warnings

from rnnexp.util.distributed import global_rank

LOGGER = "rnnexp"
ENV = "RNNEXP_LOG"  # "debug": as --verbose; "info" (default), "warning", "error"

# Library loggers whose INFO lines are noise on our console, and the level they get.
QUIET_LOGGERS: dict[str, int] = {
    # Lightning's rank_zero_info: "GPU available: False, used: False", "TPU available",
    # the litlogger / litmodels "Tip:" adverts, "`Trainer.fit` stopped", "LOCAL_RANK: 0 -
    # CUDA_VISIBLE_DEVICES", "Restoring states from the checkpoint" (we log our own)
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,
    "lightning.fabric.utilities.rank_zero": logging.WARNING,
    "lightning_utilities.core.rank_zero": logging.WARNING,
    # Optuna: "A new study created in RDB", "Trial 3 finished with value ...", "Trial 3
    # pruned"; the tune stage logs one line per trial itself. A failed trial is logged
    # by the stage too, without Optuna's traceback (ERROR keeps only Optuna's errors).
    "optuna.storages": logging.WARNING,
    "optuna.study": logging.WARNING,
    "optuna.study._optimize": logging.ERROR,
    # MLflow's "Creating initial MLflow database tables..." of a new SQLite store
    "mlflow.store.db.utils": logging.WARNING,
    # logging the generator as a pyfunc model: "Validating input example against model
    # signature" and the CloudPickle caution about a model object we wrote ourselves
    "mlflow.pyfunc": logging.ERROR,
}

# (message regex, category) of Python warnings that are noise on our console.
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch >= 2.10 deprecates LeafSpec, which Lightning 2.6 still builds (_pytree.py)
    (r".*`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # optuna.exceptions.ExperimentalWarning (a direct Warning subclass, matched by its two
    # message forms so that every command need not import optuna): the tune stage's
    # heartbeats and stale-trial retries are experimental, and they are what we want.
    (r".* is experimental \(supported from v", Warning),
    (r"Argument ``\w+`` is an experimental feature", Warning),
    # Lightning's ModelCheckpoint on models/: it holds classifier.pt and the persisted
    # checkpoints a killed training resumes from, by design
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
)

_state: dict[str, bool | None] = {"verbose": None}


class RankZeroFilter(logging.Filter):
    """Let INFO and DEBUG records through on global rank 0 only; warnings on every rank.

    The rank is read from the launcher's environment at each record
    (:func:`rnnexp.util.distributed.global_rank`): Lightning's DDP launcher starts the
    other ranks with ``LOCAL_RANK`` (and ``NODE_RANK``) set, torchrun with ``RANK``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or global_rank() == 0


class ConsoleFormatter(logging.Formatter):
    """INFO: the message as it is; DEBUG: ``rnnexp: debug: ``; WARNING and up: ``rnnexp: ``."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"rnnexp: {message}"
        if record.levelno < logging.INFO:
            return f"rnnexp: debug: {record.name}: {message}"
        return message


class ConsoleHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted.

    Looked up at each record (as logging's last-resort handler does), so that output
    redirected after set-up (``contextlib.redirect_stderr``, pytest's capture) still
    arrives where stderr now goes.
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # the current stderr, see the class docstring
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.setStream: ignored, always stderr
        pass


def _level_from_env() -> int | None:
    name = os.environ.get(ENV, "").strip().upper()
    level = logging.getLevelName(name) if name else None
    return level if isinstance(level, int) else None


def setup(verbose: bool = False) -> bool:
    """Give the ``rnnexp`` logger its console and quiet the libraries; returns verbose.

    Called by the entry points only (:func:`rnnexp.cli.main`, and tune worker
    processes through :func:`current`), never on import, so that a program using
    ``rnnexp`` as a library keeps its own logging and warnings. Calling it again
    replaces the earlier set-up (tests call the CLI many times in one process).

    Args:
        verbose: DEBUG lines and the libraries' silenced output; also turned on by
            ``RNNEXP_LOG=debug``. Other ``RNNEXP_LOG`` levels (``warning``, ``error``)
            make the console quieter still.
    """
    env_level = _level_from_env()
    verbose = verbose or env_level == logging.DEBUG
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
        logger.removeHandler(old)
    handler = ConsoleHandler()
    handler.addFilter(RankZeroFilter())
    handler.setFormatter(ConsoleFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else (env_level or logging.INFO))
    for name, level in QUIET_LOGGERS.items():
        # NOTSET: the library's own level again (Lightning and Optuna set INFO on theirs)
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)
    _quiet_warnings(not verbose)
    # MLflow's "Downloading artifacts" progress bar (loading the logged model for its
    # input-example check); a user's own setting wins
    if not verbose:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _state["verbose"] = verbose
    logger.debug("console: verbose (--verbose or %s=debug); libraries not silenced", ENV)
    return verbose


def _is_ours(entry: tuple) -> bool:
    action, message, category = entry[:3]
    pattern = getattr(message, "pattern", message)
    return action == "ignore" and (pattern, category) in QUIET_WARNINGS


def _quiet_warnings(quiet: bool) -> None:
    """Put the ignore filters of :data:`QUIET_WARNINGS` first (quiet) or take them out."""
    if quiet:
        for message, category in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        return
    kept = [entry for entry in warnings.filters if not _is_ours(entry)]
    if len(kept) < len(warnings.filters):
        warnings.filters[:] = kept
        # Any call of the public API resets the per-module "already warned" caches; a
        # last "default" entry is what happens anyway to a warning no filter matches.
        warnings.simplefilter("default", append=True)


def current() -> bool | None:
    """The ``verbose`` of the last :func:`setup` in this process; None if never set up.

    A process the stage starts itself (a tune worker) passes it on, so that the child
    has the same console as its parent, and none when the parent had none.
    """
    return _state["verbose"]


def is_terminal() -> bool:
    """True when a person watches stderr live: a terminal, and not in CI."""
    return not os.environ.get("CI") and sys.stderr.isatty()


def show_progress_bar(setting: str) -> bool:
    """Whether to draw a progress bar under ``train.progress_bar`` (auto/always/never).

    ``auto``: on a terminal only. Where no bar is drawn, long work logs one line per
    epoch (:func:`progress_line`) instead.
    """
    if setting != "auto":
        return setting == "always"
    return is_terminal()


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def progress_line(label: str, done: int, total: int, figures: str, elapsed: float, ran: int) -> str:
    """``"<label> epoch 3/30 <figures> (elapsed 0:01:02, eta 0:09:18)"``.

    Args:
        done: epochs finished so far (of ``total``), 1-based.
        elapsed: seconds this process has worked.
        ran: epochs this process ran in ``elapsed`` (fewer than ``done`` after a
            resume); the ETA assumes the remaining epochs take as long each.
    """
    eta = elapsed / ran * (total - done) if ran > 0 else 0.0
    shown = f" {figures}" if figures else ""
    return f"{label} epoch {done}/{total}{shown} (elapsed {_clock(elapsed)}, eta {_clock(eta)})"


def trial_line(
    number: int, state: str, metric: str, value: float | None, epochs: int, seconds: float,
    params: dict,
) -> str:  # fmt: skip
    """The one console line of a finished tune trial.

    ``tune: trial 3 complete val/bpd 1.2345 (10 epochs, 12.3 s) lr=0.0042, hidden=32``,
    or ``tune: trial 4 pruned at epoch 2 val/bpd 1.5 (3.1 s) ...``. Params are named
    by their key alone (``train.lr`` -> ``lr``) where that is unambiguous.
    """
    keys = [name.rpartition(".")[2] for name in params]
    values = ", ".join(
        f"{key if keys.count(key) == 1 else name}={f'{v:.4g}' if isinstance(v, float) else v}"
        for key, (name, v) in zip(keys, params.items(), strict=True)
    )
    shown = "" if value is None else f" {metric} {value:.4f}"
    if state == "pruned":
        return f"tune: trial {number} pruned at epoch {epochs}{shown} ({seconds:.1f} s) {values}"
    return f"tune: trial {number} {state}{shown} ({epochs} epochs, {seconds:.1f} s) {values}"
