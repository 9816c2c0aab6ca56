"""What a stage logs through: :class:`RunHandle` on an open run, :class:`NullRunHandle` on none.

Logging goes through :class:`MlflowClient` with an explicit run id (MLflow's fluent
API is not thread-safe), so the same handle serves worker threads and Lightning's
logger. Processes that must not log (``tracking.enabled`` false, every rank of a
distributed run but global rank 0) get a :class:`NullRunHandle` with the same calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from rnnexp.tracking._buffer import Pending, RetryBuffer


@dataclass
class RunHandle:
    """An open MLflow run: the client, its id, and whether an interrupt arrived.

    With a ``buffer`` (runs opened by :func:`rnnexp.tracking.tracked_run`), metrics,
    tags, images and artifacts that cannot be delivered (the tracking server is down)
    are kept in order and retried with the next logging call and when the run ends;
    see :meth:`flush`. Without one, logging errors raise at once.
    """

    client: MlflowClient
    run_id: str
    experiment_id: str
    interrupted: bool = field(default=False)
    resumed: bool = field(default=False)
    buffer: RetryBuffer | None = field(default=None)

    def _deliver(self, what: str, send: Callable[[], Any], record: dict[str, Any]) -> None:
        if self.buffer is None:
            send()
        else:
            self.buffer.deliver(what, send, record)

    def flush(self) -> list[Pending]:
        """Deliver what is pending, with MLflow's own retries; return what is still not."""
        return [] if self.buffer is None else self.buffer.flush()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params as strings (None as ``"None"``); never buffered: a run starts with them."""
        items = [Param(k, "None" if v is None else str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow accepts 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics at ``step`` (0 if None), timestamped now."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self._deliver(
            f"metrics {', '.join(metrics)} (step {step or 0})",
            lambda: self.client.log_batch(self.run_id, metrics=items),
            {"metrics": [[m.key, m.value, m.step, m.timestamp] for m in items]},
        )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags, values as strings."""
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._deliver(
            f"tags {', '.join(tags)}",
            lambda: self.client.log_batch(self.run_id, tags=items),
            {"tags": {t.key: t.value for t in items}},
        )

    def log_image(self, image: Any, key: str, step: int | None = None) -> None:
        """A PIL image as an MLflow image series (``key``, ``step``) for the UI's slider."""
        self._deliver(
            f"image {key} (step {step or 0})",
            lambda: self.client.log_image(self.run_id, image, key=key, step=step or 0),
            {"image": key, "step": step or 0},
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload the file ``path`` into the run's artifacts (under ``artifact_path``)."""
        self._deliver(
            f"artifact {path}",
            lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
            {"artifact": str(path), "artifact_path": artifact_path},
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        """Save ``text`` as the run's artifact ``artifact_file``."""
        self._deliver(
            f"text {artifact_file}",
            lambda: self.client.log_text(self.run_id, text, artifact_file),
            {"text": text, "artifact_file": artifact_file},
        )


@dataclass
class NullRunHandle:
    """Stands in for :class:`RunHandle` where nothing may be logged.

    ``run_id`` is None (no MLflow run exists); every logging call is a no-op.
    """

    run_id: str | None = None
    experiment_id: str | None = None
    interrupted: bool = False
    resumed: bool = False  # never continues a run: there is none

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log nothing."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log nothing."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Log nothing."""

    def log_image(self, image: Any, key: str, step: int | None = None) -> None:
        """Log nothing."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log nothing."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log nothing."""
