"""The seals of the console's append-only trails: a deleted or edited row is named by `edge verify`.

The trails (the access log, ``account_events``, ``grant_events``, ``station_unit_events``,
``sensitivity_events``, ``media_ranges``) refuse UPDATE and DELETE by trigger, but whoever can write
``index.db`` drops a trigger first. So every row appended to one of them gets, in the same statement (an
AFTER INSERT trigger), a row in ``trail_seals``: one numbered sequence (1, 2, 3...) across all the trails
in append order, each seal an HMAC-SHA256, under a key kept outside the database (a subkey of
``identity/console.key``, see :mod:`edge.central.console.secret_key`), of its own number, the table, the
row id and the row's values (SQLite's ``json_array`` of its columns). Numbers cannot be closed up or
reused without the key, so a seal deleted with its row leaves a gap. `edge verify CENTRAL` recomputes
every seal and names:

* a row whose values no longer match its seal (edited);
* a seal whose row is gone (deleted), and a gap in the seals' numbering (a seal deleted with its row);
* a row without a seal (inserted by someone who dropped the trigger), or sealed without a key.

What it cannot see: someone who holds the console key as well can re-seal whatever they changed, and
deleting the newest rows together with their seals leaves a shorter sequence that is consistent with
itself (nothing outside the store remembers how long it was). The key makes the trails as strong as the
key file's protection, not as strong as the Merkle log, which stations witness.

The HMAC is computed in Python by a function registered on the service's connection
(:func:`register_sealer`). Before the seals have begun (a store made before them, whose first start has not
sealed it yet), a row appended without a usable key gets a seal with a NULL MAC (the row is still
appended), the error is logged once, and `edge verify` names it as appended while the key was unusable.
Once the seals have begun (the marker below), the function never returns NULL: without a key it raises,
the append fails and so does what it records (a read is refused rather than left unsealed; the central
does not even start without its key). So a NULL MAC on a seal numbered after the marker was written by
someone else: `edge verify` names it as tampering (a row edited and its seal emptied), never as a key
outage (review R14). Whether the seals have begun is asked of the connection by the function itself, and
only when it has no key (the rare case), never passed by the trigger: the triggers keep the four-argument
call of the release before (``edge_trail_seal(seq, table, row_id, row_json)``), so that release and this
one can append to one ``index.db`` during a rolling upgrade (review 6: a five-argument trigger, which this
release's first open made, failed every trail append of a central of the previous release). Rows already in a
store made before the seals are sealed once, at the first start that has the key
(:func:`seal_rows_made_before_the_seals`); that start is marked, so rows inserted later without a seal are
never blessed by a restart. The mark is also kept outside the database (console.key format v2): a
store whose seals were dropped or emptied is tampering, never "a store made before the seals", and is
not sealed again.

Known limit: deleting the newest trail rows together with their newest seals is not detectable from the
store alone (nothing outside index.db records how long the sequence was). Anchoring the seal count in
the witnessed tree heads would close it; that is not done yet.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.central.sql.console import SqlConnection

__all__ = [
    "BEGIN_TABLE",
    "SEAL_FUNCTION",
    "TRAIL_COLUMNS",
    "TrailKeyHolder",
    "TrailKeyUnusable",
    "append_trail_row",
    "create_trail_schema",
    "key_fits_seals",
    "register_sealer",
    "row_json_sql",
    "seal_rows_made_before_the_seals",
    "trail_mac",
]

log = logging.getLogger(__name__)

# Each trail's columns in the order they are sealed (the id is sealed on its own).
TRAIL_COLUMNS: dict[str, tuple[str, ...]] = {
    "access_log": ("time", "reader", "what", "item", "query", "remote"),
    "account_events": ("time", "name", "event", "by", "remote", "detail"),
    "grant_events": ("time", "name", "role", "units", "by", "reason"),
    "station_unit_events": ("time", "station", "unit_code", "by", "reason"),
    "sensitivity_events": ("time", "item", "action", "readers", "by", "reason", "remote"),
    "media_ranges": ("access_id", "time", "first_byte", "last_byte"),
}
SEAL_FUNCTION = "edge_trail_seal"
# The marker seal of the start that sealed the rows made before the seals (row_id 0, no table of that name).
BEGIN_TABLE = "(seals begin)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trail_seals (
    seq INTEGER PRIMARY KEY,
    tbl TEXT NOT NULL,
    row_id INTEGER NOT NULL,
    mac TEXT,                          -- hex HMAC-SHA256; NULL: appended while the console key was unusable
    UNIQUE (tbl, row_id)
) STRICT
"""


def trail_mac(key: bytes, seq: int, table: str, row_id: int, row_json: str) -> str:
    """The seal number ``seq`` of one trail row: HMAC-SHA256 over the number, the table, the id and the
    values."""
    message = "\n".join((str(seq), table, str(row_id), row_json)).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def row_json_sql(table: str, prefix: str = "") -> str:
    """The SQL expression of a row's sealed values (``prefix`` ``NEW.`` in a trigger)."""
    return "json_array(" + ", ".join(f"{prefix}{column}" for column in TRAIL_COLUMNS[table]) + ")"


_NEXT_SEQ_SQL = "SELECT coalesce(max(seq), 0) + 1 FROM trail_seals"
_BEGUN_SQL = f"SELECT EXISTS (SELECT 1 FROM trail_seals WHERE tbl = '{BEGIN_TABLE}')"


def create_trail_schema(conn: sqlite3.Connection) -> None:
    """The seals table, its append-only triggers and one sealing trigger per trail (idempotent; after
    the trails' tables exist)."""
    conn.execute(_SCHEMA)
    conn.execute("CREATE TRIGGER IF NOT EXISTS trail_seals_no_update BEFORE UPDATE ON trail_seals "
                 "BEGIN SELECT RAISE(ABORT, 'trail_seals is append-only: UPDATE refused'); END")
    conn.execute("CREATE TRIGGER IF NOT EXISTS trail_seals_no_delete BEFORE DELETE ON trail_seals "
                 "BEGIN SELECT RAISE(ABORT, 'trail_seals is append-only: DELETE refused'); END")
    for table in TRAIL_COLUMNS:
        # The previous release's trigger, word for word: a central of that release (an instance not yet
        # upgraded behind the load balancer) registers only the four-argument function. A store whose
        # trigger passed a fifth argument (a build between the two) gets this one back.
        sql = _seal_trigger_sql(table)
        found = conn.execute("SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?",
                             (f"{table}_seal",)).fetchone()
        if found is not None and found[0] != sql:
            conn.execute(f"DROP TRIGGER {table}_seal")
        conn.execute(sql.replace("CREATE TRIGGER", "CREATE TRIGGER IF NOT EXISTS", 1))


def append_trail_row(conn: sqlite3.Connection, table: str, values: dict[str, object]) -> int:
    """Append a row to the trail ``table`` (``values`` names its columns); its AFTER INSERT trigger seals
    it. Returns its id. Table and column names come from TRAIL_COLUMNS, never from the caller's data."""
    columns = TRAIL_COLUMNS[table]
    if set(values) != set(columns):
        raise ValueError(f"{table}: expected the columns {columns}, got {sorted(values)}")
    cursor = conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) "
                          f"VALUES ({', '.join('?' * len(columns))})", [values[column] for column in columns])
    return int(cursor.lastrowid or 0)


def _seal_trigger_sql(table: str) -> str:
    return (f"CREATE TRIGGER {table}_seal AFTER INSERT ON {table} BEGIN "
            f"INSERT INTO trail_seals (seq, tbl, row_id, mac) VALUES (({_NEXT_SEQ_SQL}), '{table}', NEW.id, "
            f"{SEAL_FUNCTION}(({_NEXT_SEQ_SQL}), '{table}', NEW.id, {row_json_sql(table, 'NEW.')})); END")


class TrailKeyUnusable(Exception):
    """Raised by the sealing function when the seals have begun and no key is usable: the append fails."""


class TrailKeyHolder:
    """The trail key of one connection: loaded from ``console.key`` on first use (again while it is
    missing), unless the starting central handed it the key it checked (:meth:`use`). Shared by both
    backends (PostgreSQL's seals are computed by the central: edge.central.postgres.trail)."""

    def __init__(self, key_path: Path | None) -> None:
        self.key_path = key_path
        self._key: bytes | None = None
        self._warned = False

    def use(self, key: bytes) -> None:
        """The trail key the starting central loaded and checked against the store: kept for the life of
        the connection, so a key file that becomes unreadable later does not stop the trails."""
        self._key = key

    def key(self) -> bytes | None:
        if self._key is None and self.key_path is not None:
            # Imported here: the key file's format belongs to the console, not to the SQL backend.
            from edge.central.console.secret_key import ConsoleKeyError, ConsoleSecretKey

            try:
                self._key = ConsoleSecretKey.load(self.key_path).trail_key
            except ConsoleKeyError as exc:
                if not self._warned:
                    log.error("trail rows (access log, account and grant events...) are appended without a "
                              "seal until the console key is usable: %s; `edge verify` names them", exc)
                    self._warned = True
                return None
        return self._key


class _Sealer(TrailKeyHolder):
    """The SQL function of one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection, key_path: Path) -> None:
        super().__init__(key_path)
        self.conn = conn
        self._begun = False  # once seen, for good: the marker is never removed but by tampering

    def begun(self) -> bool:
        """Whether the seals have begun, as this connection sees it now (inside the append's own
        transaction: a marker committed by another process, or written by this one, is seen)."""
        if not self._begun:
            self._begun = bool(self.conn.execute(_BEGUN_SQL).fetchone()[0])
        return self._begun

    def __call__(self, seq: int, table: str, row_id: int, row_json: str) -> str | None:
        key = self.key()
        if key is not None:
            return trail_mac(key, seq, table, row_id, row_json)
        if self.begun():
            # SQLite reports only "user-defined function raised exception": the reason goes to the log.
            log.error("a %s row is refused: the console's trails are sealed, and the console key %s is not "
                      "usable to seal it (a NULL seal would be indistinguishable from tampering)", table,
                      self.key_path)
            raise TrailKeyUnusable(f"{self.key_path}: no usable console key to seal a {table} row")
        return None


def register_sealer(conn: sqlite3.Connection, key_path: Path) -> _Sealer:
    """Register the sealing function on ``conn``; returns it (:meth:`_Sealer.use` hands it the key)."""
    sealer = _Sealer(conn, key_path)
    conn.create_function(SEAL_FUNCTION, 4, sealer)
    return sealer


def seal_rows_made_before_the_seals(conn: sqlite3.Connection, key: bytes) -> int:
    """Seal, once, the trail rows a store made before the seals holds; returns how many. The caller's
    transaction. Does nothing after the first time (the begin marker is there)."""
    if conn.execute("SELECT 1 FROM trail_seals WHERE tbl = ?", (BEGIN_TABLE,)).fetchone() is not None:
        return 0
    sealed = 0
    for table in TRAIL_COLUMNS:
        rows = conn.execute(
            f"SELECT t.id, {row_json_sql(table, 't.')} FROM {table} t WHERE NOT EXISTS "
            f"(SELECT 1 FROM trail_seals s WHERE s.tbl = ? AND s.row_id = t.id) ORDER BY t.id", (table,),
        ).fetchall()
        for row_id, row_json in rows:
            seq = int(conn.execute(_NEXT_SEQ_SQL).fetchone()[0])
            conn.execute("INSERT INTO trail_seals (seq, tbl, row_id, mac) VALUES (?, ?, ?, ?)",
                         (seq, table, row_id, trail_mac(key, seq, table, row_id, row_json)))
            sealed += 1
    seq = int(conn.execute(_NEXT_SEQ_SQL).fetchone()[0])
    conn.execute("INSERT INTO trail_seals (seq, tbl, row_id, mac) VALUES (?, ?, 0, ?)",
                 (seq, BEGIN_TABLE, trail_mac(key, seq, BEGIN_TABLE, 0, "[]")))
    return sealed


# How many sealed rows besides the marker are tried before a key is called the wrong one.
_KEY_CHECK_SAMPLE = 4


def _sqlite_row_json(conn: SqlConnection, table: str, row_id: int) -> str | None:
    row = conn.execute(f"SELECT {row_json_sql(table)} FROM {table} WHERE id = ?", (row_id,)).fetchone()
    return None if row is None else str(row[0])


def key_fits_seals(conn: SqlConnection, key: bytes,
                   row_json_of: Callable[[str, int], str | None] | None = None) -> bool | None:
    """Whether ``key`` is the trail key this store was sealed with; None when nothing is sealed yet.

    The marker of the start of the seals is an HMAC of a fixed label (its number, ``(seals begin)``, 0,
    ``[]``) written at the first sealing: the store's key check value. When it does not check (edited, or
    gone), the first few sealed rows are tried: a key none of them checks with is not the store's key (a
    wrong key restored from another store or backup), which would otherwise make every row look edited.

    ``conn`` runs ``?`` SQL (SQLite's, or PostgreSQL's through its qmark adapter); ``row_json_of(table,
    row_id)`` reads a trail row's sealed text as its backend seals it (default: SQLite's json_array)."""
    def read(table: str, row_id: int) -> str | None:
        return _sqlite_row_json(conn, table, row_id) if row_json_of is None else row_json_of(table, row_id)

    marker = conn.execute("SELECT seq, mac FROM trail_seals WHERE tbl = ?", (BEGIN_TABLE,)).fetchone()
    if marker is not None and isinstance(marker[1], str) and hmac.compare_digest(
            marker[1], trail_mac(key, int(marker[0]), BEGIN_TABLE, 0, "[]")):
        return True
    tried = marker is not None and marker[1] is not None
    for seq, table, row_id, mac in conn.execute(
            "SELECT seq, tbl, row_id, mac FROM trail_seals WHERE mac IS NOT NULL AND tbl != ? ORDER BY seq "
            "LIMIT ?", (BEGIN_TABLE, _KEY_CHECK_SAMPLE)).fetchall():
        if table not in TRAIL_COLUMNS or not isinstance(row_id, int):
            continue
        row_json = read(str(table), row_id)
        if row_json is None:
            continue
        tried = True
        if hmac.compare_digest(str(mac), trail_mac(key, int(seq), str(table), row_id, row_json)):
            return True
    return False if tried else None
