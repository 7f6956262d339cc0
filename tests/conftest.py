"""Shared test fixtures and hooks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The `requires` mark: a missing prerequisite skips locally and fails under CI (tests/prerequisites.py).
from .prerequisites import pytest_configure, pytest_runtest_setup

# A failing test is reported even when pytest cannot format its traceback (tests/report_fallback.py).
from .report_fallback import pytest_runtest_makereport

__all__ = ["media_cache", "pytest_configure", "pytest_runtest_makereport", "pytest_runtest_setup"]


@pytest.fixture(scope="session")
def media_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A media template cache ($EVIDENCE_EDGE_SIM_CACHE) private to this test session: the tests that use
    it neither depend on nor pollute the user's cache. One for the whole session: when each folder set its
    own, the folder set up last took it from the other's tests (under pytest-xdist a worker runs files of
    both folders in any order)."""
    cache = tmp_path_factory.mktemp("media-cache")
    cache.chmod(0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVIDENCE_EDGE_SIM_CACHE", str(cache))
        yield cache
