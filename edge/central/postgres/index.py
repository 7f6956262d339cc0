"""The central's index on PostgreSQL: :class:`PostgresIndex` (:class:`edge.central.storage.Index`).

The same rows and rules as :mod:`edge.central.sqlite.index`, in the tables of the migrations: history is
append-only by trigger, a station ledger row must extend its station's head, the directories derived
from history (officers, devices, cases, an item's current case) are upserted. Writes named ``insert_*``
and :meth:`PostgresIndex.apply_tag` run in the caller's transaction (the registrar's, which also appends
the Merkle leaf); the others run their own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg.rows import dict_row

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
from edge.central.postgres.trail import append_trail
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import KeyFormatError
from edge.custody.keys import key_id_of, public_key_from_b64
from edge.custody.ledger import GENESIS_PREV, Checkpoint, LedgerEntry, station_time_now

if TYPE_CHECKING:
    from edge.central.postgres.database import PostgresDatabase

__all__ = ["PostgresIndex", "scope_clause"]

log = logging.getLogger(__name__)

_COLUMN_RE = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")
# Case fields are column names of item_case (CASE_FIELDS); nothing else is interpolated into SQL.
_CASE_COLUMNS = frozenset(CASE_FIELDS)


def scope_clause(scope: ReaderScope, item_column: str = "i.item") -> tuple[str, list[Any]]:
    """The SQL condition (and its arguments) true for the items ``scope`` may see; the rule of
    :func:`edge.central.sqlite.console.scope_clause` in PostgreSQL's dialect."""
    if not _COLUMN_RE.fullmatch(item_column):
        raise ValueError(f"not a column reference: {item_column!r}")
    args: list[Any] = []
    if scope.all_units:
        unit_sql = "true"
    else:
        units = sorted(scope.units)
        if not units:
            return "false", []
        unit_sql = f"(SELECT unit_code FROM item_units WHERE item = {item_column}) = ANY(%s)"
        args.append(units)
    sensitive_sql = (f"(NOT EXISTS (SELECT 1 FROM item_sensitive WHERE item = {item_column}) OR EXISTS "
                     f"(SELECT 1 FROM item_sensitive_readers WHERE item = {item_column} AND reader = %s))")
    args.append(scope.reader)
    return f"({unit_sql} AND {sensitive_sql})", args


class PostgresIndex:
    """:class:`edge.central.storage.Index` in the tables of a :class:`PostgresDatabase`, whose unit of
    work it writes in (shared with the database's log store)."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database

    def __repr__(self) -> str:
        return f"PostgresIndex({self._database.where!r})"

    @property
    def conn(self) -> psycopg.Connection[tuple[object, ...]]:
        return self._database.conn

    @property
    def unit(self) -> PostgresDatabase:
        return self._database

    def close(self) -> None:
        self._database.close()

    def transaction(self) -> AbstractContextManager[object]:
        return self._database.transaction()

    @contextmanager
    def snapshot(self) -> Iterator[PostgresIndex]:
        """A read-only view in one REPEATABLE READ transaction on a connection of its own."""
        other = self._database.reopen()
        try:
            other.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield PostgresIndex(other)
        finally:
            other.close()

    def _rows(self, query: Any, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(query, args).fetchall()

    def _row(self, query: Any, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        with self.conn.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(query, args).fetchone()

    # -- stations and readers -------------------------------------------------------------------

    def enroll_station(self, station_id: str, signing_public_key_b64: str, cert_sha256: str) -> None:
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
                "VALUES (%s, %s, %s, %s, 'active', %s) ON CONFLICT (station) DO UPDATE SET "
                "public_key = excluded.public_key, key_id = excluded.key_id, "
                "cert_sha256 = excluded.cert_sha256, status = 'active', "
                "enrolled_utc = excluded.enrolled_utc, revoked_utc = NULL, revoke_reason = NULL",
                (station_id, signing_public_key_b64, key_id, cert_sha256, now),
            )
            self.conn.execute(
                "INSERT INTO station_keys (station, key_id, public_key, enrolled_utc) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (station_id, key_id, signing_public_key_b64, now),
            )
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, key_id, cert_sha256) "
                "VALUES (%s, 'station', %s, 'enrolled', %s, %s)",
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
                "UPDATE stations SET status = 'revoked', revoked_utc = %s, revoke_reason = %s "
                "WHERE station = %s",
                (now, reason, station_id),
            )
            if done.rowcount != 1:
                raise CentralIndexError(f"station {station_id} is not enrolled; nothing to revoke")
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, reason) "
                "VALUES (%s, 'station', %s, 'revoked', %s)",
                (now, station_id, reason),
            )
        log.warning("station %s revoked: %s", station_id, reason)

    def station(self, station_id: str) -> StationRecord | None:
        row = self._row(
            "SELECT station, public_key, key_id, cert_sha256, status, enrolled_utc, revoked_utc, "
            "revoke_reason FROM stations WHERE station = %s",
            (station_id,),
        )
        if row is None:
            return None
        return StationRecord(
            station=row["station"], public_key_b64=row["public_key"], key_id=row["key_id"],
            cert_sha256=row["cert_sha256"], status=row["status"], enrolled_utc=row["enrolled_utc"],
            revoked_utc=row["revoked_utc"], revoke_reason=row["revoke_reason"],
        )

    def stations(self) -> list[StationRecord]:
        names = [row["station"] for row in self._rows("SELECT station FROM stations ORDER BY station")]
        return [record for name in names if (record := self.station(name)) is not None]

    def station_keys(self, station_id: str) -> dict[str, Ed25519PublicKey]:
        keys: dict[str, Ed25519PublicKey] = {}
        rows = self._rows("SELECT key_id, public_key FROM station_keys WHERE station = %s", (station_id,))
        for row in rows:
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
                "INSERT INTO readers (name, cert_sha256, status, enrolled_utc) VALUES (%s, %s, 'active', %s) "
                "ON CONFLICT (name) DO UPDATE SET cert_sha256 = excluded.cert_sha256, status = 'active', "
                "enrolled_utc = excluded.enrolled_utc, revoked_utc = NULL, revoke_reason = NULL",
                (name, cert_sha256, now),
            )
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, cert_sha256) "
                "VALUES (%s, 'reader', %s, 'enrolled', %s)",
                (now, name, cert_sha256),
            )
        log.info("reader %s enrolled", name)

    def revoke_reader(self, name: str, reason: str) -> None:
        validate_reader_name(name)
        now = station_time_now()
        with self.transaction():
            done = self.conn.execute(
                "UPDATE readers SET status = 'revoked', revoked_utc = %s, revoke_reason = %s WHERE name = %s",
                (now, reason, name),
            )
            if done.rowcount != 1:
                raise CentralIndexError(f"reader {name} is not enrolled; nothing to revoke")
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, reason) "
                "VALUES (%s, 'reader', %s, 'revoked', %s)",
                (now, name, reason),
            )
        log.warning("reader %s revoked: %s", name, reason)

    def reader(self, name: str) -> ReaderRecord | None:
        row = self._row("SELECT name, cert_sha256, status, enrolled_utc FROM readers WHERE name = %s",
                        (name,))
        if row is None:
            return None
        return ReaderRecord(row["name"], row["cert_sha256"], row["status"], row["enrolled_utc"])

    # -- station ledgers ------------------------------------------------------------------------

    def ledger_head(self, station_id: str) -> tuple[int, str]:
        row = self._row(
            "SELECT seq, hash FROM station_ledger WHERE station = %s ORDER BY seq DESC LIMIT 1", (station_id,)
        )
        if row is None:
            return 0, GENESIS_PREV
        return int(row["seq"]), str(row["hash"])

    def ledger_entry(self, station_id: str, seq: int) -> LedgerEntry | None:
        row = self._row(
            "SELECT seq, time, type, item, data, prev, hash FROM station_ledger "
            "WHERE station = %s AND seq = %s",
            (station_id, seq),
        )
        return None if row is None else ledger_entry_from_row(station_id, row)

    def ledger_item_last(self, station_id: str, item: str) -> tuple[int, str] | None:
        row = self._row(
            "SELECT seq, hash FROM station_ledger WHERE item = %s AND station = %s ORDER BY seq DESC LIMIT 1",
            (item, station_id),
        )
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
        sql = ("SELECT seq, time, type, item, data, prev, hash FROM station_ledger "
               "WHERE station = %s AND seq >= %s")
        args: list[Any] = [station_id, start_seq]
        for column, value in (("seq <=", end_seq), ("item =", item), ("type =", type_)):
            if value is not None:
                sql += f" AND {column} %s"
                args.append(value)
        for row in self._rows(sql + " ORDER BY seq", args):
            yield ledger_entry_from_row(station_id, row)

    def insert_ledger_entries(
        self, station_id: str, entries: Sequence[LedgerEntry], accepted_utc: str
    ) -> None:
        """Append verified entries (caller's transaction); the trigger refuses a non-extension."""
        with self.conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO station_ledger (station, seq, time, type, item, data, prev, hash, accepted_utc) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (station_id, e.seq, e.time, e.type, e.item, canonical_json(e.data).decode("utf-8"),
                     e.prev, e.hash, accepted_utc)
                    for e in entries
                ],
            )

    def insert_checkpoint(self, cp: Checkpoint, accepted_utc: str) -> None:
        self.conn.execute(
            "INSERT INTO station_checkpoints (station, seq, hash, time, key_id, signature, accepted_utc) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (cp.station, cp.seq, cp.hash, cp.time, cp.key_id, cp.signature, accepted_utc),
        )

    _CHECKPOINT = "SELECT station, seq, hash, time, key_id, signature FROM station_checkpoints "

    def latest_checkpoint(self, station_id: str) -> Checkpoint | None:
        row = self._row(self._CHECKPOINT + "WHERE station = %s ORDER BY seq DESC, id DESC LIMIT 1",
                        (station_id,))
        return None if row is None else Checkpoint.from_dict(row)

    def checkpoint_at_or_after(self, station_id: str, seq: int) -> Checkpoint | None:
        row = self._row(self._CHECKPOINT + "WHERE station = %s AND seq >= %s ORDER BY seq, id LIMIT 1",
                        (station_id, seq))
        return None if row is None else Checkpoint.from_dict(row)

    def checkpoints(
        self, station_id: str, start_seq: int = 1, end_seq: int | None = None
    ) -> list[Checkpoint]:
        rows = self._rows(
            self._CHECKPOINT + "WHERE station = %s AND seq >= %s AND seq <= %s ORDER BY seq, id",
            (station_id, start_seq, end_seq if end_seq is not None else 2**62),
        )
        return [Checkpoint.from_dict(row) for row in rows]

    # -- items ----------------------------------------------------------------------------------

    def item(self, item: str) -> ItemRecord | None:
        row = self._row("SELECT * FROM items WHERE item = %s", (item,))
        return None if row is None else item_from_row(row)

    def insert_item(
        self,
        manifest: Mapping[str, Any],
        *,
        station_id: str,
        leaf_index: int,
        accepted_utc: str,
    ) -> ItemRecord:
        """Index a verified item with its officer, device and case rows (in the caller's transaction)."""
        record = item_record_from_manifest(manifest, station_id=station_id, leaf_index=leaf_index,
                                           accepted_utc=accepted_utc)
        officer_no, device_serial = record.officer_no, record.device_serial
        source = manifest.get("source") or {}
        self.conn.execute(
            "INSERT INTO items (item, sha256, size, station, manifest, manifest_sha256, officer_no, "
            "device_serial, acquired_utc, recorded_start, chain_seq, leaf_index, accepted_utc) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (record.item, record.sha256, record.size, station_id, record.manifest_text,
             record.manifest_sha256, officer_no, device_serial, record.acquired_utc, record.recorded_start,
             record.chain_seq, leaf_index, accepted_utc),
        )
        if officer_no is not None:
            self.conn.execute(
                "INSERT INTO officers AS o (officer_no, officer_name, unit_code, unit_name, first_seen_utc, "
                "last_seen_utc) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (officer_no) DO UPDATE SET "
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
                "last_seen_utc) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (device_serial) DO UPDATE SET "
                "last_officer_no = coalesce(excluded.last_officer_no, d.last_officer_no), "
                "last_station = excluded.last_station, last_seen_utc = excluded.last_seen_utc",
                (device_serial, officer_no, station_id, accepted_utc, accepted_utc),
            )
        case = manifest.get("case") or {}
        initial = indexable_case(case, f"item {record.item} manifest")
        self.conn.execute("INSERT INTO item_case (item, updated_utc) VALUES (%s, %s)",
                          (record.item, accepted_utc))
        self._add_history(record.item, "manifest", station_id, record.chain_seq, record.acquired_utc,
                          initial, text_or_none(case.get("collector")), accepted_utc)
        unit, unit_source = self._item_unit_for(station_id, record.manifest)
        self.conn.execute("INSERT INTO item_units (item, unit_code, source) VALUES (%s, %s, %s)",
                          (record.item, unit, unit_source))
        for entry in self.ledger_entries(station_id, item=record.item, type_="tagged"):
            self.apply_tag(station_id, entry, accepted_utc)
        return record

    def _item_unit_for(self, station: str, manifest: Mapping[str, Any]) -> tuple[str | None, str]:
        """The rule of :func:`edge.central.sqlite.console.item_unit_for`: the station's assigned unit,
        else the unit the signed manifest names, else none."""
        row = self._row("SELECT unit_code FROM station_units WHERE station = %s", (station,))
        if row is not None:
            return str(row["unit_code"]), "station"
        source = manifest.get("source")
        code = source.get("unit_code") if isinstance(source, dict) else None
        try:
            return validate_unit_code(code), "manifest"
        except CentralIndexError:
            return None, "none"

    def item_unit(self, item: str) -> str | None:
        row = self._row("SELECT unit_code FROM item_units WHERE item = %s", (item,))
        return None if row is None else row["unit_code"]

    def item_visible(self, item: str, scope: ReaderScope) -> bool:
        condition, args = scope_clause(scope, "i.item")
        row = self._row(f"SELECT 1 FROM items i WHERE i.item = %s AND {condition}", [item, *args])
        return row is not None

    def apply_tag(self, station_id: str, entry: LedgerEntry, recorded_utc: str) -> bool:
        if entry.item is None:
            return False
        owner = self._row("SELECT station FROM items WHERE item = %s", (entry.item,))
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
            "recorded_utc) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (item, source, station_id, ledger_seq, time, canonical_json(dict(changes)).decode("utf-8"), by,
             recorded_utc),
        )
        if done.rowcount != 1:
            return False
        if changes:
            unknown = set(changes) - _CASE_COLUMNS
            if unknown:  # indexable_case admits only CASE_FIELDS; never interpolate anything else
                raise CentralIndexError(f"item {item}: not case fields: {sorted(unknown)}")
            assignments = ", ".join(f"{name} = %s" for name in changes)
            self.conn.execute(
                f"UPDATE item_case SET {assignments}, updated_utc = %s WHERE item = %s".encode(),
                [*changes.values(), recorded_utc, item],
            )
            case_number = changes.get("case_number")
            if isinstance(case_number, str) and case_number:
                self.conn.execute(
                    "INSERT INTO cases (case_number, first_seen_utc, last_seen_utc) VALUES (%s, %s, %s) "
                    "ON CONFLICT (case_number) DO UPDATE SET last_seen_utc = excluded.last_seen_utc",
                    (case_number, recorded_utc, recorded_utc),
                )
        return True

    def metadata_history(self, item: str) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT source, station, ledger_seq, time, changes, by, recorded_utc FROM metadata_history "
            "WHERE item = %s ORDER BY ledger_seq, id",
            (item,),
        )
        return [{**row, "changes": parse_json(row["changes"])} for row in rows]

    def current_case(self, item: str) -> dict[str, Any]:
        row = self._row(f"SELECT {', '.join(CASE_FIELDS)} FROM item_case WHERE item = %s".encode(), (item,))
        return {} if row is None else {name: row[name] for name in CASE_FIELDS}

    def query_items(
        self, query: ItemQuery, scope: ReaderScope
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        visible, visible_args = scope_clause(scope, "i.item")
        clauses: list[str] = [visible]
        args: list[Any] = list(visible_args)
        if query.unit is not None:
            clauses.append("u.unit_code = %s")
            args.append(query.unit)
        if query.important is not None:
            clauses.append("coalesce(c.important, false) = %s")
            args.append(query.important)
        for column, value in (
            ("c.case_number", query.case_number),
            ("i.officer_no", query.officer_no),
            ("i.device_serial", query.device_serial),
            ("i.station", query.station),
        ):
            if value is not None:
                clauses.append(f"{column} = %s")
                args.append(value)
        if query.time_from is not None:
            clauses.append("i.acquired_utc >= %s")
            args.append(query.time_from)
        if query.time_to is not None:
            clauses.append("i.acquired_utc < %s")
            args.append(query.time_to)
        if query.after is not None:
            clauses.append("(i.acquired_utc, i.item) > (%s, %s)")
            args.extend(query.after)
        limit = max(1, min(query.limit, MAX_QUERY_LIMIT))
        rows = self._rows(
            "SELECT i.item, i.sha256, i.size, i.station, i.officer_no, i.device_serial, i.acquired_utc, "
            "i.recorded_start, i.accepted_utc, i.leaf_index, c.case_number, c.important, "
            "u.unit_code AS unit, EXISTS (SELECT 1 FROM item_sensitive s WHERE s.item = i.item) AS sensitive "
            "FROM items i LEFT JOIN item_case c ON c.item = i.item LEFT JOIN item_units u ON u.item = i.item "
            f"WHERE {' AND '.join(clauses)} "
            "ORDER BY i.acquired_utc, i.item LIMIT %s",
            [*args, limit + 1],
        )
        page = rows[:limit]
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
        with self.transaction():
            self.conn.execute(
                "INSERT INTO rejections (time, station, remote, code, detail, item, upload) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (station_time_now(), station, remote, code, detail, item, upload),
            )

    def rejections(self, station: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT time, station, remote, code, detail, item, upload FROM rejections"
        if station is None:
            return self._rows(sql + " ORDER BY id")
        return self._rows(sql + " WHERE station = %s ORDER BY id", (station,))

    def log_access(
        self, *, reader: str, what: str, item: str | None, query: str | None, remote: str | None
    ) -> int:
        with self.transaction():
            return append_trail(self.conn, self._database.sealer, "access_log", {
                "time": station_time_now(), "reader": reader, "what": what, "item": item, "query": query,
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
        clauses: list[str] = []
        args: list[Any] = []
        for condition, value in (("a.reader = %s", reader), ("a.item = %s", item), ("a.what = %s", what),
                                 ("a.time >= %s", time_from), ("a.time < %s", time_to),
                                 ("a.id < %s", before_id)):
            if value is not None:
                clauses.append(condition)
                args.append(value)
        if scope is not None:
            visible, visible_args = scope_clause(scope, "a.item")
            clauses.append(f"(a.item IS NULL OR {visible})")
            args.extend(visible_args)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ORDER BY a.id" if limit is None else "ORDER BY a.id DESC LIMIT %s"
        if limit is not None:
            args.append(max(1, min(limit, MAX_QUERY_LIMIT)))
        return self._rows(
            "SELECT a.id, a.time, a.reader, a.what, a.item, a.query, a.remote, "
            "(SELECT sum(m.last_byte - m.first_byte + 1) FROM media_ranges m "
            "WHERE m.access_id = a.id)::bigint "
            f"AS bytes_served FROM access_log a {where} {order}",
            args,
        )

