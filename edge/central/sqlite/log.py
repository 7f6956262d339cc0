"""The central's Merkle log in SQLite: the tables, their append-only triggers, and :class:`SqliteLogStore`.

* ``merkle_leaves``: index, the leaf entry as canonical JSON, and its RFC 9162 leaf hash;
* ``merkle_nodes``: the hash of every complete subtree of ``2**level`` leaves (level >= 1);
* ``merkle_tree_heads``: every tree head the central signed, in signing order (ids 1, 2, 3...);
* ``merkle_head_timestamps``: RFC 3161 time-stamps of checkpoints, when a TSA is configured.

The store never commits: it writes in the unit of work of its :class:`SqliteDatabase`, which the index
shares. Triggers refuse UPDATE, DELETE and inserts that do not extend the log, which stops our own code
from rewriting history by accident; against someone with write access to the file, the signed tree heads
(held by stations in their receipts) and :meth:`edge.central.log.MerkleLog.verify` are the defence.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from edge.central.storage import LogStoreConflict
from edge.custody.receipt import TREE_HEAD_FIELDS, TreeHead
from edge.durable.sqlite import apply_schema

if TYPE_CHECKING:
    from edge.central.sqlite.database import SqliteDatabase

__all__ = ["SqliteLogStore", "create_schema", "signed_head_summary"]

# Levels above 62 would overflow SQLite's 64-bit shift in the triggers; 2**62 leaves is out of reach.
_MAX_LEVEL = 62

_SCHEMA = """
CREATE TABLE IF NOT EXISTS merkle_leaves (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    entry TEXT NOT NULL,
    leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32)
) STRICT;
CREATE TABLE IF NOT EXISTS merkle_nodes (
    level INTEGER NOT NULL CHECK (level BETWEEN 1 AND {max_level}),
    idx INTEGER NOT NULL CHECK (idx >= 0),
    hash BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS merkle_tree_heads (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    tree_size INTEGER NOT NULL CHECK (tree_size >= 0),
    root_hash TEXT NOT NULL,
    time TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS merkle_tree_heads_size ON merkle_tree_heads (tree_size, id);
CREATE TABLE IF NOT EXISTS merkle_head_timestamps (
    id INTEGER PRIMARY KEY,
    head_id INTEGER NOT NULL,          -- the merkle_tree_heads row stamped
    tree_size INTEGER NOT NULL,
    root_hash TEXT NOT NULL,
    note TEXT NOT NULL,                -- the C2SP checkpoint note whose bytes were time-stamped
    token BLOB NOT NULL,               -- the TSA's DER TimeStampResp
    gen_time TEXT NOT NULL,            -- the TSA's time in it
    stamped_utc TEXT NOT NULL
) STRICT;
CREATE TRIGGER IF NOT EXISTS merkle_head_timestamps_no_update BEFORE UPDATE ON merkle_head_timestamps
BEGIN SELECT RAISE(ABORT, 'time-stamps are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS merkle_head_timestamps_no_delete BEFORE DELETE ON merkle_head_timestamps
BEGIN SELECT RAISE(ABORT, 'time-stamps are append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS merkle_leaves_extend BEFORE INSERT ON merkle_leaves
WHEN NEW.idx IS NOT (SELECT coalesce(max(idx), -1) + 1 FROM merkle_leaves)
BEGIN SELECT RAISE(ABORT, 'merkle leaf insert must extend the log (idx = number of leaves)'); END;
CREATE TRIGGER IF NOT EXISTS merkle_leaves_no_update BEFORE UPDATE ON merkle_leaves
BEGIN SELECT RAISE(ABORT, 'merkle log is append-only: UPDATE of a leaf refused'); END;
CREATE TRIGGER IF NOT EXISTS merkle_leaves_no_delete BEFORE DELETE ON merkle_leaves
BEGIN SELECT RAISE(ABORT, 'merkle log is append-only: DELETE of a leaf refused'); END;
CREATE TRIGGER IF NOT EXISTS merkle_nodes_complete BEFORE INSERT ON merkle_nodes
WHEN NEW.level NOT BETWEEN 1 AND {max_level}
  OR ((NEW.idx + 1) << NEW.level) > (SELECT coalesce(max(idx), -1) + 1 FROM merkle_leaves)
  OR EXISTS (SELECT 1 FROM merkle_nodes WHERE level = NEW.level AND idx = NEW.idx)
BEGIN SELECT RAISE(ABORT, 'merkle node insert must add a new subtree whose leaves are all in the log'); END;
CREATE TRIGGER IF NOT EXISTS merkle_nodes_no_update BEFORE UPDATE ON merkle_nodes
BEGIN SELECT RAISE(ABORT, 'merkle log is append-only: UPDATE of a node refused'); END;
CREATE TRIGGER IF NOT EXISTS merkle_nodes_no_delete BEFORE DELETE ON merkle_nodes
BEGIN SELECT RAISE(ABORT, 'merkle log is append-only: DELETE of a node refused'); END;
CREATE TRIGGER IF NOT EXISTS merkle_tree_heads_grow BEFORE INSERT ON merkle_tree_heads
WHEN NEW.tree_size > (SELECT coalesce(max(idx), -1) + 1 FROM merkle_leaves)
  OR NEW.tree_size < coalesce((SELECT tree_size FROM merkle_tree_heads ORDER BY id DESC LIMIT 1), 0)
  OR EXISTS (SELECT 1 FROM merkle_tree_heads WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'tree head insert must cover at least the previous head and at most the log'); END;
CREATE TRIGGER IF NOT EXISTS merkle_tree_heads_no_update BEFORE UPDATE ON merkle_tree_heads
BEGIN SELECT RAISE(ABORT, 'tree heads are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS merkle_tree_heads_no_delete BEFORE DELETE ON merkle_tree_heads
BEGIN SELECT RAISE(ABORT, 'tree heads are append-only: DELETE refused'); END;
""".replace("{max_level}", str(_MAX_LEVEL))


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the log's tables, index and append-only triggers if missing (idempotent; never commits)."""
    apply_schema(conn, _SCHEMA)


class SqliteLogStore:
    """:class:`edge.central.storage.LogStore` in the tables of a :class:`SqliteDatabase`."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    @property
    def _conn(self) -> sqlite3.Connection:
        """The database's connection for the calling thread (a reader thread's own while it reads)."""
        return self._database.conn

    def __repr__(self) -> str:
        return f"SqliteLogStore(path={str(self._database.path) if self._database.path else None!r})"

    @property
    def unit(self) -> SqliteDatabase:
        return self._database

    # leaves and nodes

    def last_leaf_index(self) -> object:
        row = self._conn.execute("SELECT max(idx) FROM merkle_leaves").fetchone()
        return None if row is None else row[0]

    def leaf_hash(self, index: int) -> object:
        row = self._conn.execute("SELECT leaf_hash FROM merkle_leaves WHERE idx = ?", (index,)).fetchone()
        return None if row is None else row[0]

    def leaf_entry(self, index: int) -> object:
        row = self._conn.execute("SELECT entry FROM merkle_leaves WHERE idx = ?", (index,)).fetchone()
        return None if row is None else row[0]

    def node_hash(self, level: int, index: int) -> object:
        row = self._conn.execute(
            "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        return None if row is None else row[0]

    def append_leaf(self, index: int, entry: str, leaf_hash: bytes) -> None:
        try:
            self._conn.execute(
                "INSERT INTO merkle_leaves (idx, entry, leaf_hash) VALUES (?, ?, ?)",
                (index, entry, leaf_hash),
            )
        except sqlite3.IntegrityError as exc:
            raise LogStoreConflict(str(exc)) from exc

    def append_node(self, level: int, index: int, node_hash: bytes) -> None:
        try:
            self._conn.execute(
                "INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", (level, index, node_hash)
            )
        except sqlite3.IntegrityError as exc:
            raise LogStoreConflict(str(exc)) from exc

    def leaves(self) -> Iterator[tuple[object, object, object]]:
        for row in self._conn.execute("SELECT idx, entry, leaf_hash FROM merkle_leaves ORDER BY idx"):
            yield row[0], row[1], row[2]

    def nodes(self, level: int) -> Iterator[tuple[object, object]]:
        for row in self._conn.execute(
            "SELECT idx, hash FROM merkle_nodes WHERE level = ? ORDER BY idx", (level,)
        ):
            yield row[0], row[1]

    def nodes_outside(self, lowest: int, highest: int) -> Iterator[tuple[object, object]]:
        for row in self._conn.execute(
            "SELECT level, idx FROM merkle_nodes WHERE level > ? OR level < ? ORDER BY level, idx",
            (highest, lowest),
        ):
            yield row[0], row[1]

    # signed tree heads

    def latest_head(self) -> tuple[object, ...] | None:
        row = self._conn.execute(
            f"SELECT {', '.join(TREE_HEAD_FIELDS)} FROM merkle_tree_heads ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else tuple(row)

    def heads(self, *, by_size: bool = False) -> Iterator[tuple[object, ...]]:
        order = "tree_size, id" if by_size else "id"
        for row in self._conn.execute(
            f"SELECT id, {', '.join(TREE_HEAD_FIELDS)} FROM merkle_tree_heads ORDER BY {order}"
        ):
            yield tuple(row)

    def append_head(self, head: TreeHead) -> int:
        try:
            cursor = self._conn.execute(
                f"INSERT INTO merkle_tree_heads ({', '.join(TREE_HEAD_FIELDS)}) VALUES (?, ?, ?, ?, ?, ?)",
                (head.origin, head.tree_size, head.root_hash, head.time, head.key_id, head.signature),
            )
        except sqlite3.IntegrityError as exc:
            raise LogStoreConflict(str(exc)) from exc
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    def head_signed(self, tree_size: int, root_hash: str) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM merkle_tree_heads WHERE tree_size = ? AND root_hash = ? LIMIT 1",
            (tree_size, root_hash),
        ).fetchone() is not None

    # RFC 3161 time-stamps

    def newest_head_unstamped(self) -> tuple[int, TreeHead] | None:
        row = self._conn.execute(
            f"SELECT h.id, {', '.join('h.' + name for name in TREE_HEAD_FIELDS)} FROM merkle_tree_heads h "
            "WHERE NOT EXISTS (SELECT 1 FROM merkle_head_timestamps t WHERE t.head_id = h.id) "
            "ORDER BY h.id DESC LIMIT 1"
        ).fetchone()
        latest = self._conn.execute("SELECT max(id) FROM merkle_tree_heads").fetchone()
        if row is None or latest is None or row[0] != latest[0]:
            return None  # the newest head is stamped (older unstamped ones are covered by it)
        return int(row[0]), TreeHead(*tuple(row)[1:])

    def append_timestamp(
        self, head_id: int, head: TreeHead, note: str, token: bytes, gen_time: str, stamped_utc: str
    ) -> None:
        self._conn.execute(
            "INSERT INTO merkle_head_timestamps (head_id, tree_size, root_hash, note, token, gen_time, "
            "stamped_utc) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (head_id, head.tree_size, head.root_hash, note, token, gen_time, stamped_utc),
        )


def signed_head_summary(db_path: Path) -> tuple[int, str | None, str | None]:
    """How many tree heads the log in ``db_path`` holds, with the key id and time of the newest, read
    without opening the store for writing (``edge central init`` checks the signing key against it).
    An index made before the log was ever opened has none. Raises ``sqlite3.Error``."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        try:
            count, = conn.execute("SELECT COUNT(*) FROM merkle_tree_heads").fetchone()
            newest = conn.execute(
                "SELECT key_id, time FROM merkle_tree_heads ORDER BY id DESC LIMIT 1"
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0, None, None
            raise
    finally:
        conn.close()
    if newest is None:
        return int(count), None, None
    return int(count), str(newest[0]), str(newest[1])
