"""Imports go one way. Top level: ``cli`` -> ``service`` | ``worker`` -> ``shared``. Inside
``shared``: ``marketplace`` | ``controls`` -> ``dlq`` | ``auth`` | ``email`` -> ``jobs`` | ``audit``
-> ``infra``.

The checker reads every module's imports with ``ast`` (function-local imports included) and
reports each one against the direction; its own tests feed it small synthetic trees, so a
checker that stopped seeing violations would fail here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# unit -> the units it may import (itself always allowed). A unit is a top-level package, or a
# package/module directly under ``shared``.
ALLOWED: dict[str, frozenset[str]] = {
    "shared.infra": frozenset(),
    "shared.jobs": frozenset({"shared.infra"}),
    "shared.audit": frozenset({"shared.infra"}),
    "shared.dlq": frozenset({"shared.infra", "shared.jobs", "shared.audit"}),
    "shared.auth": frozenset({"shared.infra", "shared.audit"}),
    "shared.email": frozenset({"shared.infra", "shared.jobs", "shared.audit"}),
    "shared.marketplace": frozenset(
        {"shared.infra", "shared.jobs", "shared.audit", "shared.dlq", "shared.auth", "shared.email"}
    ),
    "shared.controls": frozenset({"shared.infra", "shared.jobs", "shared.audit", "shared.dlq"}),
    "shared.redrive_tasks": frozenset({"shared.infra", "shared.jobs", "shared.audit", "shared.dlq"}),
    "shared": frozenset({"shared.infra"}),  # shared/__init__.py
    "service": frozenset({"shared"}),
    "worker": frozenset({"shared"}),
    "cli": frozenset({"shared", "service", "worker"}),
}
PROJECT_PACKAGES = ("shared", "service", "worker", "cli")


def unit_of(module: str) -> str | None:
    """``shared.dlq.capture`` -> ``shared.dlq``; ``service.routes.dlq`` -> ``service``."""
    parts = module.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    if parts[0] == "shared" and len(parts) > 1:
        return f"shared.{parts[1]}"
    return parts[0]


def may_import(importer: str, imported: str) -> bool:
    if importer == imported or imported == "shared":  # the package root holds only ``__version__``
        return True
    allowed = ALLOWED[importer]
    # "shared" in an allow-list admits every unit inside shared
    return imported in allowed or ("shared" in allowed and imported.startswith("shared"))


def imported_modules(source: str, module: str, root: Path | None = None) -> set[str]:
    """Absolute names of the modules ``source`` imports: ``from x import y`` is ``x.y`` when that
    is a module under ``root``, else ``x``."""
    package = module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                names.add(candidate if root is not None and _is_module(root, candidate) else base)
    return names


def _is_module(root: Path, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def violations(root: Path) -> list[str]:
    found = []
    for package in PROJECT_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            importer = unit_of(module)
            assert importer is not None and importer in ALLOWED, f"{module} belongs to no known layer"
            for imported in sorted(imported_modules(path.read_text(encoding="utf-8"), module, root)):
                target = unit_of(imported)
                if target is None:
                    continue
                if not may_import(importer, target):
                    found.append(f"{path.relative_to(root)}: {importer} imports {imported}")
    return found


def import_cycles(root: Path) -> list[list[str]]:
    """Cycles between modules (top-level imports only: a function-local import cannot cycle at load)."""
    graph: dict[str, set[str]] = {}
    modules = {
        module_name(p, root): p for package in PROJECT_PACKAGES for p in (root / package).rglob("*.py")
    }
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                source = ast.unparse(node)
                deps |= {m for m in imported_modules(source, module, root) if m in modules and m != module}
        graph[module] = deps
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


# -- the project ----------------------------------------------------------------------------------
def test_imports_follow_the_layers() -> None:
    assert violations(ROOT) == []


def test_no_import_cycle() -> None:
    assert import_cycles(ROOT) == []


def test_shared_holds_only_packages_audit_and_init() -> None:
    flat = sorted(p.name for p in (ROOT / "shared").glob("*.py"))
    assert flat == ["__init__.py", "audit.py"]
    for package in (ROOT / "shared").iterdir():
        if package.is_dir() and package.name != "__pycache__":
            doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
            assert doc and "import" in doc.lower(), f"{package.name}/__init__.py must say what it may import"


def test_only_metrics_module_imports_aioprometheus() -> None:
    users = [
        str(p.relative_to(ROOT))
        for pkg in PROJECT_PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if any(m.split(".")[0] == "aioprometheus" for m in imported_modules(p.read_text(), "x"))
    ]
    assert users == ["shared/infra/metrics.py"]


# -- the checker itself ---------------------------------------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in PROJECT_PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "shared" / "audit.py").write_text("")
    for name, body in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(tmp_path).parents:
            if str(parent) != ".":
                (tmp_path / parent / "__init__.py").touch()
        path.write_text(body)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"shared/infra/db.py": "from shared.marketplace.providers import x\n"},
            "shared.infra imports shared.marketplace.providers",
        ),
        ({"shared/infra/db.py": "import shared.dlq.capture\n"}, "shared.infra imports shared.dlq.capture"),
        ({"shared/jobs/stats.py": "from shared import audit\n"}, "shared.jobs imports shared.audit"),
        ({"shared/dlq/capture.py": "from shared.auth import login\n"}, "shared.dlq imports shared.auth"),
        ({"service/app.py": "def f():\n    from worker.process import run\n"}, "service imports worker"),
        ({"worker/process.py": "from cli.main import main\n"}, "worker imports cli.main"),
        ({"service/x.py": "import cli\n"}, "service imports cli"),
        ({"shared/audit.py": "from service.app import create_app\n"}, "shared.audit imports service"),
        (
            {"shared/dlq/browse.py": "from ..marketplace import reports\n"},
            "shared.dlq imports shared.marketplace",
        ),
    ],
)
def test_checker_reports_imports_against_the_direction(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    found = violations(_tree(tmp_path, files))
    assert len(found) == 1 and expected in found[0], found


def test_checker_accepts_imports_along_the_direction(tmp_path: Path) -> None:
    files = {
        "shared/marketplace/reports.py": "from shared.dlq import capture\nfrom shared import audit\n",
        "shared/dlq/capture.py": "from shared.jobs.queues import X\nfrom shared.infra import db\n",
        "cli/main.py": "from service.app import create_app\nfrom worker.process import run\n",
        "worker/jobs.py": "from shared.marketplace import reports\n",
    }
    assert violations(_tree(tmp_path, files)) == []


def test_cycle_finder_sees_a_cycle(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"cli/a.py": "from cli.b import x\n", "cli/b.py": "from cli.a import y\n"})
    assert import_cycles(root) == [["cli.a", "cli.b", "cli.a"]]


def test_embedded_servers_stay_off_the_runtime_path() -> None:
    """Only the dev runner (and tests) import the embedded Postgres/Redis launcher."""
    importers = sorted(
        module_name(path, ROOT)
        for package in PROJECT_PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "cli.embedded" in imported_modules(path.read_text(), module_name(path, ROOT), ROOT)
        and path.name != "embedded.py"
    )
    assert importers == ["cli.dev"]
