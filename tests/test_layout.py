"""The layout's rules (ARCHITECTURE.md), checked on the source: small modules, MLflow
behind the tracking package, plain-torch models, and code that cites only files of
this repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rnnexp"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def imported_roots(path: Path) -> set[str]:
    """Top-level package names a module imports anywhere (function bodies included)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_walk_sees_the_modules():
    names = {relative(p) for p in MODULES}
    assert {"rnnexp/cli.py", "rnnexp/config.py", "rnnexp/tracking/__init__.py"} <= names
    assert "mlflow" in imported_roots(PACKAGE / "tracking" / "__init__.py") | set().union(
        *(imported_roots(p) for p in (PACKAGE / "tracking").glob("*.py"))
    )


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_no_module_is_over_400_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{relative(path)} has {lines} lines; split it by concern"


def test_only_the_tracking_package_imports_mlflow():
    offenders = [
        relative(p)
        for p in MODULES
        if "mlflow" in imported_roots(p) and (PACKAGE / "tracking") not in p.parents
    ]
    assert offenders == []


def test_models_are_plain_torch():
    frameworks = {"lightning", "pytorch_lightning", "mlflow", "optuna", "dvc"}
    offenders = {
        relative(p): sorted(imported_roots(p) & frameworks)
        for p in (PACKAGE / "models").glob("*.py")
        if imported_roots(p) & frameworks
    }
    assert offenders == {}


# A file cited in code or docs: "see ARCHITECTURE.md", `rnnexp/util/atomic.py`.
CITED_MD = re.compile(r"\b((?:[\w.-]+/)*[\w-]+\.md)\b")
CITED_PY = re.compile(r"\b((?:[\w-]+/)+[\w-]+\.py)\b")  # a path, not a bare name


def test_code_and_docs_cite_only_files_of_the_repository():
    known = [relative(p) for p in ROOT.rglob("*") if ".venv" not in p.parts]
    docs = [*MODULES, ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "dvc.yaml"]
    tests = sorted((ROOT / "tests").glob("*.py"))
    cited = {(relative(p), c) for p in docs for c in CITED_PY.findall(p.read_text())}
    cited |= {(relative(p), c) for p in [*docs, *tests] for c in CITED_MD.findall(p.read_text())}
    missing = sorted(
        f"{where}: {name}"
        for where, name in cited
        if where != "tests/test_layout.py"
        and not any(k == name or k.endswith("/" + name) for k in known)
    )
    assert missing == []
