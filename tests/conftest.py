"""Shared test fixtures and hooks."""

# The `requires` mark: a missing prerequisite skips locally and fails under CI (tests/prerequisites.py).
from .prerequisites import pytest_configure, pytest_runtest_setup

__all__ = ["pytest_configure", "pytest_runtest_setup"]
