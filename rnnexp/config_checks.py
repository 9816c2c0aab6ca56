"""Rules of params.yaml that involve more than one key (run by :func:`rnnexp.config.validate`).

Each rule gives one line naming the keys; :func:`consistency_errors` lists them all, so
a params file with several problems is fixed in one round.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from rnnexp.yaml_file import short_repr

if TYPE_CHECKING:  # config imports this module
    from rnnexp.config import Params

URL_SCHEMES = ("http", "https")  # what data.url downloads from (urllib, checked by sha256)


def consistency_errors(p: Params) -> list[str]:
    """One message per broken rule between keys of ``p`` (empty: none)."""
    errors = []
    if p.data.val_fraction + p.data.test_fraction >= 1.0:
        errors.append("data.val_fraction + data.test_fraction must be below 1")
    if p.data.source in ("idx", "image-folder") and not (p.data.path or p.data.url):
        errors.append(f"data.path must be set for data.source={p.data.source!r}")
    if p.data.source == "image-folder" and p.data.url:
        errors.append("data.url is only for data.source='idx'")
    if p.data.url is not None and (problem := url_problem(p.data.url)):
        errors.append(problem)
    if p.train.lr_schedule == "cosine" and p.train.warmup_epochs >= p.train.max_epochs:
        errors.append(
            f"train.warmup_epochs: {p.train.warmup_epochs} leaves no epoch of the cosine "
            f"schedule (train.max_epochs is {p.train.max_epochs})"
        )
    for key in ("kernel", "input_kernel"):
        if getattr(p.model, key) % 2 == 0:
            errors.append(f"model.{key}: {getattr(p.model, key)} must be odd")
    if p.train.accelerator == "cpu" and (problem := cpu_precision_problem(p.train.precision)):
        errors.append(problem)
    return errors


def cpu_precision_problem(precision: str) -> str | None:
    """Why ``train.precision`` cannot train on the CPU (None: it can).

    torch has no float16 autocast for CPU training: Lightning would train in
    bfloat16 instead and only warn, so the run's params would not say what ran.
    """
    if precision != "16-mixed":
        return None
    return (
        "train.precision: '16-mixed' (float16 autocast) needs a GPU, but this training runs "
        "on the CPU; use bf16-mixed there (Lightning would switch to it with only a warning)"
    )


def url_problem(url: str) -> str | None:
    """Why ``data.url`` cannot be downloaded from (None: it can); urllib would raise later."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme_ok = parts.scheme.lower() in URL_SCHEMES
    if scheme_ok and parts.hostname:
        return None
    why = "no host" if scheme_ok else f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
    return (f"data.url: {short_repr(url)} is not a download URL ({why}): give http(s)://"
            "<host>/..., e.g. https://example.com/mnist/, or a folder as data.path")  # fmt: skip
