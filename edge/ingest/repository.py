"""The one place where the station's item, acquisition, session and ledger rows are read and written.

Every state change is committed together with the ledger entry that describes it, in one SQLite
transaction (invariant 4): after a crash the rows and the ledger agree, and the pipeline resumes from
the last committed state. The transitions (`acquired`, `verified`, `sealed`, ...) run inside the
caller's transaction: the pipeline commits several items' transitions together
(:mod:`edge.ingest.commit`); methods named `record*` and `admit` open and commit their own. Nothing
here awaits, so a transaction never spans an await.

Tables (schema in :mod:`edge.ingest.store`):

* `acquisitions`: one row per original a source offered, keyed by its :class:`OriginalKey`, with the
  item it became and its state: pending → copied → verified → sealed (or failed); a source may move a
  sealed item on to states of its own (USB: wiping → wiped);
* `items`: the item index (hash, size, acquisition time, signed manifest, stored path);
* `sessions`: docking sessions of recorders;
* the ledger, through :class:`edge.custody.ledger.Ledger`.

The uplink's `uploads` table is the spool's (:mod:`edge.uplink.spool`); only the purge mark is read
here, because a recorder file whose local copy was purged is re-verified differently before erasure.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.ledger import EntryType, Ledger, LedgerEntry, ledger_key_schedule
from edge.ingest.prefix_digests import PrefixDigests, recordable
from edge.ingest.source import Origin, OriginalKey
from edge.ingest.store import SESSION_ORDER, StationStore


class AcquisitionState:
    """States of an `acquisitions` row that the pipeline moves through (sources add their own after
    SEALED, which the pipeline treats as sealed)."""

    PENDING = "pending"
    COPIED = "copied"
    VERIFIED = "verified"
    SEALED = "sealed"
    FAILED = "failed"
    # Sealed, then found no longer at the source: its key was listed again with other bytes under it.
    SUPERSEDED = "superseded"

    IN_PROGRESS = frozenset({PENDING, COPIED, VERIFIED})


# A re-acquisition (IngestPipeline.reacquire) opens with an `error` entry of stage `stored copy` that
# names the temp copy it is about to write (`temp_copy`, relative to the store root), and closes with
# `reacquired` or an `error` of stage `reacquire`. A temp copy is the station's own only while that is
# open; anything else in tmp/ was left by something else, and `edge verify` reports it. The uplink's
# own `stored copy` entries (a damaged copy found while sending it) name no temp copy: they neither open
# nor close a re-acquisition, and may come between the two.
REBUILD_OPENED = "stored copy"
REBUILD_FAILED = "reacquire"


def open_rebuild(conn: sqlite3.Connection, item: str, temp_copy: str) -> int | None:
    """The ledger seq of the entry that opened a re-acquisition of `item` writing `temp_copy` and that
    nothing closed since (the station stopped during it), or None. Only the entries that open (stage
    `stored copy` naming a temp copy) or close one are read: never any other entry of those stages."""
    row = conn.execute(
        "SELECT seq, type, json_extract(data, '$.temp_copy') FROM ledger WHERE item=? AND (type=? OR "
        "(type=? AND json_extract(data, '$.stage')=? AND json_extract(data, '$.temp_copy') IS NOT NULL) OR "
        "(type=? AND json_extract(data, '$.stage')=?)) ORDER BY seq DESC LIMIT 1",
        (item, EntryType.REACQUIRED.value, EntryType.ERROR.value, REBUILD_OPENED, EntryType.ERROR.value,
         REBUILD_FAILED),
    ).fetchone()
    if row is None or row[1] != EntryType.ERROR.value or row[2] != temp_copy:
        return None
    return int(row[0])


@dataclass
class Acquisition:
    """An offered original and the item it is (or will be) stored as."""

    key: OriginalKey
    item: str
    state: str
    attempts: int
    # The item an earlier original with the same key became, when that one is gone from the source
    # (erased, or given up for a fresh copy) and this is another original under the same key.
    earlier: str | None = None


@dataclass(frozen=True)
class ItemRecord:
    """An `items` row."""

    item: str
    sha256: str
    size: int
    acquired: str
    manifest: dict[str, Any] | None
    path: str | None


@dataclass(frozen=True)
class InProgress:
    """An acquisition row not finished (`IngestRepository.in_progress`), and its copy's hash and size
    when its `acquired` entry recorded one (None: no copy recorded)."""

    key: OriginalKey
    item: str
    state: str
    sha256: str | None
    size: int | None


# Originals per query of `sealed_original_facts` (SQLite's bound on parameters is 32766).
ORIGINALS_PER_QUERY = 500


def sealed_original_facts(
    conn: sqlite3.Connection, source: str, device: str, originals: Collection[str] | None,
    fields: Sequence[str],
) -> list[tuple[str, str, str, dict[str, tuple[str | None, Any]]]]:
    """The sealed acquisitions of `device` (those of `originals` only, when given), each as (original,
    version, item, {field: (JSON type, value)}) for the `fields` of its manifest's `original` block, read
    by SQLite (json_type/json_extract: a manifest is not parsed whole here; the type tells `false` from 0).
    Given `originals`, the query is bounded by them (the primary key: source, device, original), never by
    how many the device has sealed. `conn` may be a read-only connection of the caller's."""
    columns = ", ".join(f"json_type(i.manifest, '$.original.{f}'), json_extract(i.manifest, '$.original.{f}')"
                        for f in fields)
    query = (f"SELECT a.original, a.version, a.item{', ' if fields else ''}{columns} FROM acquisitions a "
             "LEFT JOIN items i ON i.item = a.item WHERE a.source=? AND a.device=? AND ")
    args: tuple[Any, ...] = (source, device, AcquisitionState.SEALED)
    if originals is None:
        batches: list[tuple[str, tuple[Any, ...]]] = [(query + "a.state=?", args)]
    else:
        wanted = sorted(set(originals))
        # `+a.state`: the primary key is the index to take, never the state index (all the device's sealed
        # rows), which SQLite would prefer for its three equality terms.
        batches = [(query + f"+a.state=? AND a.original IN ({', '.join('?' * len(chunk))})", (*args, *chunk))
                   for chunk in (wanted[i:i + ORIGINALS_PER_QUERY]
                                 for i in range(0, len(wanted), ORIGINALS_PER_QUERY))]
    found = []
    for batch_query, batch_args in batches:
        for row in conn.execute(batch_query, batch_args):
            values = tuple(row)
            facts = {f: (values[3 + 2 * n], values[4 + 2 * n]) for n, f in enumerate(fields)}
            found.append((str(values[0]), str(values[1]), str(values[2]), facts))
    return found


MAX_DUPLICATES_NAMED = 10
GENERATION_MARK = "#"  # OriginalKey.version + "#2": the second original seen under one key


class IngestRepository:
    """Rows and ledger entries of one station store."""

    def __init__(self, store: StationStore) -> None:
        self.store = store
        self.conn: sqlite3.Connection = store.conn
        self.ledger: Ledger = store.ledger

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.store.transaction()

    def record(self, type_: str, item: str | None, data: Mapping[str, Any]) -> LedgerEntry:
        """One ledger entry with no state change, in its own transaction."""
        return self.store.record(type_, item, dict(data))

    def record_all(self, entries: Sequence[tuple[str, str | None, Mapping[str, Any]]]) -> None:
        """Several ledger entries in one transaction (a hostile volume can hold thousands of refusals)."""
        if not entries:
            return
        with self.transaction():
            for type_, item, data in entries:
                self.ledger.append(type_, item, dict(data))

    # -- acquisitions -----------------------------------------------------------------------------

    def admit(self, keys: Sequence[OriginalKey], *, gone: Collection[str] = ()) -> list[Acquisition]:
        """The acquisition row of each offered original, created `pending` with a new item id when
        first seen, in one transaction however many there are. A row that failed in an earlier run is
        given a fresh set of attempts.

        A row in one of the `gone` states (USB: `wiped`; every source: `superseded`) describes an
        original that is no longer at the source, so an original offered under the same key now is
        another one (a recorder whose clock was reset can write a new file with the path, size and
        mtime of one it erased): it gets a row of its own, the key's next generation (version
        `size:mtime#2`, `#3`, ...), whose `earlier` names the item before it. Any other row is taken
        for the same original: a crash or a new docking resumes it; whether a sealed one still is the
        same bytes is for the pipeline to prove by hash.
        """
        with self.transaction():
            return [self._admit(key, gone) for key in keys]

    def _admit(self, key: OriginalKey, gone: Collection[str]) -> Acquisition:
        """Inside the caller's transaction."""
        conn = self.conn
        generations = (
            "FROM acquisitions WHERE source=? AND device=? AND original=? "
            "AND (version=? OR substr(version, 1, ?)=?)"
        )
        args = (key.source, key.device, key.original, key.version, len(key.version) + 1,
                key.version + GENERATION_MARK)  # fmt: skip
        found = conn.execute(
            f"SELECT rowid, item, state, attempts, version {generations} ORDER BY rowid DESC LIMIT 1", args
        ).fetchone()
        earlier: str | None = None
        if found is not None and found["state"] in gone:
            count = int(conn.execute(f"SELECT COUNT(*) {generations}", args).fetchone()[0])
            earlier = found["item"]
            key = replace(key, version=f"{key.version}{GENERATION_MARK}{count + 1}")
            found = None
        elif found is not None and found["version"] != key.version:
            key = replace(key, version=found["version"])  # a later generation, resumed
            before = conn.execute(
                f"SELECT item {generations} AND rowid < ? ORDER BY rowid DESC LIMIT 1",
                (*args, found["rowid"]),
            ).fetchone()
            earlier = None if before is None else before["item"]
        if found is None:
            item = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO acquisitions(source, device, original, version, item, state) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key.source, key.device, key.original, key.version, item, AcquisitionState.PENDING),
            )
            return Acquisition(key, item, AcquisitionState.PENDING, 0, earlier)
        if found["state"] == AcquisitionState.FAILED:
            self._set_state(found["item"], AcquisitionState.PENDING, attempts=0)
            return Acquisition(key, found["item"], AcquisitionState.PENDING, 0, earlier)
        return Acquisition(key, found["item"], found["state"], int(found["attempts"]), earlier)

    def superseded(
        self, earlier: Acquisition, offered: OriginalKey, data: Mapping[str, Any], gone: Collection[str]
    ) -> Acquisition:
        """The original of a sealed item is no longer at the source although its key is listed again
        (the bytes under it differ): the earlier row becomes `superseded`, an `error` entry on its item
        says so, and the original now under the key is admitted as the key's next generation."""
        self._set_state(earlier.item, AcquisitionState.SUPERSEDED)
        admitted = self._admit(offered, {*gone, AcquisitionState.SUPERSEDED})
        self.ledger.append(EntryType.ERROR, earlier.item, {**data, "new_item": admitted.item})
        return admitted

    def _set_state(
        self, item: str, state: str, *, attempts: int | None = None, error: str | None = None
    ) -> None:
        """Inside the caller's transaction."""
        self.conn.execute(
            "UPDATE acquisitions SET state=?, attempts=COALESCE(?, attempts), last_error=? WHERE item=?",
            (state, attempts, error, item),
        )

    def change_state(self, item: str, state: str) -> None:
        """A state change that needs no ledger entry of its own (USB: about to erase)."""
        self._set_state(item, state)

    def acquisitions_in_state(self, source: str, device: str, state: str) -> list[Acquisition]:
        rows = self.conn.execute(
            "SELECT original, version, item, state, attempts FROM acquisitions "
            "WHERE source=? AND device=? AND state=?",
            (source, device, state),
        ).fetchall()
        return [
            Acquisition(OriginalKey(source, device, r["original"], r["version"]), r["item"], r["state"],
                        int(r["attempts"]))
            for r in rows
        ]

    def in_progress(self, source: str, device: str,
                    keys: Collection[OriginalKey] | None = None) -> list[InProgress]:
        """The source's acquisitions of `device` (of `keys` only, when given) that are pending, copied or
        verified, with the hash and size of their copy when one was recorded (by the state index)."""
        query = ("SELECT a.original, a.version, a.item, a.state, i.sha256, i.size FROM acquisitions a "
                 "LEFT JOIN items i ON i.item = a.item "
                 "WHERE a.source=? AND a.device=? AND a.state IN (?, ?, ?)")
        args = (source, device, *sorted(AcquisitionState.IN_PROGRESS))
        if keys is None:
            rows = self.conn.execute(query, args).fetchall()
        else:
            rows = [row for key in keys for row in self.conn.execute(
                query + " AND a.original=? AND a.version=?", (*args, key.original, key.version))]
        return [InProgress(OriginalKey(source, device, r[0], r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def state_of(self, key: OriginalKey) -> tuple[str, str] | None:
        """The item and state of the acquisition row of exactly `key`, or None."""
        row = self.conn.execute(
            "SELECT item, state FROM acquisitions WHERE source=? AND device=? AND original=? AND version=?",
            (key.source, key.device, key.original, key.version),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    # -- the pipeline's transitions ---------------------------------------------------------------

    def acquired(
        self,
        item: str,
        origin: Origin,
        *,
        sha256: str,
        size: int,
        acquired_utc: str,
        attempt: int,
        facts: Mapping[str, Any],
    ) -> LedgerEntry:
        """pending → copied: the `acquired` entry, the item row, and a `duplicate` entry when the same
        bytes are already held (a renamed or re-touched file, another recorder's copy: both stay
        evidence with their own origin, and the ledger links them)."""
        entry = self.ledger.append(
            EntryType.ACQUIRED, item, {**facts, "size": size, "sha256": sha256, "attempt": attempt}
        )
        self.conn.execute(
            "INSERT INTO items(item, sha256, size, device_serial, officer_no, acquired) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(item) DO UPDATE SET sha256=excluded.sha256, "
            "size=excluded.size, acquired=excluded.acquired, manifest=NULL",
            (item, sha256, size, origin.device, origin.officer_no, acquired_utc),
        )
        self._set_state(item, AcquisitionState.COPIED, attempts=attempt)
        same = [
            r[0]
            for r in self.conn.execute(
                "SELECT item FROM items WHERE sha256=? AND item!=? ORDER BY acquired LIMIT ?",
                (sha256, item, MAX_DUPLICATES_NAMED),
            )
        ]
        if same:
            self.ledger.append(EntryType.DUPLICATE, item, {"sha256": sha256, "same_as": same})
        return entry

    def verified(self, item: str, data: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
        """copied → verified: the signed manifest is kept in the index until the item is published."""
        self.ledger.append(EntryType.VERIFIED, item, dict(data))
        self.conn.execute(
            "UPDATE items SET manifest=? WHERE item=?", (canonical_json(manifest).decode(), item)
        )
        self._set_state(item, AcquisitionState.VERIFIED)

    def sealed(self, item: str, relpath: str, manifest: Mapping[str, Any], embedded: bool) -> None:
        """verified → sealed: the item is in items/ with its sidecar."""
        self.ledger.append(
            EntryType.SEALED,
            item,
            {
                "path": relpath,
                "manifest_sha256": sha256_hex(canonical_json(manifest)),
                "embedded": embedded,
            },
        )
        self.conn.execute(
            "UPDATE items SET path=?, sealed_in_file=? WHERE item=?", (relpath, int(embedded), item)
        )
        self._set_state(item, AcquisitionState.SEALED)

    def copy_again(self, item: str, data: Mapping[str, Any]) -> None:
        """Back to pending after a failed verification (an `error` entry saying it is copied again)."""
        self.ledger.append(EntryType.ERROR, item, dict(data))
        self._set_state(item, AcquisitionState.PENDING, error=str(data.get("reason", "")))

    def failed(self, item: str, attempts: int, data: Mapping[str, Any]) -> None:
        """Given up for this run: `failed`, with a final `error` entry."""
        reason = str(data.get("reason", ""))
        self._set_state(item, AcquisitionState.FAILED, attempts=attempts, error=reason)
        self.ledger.append(EntryType.ERROR, item, {**data, "final": True})

    def moved_on(self, item: str, state: str, type_: str, data: Mapping[str, Any]) -> None:
        """A source's own state after sealing (USB: wiped), with its ledger entry."""
        self.ledger.append(type_, item, dict(data))
        self._set_state(item, state)

    def entry(self, type_: str, item: str | None, data: Mapping[str, Any]) -> LedgerEntry:
        """One ledger entry with no state change."""
        return self.ledger.append(type_, item, dict(data))

    # -- items ------------------------------------------------------------------------------------

    def item(self, item: str) -> ItemRecord | None:
        row = self.conn.execute(
            "SELECT item, sha256, size, acquired, manifest, path FROM items WHERE item=?", (item,)
        ).fetchone()
        if row is None:
            return None
        manifest = None if row["manifest"] is None else json.loads(row["manifest"])
        return ItemRecord(
            row["item"], row["sha256"], int(row["size"]), row["acquired"], manifest, row["path"]
        )

    def sealed_in_file(self, item: str) -> bool:
        """Whether the item's stored artefact carries its manifest in an evidence box."""
        found = self.conn.execute("SELECT sealed_in_file FROM items WHERE item=?", (item,)).fetchone()
        return bool(found is not None and found[0])

    def latest_entry(self, item: str, type_: str) -> tuple[int, str] | None:
        """(seq, hash) of the item's newest ledger entry of `type_`."""
        found = self.conn.execute(
            "SELECT seq, hash FROM ledger WHERE item=? AND type=? ORDER BY seq DESC LIMIT 1", (item, type_)
        ).fetchone()
        return None if found is None else (int(found[0]), str(found[1]))

    def sealed_seq(self, item: str) -> int | None:
        """The ledger seq of `item`'s newest `sealed` entry: what a witnessed head must cover before the
        recorder's file is erased under after-witness (the chain makes it cover acquisition too)."""
        found = self.conn.execute(
            "SELECT max(seq) FROM ledger WHERE item=? AND type=?", (item, EntryType.SEALED)
        ).fetchone()
        return int(found[0]) if found is not None and found[0] is not None else None

    def station_public_keys(self) -> dict[str, Ed25519PublicKey]:
        """The station keys this ledger announced (``key_rotated`` entries), anchored on the key the
        store holds now, by id: a manifest sealed before a rotation was signed by an older one. Only
        the current key when the announcements do not lead to it (edge verify names why)."""
        current = self.store.key.public_key()
        schedule, problems = ledger_key_schedule(self.store.conn, current, "the station key")
        if problems:
            return {self.store.key.key_id: current}
        return schedule.trusted()

    def sealed_manifest_sha256(self, item: str) -> str | None:
        """The manifest hash the ledger's newest `sealed` entry of `item` recorded."""
        found = self.conn.execute(
            "SELECT data FROM ledger WHERE item=? AND type=? ORDER BY seq DESC LIMIT 1",
            (item, EntryType.SEALED),
        ).fetchone()
        if found is None:
            return None
        value = json.loads(found[0]).get("manifest_sha256")
        return value if isinstance(value, str) else None

    def purged(self, item: str) -> bool:
        """Whether the local copy was purged after the central's verified receipt (retention)."""
        found = self.conn.execute(
            "SELECT 1 FROM uploads WHERE item=? AND state='receipted' AND purged IS NOT NULL", (item,)
        ).fetchone()
        return found is not None

    # -- sessions ---------------------------------------------------------------------------------

    def start_session(
        self,
        session: str,
        *,
        device_serial: str,
        usb_serial: str,
        bay: int | None,
        started: str,
        facts: Mapping[str, Any],
        entry: Mapping[str, Any],
    ) -> None:
        """A docking session row (identity and clock facts as canonical JSON) and `session_started`."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO sessions(session, device_serial, usb_serial, bay, started, identity) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (session, device_serial, usb_serial, bay, started, canonical_json(facts).decode()),
            )
            started_entry = self.ledger.append(EntryType.SESSION_STARTED, None, dict(entry))
            # The order of dockings (SESSION_ORDER): the entry's seq, which no VACUUM or copy renumbers.
            conn.execute("UPDATE sessions SET started_seq = ? WHERE session = ?",
                         (started_entry.seq, session))

    def end_session(self, session: str, *, ended: str, outcome: str, entry: Mapping[str, Any]) -> None:
        """`session_stopped`, then a signed checkpoint over the ledger head in a second transaction."""
        with self.transaction() as conn:
            conn.execute("UPDATE sessions SET ended=?, outcome=? WHERE session=?", (ended, outcome, session))
            self.ledger.append(EntryType.SESSION_STOPPED, None, dict(entry))
        with self.transaction():
            self.ledger.checkpoint()

    def unfinished_session(self, device_serial: str) -> tuple[dict[str, Any], int | None] | None:
        """(identity and clock facts, bay) of the device's newest session that never ended."""
        row = self.conn.execute(
            "SELECT identity, bay FROM sessions WHERE device_serial=? AND ended IS NULL "
            f"ORDER BY {SESSION_ORDER} LIMIT 1",  # recorded order: a stepped clock cannot reorder it
            (device_serial,),
        ).fetchone()
        if row is None:
            return None
        return json.loads(row["identity"]), row["bay"]


# -- prefix digests (edge.ingest.prefix_digests): the upload's cache, not evidence ---------------------

_log = logging.getLogger(__name__)


def record_prefix_digests(conn: sqlite3.Connection, item: str, digests: PrefixDigests) -> None:
    """Keep ``digests`` for ``item`` (inside the caller's transaction), replacing any earlier ones; none
    (and none earlier) when they are more than :func:`load_prefix_digests` uses, or when the item is out
    of the upload path (receipted, purged, or rejected: `edge uplink retry` then sends it hashing its
    copy), as a re-acquisition of such an item would otherwise record them again."""
    if _out_of_upload_path(conn, item):
        forget_prefix_digests(conn, item)
        return
    if not recordable(digests.size, digests.step_bytes):
        forget_prefix_digests(conn, item)
        _log.info("item %s: %d bytes at steps of %d are too many prefix digests to keep: its upload hashes "
                  "the copy", item, digests.size, digests.step_bytes)
        return
    conn.execute(
        "INSERT OR REPLACE INTO prefix_digests(item, step_bytes, size, digests) VALUES (?, ?, ?, ?)",
        (item, digests.step_bytes, digests.size, digests.digests),
    )


def _out_of_upload_path(conn: sqlite3.Connection, item: str) -> bool:
    """Whether the spool holds ``item`` as receipted, rejected or purged (the states that drop its digests:
    edge.uplink.spool, and the store's opening for older stores)."""
    row = conn.execute(
        "SELECT 1 FROM uploads WHERE item=? AND (state IN ('receipted', 'rejected') OR purged IS NOT NULL)",
        (item,),
    ).fetchone()
    return row is not None


def release_held_upload(conn: sqlite3.Connection, item: str) -> None:
    """The item's stored copy was replaced by a re-acquisition (inside the transaction that records it):
    an upload held because the copy was found changed (edge.uplink.spool.hold_stored_copy) is due now."""
    conn.execute("UPDATE uploads SET held_seq=NULL, next_attempt=0 WHERE item=? AND held_seq IS NOT NULL",
                 (item,))


def forget_prefix_digests(conn: sqlite3.Connection, item: str) -> None:
    """Drop ``item``'s digests (inside the caller's transaction): its uploads hash the copy."""
    conn.execute("DELETE FROM prefix_digests WHERE item=?", (item,))


def load_prefix_digests(conn: sqlite3.Connection, item: str, sha256: str, size: int) -> PrefixDigests | None:
    """The digests recorded for ``item`` when they are whole and end at its sealed hash ``sha256`` over
    ``size`` bytes; None (with a log line when some were recorded) otherwise: then the uplink hashes."""
    row = conn.execute(
        "SELECT step_bytes, size, digests FROM prefix_digests WHERE item=?", (item,)
    ).fetchone()
    if row is None:
        return None
    step, recorded_size, blob = row[0], row[1], row[2]
    problem = None
    if not isinstance(step, int) or not isinstance(recorded_size, int) or not isinstance(blob, bytes):
        problem = "a malformed row"
    elif recorded_size != size:
        problem = f"recorded for {recorded_size} bytes, the item has {size}"
    elif not recordable(size, step):
        problem = f"an impossible step of {step} bytes"
    else:
        try:
            digests = PrefixDigests(step, size, blob)
        except ValueError as exc:
            problem = str(exc)
        else:
            if digests.whole.hex() == sha256:
                return digests
            problem = f"the last one is {digests.whole.hex()}, the sealed hash {sha256}"
    _log.warning("item %s: its recorded prefix digests are not used (%s): the upload hashes the copy",
                 item, problem)
    return None
