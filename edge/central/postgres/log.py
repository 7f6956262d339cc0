"""The Merkle log's store in PostgreSQL: :class:`PostgresLogStore` (:class:`edge.central.storage.LogStore`).

The tables and their rules are in ``migrations/0001_index_and_log.sql``: leaves must extend the log,
nodes must cover complete subtrees, heads must grow and take the next id, and nothing is updated,
deleted or truncated. Every insert trigger takes the log writer's advisory lock, and so does every
transaction of :class:`~edge.central.postgres.database.PostgresDatabase`, so appends from several
receiver processes are serialised by the database itself. Values come back as stored (``bytes`` for
hashes, ``int`` for indexes): :class:`edge.central.log.MerkleLog` verifies them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from edge.central.storage import LogStoreConflict
from edge.custody.receipt import TREE_HEAD_FIELDS, TreeHead

if TYPE_CHECKING:
    from edge.central.postgres.database import PostgresDatabase

__all__ = ["PostgresLogStore"]

# SQLSTATEs the schema's triggers raise for a write that does not extend the log, and PostgreSQL's own
# unique violation (a leaf, node or head id taken).
_CONFLICT_STATES = frozenset({"EE001", "23505"})
_HEAD_COLUMNS = ", ".join(TREE_HEAD_FIELDS)


def _value(value: Any) -> object:
    """bytea arrives as memoryview or bytes depending on the loader; the log compares bytes."""
    return bytes(value) if isinstance(value, memoryview) else value


class PostgresLogStore:
    """:class:`edge.central.storage.LogStore` in the tables of a :class:`PostgresDatabase`."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database

    def __repr__(self) -> str:
        return f"PostgresLogStore({self._database.where!r})"

    @property
    def _conn(self) -> psycopg.Connection[tuple[object, ...]]:
        return self._database.conn

    @property
    def unit(self) -> PostgresDatabase:
        return self._database

    def _one(self, query: Any, args: tuple[object, ...] = ()) -> tuple[object, ...] | None:
        row: tuple[object, ...] | None = self._conn.execute(query, args).fetchone()
        return row

    def _insert(self, query: Any, args: tuple[object, ...]) -> tuple[object, ...] | None:
        """Run an insert in a savepoint (the caller's transaction survives a refusal, as in SQLite);
        a refused write raises :class:`LogStoreConflict`."""
        try:
            with self._conn.transaction():
                cursor = self._conn.execute(query, args)
                row: tuple[object, ...] | None = cursor.fetchone() if cursor.description else None
                return row
        except psycopg.Error as exc:
            if exc.sqlstate in _CONFLICT_STATES:
                raise LogStoreConflict(str(exc.diag.message_primary or exc)) from exc
            raise

    # leaves and nodes

    def last_leaf_index(self) -> object:
        row = self._one("SELECT max(idx) FROM merkle_leaves")
        return None if row is None else row[0]

    def leaf_hash(self, index: int) -> object:
        row = self._one("SELECT leaf_hash FROM merkle_leaves WHERE idx = %s", (index,))
        return None if row is None else _value(row[0])

    def leaf_entry(self, index: int) -> object:
        row = self._one("SELECT entry FROM merkle_leaves WHERE idx = %s", (index,))
        return None if row is None else row[0]

    def node_hash(self, level: int, index: int) -> object:
        row = self._one("SELECT hash FROM merkle_nodes WHERE level = %s AND idx = %s", (level, index))
        return None if row is None else _value(row[0])

    def append_leaf(self, index: int, entry: str, leaf_hash: bytes) -> None:
        self._insert("INSERT INTO merkle_leaves (idx, entry, leaf_hash) VALUES (%s, %s, %s)",
                     (index, entry, leaf_hash))

    def append_node(self, level: int, index: int, node_hash: bytes) -> None:
        self._insert("INSERT INTO merkle_nodes (level, idx, hash) VALUES (%s, %s, %s)",
                     (level, index, node_hash))

    def leaves(self) -> Iterator[tuple[object, object, object]]:
        # A server-side cursor would need a transaction; the log is read in pages instead (streamed).
        after = -1
        while True:
            rows = self._conn.execute(
                "SELECT idx, entry, leaf_hash FROM merkle_leaves WHERE idx > %s ORDER BY idx LIMIT 1000",
                (after,),
            ).fetchall()
            for row in rows:
                yield row[0], row[1], _value(row[2])
            if len(rows) < 1000:
                return
            last = rows[-1][0]
            assert isinstance(last, int)
            after = last

    def nodes(self, level: int) -> Iterator[tuple[object, object]]:
        for row in self._conn.execute(
            "SELECT idx, hash FROM merkle_nodes WHERE level = %s ORDER BY idx", (level,)
        ).fetchall():
            yield row[0], _value(row[1])

    def nodes_outside(self, lowest: int, highest: int) -> Iterator[tuple[object, object]]:
        for row in self._conn.execute(
            "SELECT level, idx FROM merkle_nodes WHERE level > %s OR level < %s ORDER BY level, idx",
            (highest, lowest),
        ).fetchall():
            yield row[0], row[1]

    # signed tree heads

    def latest_head(self) -> tuple[object, ...] | None:
        row = self._one(f"SELECT {_HEAD_COLUMNS} FROM merkle_tree_heads ORDER BY id DESC LIMIT 1")
        return None if row is None else tuple(row)

    def heads(self, *, by_size: bool = False) -> Iterator[tuple[object, ...]]:
        order = "tree_size, id" if by_size else "id"
        for row in self._conn.execute(
            f"SELECT id, {_HEAD_COLUMNS} FROM merkle_tree_heads ORDER BY {order}"
        ).fetchall():
            yield tuple(row)

    def append_head(self, head: TreeHead) -> int:
        row = self._insert(
            f"INSERT INTO merkle_tree_heads (id, {_HEAD_COLUMNS}) SELECT coalesce(max(id), 0) + 1, "
            "%s, %s, %s, %s, %s, %s FROM merkle_tree_heads RETURNING id",
            (head.origin, head.tree_size, head.root_hash, head.time, head.key_id, head.signature),
        )
        assert row is not None and isinstance(row[0], int)
        return row[0]

    def head_signed(self, tree_size: int, root_hash: str) -> bool:
        return self._one(
            "SELECT 1 FROM merkle_tree_heads WHERE tree_size = %s AND root_hash = %s LIMIT 1",
            (tree_size, root_hash),
        ) is not None

    # RFC 3161 time-stamps

    def newest_head_unstamped(self) -> tuple[int, TreeHead] | None:
        row = self._one(
            f"SELECT h.id, {', '.join('h.' + name for name in TREE_HEAD_FIELDS)} FROM merkle_tree_heads h "
            "WHERE h.id = (SELECT max(id) FROM merkle_tree_heads) "
            "AND NOT EXISTS (SELECT 1 FROM merkle_head_timestamps t WHERE t.head_id = h.id)"
        )
        if row is None:
            return None  # no head, or the newest is stamped (older unstamped ones are covered by it)
        head_id = row[0]
        assert isinstance(head_id, int)
        return head_id, TreeHead(*row[1:])  # type: ignore[arg-type]

    def append_timestamp(
        self, head_id: int, head: TreeHead, note: str, token: bytes, gen_time: str, stamped_utc: str
    ) -> None:
        self._conn.execute(
            "INSERT INTO merkle_head_timestamps (head_id, tree_size, root_hash, note, token, gen_time, "
            "stamped_utc) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (head_id, head.tree_size, head.root_hash, note, token, gen_time, stamped_utc),
        )
