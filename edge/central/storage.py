"""What the central keeps in its database, behind protocols: the index, the Merkle log's storage and the
unit of work they share.

The central's services (registration, the read side, authentication, the time-stamper) and the Merkle
log's algorithms (:class:`edge.central.log.MerkleLog`) see only these protocols; the database behind them
is chosen once, by the composition root (:func:`edge.central.app.build_app`). Today that is SQLite
(:mod:`edge.central.sqlite`: one file, ``index.db``); a PostgreSQL backend would be a sibling package
implementing the same three protocols, without any change to registration, the log or the read side.

**One unit of work for both.** Accepting an item writes index rows *and* a Merkle leaf (and its subtree
nodes, and a signed tree head); a crash or a failure in between must leave all of it or none. So the
index and the log store are not handed a connection each: they are built on one :class:`UnitOfWork`,
and :meth:`UnitOfWork.transaction` is the only way to make writes of either durable. A backend keeps
both in one database (one SQLite file, one PostgreSQL database), so one transaction covers both. The
registrar refuses to be built on an index and a log that do not share their unit
(:class:`edge.central.registration.Registrar`).

**Rows as stored.** The log store hands back leaf, node and head values exactly as stored (``object``):
the log's own verification must see a damaged or rewritten value to name it, so the store never
validates or repairs; :class:`~edge.central.log.MerkleLog` does. Writes that would not extend the log
raise :class:`LogStoreConflict`; a backend's own failures (disk full, lost connection) raise one of
:attr:`UnitOfWork.errors`.

Every method is synchronous and never awaits: a transaction is opened and committed without yielding, so
readers never see half of one. A coroutine of the central never calls them directly: it hands them to
:meth:`UnitOfWork.run_writes` (writes, on the one writer) or :meth:`UnitOfWork.run_reads` (reads), so that a
database that waits (another receiver's lock, a restarting server) never stalls the event loop
(issue 13; tests/central/test_central_loop_guard.py keeps it so).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.index import (
    AccountRecord,
    IssuedList,
    ItemQuery,
    ItemRecord,
    ReaderGrant,
    ReaderRecord,
    ReaderScope,
    Role,
    StationRecord,
)
from edge.central.objects import Retention
from edge.central.retention import parse_utc
from edge.custody.ledger import Checkpoint, LedgerEntry
from edge.custody.receipt import TreeHead

__all__ = ["CentralDatabase", "ConsoleStore", "EquipmentRows", "Index", "LogStore", "LogStoreConflict",
           "PendingLock", "Readers", "UnitOfWork"]


class LogStoreConflict(Exception):
    """A leaf, node or head write that does not extend the log (another writer took the index, or the
    subtree is not complete); the enclosing transaction must be rolled back."""


@dataclass(frozen=True)
class PendingLock:
    """The lock an item's content must get: ``until`` (UTC text), with a legal hold when ``legal_hold``;
    asked for at ``requested_utc``, tried ``attempts`` times so far, the last failure ``last_error``.
    Recorded by each backend's index (:meth:`Index.want_lock`) before the object store is asked, and
    retried by :mod:`edge.central.lock_extensions` until the store confirms it."""

    item: str
    sha256: str
    until_utc: str
    legal_hold: bool
    requested_utc: str
    attempts: int
    last_attempt_utc: str | None
    last_error: str | None

    @property
    def retention(self) -> Retention:
        return Retention(parse_utc(self.until_utc), legal_hold=self.legal_hold)


_T = TypeVar("_T")


class Readers(StrEnum):
    """Whose read it is, so that one kind's slow reads never take the threads the other needs
    (:meth:`UnitOfWork.run_reads`; PostgreSQL gives each its own reader threads and statement timeout)."""

    # The stations' traffic: authentication, registration and ledger reads, the MQTT API and commands.
    STATIONS = "stations"
    # Everything else: the console, the read side, auditors, statistics, readiness, metrics, rounds.
    CONSOLE = "console"


class UnitOfWork(Protocol):
    """Transactions over everything the central keeps in its database."""

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """The exceptions this backend raises when the database itself fails (not for a refused write)."""
        ...

    def transaction(self) -> AbstractContextManager[object]:
        """One atomic unit: committed when the block ends normally, rolled back when it raises. Never
        await inside it. Reads outside a transaction see only committed units."""
        ...

    async def run_writes(self, work: Callable[[], _T]) -> _T:
        """``work()``, which opens its transactions itself, where waiting for the database's writer lock
        does not stall the event loop if the lock can be held by another process (PostgreSQL: a writer
        thread; SQLite: inline, under the writer mutex its readers' transactions take too)."""
        ...

    async def run_reads(self, work: Callable[[], _T], readers: Readers = Readers.CONSOLE) -> _T:
        """``work()``, which only reads (committed rows), where a slow or unreachable database does not
        stall the event loop: the ``readers``' threads, each with a connection of its own (PostgreSQL; and
        SQLite, read-only connections beside the writer: :mod:`edge.central.sqlite.database`). A transaction
        ``work`` opens writes on the writer's connection. Iterators must be consumed inside ``work``."""
        ...


class Index(Protocol):
    """The central's index: stations and readers, the stations' accepted ledgers and checkpoints, items
    with their officer/device/case folds and metadata history, rejections and the access log.

    Methods named ``insert_*`` and :meth:`apply_tag` write in the caller's transaction (the registrar's,
    which also appends the Merkle leaf); the others that write run their own. Arguments are validated
    and damaged rows raise :class:`edge.central.index.CentralIndexError`.
    """

    @property
    def unit(self) -> UnitOfWork:
        """The unit of work this index writes in (shared with the log store of the same database)."""
        ...

    def transaction(self) -> AbstractContextManager[object]:
        """``self.unit.transaction()``."""
        ...

    def close(self) -> None: ...

    def snapshot(self) -> AbstractContextManager[Index]:
        """A read-only view of the index as it is now, usable from a worker thread: one consistent state
        for a long read (a disclosure package's plan) that must not hold the event loop."""
        ...

    # stations and readers
    def enroll_station(self, station_id: str, signing_public_key_b64: str, cert_sha256: str) -> None: ...
    def revoke_station(self, station_id: str, reason: str) -> None: ...
    def station(self, station_id: str) -> StationRecord | None: ...
    def stations(self) -> list[StationRecord]: ...
    def station_keys(self, station_id: str) -> dict[str, Ed25519PublicKey]: ...
    def enroll_reader(self, name: str, cert_sha256: str) -> None: ...
    def revoke_reader(self, name: str, reason: str) -> None: ...
    def reader(self, name: str) -> ReaderRecord | None: ...

    # station ledgers
    def ledger_head(self, station_id: str) -> tuple[int, str]: ...
    def ledger_entry(self, station_id: str, seq: int) -> LedgerEntry | None: ...
    def ledger_item_last(self, station_id: str, item: str) -> tuple[int, str] | None:
        """``(seq, hash)`` of the station's last accepted entry of ``item``, None when there is none."""
        ...

    def ledger_entries(
        self,
        station_id: str,
        start_seq: int = 1,
        *,
        end_seq: int | None = None,
        item: str | None = None,
        type_: str | None = None,
    ) -> Iterator[LedgerEntry]: ...

    def insert_ledger_entries(
        self, station_id: str, entries: Sequence[LedgerEntry], accepted_utc: str
    ) -> None: ...

    def insert_checkpoint(self, cp: Checkpoint, accepted_utc: str) -> None: ...
    def latest_checkpoint(self, station_id: str) -> Checkpoint | None: ...
    def checkpoint_at_or_after(self, station_id: str, seq: int) -> Checkpoint | None: ...
    def checkpoints(
        self, station_id: str, start_seq: int = 1, end_seq: int | None = None
    ) -> list[Checkpoint]: ...

    # items
    def item(self, item: str) -> ItemRecord | None: ...

    def insert_item(
        self, manifest: Mapping[str, Any], *, station_id: str, leaf_index: int, accepted_utc: str
    ) -> ItemRecord: ...

    def apply_tag(self, station_id: str, entry: LedgerEntry, recorded_utc: str) -> bool: ...
    def metadata_history(self, item: str) -> list[dict[str, Any]]: ...

    # object locks the store has not confirmed yet (PendingLock; SQL in edge.central.sql.lock_extensions)
    def want_lock(self, item: str, sha256: str, retention: Retention, requested_utc: str) -> PendingLock:
        """Record the lock ``item``'s content needs, in the caller's transaction (merged: never shorter)."""
        ...

    def pending_locks(self, limit: int = 1000) -> list[PendingLock]: ...
    def pending_lock_count(self) -> int: ...
    def lock_done(self, lock: PendingLock) -> bool: ...
    def lock_failed(self, item: str, error: str, attempted_utc: str) -> None: ...
    def current_case(self, item: str) -> dict[str, Any]: ...
    def query_items(
        self, query: ItemQuery, scope: ReaderScope
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """Only items ``scope`` may see (:class:`edge.central.index.ReaderScope`), filtered in the query."""
        ...

    def item_unit(self, item: str) -> str | None: ...
    def item_visible(self, item: str, scope: ReaderScope) -> bool: ...

    # audit trails
    def record_rejection(
        self,
        *,
        station: str | None,
        code: str,
        detail: str,
        remote: str | None = None,
        item: str | None = None,
        upload: str | None = None,
    ) -> None: ...

    def rejections(self, station: str | None = None) -> list[dict[str, Any]]: ...

    def log_access(
        self, *, reader: str, what: str, item: str | None, query: str | None, remote: str | None
    ) -> int:
        """Append an access-log row in its own transaction; returns its id."""
        ...

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
    ) -> list[dict[str, Any]]: ...


class SessionRows(Protocol):
    """Console sessions, by an HMAC of their token, each row sealed (edge.central.console.sessions)."""

    def put_session(self, key: bytes, reader: str, method: str, cert_sha256: str | None, *, created_s: float,
                    expires_s: float, max_sessions: int, mac: str) -> None: ...
    def session(self, key: bytes) -> dict[str, Any] | None: ...
    def touch_session(self, key: bytes, last_seen_s: float, *, mac: str,
                      last_seen_before_s: float) -> bool: ...
    def end_session(self, key: bytes) -> bool: ...
    def end_sessions_of(self, reader: str) -> int: ...
    def purge_sessions(self, *, idle_before_s: float, now_s: float) -> int: ...
    def session_count(self) -> int: ...


class ConsoleStore(SessionRows, Protocol):
    """What the auditor console keeps: password accounts, reader grants (role and units), the unit of each
    station, sensitive markings with their named readers, and the byte ranges served per playback. Every
    change is also appended to an event table (who, when, why); methods run their own transactions."""

    # accounts
    def account(self, name: str) -> AccountRecord | None: ...
    def create_account(self, name: str, password_hash: str, *, by: str) -> None: ...
    def set_password(self, name: str, password_hash: str, *, by: str) -> None: ...
    def set_totp(self, name: str, secret: str | None, *, by: str) -> None: ...
    def set_account_active(self, name: str, active: bool, *, by: str, reason: str) -> None: ...
    def totp_secrets(self) -> list[tuple[str, str]]: ...
    def accounts_without_totp(self) -> list[str]: ...
    def seal_totp_secret(self, name: str, stored_before: str, sealed: str, *, by: str) -> bool: ...
    def record_totp_refused(self, name: str, *, remote: str | None, detail: str) -> None: ...
    def scrub_replaced(self) -> bool: ...
    def seal_trails(self, trail_key: bytes) -> int: ...
    def trail_key_fits(self, trail_key: bytes) -> bool | None: ...
    def trail_seals_state(self) -> tuple[bool, bool]: ...

    def record_sign_in(self, name: str, *, ok: bool, remote: str | None, now: str, lock_after: int,
                       lock_until: str, totp_step: int | None = None, counts: bool = True) -> bool: ...

    def account_events(self, name: str) -> list[dict[str, Any]]: ...

    # grants and units
    def grant(self, name: str, role: Role, units: Iterable[str], *, by: str, reason: str) -> ReaderGrant: ...
    def revoke_grant(self, name: str, *, by: str, reason: str) -> None: ...
    def grant_of(self, name: str) -> ReaderGrant | None: ...
    def grant_events(self, name: str | None = None) -> list[dict[str, Any]]: ...
    def assign_station_unit(self, station: str, unit: str, *, by: str, reason: str) -> None: ...
    def station_unit(self, station: str) -> str | None: ...

    # sensitivity
    def mark_sensitive(self, item: str, readers: Iterable[str], *, by: str, reason: str,
                       remote: str | None) -> None: ...

    def unmark_sensitive(self, item: str, *, by: str, reason: str, remote: str | None) -> None: ...
    def sensitivity(self, item: str) -> dict[str, Any] | None: ...
    def sensitivity_events(self, item: str) -> list[dict[str, Any]]: ...

    # media playback
    def log_media_range(self, access_id: int, first_byte: int, last_byte: int) -> None: ...



class EquipmentRows(Protocol):
    """The agency's equipment at the central (:mod:`edge.central.equipment`): every officer-list version the
    central issued, append-only and numbered 1, 2, 3... without a gap, and the latest fleet report of each
    station. Every receiver sharing the database sees the same versions. Methods run their own
    transactions; values come back as stored (``edge verify`` checks the signatures)."""

    def issue_officer_list(self, sign: Callable[[int], IssuedList]) -> IssuedList:
        """In one transaction under the writer lock (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's advisory
        lock across receivers): ``sign(version)`` for the next version (one more than the newest) and keep
        what it returns, so that two issuers never sign the same number. What ``sign`` raises rolls the
        transaction back and is raised; a returned version other than the one asked for is refused."""
        ...

    def newest_officer_list(self) -> IssuedList | None: ...
    def officer_lists(self) -> list[IssuedList]:
        """Every version issued, oldest first."""
        ...

    def keep_fleet_report(self, station: str, received_utc: str, report: bytes) -> None:
        """Keep ``report`` (canonical JSON, checked by the caller) as the station's latest, replacing its
        previous one."""
        ...

    def fleet_reports(self) -> list[tuple[str, str, bytes]]:
        """``(station, received_utc, report)`` of the latest report of each station, by station."""
        ...


class LogStore(Protocol):
    """Where the Merkle log keeps its leaves, complete-subtree nodes, signed tree heads and RFC 3161
    time-stamps. Append-only: nothing is ever updated or deleted. Values come back as stored."""

    @property
    def unit(self) -> UnitOfWork:
        """The unit of work this store writes in (shared with the index of the same database)."""
        ...

    # leaves and nodes
    def last_leaf_index(self) -> object:
        """The highest leaf index stored (None for an empty log)."""
        ...

    def leaf_hash(self, index: int) -> object:
        """The stored leaf hash at ``index``, None when there is no such leaf."""
        ...

    def leaf_entry(self, index: int) -> object:
        """The stored leaf entry (canonical JSON text) at ``index``, None when there is no such leaf."""
        ...

    def node_hash(self, level: int, index: int) -> object:
        """The stored hash of complete subtree ``index`` of ``2**level`` leaves, None when absent."""
        ...

    def append_leaf(self, index: int, entry: str, leaf_hash: bytes) -> None:
        """Store leaf ``index`` (which must be the number of leaves); :class:`LogStoreConflict` if not."""
        ...

    def append_node(self, level: int, index: int, node_hash: bytes) -> None:
        """Store a complete subtree's hash; :class:`LogStoreConflict` when it is stored or incomplete."""
        ...

    def leaves(self) -> Iterator[tuple[object, object, object]]:
        """Every stored ``(index, entry, leaf_hash)`` in index order (streamed)."""
        ...

    def nodes(self, level: int) -> Iterator[tuple[object, object]]:
        """Every stored ``(index, hash)`` of one level in index order (streamed)."""
        ...

    def nodes_outside(self, lowest: int, highest: int) -> Iterator[tuple[object, object]]:
        """``(level, index)`` of stored nodes whose level is below ``lowest`` or above ``highest``."""
        ...

    # signed tree heads
    def latest_head(self) -> tuple[object, ...] | None:
        """The newest head's values in :data:`edge.custody.receipt.TREE_HEAD_FIELDS` order."""
        ...

    def heads(self, *, by_size: bool = False) -> Iterator[tuple[object, ...]]:
        """``(id, *TREE_HEAD_FIELDS)`` of every head in signing order (ids 1, 2, 3...), or by tree size
        then id."""
        ...

    def append_head(self, head: TreeHead) -> int:
        """Store a signed head after the previous one; returns its id. :class:`LogStoreConflict` when it
        covers fewer leaves than the previous head or more than the log."""
        ...

    def head_signed(self, tree_size: int, root_hash: str) -> bool:
        """Whether a head of this size and root was stored."""
        ...

    # RFC 3161 time-stamps of checkpoints (edge.central.timestamp)
    def newest_head_unstamped(self) -> tuple[int, TreeHead] | None:
        """The newest head with its id when it has no time-stamp yet; None when it has one (or there is
        no head)."""
        ...

    def append_timestamp(
        self, head_id: int, head: TreeHead, note: str, token: bytes, gen_time: str, stamped_utc: str
    ) -> None: ...


class CentralDatabase(UnitOfWork, Protocol):
    """A backend: the unit of work with the index and the log store built on it."""

    @property
    def index(self) -> Index: ...

    @property
    def log_store(self) -> LogStore: ...

    @property
    def console(self) -> ConsoleStore: ...

    @property
    def equipment(self) -> EquipmentRows: ...

    def close(self) -> None: ...
