# ruff: noqa: E402
"""DVC stage ``train``: train the generator of params.yaml (with the tune stage's best
params merged over it, ``train.use_tuned``); checkpoints under ``models/``. It continues
the best trial's training (``models/tuned/``) rather than starting it again.

The training itself is :func:`rnnexp.training.fit.run_training`, the one code path
that the tune stage's trials take too; it opens and logs the model's MLflow run.
"""

from __future__ import annotations

# A stage process runs again under tcmalloc before torch loads (rnnexp.util.allocator);
# hence the imports below this block (ruff: E402 off for this file).
if __name__ == "__main__":
    from rnnexp.util.allocator import rerun_under_tcmalloc

    rerun_under_tcmalloc()

import logging
import sys
from pathlib import Path
from typing import Any

from rnnexp.config import Params, read_yaml, with_overrides
from rnnexp.errors import RnnexpError
from rnnexp.training.fit import BEST, LAST, TrainResult, run_training

log = logging.getLogger(__name__)


def tuned(params: Params, path: str | Path) -> Params:
    """``params`` with the tune stage's best params merged over them (train.use_tuned)."""
    if not params.train.use_tuned:
        return params
    if not Path(path).is_file():
        raise RnnexpError(
            f"{path}: tuned params not found; run the tune stage (dvc repro tune) or set "
            "train.use_tuned: false"
        )
    best = read_yaml(path)
    if not isinstance(best, dict) or not isinstance(best.get("params"), dict):
        raise RnnexpError(f"{path}: expected a mapping with a 'params' mapping")
    return with_overrides(params, best["params"], source=str(path))


def run(
    params: Params, prepared_dir: str, out_dir: str, tuned_path: str, trial_dir: str | None = None
) -> TrainResult:
    """Train the (tuned) generator; ``best.ckpt`` and ``last.ckpt`` in ``out_dir``.

    With ``train.use_tuned`` the training continues the best trial's checkpoints in
    ``trial_dir`` (the tune stage's output) when they were trained with the same
    params and data, instead of training again what the search already trained.
    """
    start_from = trial_dir if params.train.use_tuned and trial_dir else None
    return run_training(tuned(params, tuned_path), prepared_dir, out_dir, start_from=start_from)


def main(args: Any, params: Params) -> None:
    """Train; ``best.ckpt`` and ``last.ckpt`` in ``args.out`` (checked writable first)."""
    from rnnexp.util.atomic import check_writable
    from rnnexp.util.devices import check_training_machine

    # Before any run opens: a device or node setting this machine cannot serve, and
    # a path that cannot take the checkpoint an epoch of training ends with.
    check_training_machine(params.train)
    check_writable(files=[Path(args.out) / f"{BEST}.ckpt", Path(args.out) / f"{LAST}.ckpt"])
    result = run(params, args.prepared, args.out, args.tuned, args.trial)
    figures = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
    log.info(
        f"train: {result.epochs} epochs ({result.epochs_trained} trained here), {figures}, "
        f"run {result.run_id}"
    )


if __name__ == "__main__":
    from rnnexp.cli import entry

    entry(["train", *sys.argv[1:]])
