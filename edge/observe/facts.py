"""The station-wide facts of the status board that are read, not told: the store's ledger head, what
the central witnessed, the spool and the last receipt (from state.db, over a read-only connection of
its own, so that a status read never runs inside the agent's transactions), the disk, the clock.

Called in a worker thread every few seconds; each read is small (indexed, aggregate queries), through
edge.observe.store_db (which keeps a close at shutdown from running under a read).
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge.custody.witness_log import unwitnessed_window
from edge.observe.store_db import ReadOnlyStoreDb, iso


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
    # Of `items`: those held because the uplink found their stored copy changed (not sent until
    # re-acquired at a docking or released with `edge uplink retry ITEM`).
    held: int = 0


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
        self._db = ReadOnlyStoreDb(store_dir, name="store facts reader")

    def read(self) -> StoreFacts:
        return self._db.read(self._read)

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
            witnessed_at = iso(row[0]) if row else None
        spool = SpoolFacts(0, 0, None)
        if self.spooling:
            row = conn.execute(
                "SELECT count(*), coalesce(sum(items.size), 0), min(items.acquired) FROM items "
                "LEFT JOIN uploads USING (item) WHERE items.path IS NOT NULL AND items.manifest IS NOT NULL "
                "AND (uploads.state IS NULL OR uploads.state IN ('queued', 'uploaded'))"
            ).fetchone()
            held = conn.execute("SELECT count(*) FROM uploads WHERE held_seq IS NOT NULL").fetchone()
            spool = SpoolFacts(int(row[0]), int(row[1]), iso(row[2]), int(held[0]))
        receipt = conn.execute("SELECT max(receipted) FROM uploads").fetchone()
        usage = shutil.disk_usage(self.store_dir)
        return StoreFacts(
            LedgerFacts(head_seq, head_hash, window.witnessed_seq, witnessed_at, window.entries),
            spool,
            iso(receipt[0]) if receipt else None,
            usage.free,
            usage.total,
        )

    def close(self) -> None:
        """Waits for a read under way, then closes for good."""
        self._db.close()
