"""Fixtures of the status board and local API tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def api_dir() -> Iterator[Path]:
    """A short directory for the API's socket (a Unix socket path holds 107 bytes; pytest's are long)."""
    path = Path(tempfile.mkdtemp(prefix="edge-api-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
