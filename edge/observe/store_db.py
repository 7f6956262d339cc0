"""The status side's read-only connection to a station store's state.db.

Its own connection (``mode=ro``), so a status read never runs inside the agent's transactions. Reads
come from worker threads while the agent closes the connection from its event loop at shutdown (a
cancelled await does not stop the thread): a lock keeps the connection to one read at a time and makes
the close wait for a read under way, and a read after the close is refused. Closing a sqlite3
connection under another thread's query is not safe in CPython's sqlite3 module: it crashed the agent
with SIGSEGV at stop.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class ReadOnlyStoreDb:
    """One lazily opened read-only connection to ``store_dir/state.db``; ``rows``: sqlite3.Row rows."""

    def __init__(self, store_dir: Path, *, name: str, rows: bool = False) -> None:
        self.store_dir = store_dir
        self._name = name
        self._rows = rows
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one read at a time, and never a close under a read
        self._closed = False

    def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """``query(connection)`` under the lock; sqlite3.ProgrammingError once closed."""
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"{self._name} is closed")
            if self._conn is None:
                uri = f"file:{(self.store_dir / 'state.db').as_posix()}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=2.0)
                if self._rows:
                    self._conn.row_factory = sqlite3.Row
            return query(self._conn)

    def close(self) -> None:
        """Waits for a read under way (bounded by the busy timeout), then closes for good."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def iso(value: object) -> str | None:
    """The store's station times (``...T...Z`` with microseconds) as the status model's ISO UTC text."""
    if not isinstance(value, str) or not value:
        return None
    if value.endswith("Z") and "." in value:
        return value[: value.index(".")] + "Z"
    return value
