"""Items as the local API shows them: the recent ones, and one with its ledger trail.

Read from state.db in worker threads through edge.observe.store_db (a read-only connection of the API's
own, never inside the agent's transactions, that a close at shutdown never runs under).
Device text (file names, serials, officer numbers) is escaped with :func:`edge.custody.text.printable`
when the JSON is written (json_printable over the whole document).
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from edge.observe.store_db import ReadOnlyStoreDb, iso

ITEM_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_RECENT = 200
MAX_TRAIL = 1000


class StoreReader:
    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self._db = ReadOnlyStoreDb(store_dir, name="store reader", rows=True)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return self._db.read(lambda conn: self._recent(conn, limit))

    def item(self, item: str) -> dict[str, Any] | None:
        return self._db.read(lambda conn: self._item(conn, item))

    def _recent(self, conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT items.item, items.sha256, items.size, items.device_serial, items.officer_no, "
            "items.acquired, items.path IS NOT NULL AS sealed, items.manifest, uploads.state AS upload "
            "FROM items LEFT JOIN uploads USING (item) ORDER BY items.acquired DESC, items.item LIMIT ?",
            (max(1, min(limit, MAX_RECENT)),),
        ).fetchall()
        return [self._summary(conn, row) for row in rows]

    def _summary(self, conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
        case = self._case(conn, str(row["item"]), row["manifest"])
        return {
            "item": row["item"],
            "sha256": row["sha256"],
            "size": row["size"],
            "device_serial": row["device_serial"],
            "officer_no": row["officer_no"],
            "acquired_at": iso(row["acquired"]),
            "sealed": bool(row["sealed"]),
            "upload": row["upload"],
            "case_number": case.get("case_number"),
            "important": bool(case.get("important", False)),
        }

    def _case(self, conn: sqlite3.Connection, item: str, manifest_text: str | None) -> dict[str, Any]:
        """The manifest's case block folded with every `tagged` entry, as edge.ingest.tagging does."""
        case: dict[str, Any] = {}
        if manifest_text:
            try:
                manifest = json.loads(manifest_text)
            except ValueError:
                manifest = {}
            if isinstance(manifest, dict) and isinstance(manifest.get("case"), dict):
                case.update(manifest["case"])
        for (data,) in conn.execute(
            "SELECT data FROM ledger WHERE item = ? AND type = 'tagged' ORDER BY seq", (item,)
        ):
            changes = _json(data).get("changes")
            if isinstance(changes, dict):
                case.update(changes)
        return case

    def _item(self, conn: sqlite3.Connection, item: str) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT items.item, items.sha256, items.size, items.device_serial, items.officer_no, "
            "items.acquired, items.path IS NOT NULL AS sealed, items.manifest, uploads.state AS upload, "
            "uploads.receipted FROM items LEFT JOIN uploads USING (item) WHERE items.item = ?",
            (item,),
        ).fetchone()
        if row is None:
            return None
        trail = [
            {"seq": seq, "time": iso(time_), "type": type_, "data": _json(data), "hash": hash_}
            for seq, time_, type_, data, hash_ in conn.execute(
                "SELECT seq, time, type, data, hash FROM ledger WHERE item = ? ORDER BY seq LIMIT ?",
                (item, MAX_TRAIL),
            )
        ]
        manifest = _json(row["manifest"]) if row["manifest"] else None
        return {
            **self._summary(conn, row),
            "receipted_at": iso(row["receipted"]),
            "case": self._case(conn, item, row["manifest"]),
            "manifest": manifest,
            "trail": trail,
        }

    def close(self) -> None:
        """Waits for a query under way, then closes for good."""
        self._db.close()


def _json(text: object) -> dict[str, Any]:
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
