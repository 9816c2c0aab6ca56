"""Typed schema of params.yaml (pydantic v2), the single source of truth for every stage.

:func:`load_params` checks every key before any work starts; all problems go into one
:class:`ConfigError` naming the file and each bad key (pydantic's own text is translated)."""

import copy
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from rnnexp.config_checks import consistency_errors
from rnnexp.errors import ConfigError
from rnnexp.yaml_file import parse_yaml, read_yaml, short_repr  # read_yaml: part of this API

DataSource = Literal["digits", "idx", "image-folder"]
Arch = Literal["row_lstm", "diagonal_bilstm", "pixelcnn"]
Task = Literal["unconditional", "class", "completion", "denoise", "upscale"]
Occlusion = Literal["lower_half", "random_box"]
Precision = Literal["32-true", "32", "16-mixed", "bf16-mixed", "64-true"]
Accelerator = Literal["cpu", "gpu", "cuda", "mps", "auto"]
Strategy = Literal["auto", "ddp", "ddp_find_unused_parameters_true"]
DATA_SOURCES, ARCHS, TASKS, OCCLUSIONS, PRECISIONS, ACCELERATORS, STRATEGIES = map(
    typing.get_args, (DataSource, Arch, Task, Occlusion, Precision, Accelerator, Strategy)
)
MAX_SEED = 2**32 - 1  # numpy's RandomState refuses larger seeds
# Images of one sample grid (evaluate.n_samples, sample --n): 10,000 is a 100 x 100 grid,
# more than anyone inspects; sampling time grows with it (8x8 digits: 0.5 s per 1,000).
MAX_GRID_IMAGES = 10_000
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class _Section(BaseModel):
    """Immutable; strict: no bool for an int, no string (YAML 1.1 ``1e-3``) for a float."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DataParams(_Section):
    source: DataSource = Field("digits", description="where the images come from")
    path: str | None = Field(None, description="local folder for idx / image-folder sources")
    url: str | None = Field(None, description="base URL of IDX files (needs data.sha256)")
    sha256: dict[str, str] = Field(default_factory=dict, description="IDX file name -> sha256")
    image_size: int | None = Field(None, ge=1, le=1024, description="resize image-folder images")
    levels: int = Field(17, ge=2, le=256, description="quantisation levels per channel")
    val_fraction: float = Field(0.1, gt=0.0, le=0.9, description="share for validation")
    test_fraction: float = Field(0.1, gt=0.0, le=0.9, description="share for test")
    seed: Seed = Field(0, description="seed of the train/val/test split")
    task: Task = Field("unconditional", description="what the generator is asked to do")
    occlusion: Occlusion = Field("lower_half", description="completion: hidden region")
    noise_level: float = Field(0.2, gt=0.0, le=1.0, description="denoise: noise std")


class ModelParams(_Section):
    arch: Arch = Field("row_lstm", description="generator architecture")
    hidden: int = Field(32, ge=1, le=4096, description="hidden size h of each recurrent layer")
    layers: int = Field(2, ge=1, le=64, description="number of recurrent layers")
    kernel: int = Field(3, ge=1, le=31, description="width k of the 1xk convolutions (odd)")
    input_kernel: int = Field(7, ge=1, le=31, description="masked input convolution (odd)")
    head_hidden: int = Field(64, ge=1, le=4096, description="width of the output head")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout of each layer's output path")


class TrainParams(_Section):
    seed: Seed = Field(0, description="seed_everything seed")
    max_epochs: int = Field(20, ge=1, le=100000, description="training epochs")
    batch_size: int = Field(64, ge=1, le=65536, description="images per batch")
    lr: float = Field(3.0e-3, gt=0.0, le=10.0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay")
    lr_schedule: Literal["constant", "cosine", "plateau"] = Field(
        "cosine",
        description="cosine: warm-up, then decay to 0 at max_epochs; plateau: halve when "
        "val stalls",
    )
    warmup_epochs: int = Field(0, ge=0, le=100000, description="linear lr warm-up (cosine)")
    patience: int = Field(
        4, ge=0, le=100000, description="stop after N epochs without a better val metric (0: off)"
    )
    grad_clip: float = Field(1.0, ge=0.0, description="gradient norm clip (0 = off)")
    precision: Precision = Field("32-true", description="Lightning precision (16-mixed: GPU only)")
    compile: bool = Field(False, description="torch.compile the generator's training NLL")
    accelerator: Accelerator = Field("auto", description="auto: a GPU when there is one")
    devices: int = Field(1, ge=1, le=1024, description="devices per node")
    strategy: Strategy = Field("auto", description="Lightning strategy")
    num_nodes: int = Field(1, ge=1, le=4096, description="machines in distributed training")
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes")
    threads: int = Field(0, ge=0, le=1024, description="torch CPU threads per process (0: all)")
    sample_every: int = Field(5, ge=0, description="log a sample grid every N epochs (0 = never)")
    sample_grid: int = Field(16, ge=1, le=1024, description="images in each sample grid")
    progress_bar: Literal["auto", "always", "never"] = Field("auto", description="auto: not in CI")
    use_tuned: bool = Field(True, description="merge the tune stage's best params over these")


DEFAULT_SPACE = {
    "train.lr": {"type": "float", "low": 3.0e-3, "high": 1.0e-2, "log": True},
    "model.hidden": {"type": "int", "low": 32, "high": 48, "step": 16},
    "model.layers": {"type": "int", "low": 2, "high": 3},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.4},
    "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
}
SPACE_KEYS = {
    "float": {"type", "low", "high", "log"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
SPACE_TYPES = tuple(SPACE_KEYS)
TUNABLE_SECTIONS = ("model", "train")


class TuneParams(_Section):
    """Hyperparameter search of the tune stage (Optuna)."""

    n_trials: int = Field(2, ge=0, le=100000, description="trials to finish (0: skip the search)")
    timeout: float | None = Field(None, gt=0.0, description="study time budget (s)")
    epochs: int | None = Field(
        None, ge=1, le=100000, description="max epochs of a trial; null: train.max_epochs"
    )
    study_name: str | None = Field(None, description="null: derived from the search settings")
    storage: str | None = Field(None, description="null: sqlite:///<repo>/optuna.db")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler (seeded)")
    seed: Seed = Field(0, description="sampler seed")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="Optuna pruner")
    startup_trials: int = Field(2, ge=0, le=100000, description="trials before pruning starts")
    metric: Literal["val/bpd", "val/nll"] = Field("val/bpd", description="metric to minimise")
    heartbeat: int = Field(30, ge=1, le=86400, description="heartbeat of RDB storages (s)")
    workers: int = Field(1, ge=1, le=256, description="worker processes of the tune stage")
    # param -> {type, low, high, ...}: checked by _space_errors, which tries the end values
    space: dict[str, dict[str, Any]] = Field(default_factory=lambda: copy.deepcopy(DEFAULT_SPACE))


class EvaluateParams(_Section):
    seed: Seed = Field(0, description="seed of the sample grid")
    n_samples: int = Field(64, ge=1, le=MAX_GRID_IMAGES, description="images in the sample grid")
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="sampling temperature")
    batch_size: int = Field(256, ge=1, le=65536, description="images per batch when scoring")
    score_samples: int = Field(1000, ge=0, le=1000000, description="samples the classifier scores")
    classifier_epochs: int = Field(20, ge=1, le=10000, description="scoring classifier epochs")
    classifier_patience: int = Field(
        3, ge=0, le=10000, description="classifier: stop after N epochs without better val acc"
    )
    classifier_threads: int = Field(0, ge=0, description="torch CPU threads of the classifier")
    threads: int = Field(0, ge=0, le=1024, description="torch CPU threads of the evaluation")


class TrackingParams(_Section):
    experiment: str = Field("rnnexp", description="MLflow experiment name")
    uri: str | None = Field(None, description="tracking URI; default sqlite:///<repo>/mlflow.db")
    log_checkpoint: bool = Field(True, description="log the best checkpoint as a run artifact")
    enabled: bool = Field(True, description="false: log nothing to MLflow")
    system_metrics: bool = Field(True, description="CPU/memory/GPU metrics on train and tune runs")
    registered_model: str | None = Field(None, description="registry name; null: the experiment's")


class Params(_Section):
    """All of params.yaml; ``Params()`` holds the defaults."""

    data: DataParams = Field(default_factory=DataParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    tune: TuneParams = Field(default_factory=TuneParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every param, as logged to MLflow."""
        return {f"{s}.{k}": v for s, keys in self.to_dict().items() for k, v in keys.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {key: value}}``, plain values only (a fresh copy)."""
        return self.model_dump()


_SECTION_TYPES: dict[str, Any] = {n: f.annotation for n, f in Params.model_fields.items()}
SECTIONS = tuple(_SECTION_TYPES)

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join([_type_name(a) for a in args if a is not type(None)] + ["null"])
    if origin is dict:
        return f"a mapping of strings to {'strings' if args[1] is str else 'mappings'}"
    return names.get(tp, str(tp))


def _describe(value: Any) -> str:
    """``value`` and its type for a message; shortened, so an alias bomb prints a line."""
    if not isinstance(value, str):
        return f"{short_repr(value)} ({type(value).__name__})"
    hint = f" (YAML reads {value} as a string; write it with a decimal point, e.g. 1.0e-3)"
    return f"the string {short_repr(value)}{hint if _FLOAT_RE.match(value) else ''}"


def _problem(kind: str, field: FieldInfo, value: Any) -> str:
    """What is wrong with ``value`` for ``field``, given pydantic's error type."""
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = [f"{op} {getattr(m, n)}" for m in field.metadata for n, op in _BOUNDS.items()
                  if hasattr(m, n)]  # fmt: skip
        return f"{short_repr(value)} is out of range (must be {' and '.join(bounds)})"
    if kind == "literal_error" and isinstance(value, str):
        return f"{short_repr(value)} is out of range (must be {_type_name(field.annotation)})"
    if kind == "finite_number":
        return f"expected a finite number, got {value!r}"
    return f"expected {_type_name(field.annotation)}, got {_describe(value)}"


def _messages(exc: ValidationError, raw: dict) -> list[str]:
    """pydantic's errors as one line per bad key, in the words of this module."""
    out: dict[str, str] = {}
    for err in exc.errors():
        section, *rest = err["loc"]
        if not rest:  # a whole section: unknown, or not a mapping
            out[str(section)] = (
                f"unknown section {section!r} (known: {', '.join(SECTIONS)})"
                if err["type"] == "extra_forbidden"
                else f"{section}: expected a mapping of keys, got {_describe(raw[section])}"
            )
            continue
        key = rest[0]
        fields, where = _SECTION_TYPES[section].model_fields, f"{section}.{key}"
        if err["type"] == "extra_forbidden":
            out[where] = f"{where}: unknown key (known keys of {section}: {', '.join(fields)})"
        else:  # a dict's errors sit deeper (loc section.key.item): one line for the key
            problem = _problem(err["type"], fields[key], raw[section][key])
            out.setdefault(where, f"{where}: {problem}")
    return list(out.values())


def validate(raw: Any, source: str, check_space: bool = True) -> Params:
    """Build :class:`Params` from a parsed YAML mapping, or raise one ConfigError.

    Args:
        raw: the mapping read from the params file (after overrides).
        source: how the file is named in error messages.
        check_space: also check ``tune.space`` (off while checking one of its values).
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    raw = {name: {} if value is None else value for name, value in raw.items()}
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        errors = _messages(exc, raw)
    else:
        errors = consistency_errors(params)
        if check_space and not errors:  # else every space value repeats the same error
            errors = _space_errors(params)
    if errors:
        raise ConfigError(f"{source}: invalid params:\n  - " + "\n  - ".join(errors))
    return params


def _spec_error(name: str, spec: dict) -> str | None:
    """What is wrong with the param and the shape of the ``tune.space`` entry ``name``."""
    where, (section, _, key) = f"tune.space.{name}", name.partition(".")
    if section not in TUNABLE_SECTIONS or key not in _SECTION_TYPES[section].model_fields:
        return f"{where}: not a tunable param (model.* or train.* keys)"
    kind = spec.get("type")
    if kind not in SPACE_TYPES:
        return f"{where}.type: expected one of {', '.join(SPACE_TYPES)}, got {short_repr(kind)}"
    unknown = set(spec) - SPACE_KEYS[kind]
    if unknown:
        return f"{where}: unknown keys {short_repr(sorted(unknown, key=str))} for type {kind}"
    if kind == "categorical":
        ok = isinstance(spec.get("choices"), list) and spec["choices"]
        return None if ok else f"{where}.choices: expected a non-empty list"
    low, high = spec.get("low"), spec.get("high")
    number = int if kind == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
        return f"{where}: low and high must both be {'integers' if kind == 'int' else 'numbers'}"
    if not all(math.isfinite(v) for v in (low, high)):  # YAML's .nan and .inf are floats
        return f"{where}: low and high must be finite numbers, got {low} and {high}"
    if not low < high:
        return f"{where}: low ({low}) must be below high ({high})"
    log = spec.get("log", False)
    if not isinstance(log, bool):  # "no" would be truthy: a log scale nobody asked for
        return f"{where}.log: expected true or false, got {_describe(log)}"
    if log and low <= 0:
        return f"{where}: log scale needs low > 0, got {low}"
    step = spec.get("step", 1)
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        return f"{where}: step must be a positive integer, got {short_repr(step)}"
    if log and step != 1:
        return (
            f"{where}: step and log: true cannot be combined unless step is 1 (Optuna samples "
            f"a log scale in steps of 1), got step {step}"
        )
    return None


def _space_errors(p: Params) -> list[str]:
    """Check ``tune.space``: known keys, well-formed ranges, and every end value valid."""
    errors = []
    for name, spec in p.tune.space.items():
        problem = _spec_error(name, spec)
        if problem is not None:
            errors.append(problem)
            continue
        for value in spec.get("choices") or [spec["low"], spec["high"]]:
            try:
                with_overrides(p, {name: value})
            except ConfigError as exc:
                reason = str(exc).split("\n  - ", 1)[-1]
                errors.append(f"tune.space.{name}: value {short_repr(value)} is invalid: {reason}")
    return errors


def with_overrides(params: Params, overrides: dict[str, Any], source: str = "overrides") -> Params:
    """A copy of ``params`` with ``{"section.key": value}`` applied; errors name ``source``."""
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
    value = parse_yaml(value_text, f"--set {short_repr(text)}") if value_text.strip() else None
    if isinstance(value, str) and _FLOAT_RE.match(value):
        value = float(value)  # YAML 1.1 leaves 1e-3 a string; on the command line it's a number
    return section, key, value


def load_params(path: str | Path = "params.yaml", overrides: list[str] = ()) -> Params:
    """Load, override and validate a params file.

    Args:
        path: the params file.
        overrides: ``section.key=value`` strings applied on top of the file.

    Raises:
        ConfigError: naming the file and every bad key.
    """
    raw = read_yaml(path)
    raw = {} if raw is None else raw
    for text in overrides if isinstance(raw, dict) else ():
        section, key, value = parse_override(text)
        if raw.get(section) is None:  # "train:" with no keys, or no such section yet
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{path}: section {section!r} is not a mapping")
        raw[section][key] = value
    source = str(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    return validate(raw, source)


def params_to_yaml(params: Params) -> str:
    """The YAML text of ``params`` (every key, defaults included)."""
    return yaml.safe_dump(params.to_dict(), sort_keys=False)
