"""The registry champion: register an evaluated logged model, move ``champion`` only when better.

The rule (:func:`register_champion`): each evaluated model becomes a new version of
the registered model, tagged with its data hash, DVC experiment, commit, arch and
test NLL. Alias ``champion`` moves to it when

- there is no champion yet, or
- the champion was scored on other data (another ``rnnexp.data_hash``): NLLs on
  different data are not comparable, and the newest data is the one in use, so the
  newest model takes over, or
- its test NLL is lower than the champion's.

Otherwise the version gets alias ``challenger`` (the latest one that lost). A
champion reached through ``models:/<name>@champion`` loads with
``mlflow.pyfunc.load_model``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_model_name

from rnnexp.errors import RnnexpError
from rnnexp.tracking._store import global_store

CHAMPION, CHALLENGER = "champion", "challenger"
NLL_TAG, DATA_TAG = "rnnexp.test_nll_nats", "rnnexp.data_hash"
DECISION_TAG = "rnnexp.registry"


def check_model_name(name: str) -> None:
    """Refuse a name MLflow's registry refuses, before anything is registered."""
    try:
        _validate_model_name(name)
    except MlflowException as exc:
        raise RnnexpError(
            f"tracking.registered_model {name!r}: MLflow refuses this registry name: {exc.message}"
        ) from None


def _champion(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model or no such alias
        return None


def register_champion(
    client: MlflowClient,
    model_id: str,
    name: str,
    test_nll: float,
    tags: Mapping[str, Any],
) -> str:
    """Register LoggedModel ``model_id`` under ``name``; alias it champion or challenger.

    ``tags`` (data hash under ``rnnexp.data_hash``, DVC experiment, commit, arch) go
    on the version with the test NLL. Returns the decision as one line, e.g.
    ``registered m version 3: champion (test NLL 80.1 < 82.4)``.

    Raises:
        RnnexpError: ``name`` is refused by MLflow (nothing registered).
    """
    check_model_name(name)
    current = _champion(client, name)
    version_tags = {k: str(v) for k, v in tags.items()}
    version_tags[NLL_TAG] = repr(float(test_nll))
    # MLflow prints "Successfully registered model ..." / "Created version ..." to stderr;
    # the stage logs its own line with the decision
    with global_store(client.tracking_uri), contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(f"models:/{model_id}", name, tags=version_tags)
    if current is None:
        alias, why = CHAMPION, "no champion before"
    elif current.tags.get(DATA_TAG) != version_tags.get(DATA_TAG):
        alias, why = CHAMPION, f"version {current.version} was scored on other data"
    else:
        best = float(current.tags.get(NLL_TAG, "inf"))
        better = test_nll < best or math.isnan(best)
        alias = CHAMPION if better else CHALLENGER
        sign = "<" if better else ">="
        why = f"test NLL {test_nll:.4f} {sign} {best:.4f} of version {current.version}"
    client.set_registered_model_alias(name, alias, version.version)
    return f"registered {name} version {version.version}: {alias} ({why})"
