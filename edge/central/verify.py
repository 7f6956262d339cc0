"""`edge verify` for a central store: objects, index, station ledgers and the Merkle log, naming each problem.

A central store verifies when:

* every object in ``objects/`` hashes to its name, is where its name puts it, and is the content of an
  accepted item; nothing else lies there; every accepted item's object is present with its size; in an
  S3 bucket, its current version is locked (COMPLIANCE) at least until its item's retention class (as
  tags left it) requires, with a legal hold for a permanent class, and a shortfall names the extension
  still pending, if any;
* every item row agrees with its manifest (canonical text, hash, size, station, officer, device, times),
  the manifest is signed by a key the station was enrolled with, and it points at the `acquired` entry of
  the item in the station's accepted ledger;
* every station's accepted ledger is an unbroken hash chain from seq 1, each entry of an item that carries
  ``data.item_prev`` names the hash of that item's previous entry (the genesis for its first), and every
  stored checkpoint is signed by one of the station's enrolled keys over an entry the ledger holds;
* the metadata history repeats the manifest's case block and every accepted `tagged` entry, and the
  current case of each item is their fold;
* the Merkle log recomputes from its leaves (leaf hashes, stored nodes, every signed tree head), each
  item's leaf is exactly the leaf its acceptance would write, and each item's receipt can be reproduced
  against the latest tree head and verifies with the central key;
* what the stations' own ledgers say (cross-check): every `receipt` entry a station pushed names an item
  the index holds at that leaf, whose leaf is still in the log, under a signed tree head of the size and
  root the station was given; every `uploaded` entry an item the index holds (or refused, or whose
  registration is still pending). Deleting the newest item together with its leaf, nodes and heads
  leaves the station's receipt entry, which names it. The central key each receipt entry says it was
  verified with must be the store's signing key: a replaced key, with every head re-signed by it, is named;
* nothing lies in the store root, identity/ or uploads/ that the central does not write, and the
  append-only trails (access log, rejections, enrolments, metadata history, station checkpoints, the
  console's account, grant, station-unit and sensitivity events and media ranges) have no gaps;
* the console's trails (access log, account, grant, station-unit and sensitivity events, media ranges)
  match their seals (:mod:`edge.central.sqlite.trail`, keyed by ``identity/console.key``): a row
  edited, deleted or inserted past the central is named, and so is a store whose seals were dropped or
  emptied once console.key (format v2) records that its trails are sealed; a seal with no MAC numbered
  after the start of the seals is tampering (the central never writes one), and a console.key that is
  not the store's is named once, not as every row edited. Known limits, as that module
  states: the holder of the key can re-seal; and deleting the newest trail rows together with their
  newest seals is NOT detected (the shorter sequence is consistent with itself and nothing outside
  index.db records its length; anchoring it in the witnessed tree heads is for later);
* every version of the agency's officer list (edge.central.equipment) in the database (``index.db`` or
  PostgreSQL) verifies with the central key, the versions run 1, 2, 3... without a gap, and each row's
  number, digest and officer count are the signed list's: a list rewritten below the triggers is named;
* every console account's TOTP secret opens with console.key and is of the enrolment that
  ``identity/console-enrolments`` records (:mod:`edge.central.console.enrolments`): another sealed secret
  put back into index.db is named with both enrolment ids, and an account the record says has TOTP whose
  secret is missing from index.db (the second factor dropped) is named.

The check streams station by station (each ledger, then that station's items, by point queries on the
index), so memory stays bounded whatever the number of items; objects are hashed one at a time. The
store is opened read-only: verification never changes what it checks.

Reading below the protocols: the Merkle log is checked through its :class:`edge.central.storage.LogStore`
(the same algorithms the service signs with), but the index tables are read here with read-only SQL on
the SQLite file, on purpose. :class:`edge.central.storage.Index` hands out validated records and refuses
damaged rows, while this check must see what an attacker left: a data column no longer in canonical
form, a row id gap in an append-only trail, a key row whose id does not match its key, a metadata row
without an item, a leaf without an item row (a join across the index and the log). This module is
therefore the verifier of the SQLite store; a PostgreSQL backend gets its own below-protocol checks.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import sqlite3  # read-only, below the protocols: see the module docstring
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.backends import DatabaseUnavailable
from edge.central.config import CentralLayout, ConfigError, PostgresIndexConfig
from edge.central.console.enrolments import ENROLMENTS_FILE, EnrolmentRecord, enrolment_problems
from edge.central.console.secret_key import ConsoleKeyError, ConsoleSecretKey
from edge.central.equipment import officer_list_problems
from edge.central.index import CASE_FIELDS
from edge.central.log import MerkleLog
from edge.central.objects import FileObjectStore, ObjectStore, ObjectStoreError, is_sha256_hex
from edge.central.postgres import PostgresDatabase
from edge.central.postgres.console import key_fits_seals as postgres_key_fits_seals
from edge.central.postgres.qmark import QmarkConnection
from edge.central.postgres.trail import row_json as postgres_row_json
from edge.central.retention import RetentionPolicy, parse_utc
from edge.central.sqlite import SqliteDatabase
from edge.central.sqlite.trail import BEGIN_TABLE, TRAIL_COLUMNS, key_fits_seals, row_json_sql, trail_mac
from edge.custody.canonical import canonical_json, parse_json, sha256_hex
from edge.custody.checkpoint_note import NoteError, open_note, parse_checkpoint
from edge.custody.disclosure import key_epoch_problem, shown_rotations, station_schedule
from edge.custody.errors import CanonicalJsonError, KeyFileError, KeyFormatError, LedgerError
from edge.custody.keys import StationKey, key_id_of, load_public_key, public_key_from_b64, verify_signature
from edge.custody.keyschedule import KeySchedule
from edge.custody.ledger import (
    Checkpoint,
    EntryType,
    ItemChains,
    LedgerEntry,
    checkpoint_payload,
    verify_chain,
)
from edge.custody.manifest import verify_manifest
from edge.custody.merkle import leaf_hash, verify_inclusion
from edge.custody.problems import Problem
from edge.custody.receipt import (
    ReceiptError,
    TreeHead,
    leaf_data,
    make_leaf_entry,
    verify_tree_head,
)

__all__ = ["CentralFindings", "verify_central", "verify_central_store"]

log = logging.getLogger(__name__)

# A badly damaged store would otherwise report one line per object; past this many of one kind, count.
_MAX_LISTED = 50
# How much earlier than its class requires an object's lock may end: registration locks the content as it
# goes into the bucket, moments (for a very large object, minutes) before the acceptance time the class is
# counted from is taken. A failed extension falls short by the difference between two classes.
_LOCK_SLACK = timedelta(days=1)


@dataclass
class CentralFindings:
    """What verifying a central store found: problems, notes on what could not be decided, counts."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)


def verify_central_store(
    store_dir: Path,
    *,
    central_public_key: Ed25519PublicKey | None = None,
    origin: str | None = None,
    index: PostgresIndexConfig | None = None,
    objects: ObjectStore | None = None,
    retention: RetentionPolicy | None = None,
) -> list[Problem]:
    """Every problem found in the central store at ``store_dir``; an empty list means it verifies.

    ``central_public_key`` pins the signing key from elsewhere (an enrollment bundle); without it the
    store's own ``identity/signing.key.pub`` is used, which proves consistency but not origin.
    ``origin`` is the central id tree heads must name (default: the one the first signed head names).
    """
    return verify_central(store_dir, central_public_key=central_public_key, origin=origin,
                          index=index, objects=objects, retention=retention).problems


def verify_central(
    store_dir: Path,
    *,
    central_public_key: Ed25519PublicKey | None = None,
    origin: str | None = None,
    index: PostgresIndexConfig | None = None,
    objects: ObjectStore | None = None,
    retention: RetentionPolicy | None = None,
) -> CentralFindings:
    """:func:`verify_central_store` with notes and counts (for `edge verify` and the benchmark).

    ``index``: the store's index is in this PostgreSQL database (its configuration's ``[central]
    index``), not in ``store_dir/index.db``. ``objects``: the store's object store when it is not the
    local folder ``<store_dir>/objects`` (an S3 bucket, :mod:`edge.central.s3_objects`: its version
    history is checked too, and each object's lock against its item's retention class in ``retention``,
    the central's ``[retention]``; default: the default classes)."""
    layout = CentralLayout(Path(store_dir))
    findings = CentralFindings()
    problems = findings.problems
    where = index.url if index is not None else str(layout.index_db)
    if index is None and not layout.index_db.is_file():
        problems.append(Problem(f"index {layout.index_db}", "missing: this is not a central store"))
        return findings
    public_key = central_public_key
    if public_key is None:
        try:
            public_key = load_public_key(layout.signing_pub)
        except KeyFileError as exc:
            problems.append(
                Problem(f"key {layout.signing_pub}", f"cannot load the central signing key: {exc}")
            )
    elif layout.signing_pub.is_file():
        try:
            stored = load_public_key(layout.signing_pub)
        except KeyFileError as exc:
            problems.append(Problem(f"key {layout.signing_pub}", str(exc)))
        else:
            if key_id_of(stored) != key_id_of(public_key):
                problems.append(
                    Problem(
                        f"key {layout.signing_pub}",
                        f"is key {key_id_of(stored)}, not the pinned central key {key_id_of(public_key)}",
                    )
                )
    database: SqliteDatabase | PostgresDatabase
    try:
        database = (SqliteDatabase.open_readonly(layout.index_db) if index is None
                    else _open_postgres_readonly(index))
    except DatabaseUnavailable as exc:
        problems.append(Problem(f"index {where}", str(exc)))
        return findings
    try:
        _Checker(database, layout, public_key, origin, findings, objects, retention).run()
    except database.errors as exc:
        problems.append(Problem(f"index {where}", f"cannot be read: {exc}"))
    finally:
        database.close()
    return findings


def _open_postgres_readonly(index: PostgresIndexConfig) -> PostgresDatabase:
    """The configured PostgreSQL database, read-only (verification never changes what it checks, and
    applies no migration)."""
    import psycopg

    try:
        password = index.password.resolve() if index.password is not None else None
        return PostgresDatabase.open_readonly(index.url, password=password)
    except (ConfigError, psycopg.Error) as exc:
        raise DatabaseUnavailable(f"cannot be opened: {str(exc).strip()}") from None


class _Checker:
    def __init__(
        self,
        database: SqliteDatabase | PostgresDatabase,
        layout: CentralLayout,
        public_key: Ed25519PublicKey | None,
        origin: str | None,
        findings: CentralFindings,
        objects: ObjectStore | None = None,
        retention: RetentionPolicy | None = None,
    ) -> None:
        # The index tables, read as stored (module docstring), in SQLite's dialect on either backend.
        self.conn: sqlite3.Connection | QmarkConnection = (
            database.conn if isinstance(database, SqliteDatabase) else QmarkConnection(database.conn))
        self.postgres = isinstance(database, PostgresDatabase)
        self.log_store = database.log_store
        self.layout = layout
        self.public_key = public_key
        self.origin = origin
        self.findings = findings
        self.problems = findings.problems
        self.checked = findings.checked
        self.station_keys: dict[str, dict[str, Ed25519PublicKey]] = {}
        self.objects: ObjectStore = objects if objects is not None else FileObjectStore(layout.objects_dir)
        self.retention = retention if retention is not None else RetentionPolicy.default()
        self.merkle: MerkleLog | None = None
        self.merkle_size = 0
        self.head: TreeHead | None = None
        self._cross_listed: dict[str, int] = {}
        self._key_named = False  # the signing key contradicted by a station's receipt entry, named once
        self._pending_registrations = 0

    def add(self, where: str, what: str) -> None:
        self.problems.append(Problem(where, what))

    def count(self, name: str, n: int = 1) -> None:
        self.checked[name] = self.checked.get(name, 0) + n

    def run(self) -> None:
        self._load_station_keys()
        self.merkle = self._check_merkle()
        if self.merkle is not None:
            self.merkle_size = self._log_size()
            self.head = self._usable_head(self.merkle)
        for station in self._stations():
            self._check_station(station)
        self._check_leaves_without_items()
        self._check_orphan_history()
        self._check_objects()
        self._check_store_files()
        self._check_officer_lists()
        self._note_receive_queues()
        self._check_timestamps()
        for table in ("access_log", "rejections", "enrolment_events", "metadata_history",
                      "station_checkpoints"):
            self._check_no_deleted_rows(table)
        for table in _CONSOLE_TRAILS:
            if self._table_exists(table):
                self._check_no_deleted_rows(table)
        self._check_trail_seals()
        self._check_totp_enrolments()
        for station, extra in sorted(self._cross_listed.items()):
            if extra > _MAX_LISTED:
                self.add(f"station {station} ledger", f"{extra - _MAX_LISTED} more receipt or upload entries "
                                                      "disagree with the index or the log")
        if self._pending_registrations:
            self.findings.notes.append(
                f"{self._pending_registrations} uploaded item(s) are neither accepted nor refused yet "
                "(registration pending or interrupted; the station retries)"
            )

    def _log_size(self) -> int:
        last = self.log_store.last_leaf_index()
        return last + 1 if isinstance(last, int) and not isinstance(last, bool) and last >= 0 else 0

    def _check_no_deleted_rows(self, table: str) -> None:
        """Append-only trails number their rows 1, 2, 3...: a gap is a deleted row."""
        expected = 1
        for (row_id,) in self.conn.execute(f"SELECT id FROM {table} ORDER BY id"):
            if row_id != expected:
                missing = f"row {expected}" if row_id == expected + 1 else f"rows {expected}-{row_id - 1}"
                self.add(table, f"{missing} missing: the append-only trail was cut")
            expected = row_id + 1

    def _table_exists(self, table: str) -> bool:
        if self.postgres:
            return self._scalar("SELECT to_regclass(?) IS NOT NULL", (table,)) is True
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                 (table,)).fetchone() is not None

    def _scalar(self, sql: str, args: tuple[object, ...] = ()) -> object:
        """The first column of the first row (a query that always returns one)."""
        row = self.conn.execute(sql, args).fetchone()
        assert row is not None, sql
        return row[0]

    def _trail_row_json(self, table: str, row_id: int) -> str | None:
        """The sealed text of a trail row as stored (None: no such row), as its backend seals it."""
        if self.postgres:
            row = self.conn.execute(f"SELECT {', '.join(TRAIL_COLUMNS[table])} FROM {table} WHERE id = ?",
                                    (row_id,)).fetchone()
            return None if row is None else postgres_row_json(tuple(row))
        row = self.conn.execute(f"SELECT {row_json_sql(table)} FROM {table} WHERE id = ?",
                                (row_id,)).fetchone()
        return None if row is None else str(row[0])

    def _key_fits_seals(self, key: bytes) -> bool | None:
        if isinstance(self.conn, QmarkConnection):
            return postgres_key_fits_seals(self.conn, key)
        return key_fits_seals(self.conn, key)

    # -- the seals of the console's trails (edge.central.sqlite.trail) -------------------------------

    def _trail_key(self) -> bytes | None:
        try:
            return ConsoleSecretKey.load(self.layout.console_key).trail_key
        except ConsoleKeyError as exc:
            self.add(f"file {self.layout.console_key.relative_to(self.layout.store_dir)}",
                     f"the seals of the console's trails cannot be checked: {exc}")
            return None

    def _check_trail_seals(self) -> None:
        """Every trail row has its seal, every seal its row, and each seal is the HMAC chain value over
        its number and the row as stored: names a deleted, edited or inserted row."""
        if not self._table_exists("trail_seals"):
            if self._key_records_sealing():
                self.add("trail_seals", "the table is gone, but console.key records that the trails were "
                                        "sealed: the seals were removed (tampering)")
            else:
                self.findings.notes.append("the console's trails carry no seals yet (a store made before "
                                           "them; the central's next start seals them)")
            return
        key: bytes | None = None
        key_tried = False
        began = False
        began_at = 0
        expected = 1
        named = 0
        for seq, table, row_id, mac in self.conn.execute(
                "SELECT seq, tbl, row_id, mac FROM trail_seals ORDER BY seq"):
            self.count("trail seals")
            gap = seq != expected
            if gap:
                missing = f"seal {expected}" if seq == expected + 1 else f"seals {expected}-{seq - 1}"
                self.add("trail_seals", f"{missing} missing: deleted with the trail rows they sealed")
            expected = seq + 1
            problem: tuple[str, str] | None = None
            if table == BEGIN_TABLE:
                began, began_at = True, seq
                row_json: str | None = "[]"
            elif table in TRAIL_COLUMNS and isinstance(row_id, int):
                row_json = self._trail_row_json(table, row_id)
                if row_json is None:
                    problem = (table, f"row {row_id} was deleted (its seal {seq} remains)")
                elif mac is None and began:
                    # Once the seals have begun the central never writes a NULL MAC (without a key the
                    # append fails): someone emptied it, most likely to hide an edit of the row (R14).
                    problem = (table, f"row {row_id}: its seal {seq} has no MAC, though the seals began "
                                      f"before it (seal {began_at}): the seal was emptied, the row edited "
                                      "or inserted past the central (tampering, not a key outage)")
                elif mac is None:
                    problem = (table, f"row {row_id} was appended without a seal (the console key was "
                                      "unusable then, before the seals began)")
            else:
                row_json = None
                problem = ("trail_seals", f"seal {seq} names no trail row ({str(table)[:40]!r} {row_id!r})")
            if isinstance(mac, str) and not key_tried:  # the key is needed once there is a seal to check
                key, key_tried = self._trail_key(), True
                if key is not None and self._key_fits_seals(key) is False:
                    self.add(f"file {self.layout.console_key.relative_to(self.layout.store_dir)}",
                             "it is not the key this store's console trails were sealed with (neither the "
                             "check value written when the seals began nor the first sealed rows check with "
                             "it): the rows' seals cannot be checked; restore this store's key")
                    key = None
            if problem is None and key is not None and row_json is not None and isinstance(row_id, int) and (
                    not isinstance(mac, str)
                    or not hmac.compare_digest(mac, trail_mac(key, seq, str(table), row_id, row_json))):
                problem = (str(table), f"row {row_id} was edited, or its seal {seq} was: they no longer match"
                           if table != BEGIN_TABLE else f"seal {seq} (where the seals begin) was edited")
            if problem is not None:
                named += 1
                if named <= _MAX_LISTED:
                    self.add(*problem)
        for table in TRAIL_COLUMNS:
            if not self._table_exists(table):
                continue
            for (row_id,) in self.conn.execute(
                    f"SELECT t.id FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM trail_seals s "
                    f"WHERE s.tbl = ? AND s.row_id = t.id) ORDER BY t.id LIMIT ?", (table, _MAX_LISTED)):
                named += 1
                self.add(table, f"row {row_id} has no seal: inserted past the central (its sealing trigger "
                                "dropped)" if began else
                         f"row {row_id} has no seal: the central has not started since the seals came, or "
                         "the row was inserted past it")
        if not began and self._key_records_sealing():
            self.add("trail_seals", "no seal records where the seals begin, but console.key records that the "
                                    "trails were sealed: the seals were removed (tampering)")
        if named > _MAX_LISTED:
            self.add("trail_seals", f"{named - _MAX_LISTED} more trail rows do not match their seals")

    def _check_totp_enrolments(self) -> None:
        """Every account's TOTP secret opens with console.key and is of the enrolment that
        identity/console-enrolments records (edge.central.console.enrolments): another sealed secret put
        back into index.db is named, and so is an account the record says has TOTP whose secret is
        missing (index.db put back from before the enrolment, or the secret emptied)."""
        if not self._table_exists("console_accounts"):
            return
        stored = [(str(name), str(text)) for name, text in self.conn.execute(
            "SELECT name, totp_secret FROM console_accounts WHERE totp_secret IS NOT NULL ORDER BY name")]
        without_secret = [str(name) for (name,) in self.conn.execute(
            "SELECT name FROM console_accounts WHERE totp_secret IS NULL ORDER BY name")]
        path = self.layout.identity_dir / ENROLMENTS_FILE
        if not stored and not (path.exists() or path.is_symlink()):
            return
        try:
            record = EnrolmentRecord.load(path)
        except ConsoleKeyError as exc:
            self.add(f"file {path.relative_to(self.layout.store_dir)}", str(exc))
            return
        if not record.exists:
            if not stored:
                return
            self.findings.notes.append("no TOTP enrolment record yet (a store made before it; the central's "
                                       "next start writes it)")
            return
        try:
            key: ConsoleSecretKey | None = ConsoleSecretKey.load(self.layout.console_key)
        except ConsoleKeyError:
            key = None  # named where the trails' seals are checked; the numbers are still compared
        self.count("TOTP secrets", len(stored))
        for name, problem in enrolment_problems(stored, key, record, without_secret)[:_MAX_LISTED]:
            self.add(f"console_accounts {name}", problem)

    def _key_records_sealing(self) -> bool:
        """console.key (format v2) records, outside index.db, that this store's trails were sealed."""
        path = self.layout.console_key
        if not (path.exists() or path.is_symlink()):
            return False
        try:
            return ConsoleSecretKey.load(path).trails_sealed
        except ConsoleKeyError:
            return False  # named where the seals are checked with it

    # -- stations and their ledgers ----------------------------------------------------------------

    def _load_station_keys(self) -> None:
        for row in self.conn.execute("SELECT station, key_id, public_key FROM station_keys"):
            where = f"station {row['station']} key {row['key_id']}"
            try:
                key = public_key_from_b64(row["public_key"])
            except KeyFormatError as exc:
                self.add(where, f"enrolled key is malformed: {exc}")
                continue
            if key_id_of(key) != row["key_id"]:
                self.add(where, f"the stored key has id {key_id_of(key)}: the key row was altered")
                continue
            self.station_keys.setdefault(row["station"], {})[row["key_id"]] = key
        for row in self.conn.execute("SELECT station, key_id, public_key FROM stations"):
            try:
                current_id = key_id_of(public_key_from_b64(row["public_key"]))
            except KeyFormatError:
                current_id = None
            if current_id != row["key_id"]:
                self.add(f"station {row['station']}", f"current key does not have the recorded id "
                                                      f"{row['key_id']}: the station row was altered")
            elif row["key_id"] not in self.station_keys.get(row["station"], {}):
                self.add(
                    f"station {row['station']}",
                    f"current key {row['key_id']} is not among the keys it "
                    "was enrolled with: the station row was altered",
                )

    def _stations(self) -> list[str]:
        """Every station the store knows of (a short list: stations, not items)."""
        rows = self.conn.execute(
            "SELECT DISTINCT station FROM station_ledger UNION "
            "SELECT DISTINCT station FROM station_checkpoints UNION "
            "SELECT DISTINCT station FROM items ORDER BY 1"
        )
        return [row[0] for row in rows]

    def _check_station(self, station: str) -> None:
        """One station: its ledger (with the cross-check of its receipt and upload entries), its
        checkpoints, then its items. Nothing of it is kept once the next station starts."""
        has_ledger = self.conn.execute(
            "SELECT 1 FROM station_ledger WHERE station = ? LIMIT 1", (station,)
        ).fetchone() is not None or self.conn.execute(
            "SELECT 1 FROM station_checkpoints WHERE station = ? LIMIT 1", (station,)
        ).fetchone() is not None
        if has_ledger:
            self._check_ledger(station)
        for row in self.conn.execute("SELECT * FROM items WHERE station = ? ORDER BY leaf_index", (station,)):
            self.count("items")
            self._check_item(dict(row))

    def _ledger_entry(self, station: str, seq: object) -> LedgerEntry | None:
        if not isinstance(seq, int) or isinstance(seq, bool):
            return None
        row = self.conn.execute(
            "SELECT seq, time, type, item, data, prev, hash FROM station_ledger "
            "WHERE station = ? AND seq = ?",
            (station, seq),
        ).fetchone()
        if row is None:
            return None
        data = _json_object(row["data"])
        return LedgerEntry(seq=row["seq"], time=row["time"], type=row["type"], item=row["item"],
                           data=data or {}, prev=row["prev"], hash=row["hash"])

    def _entries(self, station: str) -> Iterator[LedgerEntry]:
        for row in self.conn.execute(
            "SELECT seq, time, type, item, data, prev, hash FROM station_ledger WHERE station = ? "
            "ORDER BY seq",
            (station,),
        ):
            where = f"station {station} ledger seq {row['seq']}"
            try:
                data = parse_json(row["data"])
            except CanonicalJsonError as exc:
                self.add(where, f"data column is not valid JSON ({exc}); the row was altered")
                continue
            if not isinstance(data, dict):
                self.add(where, "data column is not a JSON object; the row was altered")
                continue
            if canonical_json(data).decode("utf-8") != row["data"]:
                self.add(where, "data column is not in canonical form: the row was rewritten")
            entry = LedgerEntry(
                seq=row["seq"],
                time=row["time"],
                type=row["type"],
                item=row["item"],
                data=data,
                prev=row["prev"],
                hash=row["hash"],
            )
            self.count("station_ledger_entries")
            if entry.type == "receipt":
                self._cross_check_receipt(station, entry)
            elif entry.type == "uploaded":
                self._cross_check_upload(station, entry)
            yield entry

    def _check_ledger(self, station: str) -> None:
        keys = self.station_keys.get(station, {})
        if not keys:
            self.add(f"station {station}", "has an accepted ledger but no enrolled key")
            return
        # Chain linkage and content hashes, streamed; the key matters only for checkpoints, checked below
        # per key.
        any_key = next(iter(keys.values()))
        # Each item's own chain (data.item_prev) in the same pass: one (seq, hash) per item of the station
        # is held, never its entries, so memory grows with the station's items and not with its ledger.
        item_chains = ItemChains()
        item_problems: list[Problem] = []

        rotated: list[LedgerEntry] = []  # the station's key_rotated entries: they set its keys' epochs

        def with_item_chains() -> Iterator[LedgerEntry]:
            for entry in self._entries(station):
                item_chains.feed(entry, item_problems)
                if entry.type == EntryType.KEY_ROTATED:
                    rotated.append(entry)
                yield entry

        for problem in verify_chain(with_item_chains(), [], any_key, station):
            self.add(f"station {station} {problem.where}", problem.what)
        for problem in item_problems:
            self.add(f"station {station} {problem.where}", f"item chain broken: {problem.what}")
        # A checkpoint counts only within its key's epoch (a key retired by a rotation signs nothing after
        # it, one announced by a rotation nothing before), as for packages and spot checks.
        schedule = station_schedule(keys, rotated)
        for problem in shown_rotations(rotated)[1]:
            self.add(f"station {station} {problem.where}", problem.what)
        for row in self.conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM station_checkpoints WHERE station = ? "
            "ORDER BY seq, id",
            (station,),
        ):
            self._check_checkpoint(station, dict(row), keys, schedule)

    def _check_checkpoint(
        self, station: str, row: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey],
        schedule: KeySchedule,
    ) -> None:
        where = f"station {station} checkpoint seq {row['seq']}"
        try:
            cp = Checkpoint.from_dict(row)
        except LedgerError as exc:
            self.add(where, f"damaged row: {exc}")
            return
        key = keys.get(cp.key_id)
        if key is None:
            self.add(where, f"signed by key {cp.key_id}, which the station was never enrolled with")
            return
        try:
            signature = base64.b64decode(cp.signature.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            signature = b""
        if not verify_signature(key, signature, checkpoint_payload(cp.station, cp.seq, cp.hash, cp.time)):
            self.add(
                where, f"signature does not verify with station key {cp.key_id}: the checkpoint was altered"
            )
            return
        outside = key_epoch_problem(schedule, cp.key_id, cp.seq)
        if outside is not None:
            self.add(where, f"{outside}: the checkpoint vouches for nothing")
            return
        entry = self._ledger_entry(station, cp.seq)
        if entry is None:
            self.add(
                where,
                f"the accepted ledger has no entry at seq {cp.seq}, which this signed checkpoint "
                "covers: entries were deleted",
            )
        elif entry.hash != cp.hash:
            self.add(
                where,
                f"signed hash {cp.hash} but the accepted entry at seq {cp.seq} has hash "
                f"{entry.hash}: the ledger was rewritten",
            )

    # -- cross-check: what the stations' ledgers say the central accepted ------------------------------

    def _cross_problem(self, station: str, entry: LedgerEntry, what: str) -> None:
        listed = self._cross_listed.get(station, 0) + 1
        self._cross_listed[station] = listed
        if listed <= _MAX_LISTED:
            self.add(f"station {station} ledger seq {entry.seq}", what)

    def _cross_check_receipt(self, station: str, entry: LedgerEntry) -> None:
        """A station recorded the central's verified receipt: the item, its leaf and the signed head it
        was given must all still be at the central."""
        data = entry.data
        leaf_index, tree_size = data.get("leaf_index"), data.get("tree_size")
        root_hash = data.get("root_hash")
        if not (isinstance(leaf_index, int) and isinstance(tree_size, int) and isinstance(root_hash, str)
                and _is_count(leaf_index) and _is_count(tree_size)):
            return  # not a receipt entry this version writes; nothing to hold the central to
        self.count("receipt_entries")
        item = entry.item
        said = (f"the station recorded the central's verified receipt for item {item} (leaf {leaf_index} "
                f"of a tree of {tree_size} leaves, root {root_hash[:64]})")
        self._cross_check_signing_key(station, entry, data.get("central_key_id"))
        row = self.conn.execute("SELECT leaf_index, sha256 FROM items WHERE item = ?", (item,)).fetchone()
        if row is None:
            self._cross_problem(station, entry, f"{said}, but the index holds no such item: it was deleted "
                                                "from the central")
        elif row["leaf_index"] != leaf_index or ("sha256" in data and row["sha256"] != data["sha256"]):
            self._cross_problem(station, entry, f"{said}, but the index has it at leaf {row['leaf_index']} "
                                                f"with SHA-256 {row['sha256']}")
        if self.merkle is None:
            return
        if leaf_index >= self.merkle_size:
            self._cross_problem(station, entry, f"{said}, but the log holds only {self.merkle_size} leaves: "
                                                "its leaf was removed")
        else:
            leaf = _json_object(self.log_store.leaf_entry(leaf_index))
            if leaf is None or leaf.get("item") != item or (
                "sha256" in data and leaf.get("sha256") != data["sha256"]
            ):
                shown = "an unreadable entry" if leaf is None else f"item {str(leaf.get('item'))[:40]}"
                self._cross_problem(station, entry, f"{said}, but leaf {leaf_index} of the log names {shown}")
        if not self.log_store.head_signed(tree_size, root_hash):
            why = (f"the log holds only {self.merkle_size} leaves: leaves and heads were removed"
                   if tree_size > self.merkle_size else
                   "that signed head is gone from the log's tree heads: heads were deleted or the log "
                   "rewritten")
            self._cross_problem(station, entry, f"{said}; {why}")

    def _cross_check_signing_key(self, station: str, entry: LedgerEntry, recorded: object) -> None:
        """The station recorded which central key its receipt verified with: whoever holds the central's
        files can replace its signing key and re-sign every tree head, but not the stations' ledgers
        (their checkpoints are signed with the stations' keys)."""
        if self.public_key is None or not isinstance(recorded, str) or self._key_named:
            return
        current = key_id_of(self.public_key)
        if recorded != current:
            self._key_named = True
            self.add(f"key {self.layout.signing_pub}",
                     f"the central's signing key is {current}, but station {station} verified the "
                     f"central's receipt for item {entry.item} with key {recorded[:64]} (its ledger seq "
                     f"{entry.seq}): the signing key was replaced, and tree heads signed with it are not "
                     "the central's")

    def _cross_check_upload(self, station: str, entry: LedgerEntry) -> None:
        """A station uploaded an item's content: the central accepted it, refused it, or (registration
        interrupted) will hear of it again."""
        item = entry.item
        if item is None:
            return
        self.count("upload_entries")
        if self.conn.execute("SELECT 1 FROM items WHERE item = ?", (item,)).fetchone() is not None:
            return
        refused = self.conn.execute("SELECT 1 FROM rejections WHERE item = ? LIMIT 1", (item,)).fetchone()
        if refused is not None:
            return
        receipted = self.conn.execute(
            "SELECT 1 FROM station_ledger WHERE item = ? AND station = ? AND type = 'receipt' LIMIT 1",
            (item, station),
        ).fetchone()
        if receipted is None:  # a receipt entry is named by its own check
            self._pending_registrations += 1

    # -- the Merkle log ----------------------------------------------------------------------------

    def _check_merkle(self) -> MerkleLog | None:
        if self.public_key is None:
            self.add("merkle log", "not verified: no central public key to check tree heads with")
            return None
        origin = self.origin
        if origin is None:
            first = next(self.log_store.heads(), None)
            origin = str(first[1]) if first is not None and first[1] else "unknown"
        # Verification needs only the public key; the log object wants a signing key it will never use here.
        merkle = MerkleLog(self.log_store, StationKey.generate(), origin)
        self.problems.extend(merkle.verify(self.public_key))
        return merkle

    # -- items -------------------------------------------------------------------------------------

    def _check_leaves_without_items(self) -> None:
        if self.merkle is None:
            return
        # A join across the log and the index, in SQL below both protocols (module docstring).
        rows = self.conn.execute(
            "SELECT idx FROM merkle_leaves WHERE idx NOT IN (SELECT leaf_index FROM items) ORDER BY idx"
        )
        missing = 0
        for (index,) in rows:
            missing += 1
            if missing <= _MAX_LISTED:
                self.add(f"merkle leaf {index}",
                         "names an item the index does not hold: the item row was deleted")
        if missing > _MAX_LISTED:
            self.add("merkle log", f"{missing - _MAX_LISTED} more leaves without an item row")

    def _usable_head(self, merkle: MerkleLog) -> TreeHead | None:
        """The latest signed head when receipts can be reproduced against it; else one problem, None."""
        try:
            head = merkle.latest_tree_head()
        except Exception as exc:  # the damaged row itself was reported by the log's verify()
            self.add("receipts", f"not reproducible: the latest tree head is damaged ({exc})")
            return None
        if head is None or self.public_key is None:
            return head
        usable = not verify_tree_head(head, self.public_key) and head.tree_size <= merkle.size()
        if usable:
            try:
                usable = merkle.root(head.tree_size) == head.root
            except Exception:
                usable = False
        if not usable:
            self.add(
                "receipts",
                f"not reproducible: the latest signed tree head (size {head.tree_size}) does not match the "
                "log (see the Merkle log problems)",
            )
            return None
        return head

    def _check_item(self, row: dict[str, Any]) -> None:
        item = row["item"]
        where = f"item {item}"
        try:
            manifest = parse_json(row["manifest"])
        except CanonicalJsonError as exc:
            self.add(where, f"manifest column is not valid JSON ({exc})")
            return
        if not isinstance(manifest, dict):
            self.add(where, "manifest column is not a JSON object")
            return
        text = canonical_json(manifest).decode("utf-8")
        if text != row["manifest"]:
            self.add(where, "manifest column is not in canonical form: it was rewritten")
        if sha256_hex(row["manifest"].encode("utf-8")) != row["manifest_sha256"]:
            self.add(
                where,
                f"manifest hashes to {sha256_hex(row['manifest'].encode('utf-8'))}, the index "
                f"says {row['manifest_sha256']}",
            )
        source = _mapping(manifest.get("source"))
        time_block = _mapping(manifest.get("time"))
        chain = _mapping(manifest.get("chain"))
        expected = {
            "item": manifest.get("item"),
            "sha256": manifest.get("sha256"),
            "size": manifest.get("size"),
            "station": source.get("station"),
            "officer_no": source.get("officer_no") or None,
            "device_serial": source.get("device_serial") or None,
            "recorded_start": time_block.get("recorded_start") or None,
            "chain_seq": chain.get("seq"),
        }
        for column, value in expected.items():
            if row[column] != value:
                self.add(
                    where,
                    f"index column {column} is {str(row[column])[:80]!r} but the manifest says "
                    f"{str(value)[:80]!r}",
                )
        acquired_utc = time_block.get("acquired_utc")
        if isinstance(acquired_utc, str) and acquired_utc and row["acquired_utc"] != acquired_utc:
            self.add(
                where,
                f"index column acquired_utc is {row['acquired_utc']!r} but the manifest says "
                f"{acquired_utc!r}",
            )
        self._check_signature(where, row["station"], manifest)
        self._check_item_chain(where, row["station"], item, manifest, chain)
        if self.merkle is not None:
            self._check_leaf(where, row, self.merkle, self.head)
        self._check_item_history(item, row["station"], manifest)
        sha = row["sha256"]
        if not is_sha256_hex(sha):
            self.add(where, f"sha256 column {str(sha)[:80]!r} is not 64 hex digits")
            return
        try:
            present = self.objects.exists(sha)
        except ObjectStoreError as exc:
            self.add(f"object {sha}", f"cannot be checked: {exc}")
            return
        if not present:
            self.add(f"object {sha}", self._missing_object(sha))
        elif self.objects.size_bytes(sha) != row["size"]:
            self.add(f"object {sha}",
                     f"has {self.objects.size_bytes(sha)} bytes, the item says {row['size']}")
        else:
            self._check_lock(item, sha, row["accepted_utc"])

    def _check_lock(self, item: str, sha: str, accepted_utc: object) -> None:
        """An S3 store: the object's current version is locked at least until its item's retention class
        (as tags left it) requires, counted from acceptance; under a legal hold for a permanent class."""
        from edge.central.s3_objects import S3ObjectStore

        if not isinstance(self.objects, S3ObjectStore):
            return  # a local folder has no lock
        self.count("object_locks")
        case = self.conn.execute("SELECT retention FROM item_case WHERE item = ?", (item,)).fetchone()
        try:
            needed = self.retention.for_class(None if case is None else case[0], parse_utc(str(accepted_utc)),
                                              item=item)
            mode, until, held = self.objects.retention_of(sha)
        except ValueError as exc:
            self.add(f"item {item}", f"accepted_utc {str(accepted_utc)[:40]!r} cannot be read: {exc}")
            return
        except ObjectStoreError as exc:
            self.add(f"object {sha}", f"its lock cannot be read: {exc}")
            return
        short = mode != "COMPLIANCE" or until is None or until < needed.until - _LOCK_SLACK
        if not short and (held or not needed.legal_hold):
            return
        has = (f"locked {mode} until {until.isoformat()}" if mode and until else "not locked") + (
            ", legal hold on" if held else ", no legal hold")
        wants = f"until {needed.until.isoformat()}" + (" with a legal hold" if needed.legal_hold else "")
        pending = self._pending_lock(item)
        self.add(f"object {sha}", f"{has}, but item {item}'s retention class "
                 f"{str(case[0] if case is not None else None)[:40]!r} requires {wants}"
                 + (f"; {pending}" if pending else "; no extension is pending: the central never asked"))

    def _pending_lock(self, item: str) -> str | None:
        if not self._table_exists("lock_extensions_pending"):
            return None
        row = self.conn.execute("SELECT requested_utc, attempts, last_error FROM lock_extensions_pending "
                                "WHERE item = ?", (item,)).fetchone()
        if row is None:
            return None
        return (f"its extension is pending since {row[0]} ({row[1]} failed attempt(s)"
                + (f", last: {str(row[2])[:200]}" if row[2] else "") + ")")

    def _check_signature(self, where: str, station: str, manifest: Mapping[str, Any]) -> None:
        keys = self.station_keys.get(station, {})
        if not keys:
            self.add(where, f"station {station} has no enrolled key to check the manifest with")
            return
        for problem in verify_manifest(manifest, keys):
            self.add(where, f"manifest: {problem.what}")

    def _check_item_chain(
        self, where: str, station: str, item: str, manifest: Mapping[str, Any], chain: Mapping[str, Any]
    ) -> None:
        seq = chain.get("seq")
        entry = self._ledger_entry(station, seq)
        if entry is None:
            self.add(
                where,
                f"the manifest names ledger seq {seq!r} of station {station}, which the accepted "
                "ledger does not hold",
            )
            return
        if entry.hash != chain.get("entry_hash") or entry.type != "acquired" or entry.item != item:
            self.add(
                where,
                f"the manifest names ledger seq {seq} with hash {str(chain.get('entry_hash'))[:64]}, "
                f"but that accepted entry is a {entry.type!r} entry for item {entry.item} with hash "
                f"{entry.hash}",
            )
        for name in ("sha256", "size"):
            if name in entry.data and entry.data[name] != manifest.get(name):
                self.add(
                    where,
                    f"the acquired entry at seq {seq} records {name} {str(entry.data[name])[:80]}, "
                    f"the manifest {str(manifest.get(name))[:80]}",
                )

    def _check_leaf(
        self, where: str, row: Mapping[str, Any], merkle: MerkleLog, head: TreeHead | None
    ) -> None:
        index = row["leaf_index"]
        try:
            stored = merkle.leaf(index)
        except Exception as exc:
            self.add(where, f"its leaf {index} cannot be read from the Merkle log: {exc}")
            return
        try:
            expected = make_leaf_entry(
                item=row["item"],
                sha256=row["sha256"],
                size=row["size"],
                station=row["station"],
                manifest_sha256=row["manifest_sha256"],
                accepted_utc=row["accepted_utc"],
            )
        except ReceiptError as exc:
            self.add(where, f"the index row cannot make a leaf: {exc}")
            return
        if stored != expected:
            differing = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
            self.add(where, f"Merkle leaf {index} differs from the index row in {', '.join(differing)}")
            return
        if head is None or self.public_key is None:
            return
        if index >= head.tree_size:
            self.add(where, f"leaf {index} is beyond the latest signed tree head ({head.tree_size} leaves)")
            return
        # The item's receipt, reproduced: the head was verified once (signature, root against the log),
        # the leaf against the index row above; what is left is the audit path from the stored nodes.
        try:
            proof = merkle.inclusion_proof(index, head.tree_size)
        except Exception as exc:
            self.add(
                where, f"its receipt cannot be reproduced against tree head size {head.tree_size}: {exc}"
            )
            return
        if not verify_inclusion(leaf_hash(leaf_data(stored)), index, head.tree_size, proof, head.root):
            self.add(where, f"reproduced receipt: the inclusion proof of leaf {index} does not lead to the "
                            f"signed root {head.root_hash} of {head.tree_size} leaves")

    def _check_officer_lists(self) -> None:
        """The agency's officer lists (edge.central.equipment): each version signed by the central key,
        numbered 1, 2, 3... without a gap, its row as its signed list says (on either backend)."""
        if self.public_key is None or not self._table_exists("officer_lists"):
            return
        rows = self.conn.execute(
            "SELECT version, sha256, officers, envelope FROM officer_lists ORDER BY version")
        problems, checked = officer_list_problems(
            ((row[0], row[1], row[2], row[3]) for row in rows), self.public_key)
        for where, what in problems[:_MAX_LISTED]:
            self.add(where, what)
        if len(problems) > _MAX_LISTED:
            self.add("officer lists", f"{len(problems) - _MAX_LISTED} more problems")
        self.count("officer_lists", checked)

    def _check_store_files(self) -> None:
        """Files the central does not write, in the store root, identity/, uploads/ and mqtt-transfers/
        (objects/ is checked with the objects)."""
        root = self.layout.store_dir
        found: list[Path] = []
        for path in sorted(root.iterdir()):
            expected = _ROOT_DIRS if path.is_dir() and not path.is_symlink() else _ROOT_FILES
            if path.name not in expected or path.is_symlink():
                found.append(path)
        identity = self.layout.identity_dir
        for path in sorted(identity.rglob("*")) if identity.is_dir() else []:
            if path.parent == identity and path.name in _IDENTITY_FILES and path.is_file():
                continue
            if path == self.layout.tsa_roots_dir and path.is_dir():
                continue
            if path == self.layout.issued_dir and path.is_dir():
                continue
            if path.parent == self.layout.issued_dir and _ISSUED_FILE.fullmatch(path.name) and path.is_file():
                continue
            if path.parent == self.layout.tsa_roots_dir and path.suffix == ".pem" and path.is_file():
                continue
            found.append(path)
        uploads = self.layout.uploads_dir
        for path in sorted(uploads.rglob("*")) if uploads.is_dir() else []:
            if not (path.parent == uploads and _UPLOAD_FILE.fullmatch(path.name) and path.is_file()):
                found.append(path)
        transfers = self.layout.mqtt_transfers_dir
        queues = transfers / "receive-queue"  # edge.central.receive_queue: one file set per process
        for path in sorted(transfers.rglob("*")) if transfers.is_dir() else []:
            if path == queues and path.is_dir() and not path.is_symlink():
                continue
            if path.parent == queues and _QUEUE_FILE.fullmatch(path.name) and path.is_file():
                continue
            if not (path.parent == transfers and _TRANSFER_FILE.fullmatch(path.name) and path.is_file()):
                found.append(path)
        for path in found[:_MAX_LISTED]:
            self.add(f"file {path.relative_to(root)}",
                     "not part of a central store (planted, or left by something else)")
        if len(found) > _MAX_LISTED:
            self.add("store", f"{len(found) - _MAX_LISTED} more files that are not part of a central store")

    def _note_receive_queues(self) -> None:
        """A note per MQTT receive queue file (edge.central.receive_queue) holding waiting messages, read
        only: each is handled only by the process of its name, so a worker renamed or removed (or a file
        set aside as damaged) strands them; the note names the file, the count and the oldest's age."""
        from edge.central.receive_queue import waiting_in

        queues = self.layout.mqtt_transfers_dir / "receive-queue"
        for path in sorted(queues.glob("*.sqlite3*")) if queues.is_dir() else []:
            if (not path.is_file() or path.is_symlink() or path.name.endswith(("-wal", "-shm", ".lock"))
                    or not _QUEUE_FILE.fullmatch(path.name)):
                continue
            name = path.relative_to(self.layout.store_dir)
            try:
                waiting, oldest = waiting_in(path)
            except sqlite3.Error as exc:
                self.findings.notes.append(f"receive queue {name}: cannot be read ({exc})")
                continue
            if not waiting:
                continue
            age = ""
            if oldest is not None:
                hours = max(0.0, time.time() - oldest) / 3600
                queued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest))
                age = f", the oldest queued {queued} ({hours:.1f} h ago)"
            who = ("set aside as damaged: never handled" if ".damaged-" in path.name
                   else "handled only by the process of this name (edge-central, or "
                        "`edge central mqtt-worker --client-id NAME` for worker-NAME) when it runs")
            self.findings.notes.append(f"receive queue {name}: {waiting} message(s) waiting{age}; {who}")

    # -- RFC 3161 time-stamps of checkpoints ----------------------------------------------------------

    def _check_timestamps(self) -> None:
        """Each kept token covers a checkpoint note the central signed for a head the log holds, and
        verifies against the TSA roots the store keeps (copied from the configuration)."""
        from edge.central.timestamp import TimeStampError, load_tsa_roots, verify_token

        roots = []
        roots_dir = self.layout.tsa_roots_dir
        for path in sorted(roots_dir.glob("*.pem")) if roots_dir.is_dir() else []:
            try:
                roots += load_tsa_roots(path)
            except TimeStampError as exc:
                self.add(f"TSA root {path.name}", str(exc))
        # Token rows as stored (the service only appends and asks for the newest unstamped head): read
        # below the LogStore protocol, so that an altered or replaced token is seen (module docstring).
        try:
            rows = self.conn.execute(
                "SELECT id, head_id, tree_size, root_hash, note, token FROM merkle_head_timestamps "
                "ORDER BY id"
            ).fetchall()
        except sqlite3.OperationalError:
            rows = []  # a store from before time-stamping (SQLite only: PostgreSQL's schema has the table)
        for row in rows:
            self.count("timestamps")
            self._check_timestamp(row, roots, verify_token, TimeStampError)
        if rows and not roots:
            self.findings.notes.append("time-stamps not verified: no TSA root certificate in "
                                       f"{roots_dir}")
        newest = self.conn.execute(
            "SELECT id, tree_size FROM merkle_tree_heads ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if roots and newest is not None and not any(row["head_id"] == newest["id"] for row in rows[-1:]):
            self.findings.notes.append(
                f"the newest tree head (id {newest['id']}, size {newest['tree_size']}) has no time-stamp yet "
                "(the TSA is asked at every interval; heads are signed regardless)"
            )

    def _check_timestamp(self, row: Any, roots: list[Any], verify_token: Any, error: Any) -> None:
        where = f"time-stamp {row['id']} (tree head size {row['tree_size']})"
        head = self.conn.execute(
            "SELECT origin FROM merkle_tree_heads WHERE id = ? AND tree_size = ? AND root_hash = ?",
            (row["head_id"], row["tree_size"], row["root_hash"]),
        ).fetchone()
        if head is None:
            self.add(where, f"names tree head {row['head_id']} of size {row['tree_size']} with root "
                            f"{str(row['root_hash'])[:64]}, which the log's signed heads do not hold")
            return
        note = row["note"]
        if self.public_key is not None:
            try:
                text, _ = open_note(str(note), str(head["origin"]), self.public_key)
                checkpoint = parse_checkpoint(text)
            except NoteError as exc:
                self.add(where, f"its checkpoint note does not verify: {exc}")
                return
            if (checkpoint.tree_size, checkpoint.root.hex()) != (row["tree_size"], row["root_hash"]):
                self.add(where, f"its checkpoint note is for size {checkpoint.tree_size} with root "
                                f"{checkpoint.root.hex()}, not the head it is kept for")
                return
        if roots:
            try:
                verify_token(bytes(row["token"]), str(note).encode("utf-8"), roots)
            except error as exc:
                self.add(where, f"the token {exc} over this checkpoint: it was replaced or altered")

    # -- metadata history ---------------------------------------------------------------------------

    def _check_orphan_history(self) -> None:
        rows = self.conn.execute(
            "SELECT DISTINCT item FROM metadata_history WHERE item NOT IN (SELECT item FROM items) "
            "ORDER BY item"
        )
        for (item,) in rows:
            self.add(f"item {item}", "has metadata history but no item row")

    def _check_item_history(self, item: str, station: str, manifest: Mapping[str, Any]) -> None:
        where = f"item {item}"
        case = manifest.get("case") if isinstance(manifest.get("case"), dict) else {}
        assert isinstance(case, dict)
        rows = self.conn.execute(
            "SELECT * FROM metadata_history WHERE item = ? ORDER BY ledger_seq, id", (item,)
        ).fetchall()
        fold: dict[str, Any] = {}
        manifest_rows = [r for r in rows if r["source"] == "manifest"]
        if len(manifest_rows) != 1:
            self.add(
                where, f"expected one metadata history row from the manifest, found {len(manifest_rows)}"
            )
        tagged: dict[int, LedgerEntry] = {}
        for entry_row in self.conn.execute(
            "SELECT seq, time, type, item, data, prev, hash FROM station_ledger "
            "WHERE item = ? AND station = ? AND type = 'tagged' ORDER BY seq",
            (item, station),
        ):
            tagged[entry_row["seq"]] = LedgerEntry(
                seq=entry_row["seq"], time=entry_row["time"], type=entry_row["type"], item=entry_row["item"],
                data=_json_object(entry_row["data"]) or {}, prev=entry_row["prev"], hash=entry_row["hash"],
            )
        for row in rows:
            changes = _json_object(row["changes"])
            if changes is None:
                self.add(
                    where, f"metadata history row at ledger seq {row['ledger_seq']} is not a JSON object"
                )
                continue
            if row["source"] == "manifest":
                expected = {k: v for k, v in case.items() if k in CASE_FIELDS}
                if any(changes.get(k) != v for k, v in expected.items() if k in changes) or set(
                    changes
                ) - set(expected):
                    self.add(
                        where, "the manifest's metadata history row differs from the manifest's case block"
                    )
            else:
                entry = tagged.pop(row["ledger_seq"], None)
                entry_changes = entry.data.get("changes") if entry is not None else None
                if not isinstance(entry_changes, dict):
                    self.add(
                        where,
                        f"metadata history row names tagged ledger seq {row['ledger_seq']}, which "
                        "the accepted ledger does not hold",
                    )
                    continue
                if any(entry_changes.get(k) != v for k, v in changes.items()):
                    self.add(
                        where,
                        f"metadata history row at ledger seq {row['ledger_seq']} differs from the "
                        "tagged ledger entry",
                    )
            fold.update(changes)
        for seq in sorted(tagged):
            self.add(
                where, f"the accepted tagged entry at ledger seq {seq} is missing from the metadata history"
            )
        current = self.conn.execute(
            f"SELECT {', '.join(CASE_FIELDS)} FROM item_case WHERE item = ?", (item,)
        ).fetchone()
        if current is None:
            self.add(where, "has no current case row")
            return
        for name in CASE_FIELDS:
            value = current[name]
            if name == "important" and value is not None:
                value = bool(value)
            if name in fold and fold[name] != value:
                self.add(
                    where,
                    f"current case {name} is {str(value)[:80]!r} but its metadata history folds to "
                    f"{str(fold[name])[:80]!r}",
                )

    # -- objects -------------------------------------------------------------------------------------

    def _missing_object(self, sha: str) -> str:
        if isinstance(self.objects, FileObjectStore):
            return "missing: an accepted item's content is gone"
        # A versioned bucket tells how it went missing (a delete marker), and what remains.
        return f"an accepted item's content is {self.objects.verify(sha)}"

    def _check_objects(self) -> None:
        """Every object: hashed one at a time and looked up in the index (missing objects were named with
        their items)."""
        if not isinstance(self.objects, FileObjectStore):
            self._check_bucket_objects()
            return
        objects_dir = self.layout.objects_dir
        if not objects_dir.is_dir():
            accepted = self._scalar("SELECT count(*) FROM items")
            if accepted:
                self.add(f"objects {objects_dir}", f"missing, with {accepted} accepted items")
            return
        listed = 0
        for path in self.objects.unexpected():
            listed += 1
            if listed <= _MAX_LISTED:
                self.add(
                    f"object {path.relative_to(objects_dir)}",
                    "unexpected: not an object stored under its SHA-256 name (planted, or left by a crash)",
                )
        if listed > _MAX_LISTED:
            self.add("objects", f"{listed - _MAX_LISTED} more unexpected files")
        for name in self.objects.names():
            self.count("objects")
            problem = self.objects.verify(name)
            if problem is not None:
                self.add(f"object {name}", problem)
            elif self.conn.execute(
                "SELECT 1 FROM items WHERE sha256 = ? LIMIT 1", (name,)
            ).fetchone() is None:
                self.add(
                    f"object {name}",
                    "no accepted item references it (left by an interrupted registration or planted)",
                )


    def _check_bucket_objects(self) -> None:
        """An S3 store: its version history (delete markers, unlocked versions, planted keys), then every
        current object hashed and looked up in the index."""
        from edge.central.s3_objects import S3ObjectStore

        store = self.objects
        if not isinstance(store, S3ObjectStore):
            self.add("objects", f"cannot list the objects of {store!r}")
            return
        try:
            listed = 0
            for where, what in store.audit():
                listed += 1
                if listed <= _MAX_LISTED:
                    self.add(where, what)
            if listed > _MAX_LISTED:
                self.add("objects", f"{listed - _MAX_LISTED} more findings in the bucket's version history")
            for name in store.names():
                self.count("objects")
                problem = store.verify(name)
                if problem is not None:
                    self.add(f"object {name}", problem)
                elif self.conn.execute(
                    "SELECT 1 FROM items WHERE sha256 = ? LIMIT 1", (name,)
                ).fetchone() is None:
                    self.add(f"object {name}", "no accepted item references it (left by an interrupted "
                                               "registration or planted)")
        except ObjectStoreError as exc:
            self.add(f"objects {store!r}", f"cannot be listed: {exc}")


# The console's append-only trails besides the access log (edge.central.sqlite.console), numbered 1, 2, 3...
_CONSOLE_TRAILS = ("account_events", "grant_events", "station_unit_events", "sensitivity_events",
                   "media_ranges")
# What a central store holds (edge.central.config.CentralLayout): anything else was planted or left over.
# issued-order.copy: the second copy of the CA's issue order (edge.central.identity.issue_order).
_ROOT_FILES = frozenset({"index.db", "index.db-wal", "index.db-shm", "index.db-journal", "store.lock",
                         "issued-order.copy"})
# readiness/: the /readyz write probe's directory (edge.central.health); it holds no evidence, and a probe
# a crash left there is not a planted file.
# mqtt-transfers/: MQTT file transfers being assembled (edge.central.mqtt_ingest_store), the [mqtt]
# receiver's default transfers_dir.
_ROOT_DIRS = frozenset({"identity", "objects", "uploads", "readiness", "mqtt-transfers"})
_IDENTITY_FILES = frozenset(
    {"ca.crt", "ca.key", "server.crt", "server.key", "signing.key", "signing.key.pub", "console.key",
     ENROLMENTS_FILE,
     # the CA's revocation list and its lock (edge.central.revocation), the secret of the MQTT client ids
     # (edge.mqtt.client_ids)
     "ca.crl", ".crl.lock", "mqtt-client.secret",
     # the order the CA issued its certificates in (edge.central.identity.issue_order)
     "issued.order",
     # where the revocation list was last installed for the broker (edge.central.revocation)
     "crl-installed.json"}
)
# identity/issued/<sha256>.crt: every client certificate the CA issued (edge.central.identity).
_ISSUED_FILE = re.compile(r"[0-9a-f]{64}\.crt")
# tus uploads in progress (edge.central.tus_store): <id>.part and <id>.info.json, and the temp file of an
# atomic write of a record that a crash left behind (the purge removes it once stale).
_UPLOAD_FILE = re.compile(
    r"[0-9a-f]{32}\.(part|info\.json)|\.[0-9a-f]{32}\.info\.json\.\d+\.[0-9a-f]{8}\.tmp"
)


# MQTT transfers being assembled (edge.central.mqtt_ingest_store): <id>.info.json, .part, .segments, .lock,
# and the temp file of an atomic write of an info record that a crash left behind.
_TRANSFER_FILE = re.compile(
    r"[0-9a-f]{32}\.(part|info\.json|segments|lock)|\.[0-9a-f]{32}\.info\.json\.\d+\.[0-9a-f]{8}\.tmp"
)
# mqtt-transfers/receive-queue/: each receiving process's queue (SQLite, its WAL and shared memory, its lock).
# A damaged queue file set aside keeps its name and ".damaged-<UTC time>".
_QUEUE_FILE = re.compile(r"(central|worker-[A-Za-z0-9][A-Za-z0-9._-]{0,31})\.sqlite3"
                         r"(\.damaged-\d{8}T\d{6}Z)?(-wal|-shm|\.lock)?")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_object(text: object) -> dict[str, Any] | None:
    try:
        doc = parse_json(text) if isinstance(text, str) else None
    except CanonicalJsonError:
        return None
    return doc if isinstance(doc, dict) else None
