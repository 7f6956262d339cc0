"""What a station keeps of the central's statements: witnessed heads of its own ledger and the newest
tree heads of the central's log it has checked, in two append-only tables of the station's state.db.

The uplink adds to them (:mod:`edge.uplink.witness`); ``edge verify`` reads them back, read-only, from
stores made before they existed too (then there is simply nothing to read).

The tree heads grow with the central's log: each one kept is larger than the one before (the newest is
the station's trust anchor). The one exception is a head an operator accepted in clearing a witness
alarm (``edge witness clear --accept-central-head``, source ``operator_accepted``): it replaces the
anchor even when it is smaller or has another root for the same size, because the central's log did
change and a person decided, on the ledger, to trust it from here on. The newest row is the anchor.

A witness alarm stands from its ``witness_alarm`` ledger entry until a later ``witness_alarm_cleared``
entry (:func:`alarm_state`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.ledger import EntryType, station_time_now
from edge.custody.receipt import ReceiptError, TreeHead
from edge.custody.witness import WitnessedHead, WitnessError
from edge.durable.sqlite import apply_schema

__all__ = [
    "OPERATOR_ACCEPTED",
    "AlarmState",
    "StationWitness",
    "StoredHead",
    "UnwitnessedWindow",
    "alarm_state",
    "newest_witnessed_seq",
    "stored_witnessed_heads",
    "unwitnessed_window",
]

OPERATOR_ACCEPTED = "operator_accepted"
"""The source of a tree head an operator accepted in clearing a witness alarm (not proved consistent)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS witnessed_heads (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL CHECK (seq >= 1),
    hash TEXT NOT NULL,
    head TEXT NOT NULL,                -- canonical JSON of the central's signed witnessed head
    source TEXT NOT NULL,              -- receipt, ledger_push, ledger_head
    received TEXT NOT NULL             -- station UTC time
) STRICT;
CREATE TABLE IF NOT EXISTS central_tree_heads (
    id INTEGER PRIMARY KEY,
    tree_size INTEGER NOT NULL CHECK (tree_size >= 0),
    root_hash TEXT NOT NULL,
    head TEXT NOT NULL,                -- canonical JSON of the central's signed tree head
    source TEXT NOT NULL,              -- receipt, ledger_push, tree_head
    proved_from INTEGER,               -- the size of the newest head it was proved consistent with
    received TEXT NOT NULL
) STRICT;
CREATE TRIGGER IF NOT EXISTS witnessed_heads_grow BEFORE INSERT ON witnessed_heads
WHEN NEW.seq <= coalesce((SELECT max(seq) FROM witnessed_heads), 0)
BEGIN SELECT RAISE(ABORT, 'witnessed heads are kept in ledger order: only a newer seq is added'); END;
CREATE TRIGGER IF NOT EXISTS witnessed_heads_no_update BEFORE UPDATE ON witnessed_heads
BEGIN SELECT RAISE(ABORT, 'witnessed heads are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS witnessed_heads_no_delete BEFORE DELETE ON witnessed_heads
BEGIN SELECT RAISE(ABORT, 'witnessed heads are append-only: DELETE refused'); END;
DROP TRIGGER IF EXISTS central_tree_heads_grow;
CREATE TRIGGER central_tree_heads_grow BEFORE INSERT ON central_tree_heads
WHEN NEW.source IS NOT 'operator_accepted'
 AND NEW.tree_size <= coalesce((SELECT tree_size FROM central_tree_heads ORDER BY id DESC LIMIT 1), -1)
BEGIN SELECT RAISE(ABORT, 'central tree heads are kept in log order: only a larger tree is added'); END;
CREATE TRIGGER IF NOT EXISTS central_tree_heads_no_update BEFORE UPDATE ON central_tree_heads
BEGIN SELECT RAISE(ABORT, 'central tree heads are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS central_tree_heads_no_delete BEFORE DELETE ON central_tree_heads
BEGIN SELECT RAISE(ABORT, 'central tree heads are append-only: DELETE refused'); END;
"""


@dataclass(frozen=True)
class StoredHead:
    """A witnessed head as the station stored it, or the problem that keeps it from being read."""

    row_id: int
    source: str
    received: str
    head: WitnessedHead | None
    problem: str | None = None


class StationWitness:
    """What a station keeps of the central's statements, in tables of a caller-owned connection.

    Witnessed heads of the station's own ledger (each newer one) and the newest tree heads of the
    central's log it has checked (each proved consistent with the one before). Never commits; the
    append-only triggers stop our own code, not someone with the file (``edge verify`` and the central
    are the defence there).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @staticmethod
    def create_schema(conn: sqlite3.Connection) -> None:
        apply_schema(conn, _SCHEMA)

    # witnessed heads of our ledger

    def newest_witnessed_seq(self) -> int:
        return newest_witnessed_seq(self._conn)

    def add_witnessed_head(self, head: WitnessedHead, source: str) -> bool:
        """Keep ``head`` (already verified by the caller) when it is newer than every kept one."""
        if head.seq <= self.newest_witnessed_seq():
            return False
        self._conn.execute(
            "INSERT INTO witnessed_heads (seq, hash, head, source, received) VALUES (?, ?, ?, ?, ?)",
            (head.seq, head.hash, canonical_json(head.to_dict()).decode("utf-8"), source, station_time_now()),
        )
        return True

    # tree heads of the central's log

    def newest_tree_head(self) -> TreeHead | None:
        row = self._conn.execute(
            "SELECT head FROM central_tree_heads ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        try:
            return TreeHead.from_dict(parse_json(row[0]))
        except (CanonicalJsonError, ReceiptError) as exc:
            raise WitnessError(f"the newest kept central tree head is damaged: {exc}") from None

    def add_tree_head(self, head: TreeHead, source: str, proved_from: int | None) -> None:
        """Keep ``head`` (verified, and proved consistent with the newest kept one by the caller; or, with
        source :data:`OPERATOR_ACCEPTED`, accepted by an operator on the ledger)."""
        self._conn.execute(
            "INSERT INTO central_tree_heads (tree_size, root_hash, head, source, proved_from, received) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (head.tree_size, head.root_hash, canonical_json(head.to_dict()).decode("utf-8"), source,
             proved_from, station_time_now()),
        )


def newest_witnessed_seq(conn: sqlite3.Connection) -> int:
    """The seq of the newest witnessed head a station kept (0 when none, or in a store from before)."""
    try:
        row = conn.execute("SELECT max(seq) FROM witnessed_heads").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row is not None and isinstance(row[0], int) else 0


def stored_witnessed_heads(conn: sqlite3.Connection) -> Iterator[StoredHead]:
    """Every witnessed head a station kept, in the order kept; damaged rows are reported, not raised."""
    try:
        cursor = conn.execute("SELECT id, head, source, received FROM witnessed_heads ORDER BY id")
    except sqlite3.OperationalError:
        return
    for row_id, text, source, received in cursor:
        try:
            head: WitnessedHead | None = WitnessedHead.from_dict(parse_json(text))
            problem = None
        except (CanonicalJsonError, WitnessError, TypeError) as exc:
            head, problem = None, f"the stored head is unreadable ({str(exc)[:200]}): the row was altered"
        yield StoredHead(row_id, str(source), str(received), head, problem)


@dataclass(frozen=True)
class UnwitnessedWindow:
    """Entries of a station's ledger the central has not witnessed yet (for `edge verify` and status).

    ``oldest_time`` is the station time of the first entry past the witnessed head (None when the window
    is empty): how long the oldest unwitnessed entry has waited is :meth:`seconds`.
    """

    head_seq: int
    witnessed_seq: int
    oldest_time: str | None = None

    @property
    def entries(self) -> int:
        return max(0, self.head_seq - self.witnessed_seq)

    def seconds(self, now: datetime | None = None) -> float:
        """Seconds since the oldest unwitnessed entry was written (0 for an empty window)."""
        if self.entries == 0 or self.oldest_time is None:
            return 0.0
        try:
            oldest = datetime.strptime(self.oldest_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        except ValueError:
            return 0.0
        return max(0.0, ((now or datetime.now(UTC)) - oldest).total_seconds())

    def describe(self, now: datetime | None = None) -> str:
        if self.witnessed_seq > self.head_seq:
            return (f"none: the central witnessed up to seq {self.witnessed_seq}, past this ledger's end "
                    f"(seq {self.head_seq})")
        if self.entries == 0:
            return f"none: the central witnessed the ledger up to its head (seq {self.head_seq})"
        return (f"{self.entries} entries (seq {self.witnessed_seq + 1}-{self.head_seq}) after the newest "
                f"witnessed head (seq {self.witnessed_seq}); the oldest waited {self.seconds(now):.0f} s")


def unwitnessed_window(conn: sqlite3.Connection, witnessed_seq: int | None = None) -> UnwitnessedWindow:
    """How far the station's ledger runs past the newest head the central witnessed (the newest kept one,
    unless the caller knows a newer one: ``edge verify`` also asks the central)."""
    row = conn.execute("SELECT coalesce(max(seq), 0) FROM ledger").fetchone()
    witnessed = newest_witnessed_seq(conn) if witnessed_seq is None else witnessed_seq
    try:
        first = conn.execute("SELECT time FROM ledger WHERE seq = ?", (witnessed + 1,)).fetchone()
    except sqlite3.OperationalError:  # a ledger table without times (only its seqs were asked for)
        first = None
    oldest = first[0] if first is not None and isinstance(first[0], str) else None
    return UnwitnessedWindow(int(row[0]), witnessed, oldest)


@dataclass(frozen=True)
class AlarmState:
    """The newest witness alarm on the ledger and whether a later entry cleared it."""

    seq: int
    reason: str
    data: dict[str, Any]
    cleared_seq: int | None = None

    @property
    def standing(self) -> bool:
        return self.cleared_seq is None

    def summary(self) -> str:
        return f"ledger seq {self.seq}: {self.reason}"


def alarm_state(conn: sqlite3.Connection) -> AlarmState | None:
    """The newest ``witness_alarm`` entry, with the ``witness_alarm_cleared`` entry after it if any; None
    when the ledger holds no alarm. An alarm stands until an entry that names it clears it."""
    row = conn.execute(
        "SELECT seq, data FROM ledger WHERE type = ? ORDER BY seq DESC LIMIT 1", (EntryType.WITNESS_ALARM,)
    ).fetchone()
    if row is None:
        return None
    seq = int(row[0])
    try:
        data = parse_json(row[1])
    except CanonicalJsonError:
        data = {}
    data = data if isinstance(data, dict) else {}
    reason = data.get("reason")
    cleared = None
    for clear_seq, clear_data in conn.execute(
        "SELECT seq, data FROM ledger WHERE type = ? AND seq > ? ORDER BY seq",
        (EntryType.WITNESS_ALARM_CLEARED, seq),
    ):
        try:
            doc = parse_json(clear_data)
        except CanonicalJsonError:
            continue
        alarm = doc.get("alarm") if isinstance(doc, dict) else None
        if isinstance(alarm, dict) and alarm.get("seq") == seq:
            cleared = int(clear_seq)
            break
    return AlarmState(seq, reason if isinstance(reason, str) else "witness alarm", data, cleared)
