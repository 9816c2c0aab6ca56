"""dvc.yaml lists, for each stage, every rnnexp module the stage's command imports,
and each command runs the rnnexp code of the workspace it runs in.

A module missing from a stage's deps means a code change that alters the stage's
output would not rerun it (`dvc repro` would call stale outputs up to date). The
imports are read statically: the stage's ``_cmd_<stage>`` function in cli.py, then
every ``rnnexp`` import of those modules, transitively (function-level imports
included, to err on the side of listing too much).
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


def module_file(name: str) -> Path:
    path = ROOT / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


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


def closure(start: set[str], seen: set[str] | None = None) -> set[str]:
    seen, todo = set(seen or ()), list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        todo.extend(rnnexp_imports(ast.parse(path.read_text()), package))
        parts = name.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return seen


def command_modules(stage: str) -> set[str]:
    tree = ast.parse((ROOT / "rnnexp" / "cli.py").read_text())
    top = {n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    (function,) = [
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == f"_cmd_{stage}"
    ]
    module = ast.Module(body=[*top, function], type_ignores=[])
    # cli.py itself: only its top-level imports and this command's function count
    return closure(rnnexp_imports(module, "rnnexp"), seen={"rnnexp.cli"})


def listed(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_every_module_its_command_imports(stage):
    deps = [d for d in STAGES[stage].get("deps", []) if d.startswith("rnnexp")]
    files = {str(module_file(m).relative_to(ROOT)) for m in command_modules(stage)}
    files = {f for f in files if (ROOT / f).read_text().strip()}  # empty __init__.py files
    files.add("rnnexp/cli.py")
    files.discard("rnnexp/__init__.py")
    missing = sorted(f for f in files if not listed(f, deps))
    assert missing == [], f"dvc.yaml stage {stage} misses deps {missing}"


def test_the_check_sees_lazy_imports_of_a_command():
    # evaluate imports rnnexp.evaluate inside _cmd_evaluate, which imports scores
    evaluate = command_modules("evaluate")
    assert {"rnnexp.evaluate", "rnnexp.scores", "rnnexp.classifier"} <= evaluate
    assert "rnnexp.tune" not in evaluate  # other commands' lazy imports do not count
    assert not listed("rnnexp/scores.py", ["rnnexp/models", "rnnexp/score.py"])


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
