"""Run and dataset names that say what a run is: pure functions of params and tags.

MLflow draws a random run name (``overjoyed-slug-911``) when none is given, from
Python's RNG: after training has seeded it, every run got the same one. Every run
opened by :func:`rnnexp.tracking.tracked_run` is named here instead, from its stage,
its params and its tags::

    train row_lstm h48x3 lr8.5e-3 [exp gawky-bump]
    trial 3 row_lstm h16x1 lr2.1e-3 (pruned at epoch 5)
    tune rnnexp-0123456789ab
    prepare digits 17 levels
    fetch digits
    classifier 0123abcd
    evaluate model 89abcdef

The DVC experiment (``DVC_EXP_NAME``) is appended in brackets where there is one,
so runs of different experiments differ even with equal params.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rnnexp.config import Params

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's UI opens on the runs table
RUN_NAME_TAG = "mlflow.runName"


def short_float(value: float) -> str:
    """A float in two significant digits, compact: 0.0085 -> ``8.5e-3``, 0.001 -> ``1e-3``.

    Values from 0.1 to 1000 keep plain notation: 0.5 -> ``0.5``, 32.0 -> ``32``.
    """
    if value == 0:
        return "0"
    if 0.1 <= abs(value) < 1000:
        return f"{value:.2g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def model_label(params: Params) -> str:
    """``row_lstm h48x3 lr8.5e-3``: arch, hidden units x layers, learning rate."""
    m = params.model
    return f"{m.arch} h{m.hidden}x{m.layers} lr{short_float(params.train.lr)}"


def data_label(params: Params) -> str:
    """``digits 17 levels`` (and the task, when it is not unconditional generation)."""
    d = params.data
    task = "" if d.task in (None, "", "unconditional") else f" {d.task}"
    return f"{d.source} {d.levels} levels{task}"


def with_note(name: str, note: str) -> str:
    """``name`` with ``(note)`` added before its ``[exp ...]`` suffix, if it has one."""
    base, sep, exp = name.partition(" [exp ")
    return f"{base} ({note}){sep}{exp}"


def with_exp(name: str, exp: str | None) -> str:
    """``name [exp <exp>]``; ``name`` unchanged without an experiment or if already there."""
    if not exp or name.endswith(f"[exp {exp}]"):
        return name
    return f"{name} [exp {exp}]"


def stage_run_name(stage: str, params: Params, tags: Mapping[str, Any]) -> str:
    """The name of a ``stage`` run, from its params and tags (before the experiment suffix).

    Tags read: ``rnnexp.trial`` (trial runs), ``rnnexp.study`` (tune),
    ``rnnexp.data_hash`` (classifier), ``rnnexp.model_run_id`` (evaluate).
    """
    if stage == "train":
        return f"train {model_label(params)}"
    if stage == "trial":
        number = tags.get("rnnexp.trial")
        return f"trial {number} {model_label(params)}" if number is not None else "trial"
    if stage == "tune":
        study = tags.get("rnnexp.study")
        return f"tune {study}" if study else "tune"
    if stage == "prepare":
        return f"prepare {data_label(params)}"
    if stage == "fetch":
        return f"fetch {params.data.source}"
    if stage == "classifier":
        data_hash = str(tags.get("rnnexp.data_hash") or "")
        return f"classifier {data_hash[:8]}" if data_hash else "classifier"
    if stage == "evaluate":
        model = str(tags.get("rnnexp.model_run_id") or "")
        return f"evaluate model {model[:8]}" if model and model != "unknown" else "evaluate"
    return stage
