"""tests/report_fallback.py: a test whose report pytest cannot format (a TypeError while the report is made,
as CPython 3.11's traceback entries without a line number cause) is reported failed with its own exception,
instead of an internal error that stops the whole run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAILING_TEST = '''
def test_fails():
    raise ValueError("the test's own failure")


def test_passes():
    pass
'''

# Stands in for pytest's formatting failing on the call's report, inside the fallback (which is outermost).
FORMATTING_FAILS = '''
import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "call" and call.excinfo is not None:
        raise TypeError("unsupported operand type(s) for -: 'NoneType' and 'int'")
    return report
'''


def _run(tmp_path: Path, *plugins: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_it.py").write_text(FAILING_TEST)
    (tmp_path / "conftest.py").write_text(FORMATTING_FAILS)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    for plugin in plugins:
        argv += ["-p", plugin]
    return subprocess.run([*argv, str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_report_pytest_cannot_format_is_made_failed_with_the_tests_own_exception(tmp_path: Path) -> None:
    done = _run(tmp_path, "tests.report_fallback")
    assert done.returncode == 1, done.stdout + done.stderr  # tests failed, not an internal error (3)
    assert "INTERNALERROR" not in done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout
    assert "ValueError: the test's own failure" in done.stdout
    assert "pytest could not format this traceback" in done.stdout


def test_control_without_the_fallback_the_run_stops_with_an_internal_error(tmp_path: Path) -> None:
    done = _run(tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "INTERNALERROR" in done.stdout + done.stderr
