"""tests/prerequisites.py: a missing prerequisite skips on a developer's machine and fails under CI.

Each case runs a real pytest in a subprocess on a small test file, once without `CI` and once with it,
and reads pytest's own report of what happened.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The helpers as the only plugin of note; no cache files left in the temp directory.
PYTEST = [
    sys.executable, "-m", "pytest", "-p", "tests.prerequisites", "-p", "no:cacheprovider", "-p", "no:asyncio"
]

# One test per way of stating a prerequisite, each with a prerequisite that is missing (`MISSING`) or
# present; the present ones are the control that the helpers do not fail or skip everything.
CASES = """
import pytest

from tests.prerequisites import prerequisite_met, require, requires

MISSING = {missing}


def test_require():
    require(not MISSING, "needs the frobnicator")


@requires(not MISSING, "needs the frobnicator")
def test_requires_mark():
    pass


@pytest.fixture
def tool():
    require(not MISSING, "needs the frobnicator")


def test_require_in_a_fixture(tool):
    pass


def test_optional_part():
    if prerequisite_met(not MISSING, "needs the frobnicator"):
        assert not MISSING
    assert True
"""


def _run(tmp_path: Path, *, missing: bool, ci: str | None) -> tuple[int, dict[str, str]]:
    """Run the cases; return pytest's exit code and each test's outcome (PASSED, SKIPPED, FAILED, ERROR)."""
    (tmp_path / "test_cases.py").write_text(CASES.format(missing=missing), encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        [*PYTEST, "-v", "test_cases.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    outcomes = dict(re.findall(r"^test_cases\.py::(\w+) (PASSED|SKIPPED|FAILED|ERROR)", done.stdout, re.M))
    return done.returncode, outcomes


ALL = {"test_require", "test_requires_mark", "test_require_in_a_fixture", "test_optional_part"}


@pytest.mark.parametrize("ci", [None, "", "0", "false"])
def test_a_missing_prerequisite_skips_outside_ci(tmp_path: Path, ci: str | None) -> None:
    code, outcomes = _run(tmp_path, missing=True, ci=ci)
    assert outcomes == {
        "test_require": "SKIPPED",
        "test_requires_mark": "SKIPPED",
        "test_require_in_a_fixture": "SKIPPED",
        "test_optional_part": "PASSED",  # the optional part is left out, the rest runs
    }
    assert code == 0


@pytest.mark.parametrize("ci", ["1", "true"])
def test_a_missing_prerequisite_fails_under_ci(tmp_path: Path, ci: str) -> None:
    code, outcomes = _run(tmp_path, missing=True, ci=ci)
    # A failure in a fixture or in the mark's setup hook is reported by pytest as an error: not green either.
    assert outcomes == {
        "test_require": "FAILED",
        "test_requires_mark": "ERROR",
        "test_require_in_a_fixture": "ERROR",
        "test_optional_part": "FAILED",
    }
    assert code == 1


@pytest.mark.parametrize("ci", [None, "1"])
def test_a_present_prerequisite_runs_the_test(tmp_path: Path, ci: str | None) -> None:
    code, outcomes = _run(tmp_path, missing=False, ci=ci)
    assert outcomes == dict.fromkeys(ALL, "PASSED")
    assert code == 0


def test_the_failure_names_the_prerequisite(tmp_path: Path) -> None:
    (tmp_path / "test_cases.py").write_text(CASES.format(missing=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(PYTHONPATH=str(ROOT), CI="1")
    done = subprocess.run(
        [*PYTEST, "test_cases.py::test_require"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert "missing prerequisite: needs the frobnicator (CI is set" in done.stdout
