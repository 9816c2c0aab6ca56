"""dvc.yaml's code dependencies follow the rule of ARCHITECTURE.md: a stage depends on
the code that decides its outputs, and on nothing else.

That code is the stage's module (``rnnexp/stages/<stage>.py``) and every rnnexp module
it computes with, found by following its imports (function-level ones included).
The search stops at code that only dispatches, reports or moves bytes: the CLI
dispatcher, the commands no stage runs, the tracking package, logging, errors and
``rnnexp/util``. A module missing from a stage's deps lets a change that alters the
stage's output go unnoticed (``dvc repro`` calls stale outputs up to date); a module
listed that does not decide the outputs reruns the stage (and, after it, the whole
pipeline below it) for a typo in a help text or a log message.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import make_project, project_env

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Modules that do not decide any stage's outputs (prefixes of dotted names).
NOT_DECIDING = (
    "rnnexp.cli",
    "rnnexp.commands",
    "rnnexp.tracking",
    "rnnexp.console",
    "rnnexp.errors",
    "rnnexp.util",
)


def module_file(name: str) -> Path:
    path = ROOT / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def deciding(name: str) -> bool:
    return name != "rnnexp" and not any(name == p or name.startswith(p + ".") for p in NOT_DECIDING)


def rnnexp_imports(tree: ast.AST, package: str) -> set[str]:
    """Names of the rnnexp modules a syntax tree imports (``from rnnexp.x import y``
    counts ``rnnexp.x``, and ``rnnexp.x.y`` when that is a module too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            names = [f"{base}.{node.module}" if node.module else base]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if not name.startswith("rnnexp"):
                continue
            found.add(name)
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if module_file(f"{name}.{alias.name}").is_file():
                        found.add(f"{name}.{alias.name}")
    return {n for n in found if module_file(n).is_file()}


def deciding_modules(stage: str) -> set[str]:
    """The deciding modules a stage's module reaches through its imports (and the
    packages' ``__init__`` files that importing them runs)."""
    seen: set[str] = set()
    todo = [f"rnnexp.stages.{stage}"]
    while todo:
        name = todo.pop()
        if name in seen or not deciding(name):
            continue
        seen.add(name)
        path = module_file(name)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        todo.extend(rnnexp_imports(ast.parse(path.read_text()), package))
        parts = name.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return seen


def deciding_files(stage: str) -> set[str]:
    return {str(module_file(m).relative_to(ROOT)) for m in deciding_modules(stage)}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def code_deps(stage: str) -> list[str]:
    return [d for d in STAGES[stage].get("deps", []) if d.startswith("rnnexp")]


def files_under(dep: str) -> set[str]:
    path = ROOT / dep
    found = path.rglob("*.py") if path.is_dir() else [path]
    return {str(p.relative_to(ROOT)) for p in found}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_exactly_the_code_that_decides_its_outputs(stage):
    deps = code_deps(stage)
    wanted = deciding_files(stage)
    missing = sorted(f for f in wanted if not covered(f, deps))
    assert missing == [], f"dvc.yaml stage {stage} misses deps {missing}"
    listed = set().union(*(files_under(d) for d in deps)) if deps else set()
    extra = sorted(listed - wanted)
    assert extra == [], f"dvc.yaml stage {stage} lists code that does not decide it: {extra}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_runs_its_own_module(stage):
    assert STAGES[stage]["cmd"].split()[:3] == ["python", "-m", f"rnnexp.stages.{stage}"]


def test_the_rule_follows_lazy_imports_and_stops_at_reporting_code():
    evaluate = deciding_modules("evaluate")
    # stages/evaluate.py reaches scores through evaluation.sample_quality; it imports
    # tracking only inside main(), and the search does not enter it
    assert {"rnnexp.evaluation.scores", "rnnexp.evaluation.classifier"} <= evaluate
    assert not any(m.startswith("rnnexp.tracking") for m in evaluate)
    assert "rnnexp.stages.tune" not in evaluate
    # the scoring classifier is trained on the data alone: no generator code
    assert not any(m.startswith("rnnexp.models") for m in deciding_modules("classifier"))
    assert not covered("rnnexp/scores.py", ["rnnexp/models", "rnnexp/score.py"])


def test_no_stage_depends_on_the_dispatcher_commands_or_tracking():
    for stage in STAGES:
        for dep in code_deps(stage):
            assert deciding(dep.removesuffix(".py").replace("/", ".")), (stage, dep)


def test_stage_commands_run_the_code_of_their_own_workspace(tmp_path):
    # DVC runs queued experiments in copies under .dvc/tmp/exps, and team clones may
    # share one environment; the `rnnexp` console script would import the package
    # the environment was installed from, not the copy whose code DVC recorded.
    copy = make_project(tmp_path / "copy", {})
    init = copy / "rnnexp" / "__init__.py"
    init.write_text(init.read_text() + "\nprint('code of the copy')\n")
    for stage, spec in STAGES.items():
        out = subprocess.run(
            f"{spec['cmd']} --help", shell=True, cwd=copy, env=project_env(),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "code of the copy" in out.stdout, f"stage {stage} ran other code: {spec['cmd']}"
