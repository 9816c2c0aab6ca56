"""Which logged model ``rnnexp serve`` serves: the user's model reference, checked.

``mlflow models serve`` given a run without a model, a registry name that does not
exist or another program's model fails with MLflow's own traceback, after loading
its scoring server. :func:`served_model` finds the model first, through the store's
own API, and raises :class:`RnnexpError` naming the reference and what is missing.

References (the forms ``mlflow models serve -m`` takes, plus a bare run id):

- ``models:/<name>@<alias>`` and ``models:/<name>/<version>``: a registered version;
- ``models:/<model_id>``: a logged model (``m-...``);
- ``runs:/<run_id>[/...]`` or ``<run_id>``: the generator the run logged (train and
  evaluate runs log one; its id is the run's tag ``rnnexp.model_id``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rnnexp.config import Params
from rnnexp.errors import RnnexpError
from rnnexp.tracking._pyfunc import ARCH_TAG, MODEL_ID_TAG
from rnnexp.tracking._registry import CHAMPION
from rnnexp.tracking._store import connect

RUN_ID = re.compile(r"[0-9a-f]{32}")
FORMS = "models:/<name>@<alias>, models:/<name>/<version>, models:/<model id>, runs:/<run id>"


@dataclass(frozen=True)
class ServedModel:
    """A logged rnnexp generator (READY) found from a user's reference."""

    reference: str  # as the user gave it
    model_id: str
    description: str  # e.g. "rnnexp version 3 (champion): model m-..., row_lstm"
    store: str = ""  # the tracking store's URI, where ``uri`` resolves

    @property
    def uri(self) -> str:
        """The URI ``mlflow models serve -m`` takes for exactly this model."""
        return f"models:/{self.model_id}"


def _message(exc: MlflowException) -> str:
    return (exc.message.splitlines() or ["no answer"])[0]


def _version(client: MlflowClient, ref: str, name: str, pick: str) -> tuple[str, str]:
    """The model id and a description of registered version ``pick`` (``@alias`` or number)."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise RnnexpError(
            f"{ref}: no registered model {name!r} in this store; the evaluate stage "
            "registers one (tracking.registered_model, default the experiment's name)"
        ) from None
    try:
        if pick.startswith("@"):
            version = client.get_model_version_by_alias(name, pick[1:])
        else:
            version = client.get_model_version(name, pick)
    except MlflowException:
        what = f"alias {pick[1:]!r}" if pick.startswith("@") else f"version {pick}"
        raise RnnexpError(f"{ref}: registered model {name!r} has no {what}") from None
    model_id = version.model_id
    if not model_id and (version.source or "").startswith("models:/m-"):
        model_id = version.source.removeprefix("models:/")  # the SQLite store leaves it out
    if not model_id:
        raise RnnexpError(
            f"{ref}: version {version.version} of {name!r} is no logged model "
            f"(registered from {version.source})"
        )
    aliases = f" ({', '.join(version.aliases)})" if version.aliases else ""
    return model_id, f"{name} version {version.version}{aliases}"


def _run_model(client: MlflowClient, ref: str, run_id: str) -> tuple[str, str]:
    """The model id of the generator that run ``run_id`` logged."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RnnexpError(f"{ref}: no run {run_id} in this store") from None
    model_id = run.data.tags.get(MODEL_ID_TAG)
    if not model_id:  # a run of another tool may still have logged one
        outputs = run.outputs.model_outputs if run.outputs else []
        model_id = outputs[-1].model_id if outputs else None
    if not model_id:
        raise RnnexpError(
            f"{ref}: run {run_id} ({run.info.run_name}) has no logged model; train runs "
            "log one (a stage or trial that trained nothing has none)"
        )
    return model_id, f"run {run.info.run_name}"


def served_model(client: MlflowClient, ref: str, uri: str = "") -> ServedModel:
    """The rnnexp generator that ``ref`` names in ``client``'s store (at ``uri``).

    Raises :class:`RnnexpError` when ``ref`` has no form above, names nothing in the
    store, names something without a logged model, or a model rnnexp did not log.
    """
    if ref.startswith("models:/"):
        path = ref.removeprefix("models:/").strip("/")
        name, at, alias = path.partition("@")
        if at:
            model_id, description = _version(client, ref, name, "@" + alias)
        elif "/" in path:
            name, _, number = path.rpartition("/")
            if not number.isdigit():
                raise RnnexpError(f"{ref}: a version is a number; expected one of {FORMS}")
            model_id, description = _version(client, ref, name, number)
        elif path.startswith("m-"):
            model_id, description = path, "logged model"
        else:
            raise RnnexpError(f"{ref}: which version? expected one of {FORMS}")
    elif ref.startswith("runs:/") or RUN_ID.fullmatch(ref):
        run_id = ref.removeprefix("runs:/").split("/")[0]
        if not RUN_ID.fullmatch(run_id):
            raise RnnexpError(f"{ref}: {run_id!r} is no run id (32 hex digits)")
        model_id, description = _run_model(client, ref, run_id)
    else:
        raise RnnexpError(f"model {ref!r}: expected one of {FORMS}, or a run id")
    try:
        model = client.get_logged_model(model_id)
    except MlflowException as exc:
        raise RnnexpError(f"{ref}: logged model {model_id}: {_message(exc)}") from None
    arch = model.tags.get(ARCH_TAG)
    if not arch:
        raise RnnexpError(
            f"{ref}: logged model {model_id} ({model.name}) is not an rnnexp generator"
        )
    if str(model.status) != "READY":  # logging it failed or never finished
        raise RnnexpError(f"{ref}: logged model {model_id} is {model.status}, not READY")
    return ServedModel(ref, model_id, f"{description}: model {model_id}, {arch}", uri)


def find_served_model(params: Params, ref: str | None = None) -> ServedModel:
    """:func:`served_model` in the configured store (reached failing fast).

    ``ref`` None: the registry champion, ``models:/<tracking.registered_model>@champion``
    (the name defaults to the experiment's, as the evaluate stage registers it).
    """
    if ref is None:
        name = params.tracking.registered_model or params.tracking.experiment
        ref = f"models:/{name}@{CHAMPION}"
    client, uri = connect(params)
    return served_model(client, ref, uri)
