"""What a stage logs through: :class:`RunHandle` on an open run, :class:`NullRunHandle` on none.

Logging goes through :class:`MlflowClient` with an explicit run id (MLflow's fluent
API is not thread-safe), so the same handle serves worker threads and Lightning's
logger. Processes that must not log (``tracking.enabled`` false, every rank of a
distributed run but global rank 0) get a :class:`NullRunHandle` with the same calls.
"""

from __future__ import annotations

import logging
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

    def log_dataset(
        self, meta: Mapping[str, Any], prepared_dir: str | Path, context: str, source: str
    ) -> None:
        """Log the prepared data (``meta``, from ``prepared_dir``) as the run's dataset input.

        ``context`` is ``training`` or ``evaluation``; ``source`` (``data.source``)
        names it with the levels, ``digits-17``; see ``rnnexp.tracking._datasets``.
        """
        from rnnexp.tracking._datasets import dataset_input

        item = dataset_input(source, meta, prepared_dir, context)
        self._deliver(
            f"dataset {item.dataset.name} ({context})",
            lambda: self.client.log_inputs(self.run_id, datasets=[item]),
            {"dataset": item.dataset.name, "digest": item.dataset.digest, "context": context},
        )

    def add_name_note(self, note: str) -> None:
        """Add ``(note)`` to the run's name (before its ``[exp ...]``): ``(pruned at epoch 5)``."""
        from rnnexp.tracking._names import RUN_NAME_TAG, with_note
        from rnnexp.tracking._store import UNREACHABLE, fail_fast

        try:
            with fail_fast():
                name = self.client.get_run(self.run_id).info.run_name or ""
        except UNREACHABLE:  # a nicety: the run keeps its name, the state is in its tags
            return
        self.set_tags({RUN_NAME_TAG: with_note(name, note)})

    def log_generator_model(
        self, checkpoint: str | Path, metadata: Mapping[str, Any]
    ) -> str | None:
        """Log ``checkpoint`` as this run's pyfunc LoggedModel (``rnnexp.tracking._pyfunc``).

        ``metadata`` (arch, levels, image_shape, num_classes, task, ...) goes into the
        model's metadata; the run gets the tag ``rnnexp.model_id``. Returns the model
        id, or None (with a warning) when the store could not take it: a trained
        model is not lost for a logging failure, it stays in the checkpoint file.
        """
        from rnnexp.tracking._pyfunc import log_generator_model
        from rnnexp.tracking._store import UNREACHABLE, first_line

        try:
            return log_generator_model(self.client, self.run_id, checkpoint, dict(metadata))
        except UNREACHABLE as exc:
            logging.getLogger(__name__).warning(f"logged model not created: {first_line(exc)}")
            return None

    @staticmethod
    def check_registry_name(name: str) -> None:
        """Raise :class:`RnnexpError` when MLflow's registry refuses ``name``; before any work."""
        from rnnexp.tracking._registry import check_model_name

        check_model_name(name)

    def register_champion(
        self, name: str, metrics: Mapping[str, float], tags: Mapping[str, Any]
    ) -> str:
        """Link ``metrics`` to this run's logged model, register it, decide its alias.

        The model is the one of the run's tag ``rnnexp.model_id``; without one (e.g.
        a checkpoint restored from DVC's run-cache) nothing is registered and the
        returned line says so. Otherwise the model version goes under ``name`` and
        takes alias ``champion`` or ``challenger`` by ``metrics["test/nll_nats"]``
        (rule: ``rnnexp.tracking._registry``); the decision is returned and set as
        the run's tag ``rnnexp.registry``. The version's tags: the training run's data
        hash, arch, DVC experiment and git commit, updated by ``tags``.

        Raises :class:`RnnexpError` for a name MLflow refuses or a registry that
        refuses the request (e.g. a user without permission on an auth server).
        """
        from mlflow.exceptions import MlflowException

        from rnnexp.errors import RnnexpError
        from rnnexp.tracking._pyfunc import MODEL_ID_TAG
        from rnnexp.tracking._registry import DECISION_TAG, check_model_name, register_champion

        check_model_name(name)
        run_tags = self.client.get_run(self.run_id).data.tags
        model_id = run_tags.get(MODEL_ID_TAG)
        if not model_id:
            return f"not registered: run {self.run_id} has no logged model"
        origin = {  # where the model comes from, as its training run says; ``tags`` win
            "rnnexp.data_hash": run_tags.get("rnnexp.data_hash"),
            "rnnexp.arch": run_tags.get("rnnexp.arch"),
            "rnnexp.dvc_exp": run_tags.get("rnnexp.dvc_exp"),
            "rnnexp.git_commit": run_tags.get("mlflow.source.git.commit"),
        }
        tags = {**{k: v for k, v in origin.items() if v}, **tags}
        now = int(time.time() * 1000)
        linked = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in metrics.items()]
        try:
            self.client.log_batch(self.run_id, metrics=linked)
            decision = register_champion(
                self.client, model_id, name, metrics["test/nll_nats"], tags
            )
        except MlflowException as exc:
            raise RnnexpError(f"registry {name!r}: {exc.message}") from None
        self.client.set_tag(self.run_id, DECISION_TAG, decision)
        return decision


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

    def log_dataset(
        self, meta: Mapping[str, Any], prepared_dir: str | Path, context: str, source: str
    ) -> None:
        """Log nothing."""

    def add_name_note(self, note: str) -> None:
        """Rename nothing."""

    def log_generator_model(self, checkpoint: str | Path, metadata: Mapping[str, Any]) -> None:
        """Log nothing; no model id."""

    @staticmethod
    def check_registry_name(name: str) -> None:
        """Check nothing: nothing will be registered."""

    def register_champion(
        self, name: str, metrics: Mapping[str, float], tags: Mapping[str, Any]
    ) -> str:
        """Register nothing; says so."""
        return "not registered: tracking is off"
