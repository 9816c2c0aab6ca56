"""params.yaml schema: every bad value fails before work starts, naming key and file."""

import pytest
import yaml
from pydantic import ValidationError

from rnnexp.config import Params, load_params, parse_override, read_yaml, with_overrides
from rnnexp.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repo_params_file_is_valid_and_matches_schema_defaults():
    params = load_params("params.yaml")
    # The repo's params.yaml spells out every key of the schema.
    raw = yaml.safe_load(open("params.yaml"))
    flat_file = {f"{s}.{k}" for s, keys in raw.items() for k in (keys or {})}
    assert flat_file == set(Params().flat())
    assert params.data.levels == 17
    assert params.train.lr == pytest.approx(3.0e-3)


def test_overrides_apply_and_parse_numbers(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.01\n")
    params = load_params(path, ["train.lr=1e-3", "train.max_epochs=3", "data.image_size=null"])
    assert params.train.lr == pytest.approx(1e-3)
    assert params.train.max_epochs == 3
    assert params.data.image_size is None
    # untouched keys keep their defaults
    assert params.model.hidden == Params().model.hidden


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  lr: 1e-3\n", "train.lr: expected a number, got the string '1e-3'"),
        ("train:\n  max_epochs: -1\n", "train.max_epochs: -1 is out of range"),
        ("train:\n  max_epochs: 2.5\n", "train.max_epochs: expected an integer"),
        ("train:\n  max_epochs: true\n", "train.max_epochs: expected an integer"),
        ("data:\n  levels: 1\n", "data.levels: 1 is out of range"),
        ("data:\n  image_size: 0\n", "data.image_size: 0 is out of range"),
        ("data:\n  source: mnist\n", "data.source: 'mnist' is out of range (must be one of"),
        ("model:\n  hiden: 3\n", "model.hiden: unknown key"),
        ("modle:\n  hidden: 3\n", "unknown section 'modle'"),
        ("train: 3\n", "train: expected a mapping"),
        ("model:\n  kernel: 4\n", "model.kernel: 4 must be odd"),
        ("data:\n  val_fraction: 0.5\n  test_fraction: 0.5\n", "must be below 1"),
        ("data:\n  source: idx\n", "data.path must be set for data.source='idx'"),
        ("tracking:\n  log_checkpoint: 1\n", "tracking.log_checkpoint: expected true or false"),
        ("data:\n  sha256: [1, 2]\n", "data.sha256: expected a mapping"),
    ],
)
def test_bad_values_name_key_and_file(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert fragment in message
    assert str(path) in message


def test_all_errors_reported_in_one_message(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1e-3\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert "train.lr" in str(info.value) and "train.epochs: unknown key" in str(info.value)


def test_malformed_yaml_names_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: [0.1\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_params(path)


def test_python_object_tag_refused(tmp_path):
    path = write(tmp_path, "train: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="refused YAML tag at line 1.*python/object/apply"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["trainlr=3", "train.lr", "lr=3"])
def test_bad_override_syntax(text):
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override(text)


def test_bad_override_value_names_override(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(
        ConfigError, match=r"(?s)with --set train.batch_size=0.*train.batch_size: 0"
    ):
        load_params(path, ["train.batch_size=0"])


def test_flat_names_are_section_dot_key():
    flat = Params().flat()
    assert flat["train.lr"] == Params().train.lr
    assert all(key.count(".") == 1 for key in flat)


def test_defaults_include_new_params_and_match_an_empty_file(tmp_path):
    params = Params()
    assert params.train.accelerator == "auto"
    assert params.evaluate.classifier_threads == 0
    assert load_params(write(tmp_path, "")) == params
    assert load_params("params.yaml").evaluate.classifier_threads == 0


def test_one_message_names_every_bad_key_in_the_old_form(tmp_path):
    text = (
        "data:\n  levels: 1\n  sha256: {a.idx: 1}\n"
        "train:\n  lr: 1e-3\n  seed: 4294967296\n  precision: 32\n  epochs: 3\n"
        "evaluate:\n  classifier_threads: -1\n"
        "optimizer: {}\n"
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path, ["train.max_epochs=true"])
    message = str(info.value)
    head, *lines = message.split("\n  - ")
    assert head == f"{path} (with --set train.max_epochs=true): invalid params:"
    assert sorted(line.split(":")[0] for line in lines) == [
        "data.levels",
        "data.sha256",
        "evaluate.classifier_threads",
        "train.epochs",
        "train.lr",
        "train.max_epochs",
        "train.precision",
        "train.seed",
        "unknown section 'optimizer' (known",
    ]
    assert "data.sha256: expected a mapping of strings to strings" in message
    assert "(YAML reads 1e-3 as a string; write it with a decimal point, e.g. 1.0e-3)" in message
    assert "train.max_epochs: expected an integer, got True (bool)" in message
    assert "train.precision: expected one of '32-true', '32'," in message
    assert "train.epochs: unknown key (known keys of train: seed, max_epochs," in message
    # pydantic's own wording never reaches the user
    assert "validation error" not in message and "pydantic" not in message


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  grad_clip: .nan\n", "train.grad_clip: expected a finite number, got nan"),
        ("train:\n  lr: .inf\n", "train.lr: expected a finite number, got inf"),
        ("tune:\n  timeout: -.inf\n", "tune.timeout: expected a finite number, got -inf"),
        ("train:\n  seed: 4294967296\n", "train.seed: 4294967296 is out of range"),
        ("data:\n  seed: 4294967296\n", "data.seed: 4294967296 is out of range"),
        ("tune:\n  seed: 4294967296\n", "tune.seed: 4294967296 is out of range"),
        ("evaluate:\n  seed: 99999999999\n", "evaluate.seed: 99999999999 is out of range"),
        (
            "evaluate:\n  classifier_threads: -1\n",
            "evaluate.classifier_threads: -1 is out of range (must be >= 0)",
        ),
        ("evaluate:\n  classifier_threads: 1.5\n", "classifier_threads: expected an integer"),
        ("train:\n  accelerator: tpu\n", "train.accelerator: 'tpu' is out of range (must be one"),
        ("train:\n  lr: '0.1'\n", "train.lr: expected a number, got the string '0.1' (YAML"),
        ("tracking:\n  experiment: 3\n", "tracking.experiment: expected a string, got 3 (int)"),
        ("data:\n  image_size: 2.0\n", "data.image_size: expected an integer or null"),
    ],
)
def test_new_rules_name_key_and_file(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: invalid params:\n  - ")
    assert fragment in str(info.value)


def test_largest_numpy_seed_and_ints_for_floats_are_accepted(tmp_path):
    path = write(tmp_path, "train:\n  seed: 4294967295\n  lr: 1\n  grad_clip: 0\n")
    params = load_params(path)
    assert params.train.seed == 2**32 - 1
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.train.grad_clip == 0.0


SPACE = "tune:\n  space:\n    {name}: {spec}\n"


@pytest.mark.parametrize(
    "name, spec, fragment",
    [
        ("model.hidden", "{type: int, low: 16, high: 48, step: 0}", "step must be a positive"),
        ("model.hidden", "{type: int, low: 16, high: 48, step: -16}", "got -16"),
        ("model.hidden", "{type: int, low: 16, high: 48, step: 1.5}", "got 1.5"),
        ("model.hidden", "{type: int, low: 16, high: 64, step: 16, log: true}", "step and log"),
        ("train.lr", "{type: float, low: 0.001, high: 0.01, step: 0.001}", "unknown keys ['step']"),
        ("train.lr", "{type: float, low: .nan, high: 0.01}", "must be finite numbers, got nan"),
        ("train.lr", "{type: float, low: 0.001, high: .inf}", "must be finite numbers"),
        ("model.layers", "{type: int, low: 1, high: 3, log: 'no'}", "log: expected true or"),
        ("model.hidden", "{type: int, low: 8, high: 64, step: 2, log: true}", "got step 2"),
        ("train.seed", "{type: int, low: 0, high: 4294967296}", "value 4294967296 is invalid"),
    ],
)
def test_bad_tune_space_entries_are_refused(tmp_path, name, spec, fragment):
    path = write(tmp_path, SPACE.format(name=name, spec=spec))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert f"{path}: invalid params:\n  - tune.space.{name}" in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize("step", ["", ", step: 1"])
def test_int_space_with_log_and_no_step_or_step_1_is_accepted(tmp_path, step):
    # Optuna samples a log-scale int in steps of 1: step 1 is the same as no step
    spec = f"{{type: int, low: 8, high: 64, log: true{step}}}"
    path = write(tmp_path, SPACE.format(name="model.hidden", spec=spec))
    space = load_params(path).tune.space["model.hidden"]
    assert (space["low"], space["high"], space["log"]) == (8, 64, True)


@pytest.mark.parametrize(
    "text, line, key",
    [
        ("train:\n  lr: 0.01\n  seed: 1\n  lr: 0.02\n", 4, "train.lr"),
        ("train:\n  seed: 1\nmodel:\n  hidden: 8\ntrain:\n  seed: 2\n", 5, "train"),
        ("tune:\n  space: {train.lr: {type: float, type: int}}\n", 2, "tune.space.train.lr.type"),
        ("a: &x {k: 1, k: 2}\nb: *x\n", 1, "a.k"),  # found once, where the anchor is
    ],
)
def test_duplicate_keys_are_refused_naming_file_line_and_key(tmp_path, text, line, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: refused at line {line}, column")
    assert f"duplicate key {key} (first given at line" in str(info.value)


def test_duplicate_key_in_an_override_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--set .*duplicate key train.lr.type "):
        load_params(write(tmp_path, ""), ["tune.space={train.lr: {type: float, type: int}}"])


def bomb(levels: int) -> str:
    """YAML whose anchors expand to 9**levels values ("billion laughs")."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path):
    path = write(tmp_path, bomb(9))  # 387 million values once expanded
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused at line 6, column 5: l5: aliases expand")
    assert "597,871 values (more than 100,000; an alias bomb?)" in message
    assert len(message) < 300


def test_shared_anchors_below_the_limit_are_read_as_safe_load_reads_them(tmp_path):
    path = write(tmp_path, bomb(5))  # 74,733 values: large, but not a bomb
    assert read_yaml(path) == yaml.safe_load(bomb(5))


def test_a_bad_value_from_aliases_is_described_in_one_short_line(tmp_path):
    flow = ", ".join(line.split(": ", 1)[1] for line in bomb(5).splitlines())
    with pytest.raises(ConfigError) as info:  # 74,733 values: below the bomb limit
        load_params(write(tmp_path, f"train:\n  lr: [{flow}]\n"))
    (line,) = str(info.value).splitlines()[1:]
    assert line.startswith(
        "  - train.lr: expected a number, got [['lol', 'lol', 'lol', 'lol', ...]"
    )
    assert line.endswith("...] (list)") and len(line) < 200


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            "train:\n  lr: &r [1, *r]\n",
            "at line 2, column 7: train.lr[1]: an alias refers to itself",
        ),
        ("train:\n  lr: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than 64 levels"),
        ("train:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n", "malformed YAML: nested too deeply"),
    ],
)
def test_recursive_and_too_deep_yaml_is_refused(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("example.com/mnist/x.gz", "(no scheme)"),
        ("ftp://example.com/mnist/", "(scheme 'ftp')"),
        ("file:///data/mnist/", "(scheme 'file')"),
        ("https:///mnist/", "(no host)"),
    ],
)
def test_data_url_must_be_http_or_https_with_a_host(tmp_path, url, fragment):
    path = write(tmp_path, f"data:\n  source: idx\n  url: '{url}'\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert f"data.url: {url!r} is not a download URL {fragment}" in str(info.value)


def test_data_url_with_http_or_https_and_a_host_is_accepted(tmp_path):
    for url in ("https://example.com/mnist/", "HTTP://127.0.0.1:8000/idx"):
        path = write(tmp_path, f"data:\n  source: idx\n  url: '{url}'\n")
        assert load_params(path).data.url == url


def test_sample_grid_is_capped(tmp_path):
    assert load_params(write(tmp_path, "evaluate:\n  n_samples: 10000\n")).evaluate.n_samples
    with pytest.raises(ConfigError, match="evaluate.n_samples: 10001 is out of range"):
        load_params(write(tmp_path, "evaluate:\n  n_samples: 10001\n"))


def test_yaml_semantics_otherwise_match_safe_load(tmp_path):
    # merge keys may override merged values, as yaml.safe_load allows
    text = "base: &b {low: 1, high: 3}\nentry:\n  <<: *b\n  high: 5\nflag: yes\nfloat: 1e-3\n"
    path = write(tmp_path, text)
    assert read_yaml(path) == yaml.safe_load(text)
    assert read_yaml(path)["entry"] == {"low": 1, "high": 5}
    assert read_yaml("params.yaml") == yaml.safe_load(open("params.yaml"))


def test_params_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes("train:\n  experiment: caf\u00e9\n".encode("latin-1"))
    message = r"params.yaml: not UTF-8 text at line 2, column 18 \(byte 24 is 0xe9: invalid"
    with pytest.raises(ConfigError, match=message) as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_section_given_with_no_keys_takes_overrides(tmp_path):
    params = load_params(write(tmp_path, "train:\nmodel:\n"), ["train.max_epochs=4"])
    assert params.train.max_epochs == 4
    assert params.model == Params().model


def test_params_are_immutable_and_copies_are_independent():
    params = Params()
    with pytest.raises(ValidationError):
        params.train.lr = 1.0
    raw = params.to_dict()
    raw["tune"]["space"]["train.lr"]["low"] = 0.5
    assert params.tune.space["train.lr"]["low"] == pytest.approx(3.0e-3)
    assert Params().tune.space is not params.tune.space


def test_with_overrides_validates_and_names_the_source():
    params = with_overrides(Params(), {"train.lr": 0.01, "evaluate.classifier_threads": 2})
    assert params.train.lr == pytest.approx(0.01)
    assert params.evaluate.classifier_threads == 2
    with pytest.raises(ConfigError) as info:
        with_overrides(Params(), {"train.grad_clip": float("nan")}, "best.yaml")
    assert str(info.value) == (
        "best.yaml: invalid params:\n  - train.grad_clip: expected a finite number, got nan"
    )
