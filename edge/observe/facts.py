"""The station-wide facts of the status board that are read, not told: the store's ledger head, what
the central witnessed, the spool and the last receipt (from state.db, over a read-only connection of
its own, so that a status read never runs inside the agent's transactions), the disk, the clock.

Called in a worker thread every few seconds; each read is small (indexed, aggregate queries). The
agent closes the reader from its event loop at shutdown while a read the status board started may still
run in its worker (a cancelled await does not stop the thread): a lock makes the close wait for that read,
and a read after the close is refused. Closing a sqlite3 connection under a query of another thread is
not safe in CPython's sqlite3 module: it crashed the agent with SIGSEGV at stop.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from edge.custody.witness_log import unwitnessed_window


@dataclass(frozen=True)
class LedgerFacts:
    head_seq: int
    head_hash: str
    witnessed_seq: int
    witnessed_at: str | None
    unwitnessed_entries: int


@dataclass(frozen=True)
class SpoolFacts:
    items: int
    bytes: int
    oldest_at: str | None


@dataclass(frozen=True)
class StoreFacts:
    ledger: LedgerFacts
    spool: SpoolFacts
    last_receipt_at: str | None
    free_bytes: int
    total_bytes: int


class StoreFactsReader:
    """Reads :class:`StoreFacts` of one store. ``spooling``: whether sealed items wait for a central (an
    uplink is configured); without one nothing is in a spool."""

    def __init__(self, store_dir: Path, *, spooling: bool) -> None:
        self.store_dir = store_dir
        self.spooling = spooling
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one read at a time, and never a close under a read
        self._closed = False

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise sqlite3.ProgrammingError("store facts reader is closed")
        if self._conn is None:
            uri = f"file:{(self.store_dir / 'state.db').as_posix()}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=2.0)
        return self._conn

    def read(self) -> StoreFacts:
        with self._lock:
            return self._read(self._connection())

    def _read(self, conn: sqlite3.Connection) -> StoreFacts:
        head = conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        head_seq, head_hash = (int(head[0]), str(head[1])) if head else (0, "")
        window = unwitnessed_window(conn)
        witnessed_at = None
        if window.witnessed_seq:
            row = conn.execute(
                "SELECT received FROM witnessed_heads WHERE seq = ? ORDER BY id DESC LIMIT 1",
                (window.witnessed_seq,),
            ).fetchone()
            witnessed_at = _iso(row[0]) if row else None
        spool = SpoolFacts(0, 0, None)
        if self.spooling:
            row = conn.execute(
                "SELECT count(*), coalesce(sum(items.size), 0), min(items.acquired) FROM items "
                "LEFT JOIN uploads USING (item) WHERE items.path IS NOT NULL AND items.manifest IS NOT NULL "
                "AND (uploads.state IS NULL OR uploads.state IN ('queued', 'uploaded'))"
            ).fetchone()
            spool = SpoolFacts(int(row[0]), int(row[1]), _iso(row[2]))
        receipt = conn.execute("SELECT max(receipted) FROM uploads").fetchone()
        usage = shutil.disk_usage(self.store_dir)
        return StoreFacts(
            LedgerFacts(head_seq, head_hash, window.witnessed_seq, witnessed_at, window.entries),
            spool,
            _iso(receipt[0]) if receipt else None,
            usage.free,
            usage.total,
        )

    def close(self) -> None:
        """Waits for a read under way (small, bounded by the busy timeout), then closes for good."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _iso(value: object) -> str | None:
    """The store's station times (``...T...Z`` with microseconds) as the status model's ISO UTC text."""
    if not isinstance(value, str) or not value:
        return None
    if value.endswith("Z") and "." in value:
        return value[: value.index(".")] + "Z"
    return value
