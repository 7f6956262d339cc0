"""Object-lock extensions the object store has not confirmed yet, in SQL shared by both backends.

When an accepted item's retention class changes (a ``tagged`` ledger entry), the lock its content needs is
recorded in ``lock_extensions_pending`` in the same transaction that accepts the entry, before the object
store is asked: a crash, or a bucket that cannot be reached, leaves the wish on record, and
:mod:`edge.central.lock_extensions` retries it until the store confirms it; only then is the row removed.
One row per item: a second wish for the same item keeps the later end and any legal hold (never shorter).

The table is a work queue, not history: rows are updated (attempts) and deleted (done). Times are UTC text
of one fixed width (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), so text order is time order on both engines. The
table is made by ``edge/central/sqlite/lock_extensions.py`` and
``edge/central/postgres/migrations/0006_lock_extensions.sql``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from edge.central.objects import Retention
from edge.central.sql.console import SqlConnection
from edge.central.storage import PendingLock

__all__ = ["SqlLockExtensions", "utc_text"]

_MAX_ERROR_CHARS = 500


def utc_text(moment: datetime) -> str:
    """``moment`` as fixed-width UTC text (microseconds), ordered as the times are."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_COLUMNS = "item, sha256, until_utc, legal_hold, requested_utc, attempts, last_attempt_utc, last_error"


def _pending(row: tuple[object, ...]) -> PendingLock:
    item, sha256, until_utc, hold, requested, attempts, last_attempt, last_error = row
    return PendingLock(str(item), str(sha256), str(until_utc), bool(hold), str(requested), int(str(attempts)),
                       None if last_attempt is None else str(last_attempt),
                       None if last_error is None else str(last_error))


class SqlLockExtensions(ABC):
    """The pending lock extensions of one database (mixed into its index: they share its transaction)."""

    @property
    @abstractmethod
    def conn(self) -> SqlConnection:
        """The backend's connection for the calling thread (its reader threads read on their own)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[object]:
        """The database's unit of work (the index's)."""

    def want_lock(self, item: str, sha256: str, retention: Retention, requested_utc: str) -> PendingLock:
        """Record that ``item``'s content must be locked at least as ``retention`` says (the caller's
        transaction); merged with a wish already pending: the later end, and a legal hold if either has
        one. Returns the row as it now is."""
        until = utc_text(retention.until)
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM lock_extensions_pending WHERE item = ?",
                                (item,)).fetchone()
        if row is not None:
            earlier = _pending(tuple(row))
            until = max(until, earlier.until_utc)
            hold = retention.legal_hold or earlier.legal_hold
            self.conn.execute(
                "UPDATE lock_extensions_pending SET sha256 = ?, until_utc = ?, legal_hold = ? WHERE item = ?",
                (sha256, until, 1 if hold else 0, item))
            return PendingLock(item, sha256, until, hold, earlier.requested_utc, earlier.attempts,
                               earlier.last_attempt_utc, earlier.last_error)
        self.conn.execute(
            "INSERT INTO lock_extensions_pending (item, sha256, until_utc, legal_hold, requested_utc, "
            "attempts) VALUES (?, ?, ?, ?, ?, 0)",
            (item, sha256, until, 1 if retention.legal_hold else 0, requested_utc))
        return PendingLock(item, sha256, until, retention.legal_hold, requested_utc, 0, None, None)

    def pending_locks(self, limit: int = 1000) -> list[PendingLock]:
        """The oldest ``limit`` wishes not confirmed yet."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM lock_extensions_pending ORDER BY requested_utc, item LIMIT ?",
            (limit,)).fetchall()
        return [_pending(tuple(row)) for row in rows]

    def pending_lock_count(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM lock_extensions_pending").fetchone()
        return 0 if row is None else int(row[0])

    def lock_done(self, lock: PendingLock) -> bool:
        """The store confirmed ``lock``: its row goes, unless a longer wish replaced it meanwhile (that one
        stays pending). Own transaction."""
        with self.transaction():
            done = self.conn.execute(
                "DELETE FROM lock_extensions_pending WHERE item = ? AND until_utc = ? AND legal_hold = ?",
                (lock.item, lock.until_utc, 1 if lock.legal_hold else 0))
        return bool(done.rowcount == 1)

    def lock_failed(self, item: str, error: str, attempted_utc: str) -> None:
        """One more failed attempt at ``item``'s lock. Own transaction."""
        with self.transaction():
            self.conn.execute(
                "UPDATE lock_extensions_pending SET attempts = attempts + 1, last_attempt_utc = ?, "
                "last_error = ? WHERE item = ?", (attempted_utc, error[:_MAX_ERROR_CHARS], item))

