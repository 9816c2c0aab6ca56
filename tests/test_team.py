"""Team setup: the shipped DVC remote config, and a second clone pulling the first's outputs."""

from __future__ import annotations

import configparser
import re

import pytest
from helpers import ROOT, TINY_PIPELINE, make_git_project, project_env, run

# Keys under which DVC remotes keep secrets (s3, azure, gs, ssh, http, webdav, oss...).
CREDENTIAL_KEY = re.compile(
    r"(access_key|secret|password|passphrase|token|credential|keyfile|sas|account_key"
    r"|connection_string|^user$|ask_password)",
    re.IGNORECASE,
)


def _dvc_config(path) -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(path)
    return config


def test_committed_dvc_config_has_a_default_remote_and_no_credentials():
    config = _dvc_config(ROOT / ".dvc/config")
    default = config["core"]["remote"]
    # DVC writes quoted section names: ['remote "team"']
    sections = {name.strip("'"): config[name] for name in config.sections()}
    remote = sections[f'remote "{default}"']
    assert "://" not in remote["url"]  # a local directory: works on a fresh clone
    for section in config.sections():
        for key in config[section]:
            assert not CREDENTIAL_KEY.search(key), f".dvc/config [{section}] {key}"
    # credentials belong in .dvc/config.local, which git never sees
    assert "/config.local" in (ROOT / ".dvc/.gitignore").read_text().split()


def test_credential_pattern_catches_what_dvc_remote_modify_would_write():
    # the check above is only worth something if it recognises real credential keys
    for key in ("access_key_id", "secret_access_key", "session_token", "password", "user"):
        assert CREDENTIAL_KEY.search(key), key
    for key in ("url", "remote", "analytics", "endpointurl", "region"):
        assert not CREDENTIAL_KEY.search(key), key


@pytest.mark.slow
def test_second_clone_pulls_the_first_clones_outputs_and_reruns_nothing(tmp_path):
    env = project_env()
    first = make_git_project(tmp_path / "first", TINY_PIPELINE, env)
    log = run(["dvc", "repro"], first, env)
    assert "Running stage 'evaluate'" in log
    run(["dvc", "push"], first, env)
    run(["git", "add", "-A"], first, env)
    run(["git", "commit", "-qm", "pipeline results"], first, env)
    remote = tmp_path / "rnnexp-dvc-remote"  # ../../rnnexp-dvc-remote from first/.dvc
    assert list(remote.rglob("*")), "dvc push wrote nothing to the default remote"

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path, env)
    assert not (second / "models/best.ckpt").exists()
    run(["dvc", "pull"], second, env)
    for out in ("data/prepared/meta.json", "models/best.ckpt", "reports/best_params.yaml"):
        assert (second / out).read_bytes() == (first / out).read_bytes(), out
    log = run(["dvc", "repro"], second, env)
    assert "Running stage" not in log
    assert "up to date" in run(["dvc", "status"], second, env)
    assert not (second / "mlflow.db").exists()  # no stage ran, so nothing was logged
