"""Items as the local API shows them: the recent ones, and one with its ledger trail.

Read from state.db over a read-only connection of the API's own (never inside the agent's
transactions), in worker threads: a lock keeps the one connection to one query at a time and makes the
close at shutdown wait for a read under way (closing a sqlite3 connection under another thread's query
crashes CPython's sqlite3 module, as it did the agent at stop); a read after the close is refused.
Device text (file names, serials, officer numbers) is escaped with :func:`edge.custody.text.printable`
when the JSON is written (json_printable over the whole document).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

ITEM_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_RECENT = 200
MAX_TRAIL = 1000


class StoreReader:
    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one query at a time, and never a close under a query
        self._closed = False

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise sqlite3.ProgrammingError("store reader is closed")
        if self._conn is None:
            uri = f"file:{(self.store_dir / 'state.db').as_posix()}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=2.0)
            self._conn.row_factory = sqlite3.Row
        return self._conn

    def recent(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return self._recent(limit)

    def item(self, item: str) -> dict[str, Any] | None:
        with self._lock:
            return self._item(item)

    def _recent(self, limit: int) -> list[dict[str, Any]]:
        rows = self._connection().execute(
            "SELECT items.item, items.sha256, items.size, items.device_serial, items.officer_no, "
            "items.acquired, items.path IS NOT NULL AS sealed, items.manifest, uploads.state AS upload "
            "FROM items LEFT JOIN uploads USING (item) ORDER BY items.acquired DESC, items.item LIMIT ?",
            (max(1, min(limit, MAX_RECENT)),),
        ).fetchall()
        return [self._summary(row) for row in rows]

    def _summary(self, row: sqlite3.Row) -> dict[str, Any]:
        case = self._case(str(row["item"]), row["manifest"])
        return {
            "item": row["item"],
            "sha256": row["sha256"],
            "size": row["size"],
            "device_serial": row["device_serial"],
            "officer_no": row["officer_no"],
            "acquired_at": _iso(row["acquired"]),
            "sealed": bool(row["sealed"]),
            "upload": row["upload"],
            "case_number": case.get("case_number"),
            "important": bool(case.get("important", False)),
        }

    def _case(self, item: str, manifest_text: str | None) -> dict[str, Any]:
        """The manifest's case block folded with every `tagged` entry, as edge.ingest.tagging does."""
        case: dict[str, Any] = {}
        if manifest_text:
            try:
                manifest = json.loads(manifest_text)
            except ValueError:
                manifest = {}
            if isinstance(manifest, dict) and isinstance(manifest.get("case"), dict):
                case.update(manifest["case"])
        for (data,) in self._connection().execute(
            "SELECT data FROM ledger WHERE item = ? AND type = 'tagged' ORDER BY seq", (item,)
        ):
            changes = _json(data).get("changes")
            if isinstance(changes, dict):
                case.update(changes)
        return case

    def _item(self, item: str) -> dict[str, Any] | None:
        conn = self._connection()
        row = conn.execute(
            "SELECT items.item, items.sha256, items.size, items.device_serial, items.officer_no, "
            "items.acquired, items.path IS NOT NULL AS sealed, items.manifest, uploads.state AS upload, "
            "uploads.receipted FROM items LEFT JOIN uploads USING (item) WHERE items.item = ?",
            (item,),
        ).fetchone()
        if row is None:
            return None
        trail = [
            {"seq": seq, "time": _iso(time_), "type": type_, "data": _json(data), "hash": hash_}
            for seq, time_, type_, data, hash_ in conn.execute(
                "SELECT seq, time, type, data, hash FROM ledger WHERE item = ? ORDER BY seq LIMIT ?",
                (item, MAX_TRAIL),
            )
        ]
        manifest = _json(row["manifest"]) if row["manifest"] else None
        return {
            **self._summary(row),
            "receipted_at": _iso(row["receipted"]),
            "case": self._case(item, row["manifest"]),
            "manifest": manifest,
            "trail": trail,
        }

    def close(self) -> None:
        """Waits for a query under way (bounded by the busy timeout), then closes for good."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _json(text: object) -> dict[str, Any]:
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _iso(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value[: value.index(".")] + "Z" if value.endswith("Z") and "." in value else value
