"""Lightning logger that writes into an open run of :func:`rnnexp.tracking.tracked_run`.

The only tracking module that imports Lightning; :mod:`rnnexp.tracking` loads it
lazily (on first use of ``MlflowRunLogger``) so that stages and commands that do
not train (fetch, prepare, evaluate, sample, compare, doctor) do not pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from rnnexp.tracking._handle import RunHandle


class MlflowRunLogger(Logger):
    """Lightning logger writing into an open :class:`RunHandle`.

    Epoch-level metrics are logged with the epoch as the MLflow step, so the UI's
    curves are per epoch. Only rank 0 logs.
    """

    def __init__(self, run: RunHandle, experiment_name: str) -> None:
        super().__init__()
        self.run = run
        self._experiment_name = experiment_name

    @property
    def name(self) -> str:
        return self._experiment_name

    @property
    def version(self) -> str:
        return self.run.run_id

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Params are logged by :func:`tracked_run` as flattened ``section.key``."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        step = int(epoch) if epoch is not None else step
        if metrics:
            self.run.log_metrics(metrics, step=step)

    @rank_zero_only
    def log_image(self, image: Any, key: str, step: int) -> None:
        self.run.log_image(image, key=key, step=step)
