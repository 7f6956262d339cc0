"""House rules that can be checked mechanically: lint, types, and one-way layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_drivers_and_simulators_never_import_edge() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for folder in ("drivers", "simulators")
        for path in (ROOT / folder).rglob("*.py")
        for name in _imports(path)
        if name == "edge" or name.startswith("edge.")
    ]
    assert offenders == []


def test_drivers_never_import_simulators() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "drivers").rglob("*.py")
        if any(n == "simulators" or n.startswith("simulators.") for n in _imports(path))
    ]
    assert offenders == []


def test_ruff_is_clean() -> None:
    done = subprocess.run(
        [str(BIN / "ruff"), "check", "edge", "drivers", "simulators", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:]


def test_mypy_strict_is_clean() -> None:
    done = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


# Packages of the station side: none may reach into the central (the station talks to it over the
# network only; certificates and bundles live in edge.pki, shared by both).
STATION_PACKAGES = ("config", "custody", "durable", "ingest", "pki", "runtime", "sources", "uplink", "verify")
# Foundation packages that everything builds on and that build on nothing above them.
FOUNDATION = {"custody": {"custody", "durable"}, "durable": {"durable"}}
COMPOSITION_ROOTS = {"__init__.py", "cli.py", "station.py", "demo.py"}


def _edge_imports(path: Path) -> set[str]:
    return {n for n in _imports(path) if n.startswith("edge.")}


def test_station_packages_never_import_the_central() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package in STATION_PACKAGES
        for path in (ROOT / "edge" / package).rglob("*.py")
        for name in _edge_imports(path)
        if name.startswith("edge.central")
    ]
    assert offenders == []


def test_foundation_packages_depend_only_on_foundations() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package, allowed in FOUNDATION.items()
        for path in (ROOT / "edge" / package).rglob("*.py")
        for name in _edge_imports(path)
        if name.split(".")[1] not in allowed
    ]
    assert offenders == []


def test_edge_root_holds_composition_roots_only() -> None:
    modules = {p.name for p in (ROOT / "edge").glob("*.py")}
    assert modules - COMPOSITION_ROOTS == set(), "move foundation modules into a package named for its role"
