"""SQLite primitives shared by the station store and the central index."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception. Never await inside one: the write
    lock is held until it ends."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


@contextmanager
def savepoint(conn: sqlite3.Connection, name: str) -> Iterator[sqlite3.Connection]:
    """A nested unit inside the caller's transaction: on any exception only its own changes are
    rolled back (and the exception goes on); the enclosing transaction stays open."""
    if not name.isidentifier():
        raise ValueError(f"savepoint name {name!r} is not an identifier")
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield conn
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    else:
        conn.execute(f"RELEASE {name}")


def apply_schema(conn: sqlite3.Connection, schema: str, *, append_only: Iterable[str] = ()) -> None:
    """Run the statements of ``schema`` (separated by ``;`` at a line's end, each ``IF NOT EXISTS`` so
    that this is idempotent) in the caller's transaction, then give each table named in ``append_only``
    triggers that refuse UPDATE and DELETE.

    Statement by statement because ``executescript`` would COMMIT the caller's transaction first. The
    triggers stop our own code from rewriting history by accident; they are no defence against someone
    with write access to the file (the hash chains and signatures are)."""
    for statement in schema.split(";\n"):
        if statement.strip():
            conn.execute(statement)
    for table in append_only:
        if not table.isidentifier():
            raise ValueError(f"table name {table!r} is not an identifier")
        for change in ("UPDATE", "DELETE"):
            conn.execute(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{change.lower()} BEFORE {change} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {change} refused'); END"
            )
