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
