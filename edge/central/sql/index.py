"""The central's index in SQL, shared by both backends: :class:`SqlIndex` (the
:class:`edge.central.storage.Index` protocol) written once, in SQLite's ``?`` placeholders.

:class:`edge.central.sqlite.index.SqliteIndex` runs it on its SQLite connection and
:class:`edge.central.postgres.index.PostgresIndex` on psycopg through
:class:`edge.central.postgres.qmark.QmarkConnection`. The SQL is the subset both engines read alike:
``INSERT ... ON CONFLICT DO NOTHING`` or ``DO UPDATE`` (upserts name their table with an alias),
``RETURNING``, ``CAST``, ``FALSE``; booleans are bound as Python booleans (1/0 in SQLite's INTEGER
columns). What differs is the backend's: its unit of work, its snapshot, and how a trail row is sealed
(:meth:`SqlIndex._append_trail`: a trigger in SQLite, the central in PostgreSQL). History is append-only
by trigger in both; a station ledger row must extend its station's head; the directories derived from
history (officers, devices, cases, an item's current case) are upserted. Writes named ``insert_*`` and
:meth:`SqlIndex.apply_tag` run in the caller's transaction (the registrar's, which also appends the
Merkle leaf); the others run their own.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.index import (
    CASE_FIELDS,
    MAX_QUERY_LIMIT,
    CentralIndexError,
    ItemQuery,
    ItemRecord,
    ReaderRecord,
    ReaderScope,
    StationRecord,
    indexable_case,
    item_from_row,
    item_record_from_manifest,
    ledger_entry_from_row,
    text_or_none,
    validate_cert_sha256,
    validate_reader_name,
    validate_station_id,
    validate_unit_code,
)
from edge.central.sql.console import SqlConnection
from edge.central.sql.lock_extensions import SqlLockExtensions
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import KeyFormatError
from edge.custody.keys import key_id_of, public_key_from_b64
from edge.custody.ledger import GENESIS_PREV, Checkpoint, LedgerEntry, station_time_now

__all__ = ["SqlIndex", "item_unit_for", "scope_clause"]

log = logging.getLogger(__name__)

_COLUMN_RE = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")
# Case fields are column names of item_case (CASE_FIELDS); nothing else is interpolated into SQL.
_CASE_COLUMNS = frozenset(CASE_FIELDS)


def item_unit_for(conn: SqlConnection, station: str, manifest: Mapping[str, Any]) -> tuple[str | None, str]:
    """``(unit, source)`` of an item being accepted: the unit the central's administrator assigned to its
    station (``station``), else the unit its signed manifest names (``manifest``: the recorder's identity,
    as the station signed it), else none (``none``: only supervisors see it).

    The administrator's assignment comes first because access rests on it: a recorder's identity text is
    only as good as the recorder. Fixed at acceptance: reassigning a station later moves no evidence."""
    row = conn.execute("SELECT unit_code FROM station_units WHERE station = ?", (station,)).fetchone()
    if row is not None:
        return str(row[0]), "station"
    source = manifest.get("source")
    code = source.get("unit_code") if isinstance(source, dict) else None
    try:
        return validate_unit_code(code), "manifest"
    except CentralIndexError:
        return None, "none"


def scope_clause(scope: ReaderScope, item_column: str = "i.item") -> tuple[str, list[Any]]:
    """The SQL condition (and its arguments) true for the items ``scope`` may see, for any query whose
    rows carry an item id in ``item_column``: every listing, search, statistic or package of the console
    adds it to its WHERE clause, so what a reader may not see is never read out of the database.

    Visible: the item's unit is one of the reader's (a supervisor: any unit, even unknown), and the item
    is not marked sensitive or ``scope.reader`` is named on it."""
    if not _COLUMN_RE.fullmatch(item_column):
        raise ValueError(f"not a column reference: {item_column!r}")
    args: list[Any] = []
    if scope.all_units:
        unit_sql = "(1 = 1)"
    else:
        units = sorted(scope.units)
        if not units:
            return "(1 = 0)", []
        unit_sql = (f"(SELECT unit_code FROM item_units WHERE item = {item_column}) "
                    f"IN ({', '.join('?' * len(units))})")
        args.extend(units)
    sensitive_sql = (f"(NOT EXISTS (SELECT 1 FROM item_sensitive WHERE item = {item_column}) OR EXISTS "
                     f"(SELECT 1 FROM item_sensitive_readers WHERE item = {item_column} AND reader = ?))")
    args.append(scope.reader)
    return f"({unit_sql} AND {sensitive_sql})", args


# Ledger entries read per statement by SqlIndex.ledger_entries (a few MiB at most).
LEDGER_PAGE_ROWS = 2000


class SqlIndex(SqlLockExtensions, ABC):
    """The index's queries on a backend's connection (``?`` SQL, rows by index and name), with the pending
    object-lock extensions (:mod:`edge.central.sql.lock_extensions`), written in the index's transaction."""

    @property
    @abstractmethod
    def conn(self) -> SqlConnection:
        """The backend's connection for the calling thread (its reader threads read on their own)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[object]:
        """The database's unit of work (shared with the log store; never await inside it)."""

    @abstractmethod
    def _append_trail(self, table: str, values: dict[str, object]) -> int:
        """Append a row, sealed, to the trail ``table`` in the caller's transaction; returns its id."""

    # -- stations and readers -------------------------------------------------------------------

    def enroll_station(self, station_id: str, signing_public_key_b64: str, cert_sha256: str) -> None:
        """Record (or re-record) a station's ledger key and client certificate; it becomes active.

        Re-enrolment replaces the certificate (the old one stops working) and may bring a new key; every
        key a station ever had stays in ``station_keys`` so its older manifests keep verifying.
        """
        validate_station_id(station_id)
        validate_cert_sha256(cert_sha256)
        try:
            key_id = key_id_of(public_key_from_b64(signing_public_key_b64))
        except KeyFormatError as exc:
            raise CentralIndexError(f"station {station_id}: {exc}") from None
        now = station_time_now()
        with self.transaction():
            before = self.station(station_id)
            self.conn.execute(
                "INSERT INTO stations (station, public_key, key_id, cert_sha256, status, enrolled_utc) "
                "VALUES (?, ?, ?, ?, 'active', ?) ON CONFLICT (station) DO UPDATE SET "
                "public_key = excluded.public_key, key_id = excluded.key_id, "
                "cert_sha256 = excluded.cert_sha256, status = 'active', "
                "enrolled_utc = excluded.enrolled_utc, revoked_utc = NULL, revoke_reason = NULL",
                (station_id, signing_public_key_b64, key_id, cert_sha256, now),
            )
            self.conn.execute(
                "INSERT INTO station_keys (station, key_id, public_key, enrolled_utc) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (station_id, key_id, signing_public_key_b64, now),
            )
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, key_id, cert_sha256) "
                "VALUES (?, 'station', ?, 'enrolled', ?, ?)",
                (now, station_id, key_id, cert_sha256),
            )
        if before is not None and before.key_id != key_id:
            log.warning("station %s re-enrolled with a new signing key %s (was %s)", station_id, key_id,
                        before.key_id)
        else:
            log.info("station %s enrolled with signing key %s", station_id, key_id)

    def revoke_station(self, station_id: str, reason: str) -> None:
        validate_station_id(station_id)
        now = station_time_now()
        with self.transaction():
            done = self.conn.execute(
                "UPDATE stations SET status = 'revoked', revoked_utc = ?, revoke_reason = ? "
                "WHERE station = ?",
                (now, reason, station_id),
            )
            if done.rowcount != 1:
                raise CentralIndexError(f"station {station_id} is not enrolled; nothing to revoke")
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, reason) "
                "VALUES (?, 'station', ?, 'revoked', ?)",
                (now, station_id, reason),
            )
        log.warning("station %s revoked: %s", station_id, reason)

    def station(self, station_id: str) -> StationRecord | None:
        row = self.conn.execute(
            "SELECT station, public_key, key_id, cert_sha256, status, enrolled_utc, revoked_utc, "
            "revoke_reason FROM stations WHERE station = ?",
            (station_id,),
        ).fetchone()
        if row is None:
            return None
        return StationRecord(
            station=row["station"], public_key_b64=row["public_key"], key_id=row["key_id"],
            cert_sha256=row["cert_sha256"], status=row["status"], enrolled_utc=row["enrolled_utc"],
            revoked_utc=row["revoked_utc"], revoke_reason=row["revoke_reason"],
        )

    def stations(self) -> list[StationRecord]:
        names = [row[0] for row in self.conn.execute("SELECT station FROM stations ORDER BY station")]
        return [record for name in names if (record := self.station(name)) is not None]

    def station_keys(self, station_id: str) -> dict[str, Ed25519PublicKey]:
        """Every key the station was ever enrolled with, by key id."""
        keys: dict[str, Ed25519PublicKey] = {}
        for row in self.conn.execute(
            "SELECT key_id, public_key FROM station_keys WHERE station = ?", (station_id,)
        ):
            try:
                keys[row["key_id"]] = public_key_from_b64(row["public_key"])
            except KeyFormatError as exc:
                raise CentralIndexError(
                    f"station {station_id}: damaged key row {row['key_id']}: {exc}"
                ) from None
        return keys

    def enroll_reader(self, name: str, cert_sha256: str) -> None:
        validate_reader_name(name)
        validate_cert_sha256(cert_sha256)
        now = station_time_now()
        with self.transaction():
            self.conn.execute(
                "INSERT INTO readers (name, cert_sha256, status, enrolled_utc) VALUES (?, ?, 'active', ?) "
                "ON CONFLICT (name) DO UPDATE SET cert_sha256 = excluded.cert_sha256, status = 'active', "
                "enrolled_utc = excluded.enrolled_utc, revoked_utc = NULL, revoke_reason = NULL",
                (name, cert_sha256, now),
            )
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, cert_sha256) "
                "VALUES (?, 'reader', ?, 'enrolled', ?)",
                (now, name, cert_sha256),
            )
        log.info("reader %s enrolled", name)

    def revoke_reader(self, name: str, reason: str) -> None:
        validate_reader_name(name)
        now = station_time_now()
        with self.transaction():
            done = self.conn.execute(
                "UPDATE readers SET status = 'revoked', revoked_utc = ?, revoke_reason = ? WHERE name = ?",
                (now, reason, name),
            )
            if done.rowcount != 1:
                raise CentralIndexError(f"reader {name} is not enrolled; nothing to revoke")
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, reason) "
                "VALUES (?, 'reader', ?, 'revoked', ?)",
                (now, name, reason),
            )
        log.warning("reader %s revoked: %s", name, reason)

    def reader(self, name: str) -> ReaderRecord | None:
        row = self.conn.execute(
            "SELECT name, cert_sha256, status, enrolled_utc FROM readers WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        return ReaderRecord(row["name"], row["cert_sha256"], row["status"], row["enrolled_utc"])

    # -- station ledgers ------------------------------------------------------------------------

    def ledger_head(self, station_id: str) -> tuple[int, str]:
        """``(seq, hash)`` of the station's last accepted entry; ``(0, GENESIS_PREV)`` when none."""
        row = self.conn.execute(
            "SELECT seq, hash FROM station_ledger WHERE station = ? ORDER BY seq DESC LIMIT 1", (station_id,)
        ).fetchone()
        if row is None:
            return 0, GENESIS_PREV
        return int(row["seq"]), str(row["hash"])

    def ledger_entry(self, station_id: str, seq: int) -> LedgerEntry | None:
        row = self.conn.execute(
            "SELECT seq, time, type, item, data, prev, hash FROM station_ledger "
            "WHERE station = ? AND seq = ?",
            (station_id, seq),
        ).fetchone()
        return None if row is None else ledger_entry_from_row(station_id, row)

    def ledger_item_last(self, station_id: str, item: str) -> tuple[int, str] | None:
        """``(seq, hash)`` of the station's last accepted entry naming ``item`` (by the index
        ``station_ledger_item``), or None when it has none: what a new entry's ``item_prev`` must name."""
        row = self.conn.execute(
            "SELECT seq, hash FROM station_ledger WHERE item = ? AND station = ? ORDER BY seq DESC LIMIT 1",
            (item, station_id),
        ).fetchone()
        return None if row is None else (int(row["seq"]), str(row["hash"]))

    def ledger_entries(
        self,
        station_id: str,
        start_seq: int = 1,
        *,
        end_seq: int | None = None,
        item: str | None = None,
        type_: str | None = None,
    ) -> Iterator[LedgerEntry]:
        """Accepted entries in seq order from ``start_seq`` up to ``end_seq`` (inclusive), filtered.

        Read a page of :data:`LEDGER_PAGE_ROWS` at a time, each page its own statement from the last seq
        read: both backends' readers take a statement's rows whole (psycopg's client-side cursor, the
        SQLite readers' :class:`~edge.central.sqlite.reads.ReadRows`), and a disclosure package or a spot
        check may walk a station's whole ledger, so one statement for all of it would hold every entry in
        memory at once. The ledger is append-only, so pages read one after the other are consistent."""
        sql = ("SELECT seq, time, type, item, data, prev, hash FROM station_ledger "
               "WHERE station = ? AND seq >= ?")
        filters: list[Any] = []
        if end_seq is not None:
            sql += " AND seq <= ?"
            filters.append(end_seq)
        if item is not None:
            sql += " AND item = ?"
            filters.append(item)
        if type_ is not None:
            sql += " AND type = ?"
            filters.append(type_)
        sql += f" ORDER BY seq LIMIT {LEDGER_PAGE_ROWS}"
        next_seq = start_seq
        while True:
            rows = list(self.conn.execute(sql, [station_id, next_seq, *filters]))
            for row in rows:
                yield ledger_entry_from_row(station_id, row)
            if len(rows) < LEDGER_PAGE_ROWS:
                return
            next_seq = int(rows[-1][0]) + 1

    def insert_ledger_entries(
        self, station_id: str, entries: Sequence[LedgerEntry], accepted_utc: str
    ) -> None:
        """Append verified entries (in the caller's transaction); the trigger refuses a non-extension."""
        self.conn.executemany(
            "INSERT INTO station_ledger (station, seq, time, type, item, data, prev, hash, accepted_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (station_id, e.seq, e.time, e.type, e.item, canonical_json(e.data).decode("utf-8"), e.prev,
                 e.hash, accepted_utc)
                for e in entries
            ],
        )

    def insert_checkpoint(self, cp: Checkpoint, accepted_utc: str) -> None:
        """Store a verified checkpoint unless the very same one is stored (caller's transaction)."""
        self.conn.execute(
            "INSERT INTO station_checkpoints (station, seq, hash, time, key_id, signature, "
            "accepted_utc) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (cp.station, cp.seq, cp.hash, cp.time, cp.key_id, cp.signature, accepted_utc),
        )

    def latest_checkpoint(self, station_id: str) -> Checkpoint | None:
        row = self.conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM station_checkpoints WHERE station = ? "
            "ORDER BY seq DESC, id DESC LIMIT 1",
            (station_id,),
        ).fetchone()
        return None if row is None else Checkpoint.from_dict(dict(row))

    def checkpoint_at_or_after(self, station_id: str, seq: int) -> Checkpoint | None:
        """The station's first accepted checkpoint at ``seq`` or after it (one indexed row, not a list)."""
        row = self.conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM station_checkpoints WHERE station = ? "
            "AND seq >= ? ORDER BY seq, id LIMIT 1",
            (station_id, seq),
        ).fetchone()
        return None if row is None else Checkpoint.from_dict(dict(row))

    def checkpoints(
        self, station_id: str, start_seq: int = 1, end_seq: int | None = None
    ) -> list[Checkpoint]:
        """The station's accepted checkpoints at seqs ``start_seq``..``end_seq``, in seq order."""
        rows = self.conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM station_checkpoints WHERE station = ? "
            "AND seq >= ? AND seq <= ? ORDER BY seq, id",
            (station_id, start_seq, end_seq if end_seq is not None else 2**62),
        ).fetchall()
        return [Checkpoint.from_dict(dict(row)) for row in rows]

    # -- items ----------------------------------------------------------------------------------

    def item(self, item: str) -> ItemRecord | None:
        row = self.conn.execute("SELECT * FROM items WHERE item = ?", (item,)).fetchone()
        return None if row is None else item_from_row(row)

    def insert_item(
        self,
        manifest: Mapping[str, Any],
        *,
        station_id: str,
        leaf_index: int,
        accepted_utc: str,
    ) -> ItemRecord:
        """Index a verified item with its officer, device and case rows (in the caller's transaction).

        The manifest's case block becomes the first metadata history row; `tagged` entries for the item
        already accepted in the station's ledger follow, in ledger order.
        """
        record = item_record_from_manifest(manifest, station_id=station_id, leaf_index=leaf_index,
                                           accepted_utc=accepted_utc)
        text, officer_no, device_serial = record.manifest_text, record.officer_no, record.device_serial
        acquired_utc, chain_seq = record.acquired_utc, record.chain_seq
        source = manifest.get("source") or {}
        self.conn.execute(
            "INSERT INTO items (item, sha256, size, station, manifest, manifest_sha256, officer_no, "
            "device_serial, acquired_utc, recorded_start, chain_seq, leaf_index, accepted_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.item, record.sha256, record.size, station_id, text, record.manifest_sha256, officer_no,
             device_serial, acquired_utc, record.recorded_start, chain_seq, leaf_index, accepted_utc),
        )
        if officer_no is not None:
            self.conn.execute(
                "INSERT INTO officers AS o (officer_no, officer_name, unit_code, unit_name, first_seen_utc, "
                "last_seen_utc) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (officer_no) DO UPDATE SET "
                "officer_name = coalesce(excluded.officer_name, o.officer_name), "
                "unit_code = coalesce(excluded.unit_code, o.unit_code), "
                "unit_name = coalesce(excluded.unit_name, o.unit_name), "
                "last_seen_utc = excluded.last_seen_utc",
                (officer_no, text_or_none(source.get("officer_name")),
                 text_or_none(source.get("unit_code")), text_or_none(source.get("unit_name")),
                 accepted_utc, accepted_utc),
            )
        if device_serial is not None:
            self.conn.execute(
                "INSERT INTO devices AS d (device_serial, last_officer_no, last_station, first_seen_utc, "
                "last_seen_utc) VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_serial) DO UPDATE SET "
                "last_officer_no = coalesce(excluded.last_officer_no, d.last_officer_no), "
                "last_station = excluded.last_station, last_seen_utc = excluded.last_seen_utc",
                (device_serial, officer_no, station_id, accepted_utc, accepted_utc),
            )
        case = manifest.get("case") or {}
        initial = indexable_case(case, f"item {record.item} manifest")
        self.conn.execute(
            "INSERT INTO item_case (item, updated_utc) VALUES (?, ?)", (record.item, accepted_utc)
        )
        self._add_history(record.item, "manifest", station_id, chain_seq, acquired_utc, initial,
                          text_or_none(case.get("collector")), accepted_utc)
        unit, unit_source = item_unit_for(self.conn, station_id, record.manifest)
        self.conn.execute("INSERT INTO item_units (item, unit_code, source) VALUES (?, ?, ?)",
                          (record.item, unit, unit_source))
        for entry in self.ledger_entries(station_id, item=record.item, type_="tagged"):
            self.apply_tag(station_id, entry, accepted_utc)
        return record

    def item_unit(self, item: str) -> str | None:
        """The unit an accepted item belongs to (fixed at acceptance), None when unknown."""
        row = self.conn.execute("SELECT unit_code FROM item_units WHERE item = ?", (item,)).fetchone()
        return None if row is None else row["unit_code"]

    def item_visible(self, item: str, scope: ReaderScope) -> bool:
        """Whether ``scope`` may see the accepted item ``item`` (False also when there is no such item)."""
        condition, args = scope_clause(scope, "i.item")
        row = self.conn.execute(f"SELECT 1 FROM items i WHERE i.item = ? AND {condition}",
                                [item, *args]).fetchone()
        return row is not None

    def apply_tag(self, station_id: str, entry: LedgerEntry, recorded_utc: str) -> bool:
        """Fold an accepted `tagged` entry into its item's metadata (caller's transaction).

        Returns False when the item is not (yet) accepted from this station: its tags are picked up
        from the stored ledger when the item arrives. Replays are ignored (one row per entry).
        """
        if entry.item is None:
            return False
        owner = self.conn.execute("SELECT station FROM items WHERE item = ?", (entry.item,)).fetchone()
        if owner is None or owner["station"] != station_id:
            return False
        raw_changes = entry.data.get("changes")
        changes = indexable_case(raw_changes if isinstance(raw_changes, Mapping) else {},
                              f"station {station_id} ledger seq {entry.seq} (tag of item {entry.item})")
        by = entry.data.get("by")
        return self._add_history(entry.item, "ledger", station_id, entry.seq, entry.time, changes,
                                 by if isinstance(by, str) else None, recorded_utc)

    def _add_history(
        self,
        item: str,
        source: str,
        station_id: str,
        ledger_seq: int,
        time: str,
        changes: Mapping[str, Any],
        by: str | None,
        recorded_utc: str,
    ) -> bool:
        done = self.conn.execute(
            "INSERT INTO metadata_history (item, source, station, ledger_seq, time, changes, by, "
            "recorded_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (item, source, station_id, ledger_seq, time, canonical_json(dict(changes)).decode("utf-8"), by,
             recorded_utc),
        )
        if done.rowcount != 1:
            return False
        if changes:
            unknown = set(changes) - _CASE_COLUMNS
            if unknown:  # indexable_case admits only CASE_FIELDS; never interpolate anything else
                raise CentralIndexError(f"item {item}: not case fields: {sorted(unknown)}")
            assignments = ", ".join(f"{name} = ?" for name in changes)
            # Booleans as the driver binds them: 1/0 in SQLite's INTEGER column, PostgreSQL's boolean.
            values = list(changes.values())
            self.conn.execute(
                f"UPDATE item_case SET {assignments}, updated_utc = ? WHERE item = ?",
                [*values, recorded_utc, item],
            )
            case_number = changes.get("case_number")
            if isinstance(case_number, str) and case_number:
                self.conn.execute(
                    "INSERT INTO cases (case_number, first_seen_utc, last_seen_utc) VALUES (?, ?, ?) "
                    "ON CONFLICT (case_number) DO UPDATE SET last_seen_utc = excluded.last_seen_utc",
                    (case_number, recorded_utc, recorded_utc),
                )
        return True

    def metadata_history(self, item: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT source, station, ledger_seq, time, changes, by, recorded_utc FROM metadata_history "
            "WHERE item = ? ORDER BY ledger_seq, id",
            (item,),
        ).fetchall()
        return [
            {
                "source": row["source"],
                "station": row["station"],
                "ledger_seq": row["ledger_seq"],
                "time": row["time"],
                "changes": parse_json(row["changes"]),
                "by": row["by"],
                "recorded_utc": row["recorded_utc"],
            }
            for row in rows
        ]

    def current_case(self, item: str) -> dict[str, Any]:
        row = self.conn.execute(
            f"SELECT {', '.join(CASE_FIELDS)} FROM item_case WHERE item = ?", (item,)
        ).fetchone()
        if row is None:
            return {}
        case = {name: row[name] for name in CASE_FIELDS}
        if case["important"] is not None:
            case["important"] = bool(case["important"])
        return case

    def query_items(
        self, query: ItemQuery, scope: ReaderScope
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """Item summaries ``scope`` may see matching every given filter, ordered by (acquired_utc, item).

        Returns the page and the cursor for the next one (None when this page is the last).
        """
        visible, visible_args = scope_clause(scope, "i.item")
        clauses: list[str] = [visible]
        args: list[Any] = list(visible_args)
        if query.unit is not None:
            clauses.append("u.unit_code = ?")
            args.append(query.unit)
        if query.important is not None:
            clauses.append("coalesce(c.important, false) = ?")  # FALSE is 0 in SQLite
            args.append(query.important)
        for column, value in (
            ("c.case_number", query.case_number),
            ("i.officer_no", query.officer_no),
            ("i.device_serial", query.device_serial),
            ("i.station", query.station),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if query.time_from is not None:
            clauses.append("i.acquired_utc >= ?")
            args.append(query.time_from)
        if query.time_to is not None:
            clauses.append("i.acquired_utc < ?")
            args.append(query.time_to)
        if query.after is not None:
            clauses.append("(i.acquired_utc, i.item) > (?, ?)")
            args.extend(query.after)
        limit = max(1, min(query.limit, MAX_QUERY_LIMIT))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.conn.execute(
            "SELECT i.item, i.sha256, i.size, i.station, i.officer_no, i.device_serial, i.acquired_utc, "
            "i.recorded_start, i.accepted_utc, i.leaf_index, c.case_number, c.important, "
            "u.unit_code AS unit, EXISTS (SELECT 1 FROM item_sensitive s WHERE s.item = i.item) AS sensitive "
            "FROM items i LEFT JOIN item_case c ON c.item = i.item LEFT JOIN item_units u ON u.item = i.item "
            f"{where} "
            "ORDER BY i.acquired_utc, i.item LIMIT ?",
            [*args, limit + 1],
        ).fetchall()
        page = [dict(row) for row in rows[:limit]]
        for row in page:
            row["sensitive"] = bool(row["sensitive"])
            row["important"] = None if row["important"] is None else bool(row["important"])
        cursor = (page[-1]["acquired_utc"], page[-1]["item"]) if len(rows) > limit else None
        return page, cursor

    # -- audit trails ---------------------------------------------------------------------------

    def record_rejection(
        self,
        *,
        station: str | None,
        code: str,
        detail: str,
        remote: str | None = None,
        item: str | None = None,
        upload: str | None = None,
    ) -> None:
        """Append a rejection in its own transaction (never inside the one that was rolled back)."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO rejections (time, station, remote, code, detail, item, upload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (station_time_now(), station, remote, code, detail, item, upload),
            )

    def rejections(self, station: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT time, station, remote, code, detail, item, upload FROM rejections"
        args: tuple[str, ...] = ()
        if station is not None:
            sql += " WHERE station = ?"
            args = (station,)
        return [dict(row) for row in self.conn.execute(sql + " ORDER BY id", args)]

    def log_access(
        self, *, reader: str, what: str, item: str | None, query: str | None, remote: str | None
    ) -> int:
        """Append an access-log row, sealed, in its own transaction and return its id; raises one of the
        backend's errors when it cannot."""
        with self.transaction():
            return self._append_trail("access_log", {"time": station_time_now(), "reader": reader,
                                                     "what": what, "item": item, "query": query,
                                                     "remote": remote})

    def access_log(
        self,
        *,
        reader: str | None = None,
        item: str | None = None,
        what: str | None = None,
        time_from: str | None = None,
        time_to: str | None = None,
        scope: ReaderScope | None = None,
        before_id: int | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Access-log rows (oldest first; with ``limit``, the newest ``limit`` before ``before_id``, newest
        first), filtered. With ``scope``, rows about items the scope may not see are left out. Each row
        has ``id`` and, for a media playback, ``bytes_served`` (the sum of its ranges)."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("a.reader", reader), ("a.item", item), ("a.what", what)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if time_from is not None:
            clauses.append("a.time >= ?")
            args.append(time_from)
        if time_to is not None:
            clauses.append("a.time < ?")
            args.append(time_to)
        if before_id is not None:
            clauses.append("a.id < ?")
            args.append(before_id)
        if scope is not None:
            visible, visible_args = scope_clause(scope, "a.item")
            clauses.append(f"(a.item IS NULL OR {visible})")
            args.extend(visible_args)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ORDER BY a.id" if limit is None else "ORDER BY a.id DESC LIMIT ?"
        if limit is not None:
            args.append(max(1, min(limit, MAX_QUERY_LIMIT)))
        rows = self.conn.execute(
            "SELECT a.id, a.time, a.reader, a.what, a.item, a.query, a.remote, "
            # CAST: PostgreSQL's sum of bigints is numeric.
            "CAST((SELECT sum(m.last_byte - m.first_byte + 1) FROM media_ranges m WHERE m.access_id = a.id) "
            "AS bigint) "
            f"AS bytes_served FROM access_log a {where} {order}",
            args,
        ).fetchall()
        return [dict(row) for row in rows]
