"""params.yaml schema: every bad value fails before work starts, naming key and file."""

import pytest
import yaml

from rnnexp.config import Params, load_params, parse_override
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
