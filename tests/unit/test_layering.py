"""STYLE: shared imports neither service nor worker; worker never imports service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"shared": ("service", "worker"), "worker": ("service",)}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upward(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    if package == "shared":
        assert files, "shared/ must exist"
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & set(FORBIDDEN[package]))
        for path in files
        if _imports(path) & set(FORBIDDEN[package])
    }
    assert offenders == {}


def test_only_metrics_module_imports_aioprometheus() -> None:
    users = [
        str(p.relative_to(ROOT))
        for pkg in ("shared", "service", "worker")
        for p in (ROOT / pkg).rglob("*.py")
        if "aioprometheus" in _imports(p)
    ]
    assert users == ["shared/metrics.py"]
