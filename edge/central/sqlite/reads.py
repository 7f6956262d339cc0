"""The read-only connection of a reader thread (``SqliteDatabase.run_reads``, edge.central.sqlite.database).

Each statement runs to its end inside ``execute``, its rows kept in memory (:class:`ReadRows`), so that its
read transaction (autocommit: one per statement) ends there, never left open while Python code steps a
cursor, or parks, between rows: an open read pins the WAL's frames, and reads that always overlap would let
``index.db-wal`` grow by every write without bound (SQLite's "checkpoint starvation"; review rev13d). The
reads of the central's stores take all their rows anyway (lists, ``fetchone`` of a one-row query).

A statement is stopped (:class:`ReadTimedOut`, :class:`ReadsClosed`, both ``sqlite3.OperationalError``
like an interrupt, answered 503 ``index_unavailable`` as PostgreSQL's cancelled statements are) by the
progress handler when it runs past its reader kind's time limit (PostgreSQL's ``statement_timeout``:
stations 10 s, console 30 s, ``[central.index]`` ``*_statement_timeout_s``), or as soon as the database is
closing: a read queued in a thread when the stop began is refused at its first statement, not run whole.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ReadRows", "ReadTimedOut", "ReaderConnection", "ReadsClosed"]

# Virtual machine steps between two checks of the time limit and of the close: cheap (a clock read), and
# frequent enough that a stopped statement ends within milliseconds.
_CHECK_EVERY_STEPS = 1000


class ReadTimedOut(sqlite3.OperationalError):
    """A read statement ran past its time limit and was stopped (PostgreSQL: ``QueryCanceled``)."""


class ReadsClosed(sqlite3.OperationalError):
    """A read refused, or stopped, because the database is closing (the central is stopping)."""


class ReadRows:
    """The rows of a statement that has run to its end: what the stores use of a ``sqlite3.Cursor``."""

    def __init__(self, rows: list[Any], description: Any) -> None:
        self._rows = rows
        self._next = 0
        self.description = description
        # As sqlite3's for a query: -1 (the reader connections only read).
        self.rowcount = -1

    def __repr__(self) -> str:
        return f"ReadRows({len(self._rows) - self._next} left)"

    def __iter__(self) -> Iterator[Any]:
        while self._next < len(self._rows):
            yield self.fetchone()

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        row = self._rows[self._next]
        self._next += 1
        return row

    def fetchmany(self, size: int = 1) -> list[Any]:
        rows = self._rows[self._next:self._next + size]
        self._next += len(rows)
        return rows

    def fetchall(self) -> list[Any]:
        rows = self._rows[self._next:]
        self._next = len(self._rows)
        return rows


def _never_closing() -> bool:
    return False


class ReaderConnection(sqlite3.Connection):
    """A reader thread's connection (``sqlite3.connect(..., factory=ReaderConnection)``), configured by
    :meth:`limit`; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.what = "a read"
        self.time_limit_s = float("inf")
        self._closing: Callable[[], bool] = _never_closing
        self._deadline = float("inf")
        self._stopped_by: type[sqlite3.OperationalError] | None = None
        self.set_progress_handler(self._progress, _CHECK_EVERY_STEPS)

    def __repr__(self) -> str:
        return f"ReaderConnection({self.what}, time limit {self.time_limit_s} s)"

    def limit(self, what: str, time_limit_s: float, closing: Callable[[], bool]) -> None:
        """Stop each statement after ``time_limit_s``, and any once ``closing()``; ``what`` names the reads
        in the errors (``"a read for the console"``)."""
        self.what = what
        self.time_limit_s = time_limit_s
        self._closing = closing

    def _progress(self) -> int:
        """SQLite's progress handler: non-zero stops the statement (``interrupted``)."""
        if self._closing():
            self._stopped_by = ReadsClosed
        elif time.monotonic() > self._deadline:
            self._stopped_by = ReadTimedOut
        return 1 if self._stopped_by is not None else 0

    def execute(self, sql: str, parameters: Any = (), /) -> ReadRows:  # type: ignore[override]
        if self._closing():
            raise ReadsClosed(f"{self.what} was refused: the central's index is closing (the central is "
                              "stopping)")
        self._stopped_by = None
        self._deadline = time.monotonic() + self.time_limit_s
        try:
            cursor = super().execute(sql, parameters)
            rows = cursor.fetchall()  # to its end: the statement's read transaction ends here
        except sqlite3.OperationalError as exc:
            raise self._stopped(exc) from None
        finally:
            self._deadline = float("inf")
        return ReadRows(rows, cursor.description)

    def _stopped(self, exc: sqlite3.OperationalError) -> sqlite3.OperationalError:
        """The error of a statement that failed: why it was stopped, when it was."""
        if self._stopped_by is ReadTimedOut:
            return ReadTimedOut(f"{self.what} ran past its time limit of {self.time_limit_s:g} s and was "
                                "stopped (a long search: narrow it; else the index is overloaded)")
        if self._stopped_by is ReadsClosed or (str(exc) == "interrupted" and self._closing()):
            return ReadsClosed(f"{self.what} was stopped: the central's index is closing (the central is "
                               "stopping)")
        return exc
