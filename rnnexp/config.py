"""Typed schema of params.yaml.

``params.yaml`` is the single source of truth for every stage. :func:`load_params`
reads it with ``yaml.safe_load``, applies ``section.key=value`` overrides and checks
every key against the dataclasses below *before* any work starts: unknown keys,
wrong types and out-of-range values are collected into one :class:`ConfigError`
that names each key and the file.

Example:
    >>> params = load_params("params.yaml", ["train.max_epochs=2"])  # doctest: +SKIP
    >>> params.train.max_epochs  # doctest: +SKIP
    2
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rnnexp.errors import ConfigError

# A constraint is a predicate plus the words that describe it in an error message.
Check = tuple[typing.Callable[[Any], bool], str]


def _range(low: float | None = None, high: float | None = None, *, open_low=False) -> Check:
    def ok(v: Any) -> bool:
        if low is not None and (v <= low if open_low else v < low):
            return False
        return high is None or v <= high

    lo = "" if low is None else (f"> {low}" if open_low else f">= {low}")
    hi = "" if high is None else f"<= {high}"
    return ok, " and ".join(s for s in (lo, hi) if s)


def _one_of(*choices: str) -> Check:
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


def _param(default: Any, check: Check | None = None, doc: str = "") -> Any:
    """A dataclass field with an optional range/choice check and a one-line doc."""
    meta = {"check": check, "doc": doc}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


DATA_SOURCES = ("digits", "idx", "image-folder")
ARCHS = ("row_lstm", "diagonal_bilstm", "pixelcnn")
TASKS = ("unconditional", "class", "completion", "denoise", "upscale")
OCCLUSIONS = ("lower_half", "random_box")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "64-true")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")


@dataclass(frozen=True)
class DataParams:
    source: str = _param("digits", _one_of(*DATA_SOURCES), "where the images come from")
    path: str | None = _param(None, doc="local folder for idx / image-folder sources")
    url: str | None = _param(None, doc="base URL of IDX files (needs data.sha256)")
    sha256: dict[str, str] = _param({}, doc="file name -> sha256 of downloaded IDX files")
    image_size: int | None = _param(None, _range(1, 1024), "resize image-folder images")
    levels: int = _param(17, _range(2, 256), "quantisation levels per channel")
    val_fraction: float = _param(0.1, _range(0.0, 0.9, open_low=True), "share for validation")
    test_fraction: float = _param(0.1, _range(0.0, 0.9, open_low=True), "share for test")
    seed: int = _param(0, _range(0), "seed of the train/val/test split")
    task: str = _param("unconditional", _one_of(*TASKS), "what the generator is asked to do")
    occlusion: str = _param("lower_half", _one_of(*OCCLUSIONS), "completion: hidden region")
    noise_level: float = _param(0.2, _range(0.0, 1.0, open_low=True), "denoise: noise std")


@dataclass(frozen=True)
class ModelParams:
    arch: str = _param("row_lstm", _one_of(*ARCHS), "generator architecture")
    hidden: int = _param(32, _range(1, 4096), "hidden size h of each recurrent layer")
    layers: int = _param(2, _range(1, 64), "number of recurrent layers")
    kernel: int = _param(3, _range(1, 31), "width k of the 1xk convolutions (odd)")
    input_kernel: int = _param(7, _range(1, 31), "size of the masked input convolution (odd)")
    head_hidden: int = _param(64, _range(1, 4096), "width of the output head")


@dataclass(frozen=True)
class TrainParams:
    seed: int = _param(0, _range(0), "seed_everything seed")
    max_epochs: int = _param(30, _range(1, 100000), "training epochs")
    batch_size: int = _param(64, _range(1, 65536), "images per batch")
    lr: float = _param(3.0e-3, _range(0.0, 10.0, open_low=True), "Adam learning rate")
    weight_decay: float = _param(0.0, _range(0.0, 1.0), "AdamW weight decay")
    grad_clip: float = _param(1.0, _range(0.0), "gradient norm clip (0 = off)")
    precision: str = _param("32-true", _one_of(*PRECISIONS), "Lightning precision")
    accelerator: str = _param("cpu", _one_of(*ACCELERATORS), "Lightning accelerator")
    devices: int = _param(1, _range(1, 1024), "devices per node")
    strategy: str = _param("auto", _one_of(*STRATEGIES), "Lightning strategy")
    num_nodes: int = _param(1, _range(1, 4096), "machines taking part in distributed training")
    num_workers: int = _param(0, _range(0, 256), "DataLoader worker processes")
    threads: int = _param(0, _range(0, 1024), "torch CPU threads per training process (0: all)")
    sample_every: int = _param(5, _range(0), "log a sample grid every N epochs (0 = never)")
    sample_grid: int = _param(16, _range(1, 1024), "images in each per-epoch sample grid")
    progress_bar: str = _param("auto", _one_of("auto", "always", "never"), "auto: not in CI")
    use_tuned: bool = _param(True, doc="merge the tune stage's best params over these")


DEFAULT_SPACE = {
    "train.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
    "model.hidden": {"type": "int", "low": 16, "high": 48, "step": 16},
    "model.layers": {"type": "int", "low": 1, "high": 3},
}
SPACE_TYPES = ("float", "int", "categorical")
TUNABLE_SECTIONS = ("model", "train")


@dataclass(frozen=True)
class TuneParams:
    """Hyperparameter search of the tune stage (Optuna)."""

    n_trials: int = _param(8, _range(0, 100000), "trials to finish (0: skip, keep params)")
    timeout: float | None = _param(None, _range(0.0, open_low=True), "study time budget (s)")
    epochs: int = _param(10, _range(1, 100000), "max epochs of each trial")
    study_name: str | None = _param(None, doc="null: derived from the search settings")
    storage: str | None = _param(None, doc="null: sqlite:///<repo>/optuna.db; journal:<file>")
    sampler: str = _param("tpe", _one_of("tpe", "random"), "Optuna sampler (seeded)")
    seed: int = _param(0, _range(0), "sampler seed")
    pruner: str = _param("median", _one_of("median", "hyperband", "none"), "Optuna pruner")
    startup_trials: int = _param(3, _range(0, 100000), "trials before pruning starts")
    metric: str = _param("val/bpd", _one_of("val/bpd", "val/nll"), "metric to minimise")
    heartbeat: int = _param(30, _range(1, 86400), "heartbeat of RDB storages (s)")
    workers: int = _param(1, _range(1, 256), "worker processes of the tune stage")
    space: dict[str, dict] = _param(DEFAULT_SPACE, doc="param -> {type, low, high, ...}")


@dataclass(frozen=True)
class EvaluateParams:
    seed: int = _param(0, _range(0), "seed of the sample grid")
    n_samples: int = _param(64, _range(1, 100000), "images in the sample grid")
    temperature: float = _param(1.0, _range(0.0, 100.0, open_low=True), "sampling temperature")
    batch_size: int = _param(256, _range(1, 65536), "images per batch when scoring")
    score_samples: int = _param(1000, _range(0, 1000000), "samples scored by the classifier")
    classifier_epochs: int = _param(20, _range(1, 10000), "epochs of the scoring classifier")
    threads: int = _param(0, _range(0, 1024), "torch CPU threads of the evaluation (0: all)")


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = _param("rnnexp", doc="MLflow experiment name")
    uri: str | None = _param(None, doc="tracking URI; default sqlite:///<repo>/mlflow.db")
    log_checkpoint: bool = _param(True, doc="log the best checkpoint as a run artifact")
    enabled: bool = _param(True, doc="false: log nothing to MLflow (benchmarks, offline runs)")


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    tune: TuneParams = field(default_factory=TuneParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every param, as logged to MLflow."""
        out = {}
        for section in dataclasses.fields(self):
            for key, value in dataclasses.asdict(getattr(self, section.name)).items():
                out[f"{section.name}.{key}"] = value
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


_SECTION_TYPES: dict[str, type] = typing.get_type_hints(Params)
SECTIONS = tuple(_SECTION_TYPES)

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join([_type_name(a) for a in args] + ["null"])
    if typing.get_origin(tp) is dict:
        inner = "strings" if typing.get_args(tp)[1] is str else "mappings"
        return f"a mapping of strings to {inner}"
    return names.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against type ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return True, None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner)
    if origin is dict:
        value_type = typing.get_args(tp)[1]
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, value_type) for k, v in value.items()
        )
        return ok, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    return isinstance(value, tp), value


def _describe(value: Any) -> str:
    if isinstance(value, str):
        hint = ""
        if _FLOAT_RE.match(value):
            hint = f" (YAML reads {value} as a string; write it with a decimal point, e.g. 1.0e-3)"
        return f"the string {value!r}{hint}"
    return f"{value!r} ({type(value).__name__})"


def validate(raw: Any, source: str, check_space: bool = True) -> Params:
    """Build :class:`Params` from a parsed YAML mapping, or raise one ConfigError.

    Args:
        raw: the mapping read from the params file (after overrides).
        source: how the file is named in error messages.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    errors: list[str] = []
    sections = {}
    for name in raw:
        if name not in SECTIONS:
            errors.append(f"unknown section {name!r} (known: {', '.join(SECTIONS)})")
    for name, cls in _SECTION_TYPES.items():
        given = raw.get(name) or {}
        if not isinstance(given, dict):
            errors.append(f"{name}: expected a mapping of keys, got {_describe(given)}")
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in given.items():
            where = f"{name}.{key}"
            if key not in fields:
                known = ", ".join(fields) or "none yet"
                errors.append(f"{where}: unknown key (known keys of {name}: {known})")
                continue
            ok, value = _coerce(value, hints[key])
            if not ok:
                want = _type_name(hints[key])
                errors.append(f"{where}: expected {want}, got {_describe(value)}")
                continue
            check = fields[key].metadata.get("check")
            if check is not None and value is not None and not check[0](value):
                errors.append(f"{where}: {value!r} is out of range (must be {check[1]})")
                continue
            values[key] = value
        if not errors:
            sections[name] = cls(**values)
    if errors:
        raise ConfigError(f"{source}: invalid params:\n  - " + "\n  - ".join(errors))
    params = Params(**sections)
    _check_consistency(params, source, check_space)
    return params


def _check_consistency(p: Params, source: str, check_space: bool = True) -> None:
    """Rules that involve more than one key."""
    errors = []
    if p.data.val_fraction + p.data.test_fraction >= 1.0:
        errors.append("data.val_fraction + data.test_fraction must be below 1")
    if p.data.source in ("idx", "image-folder") and not (p.data.path or p.data.url):
        errors.append(f"data.path must be set for data.source={p.data.source!r}")
    if p.data.source == "image-folder" and p.data.url:
        errors.append("data.url is only for data.source='idx'")
    for key in ("kernel", "input_kernel"):
        if getattr(p.model, key) % 2 == 0:
            errors.append(f"model.{key}: {getattr(p.model, key)} must be odd")
    if check_space and not errors:  # else every space value repeats the same error
        errors += _space_errors(p)
    if errors:
        raise ConfigError(f"{source}: invalid params:\n  - " + "\n  - ".join(errors))


def _space_errors(p: Params) -> list[str]:
    """Check ``tune.space``: known keys, well-formed ranges, and every end value valid."""
    errors = []
    for name, spec in p.tune.space.items():
        where = f"tune.space.{name}"
        section, _, key = name.partition(".")
        fields = {f.name for f in dataclasses.fields(_SECTION_TYPES.get(section, object))}
        if section not in TUNABLE_SECTIONS or key not in fields:
            errors.append(f"{where}: not a tunable param (model.* or train.* keys)")
            continue
        kind = spec.get("type")
        allowed = {
            "float": {"type", "low", "high", "log"},
            "int": {"type", "low", "high", "log", "step"},
            "categorical": {"type", "choices"},
        }.get(kind)
        if allowed is None:
            errors.append(f"{where}.type: expected one of {', '.join(SPACE_TYPES)}, got {kind!r}")
            continue
        unknown = set(spec) - allowed
        if unknown:
            errors.append(f"{where}: unknown keys {sorted(unknown)} for type {kind}")
            continue
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                errors.append(f"{where}.choices: expected a non-empty list")
                continue
            candidates = choices
        else:
            low, high = spec.get("low"), spec.get("high")
            number = int if kind == "int" else (int, float)
            if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
                want = "integers" if kind == "int" else "numbers"
                errors.append(f"{where}: low and high must both be {want}")
                continue
            if low >= high:
                errors.append(f"{where}: low ({low}) must be below high ({high})")
                continue
            if spec.get("log") and low <= 0:
                errors.append(f"{where}: log scale needs low > 0, got {low}")
                continue
            candidates = [low, high]
        for value in candidates:
            try:
                with_overrides(p, {name: value})
            except ConfigError as exc:
                reason = str(exc).split("\n  - ", 1)[-1]
                errors.append(f"{where}: value {value!r} is invalid: {reason}")
    return errors


def with_overrides(params: Params, overrides: dict[str, Any], source: str = "overrides") -> Params:
    """A copy of ``params`` with ``{"section.key": value}`` applied and validated."""
    raw = params.to_dict()
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    return validate(raw, source, check_space=False)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split ``section.key=value``; the value is read as YAML, ``1e-3`` as a number."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.lr=0.001")
    dotted, value_text = text.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from None
    if isinstance(value, str) and _FLOAT_RE.match(value):
        value = float(value)  # YAML 1.1 leaves 1e-3 a string; on the command line it's a number
    return section, key, value


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file with ``safe_load`` only; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params file ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        # A tag such as !!python/object/apply would build objects (and run code) under
        # yaml.load; safe_load refuses it, and so do we, saying where.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}: refused YAML tag{where}: {exc.problem}; params files are read with "
            "yaml.safe_load, which builds plain values only"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] = ()) -> Params:
    """Load, override and validate a params file.

    Args:
        path: the params file.
        overrides: ``section.key=value`` strings applied on top of the file.

    Raises:
        ConfigError: naming the file and every bad key.
    """
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        for text in overrides:
            section, key, value = parse_override(text)
            target = raw.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{path}: section {section!r} is not a mapping")
            target[key] = value
    source = str(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    return validate(raw, source)


def params_to_yaml(params: Params) -> str:
    """The YAML text of ``params`` (every key, defaults included)."""
    return yaml.safe_dump(params.to_dict(), sort_keys=False)
