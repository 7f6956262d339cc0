"""SQL written once for both backends: ``?`` placeholders and ``sqlite3.Row``-like rows over psycopg.

The SQL shared by SQLite and PostgreSQL (:mod:`edge.central.sql.console`) is written in SQLite's ``?``
placeholders, and reads rows by index and by column name. :class:`QmarkConnection` runs it on a psycopg
connection: each ``?`` becomes ``%s`` (the shared SQL has no ``?`` or ``%`` in literals: checked, a
statement with ``%`` is refused rather than misread), and rows come back as :class:`Row`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import RowMaker

__all__ = ["QmarkConnection", "Row"]


class Row(tuple[Any, ...]):
    """A row read by index or by column name, and ``dict(row)`` gives ``{column: value}``
    (``sqlite3.Row``'s interface)."""

    _names: tuple[str, ...]

    def __new__(cls, values: Sequence[Any], names: tuple[str, ...]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise IndexError(f"no column {key!r}") from None
        return tuple.__getitem__(self, key)


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    names = tuple(column.name for column in cursor.description or ())

    def make(values: Sequence[Any]) -> Row:
        return Row([bytes(v) if isinstance(v, memoryview) else v for v in values], names)

    return make


def to_pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s``."""
    if "%" in sql:
        raise ValueError("shared SQL must not contain '%' (it would be read as a placeholder)")
    return sql.replace("?", "%s")


class QmarkConnection:
    """A psycopg connection seen through SQLite's placeholders and rows (only what shared SQL uses)."""

    def __init__(self, conn: psycopg.Connection[Any] | Callable[[], psycopg.Connection[Any]]) -> None:
        # A callable: the database's current connection (it is replaced when lost).
        self._conn = conn if callable(conn) and not isinstance(conn, psycopg.Connection) else (lambda: conn)

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Row]:
        cursor = self._conn().cursor(row_factory=_row_factory)
        return cursor.execute(to_pyformat(sql).encode("utf-8"), parameters)

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]]) -> psycopg.Cursor[Row]:
        cursor = self._conn().cursor(row_factory=_row_factory)
        cursor.executemany(to_pyformat(sql).encode("utf-8"), parameters)
        return cursor
