"""The central reaches its database only through the storage protocols, and honours another implementation.

A second implementation here wraps the SQLite one: it counts every call and can fail in the middle of an
acceptance (after the Merkle leaf is appended and before the item rows are written, after both, or while
the receipt's tree head is signed). Because the registrar and the service see nothing but the protocols,
the failure happens where the wrapper says, and the shared unit of work must leave neither the item nor
its leaf behind; the same registration, unarmed, is then accepted at the leaf the failure did not keep.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from edge.central.config import CentralConfig
from edge.central.index import ItemQuery, ItemRecord, ReaderRecord, ReaderScope, StationRecord
from edge.central.log import MerkleLog
from edge.central.objects import FileObjectStore, Retention
from edge.central.registration import Caller, Registrar
from edge.central.service import start_central
from edge.central.sqlite import SqliteDatabase
from edge.central.storage import (
    CentralDatabase,
    ConsoleStore,
    EquipmentRows,
    Index,
    LogStore,
    PendingLock,
    Readers,
    UnitOfWork,
)
from edge.central.tus_store import TusUploadStore
from edge.custody.keys import StationKey
from edge.custody.ledger import Checkpoint, LedgerEntry
from edge.custody.receipt import TreeHead, verify_receipt
from tests.central.conftest import FakeStation, central_config, enroll, get_json, register_over_http

ORIGIN = "central-test"


_T = TypeVar("_T")

class PowerCut(Exception):
    """The failure a wrapper injects (stands for a crash, a lost connection, a full disk)."""


class Hooks:
    """Counts calls by method name and fails the one named by :meth:`arm` (once)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._armed: str | None = None

    def arm(self, point: str) -> None:
        self._armed = point

    def hit(self, point: str) -> None:
        self.calls[point] += 1
        if self._armed == point:
            self._armed = None
            raise PowerCut(f"injected failure at {point}")


class WrappedIndex:
    """A second :class:`Index`: every call goes to the SQLite index, counted; ``insert_item`` can fail
    before it writes (``insert_item:before``) or after (``insert_item:after``)."""

    def __init__(self, inner: Index, hooks: Hooks) -> None:
        self._inner = inner
        self._hooks = hooks

    @property
    def unit(self) -> UnitOfWork:
        return self._inner.unit

    def transaction(self) -> AbstractContextManager[object]:
        self._hooks.hit("transaction")
        return self._inner.transaction()

    def close(self) -> None:
        self._inner.close()

    @contextmanager
    def snapshot(self) -> Iterator[Index]:
        """The inner index's snapshot, wrapped too: reads on it still go through this backend."""
        self._hooks.hit("snapshot")
        with self._inner.snapshot() as inner:
            yield WrappedIndex(inner, self._hooks)

    def enroll_station(self, station_id: str, signing_public_key_b64: str, cert_sha256: str) -> None:
        self._hooks.hit("enroll_station")
        self._inner.enroll_station(station_id, signing_public_key_b64, cert_sha256)

    def revoke_station(self, station_id: str, reason: str) -> None:
        self._inner.revoke_station(station_id, reason)

    def station(self, station_id: str) -> StationRecord | None:
        self._hooks.hit("station")
        return self._inner.station(station_id)

    def stations(self) -> list[StationRecord]:
        return self._inner.stations()

    def station_keys(self, station_id: str) -> dict[str, Ed25519PublicKey]:
        self._hooks.hit("station_keys")
        return self._inner.station_keys(station_id)

    def enroll_reader(self, name: str, cert_sha256: str) -> None:
        self._inner.enroll_reader(name, cert_sha256)

    def revoke_reader(self, name: str, reason: str) -> None:
        self._inner.revoke_reader(name, reason)

    def reader(self, name: str) -> ReaderRecord | None:
        self._hooks.hit("reader")
        return self._inner.reader(name)

    def ledger_head(self, station_id: str) -> tuple[int, str]:
        self._hooks.hit("ledger_head")
        return self._inner.ledger_head(station_id)

    def ledger_entry(self, station_id: str, seq: int) -> LedgerEntry | None:
        self._hooks.hit("ledger_entry")
        return self._inner.ledger_entry(station_id, seq)

    def ledger_item_last(self, station_id: str, item: str) -> tuple[int, str] | None:
        self._hooks.hit("ledger_item_last")
        return self._inner.ledger_item_last(station_id, item)

    def ledger_entries(
        self,
        station_id: str,
        start_seq: int = 1,
        *,
        end_seq: int | None = None,
        item: str | None = None,
        type_: str | None = None,
    ) -> Iterator[LedgerEntry]:
        self._hooks.hit("ledger_entries")
        return self._inner.ledger_entries(station_id, start_seq, end_seq=end_seq, item=item, type_=type_)

    def insert_ledger_entries(
        self, station_id: str, entries: Sequence[LedgerEntry], accepted_utc: str
    ) -> None:
        self._hooks.hit("insert_ledger_entries")
        self._inner.insert_ledger_entries(station_id, entries, accepted_utc)

    def insert_checkpoint(self, cp: Checkpoint, accepted_utc: str) -> None:
        self._hooks.hit("insert_checkpoint")
        self._inner.insert_checkpoint(cp, accepted_utc)

    def latest_checkpoint(self, station_id: str) -> Checkpoint | None:
        return self._inner.latest_checkpoint(station_id)

    def checkpoint_at_or_after(self, station_id: str, seq: int) -> Checkpoint | None:
        return self._inner.checkpoint_at_or_after(station_id, seq)

    def checkpoints(
        self, station_id: str, start_seq: int = 1, end_seq: int | None = None
    ) -> list[Checkpoint]:
        return self._inner.checkpoints(station_id, start_seq, end_seq)

    def item(self, item: str) -> ItemRecord | None:
        self._hooks.hit("item")
        return self._inner.item(item)

    def insert_item(
        self, manifest: Mapping[str, Any], *, station_id: str, leaf_index: int, accepted_utc: str
    ) -> ItemRecord:
        self._hooks.hit("insert_item:before")
        record = self._inner.insert_item(manifest, station_id=station_id, leaf_index=leaf_index,
                                         accepted_utc=accepted_utc)
        self._hooks.hit("insert_item:after")
        return record

    def apply_tag(self, station_id: str, entry: LedgerEntry, recorded_utc: str) -> bool:
        return self._inner.apply_tag(station_id, entry, recorded_utc)

    def want_lock(self, item: str, sha256: str, retention: Retention, requested_utc: str) -> PendingLock:
        self._hooks.hit("want_lock")
        return self._inner.want_lock(item, sha256, retention, requested_utc)

    def pending_locks(self, limit: int = 1000) -> list[PendingLock]:
        self._hooks.hit("pending_locks")
        return self._inner.pending_locks(limit)

    def pending_lock_count(self) -> int:
        return self._inner.pending_lock_count()

    def lock_done(self, lock: PendingLock) -> bool:
        return self._inner.lock_done(lock)

    def lock_failed(self, item: str, error: str, attempted_utc: str) -> None:
        self._inner.lock_failed(item, error, attempted_utc)

    def metadata_history(self, item: str) -> list[dict[str, Any]]:
        self._hooks.hit("metadata_history")
        return self._inner.metadata_history(item)

    def current_case(self, item: str) -> dict[str, Any]:
        self._hooks.hit("current_case")
        return self._inner.current_case(item)

    def query_items(
        self, query: ItemQuery, scope: ReaderScope
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        self._hooks.hit("query_items")
        return self._inner.query_items(query, scope)

    def item_unit(self, item: str) -> str | None:
        self._hooks.hit("item_unit")
        return self._inner.item_unit(item)

    def item_visible(self, item: str, scope: ReaderScope) -> bool:
        self._hooks.hit("item_visible")
        return self._inner.item_visible(item, scope)

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
        self._hooks.hit("record_rejection")
        self._inner.record_rejection(station=station, code=code, detail=detail, remote=remote, item=item,
                                     upload=upload)

    def rejections(self, station: str | None = None) -> list[dict[str, Any]]:
        return self._inner.rejections(station)

    def log_access(
        self, *, reader: str, what: str, item: str | None, query: str | None, remote: str | None
    ) -> int:
        self._hooks.hit("log_access")
        return self._inner.log_access(reader=reader, what=what, item=item, query=query, remote=remote)

    def access_log(self, **filters: Any) -> list[dict[str, Any]]:
        return self._inner.access_log(**filters)


class WrappedLogStore:
    """A second :class:`LogStore`: counted calls to the SQLite store; ``append_leaf`` can fail after the
    leaf row is written (``append_leaf:after``), ``append_head`` before the head is (``append_head``)."""

    def __init__(self, inner: LogStore, hooks: Hooks) -> None:
        self._inner = inner
        self._hooks = hooks

    @property
    def unit(self) -> UnitOfWork:
        return self._inner.unit

    def last_leaf_index(self) -> object:
        self._hooks.hit("last_leaf_index")
        return self._inner.last_leaf_index()

    def leaf_hash(self, index: int) -> object:
        self._hooks.hit("leaf_hash")
        return self._inner.leaf_hash(index)

    def leaf_entry(self, index: int) -> object:
        self._hooks.hit("leaf_entry")
        return self._inner.leaf_entry(index)

    def node_hash(self, level: int, index: int) -> object:
        self._hooks.hit("node_hash")
        return self._inner.node_hash(level, index)

    def append_leaf(self, index: int, entry: str, leaf_hash: bytes) -> None:
        self._hooks.hit("append_leaf")
        self._inner.append_leaf(index, entry, leaf_hash)
        self._hooks.hit("append_leaf:after")

    def append_node(self, level: int, index: int, node_hash: bytes) -> None:
        self._hooks.hit("append_node")
        self._inner.append_node(level, index, node_hash)

    def leaves(self) -> Iterator[tuple[object, object, object]]:
        return self._inner.leaves()

    def nodes(self, level: int) -> Iterator[tuple[object, object]]:
        return self._inner.nodes(level)

    def nodes_outside(self, lowest: int, highest: int) -> Iterator[tuple[object, object]]:
        return self._inner.nodes_outside(lowest, highest)

    def latest_head(self) -> tuple[object, ...] | None:
        self._hooks.hit("latest_head")
        return self._inner.latest_head()

    def heads(self, *, by_size: bool = False) -> Iterator[tuple[object, ...]]:
        return self._inner.heads(by_size=by_size)

    def append_head(self, head: TreeHead) -> int:
        self._hooks.hit("append_head")
        return self._inner.append_head(head)

    def head_signed(self, tree_size: int, root_hash: str) -> bool:
        return self._inner.head_signed(tree_size, root_hash)

    def newest_head_unstamped(self) -> tuple[int, TreeHead] | None:
        return self._inner.newest_head_unstamped()

    def append_timestamp(
        self, head_id: int, head: TreeHead, note: str, token: bytes, gen_time: str, stamped_utc: str
    ) -> None:
        self._inner.append_timestamp(head_id, head, note, token, gen_time, stamped_utc)


class WrappedDatabase:
    """A second :class:`CentralDatabase`: the SQLite database with both protocols wrapped."""

    def __init__(self, inner: SqliteDatabase, hooks: Hooks) -> None:
        self._inner = inner
        self._index = WrappedIndex(inner.index, hooks)
        self._log_store = WrappedLogStore(inner.log_store, hooks)

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        return self._inner.errors

    def transaction(self) -> AbstractContextManager[object]:
        return self._inner.transaction()

    async def run_writes(self, work: Callable[[], _T]) -> _T:
        return await self._inner.run_writes(work)

    async def run_reads(self, work: Callable[[], _T], readers: Readers = Readers.CONSOLE) -> _T:
        return await self._inner.run_reads(work, readers)

    @property
    def index(self) -> Index:
        return self._index

    @property
    def log_store(self) -> LogStore:
        return self._log_store

    @property
    def console(self) -> ConsoleStore:
        # The console's accounts and markings: not what this test counts, served by the same database.
        return self._inner.console

    @property
    def equipment(self) -> EquipmentRows:
        # The officer lists and fleet reports: not what this test counts, served by the same database.
        return self._inner.equipment

    def close(self) -> None:
        self._inner.close()


def _assemble(
    root: Path, database: CentralDatabase
) -> tuple[Registrar, MerkleLog, TusUploadStore, StationKey]:
    key = StationKey.generate()
    merkle = MerkleLog(database.log_store, key, ORIGIN)
    uploads = TusUploadStore(root / "uploads", max_size_bytes=1 << 30, expire_after_s=3600)
    registrar = Registrar(database.index, FileObjectStore(root / "objects"), merkle, uploads, signing_key=key,
                          central_id=ORIGIN)
    return registrar, merkle, uploads, key


def _upload(uploads: TusUploadStore, station_id: str, data: bytes) -> str:
    info = uploads.create(station_id, len(data))
    write = uploads.begin_write(info.upload_id, offset=0)
    try:
        write.write(data)
        write.finish()
    finally:
        write.close()
    return info.upload_id


@pytest.fixture
def wrapped(tmp_path: Path) -> Iterator[tuple[WrappedDatabase, Hooks]]:
    hooks = Hooks()
    database = WrappedDatabase(SqliteDatabase.open(tmp_path / "central" / "index.db"), hooks)
    yield database, hooks
    database.close()


# A failure at each of these points of an acceptance (all inside the registrar's one transaction).
FAILURE_POINTS = {
    "append_leaf:after": "the leaf is written, the item rows are not yet",
    "insert_item:before": "between the leaf append and the index write",
    "insert_item:after": "the leaf and the item rows are written, the receipt is not yet made",
    "append_head": "while the receipt's tree head is signed, after both writes",
}


@pytest.mark.parametrize("point", sorted(FAILURE_POINTS))
async def test_a_failure_mid_acceptance_leaves_neither_the_item_nor_its_leaf(
    wrapped: tuple[WrappedDatabase, Hooks], station: FakeStation, tmp_path: Path, point: str
) -> None:
    database, hooks = wrapped
    registrar, merkle, uploads, key = _assemble(tmp_path / "central", database)
    enroll(database.index, station)
    record = database.index.station(station.station_id)
    assert record is not None
    caller = Caller(record, "127.0.0.1")
    first = station.acquire(b"first item, accepted before the failure")
    await registrar.register_item(caller, station.station_id, {
        "upload": _upload(uploads, station.station_id, first.content), "manifest": first.manifest,
        "ledger": station.segment(0),
    })
    head_before = merkle.latest_tree_head()
    assert merkle.size() == 1 and head_before is not None

    second = station.acquire(b"second item, whose acceptance fails half-way " * 100)
    body = {"upload": _upload(uploads, station.station_id, second.content), "manifest": second.manifest,
            "ledger": station.segment(1)}
    hooks.arm(point)
    with pytest.raises(PowerCut, match=point):
        await registrar.register_item(caller, station.station_id, body)

    # Neither the item rows nor the leaf (nor a node or head over it) survived, in any view.
    assert hooks.calls[point] >= 1, f"the registrar never reached {point}: it bypassed the protocols"
    assert database.index.item(second.item) is None
    assert database.index.metadata_history(second.item) == []
    assert merkle.size() == 1
    assert database.log_store.leaf_entry(1) is None
    assert merkle.latest_tree_head() == head_before
    assert merkle.verify() == []
    reopened = SqliteDatabase.open_readonly(tmp_path / "central" / "index.db")
    try:
        assert reopened.index.item(second.item) is None and reopened.log_store.last_leaf_index() == 0
    finally:
        reopened.close()

    # Control: the same registration, with nothing armed, is accepted at the leaf the failure left free.
    registered = await registrar.register_item(caller, station.station_id, body)
    accepted = database.index.item(second.item)
    assert accepted is not None and accepted.leaf_index == registered.receipt.leaf_index == 1
    assert merkle.size() == 2 and merkle.verify() == []
    assert verify_receipt(registered.receipt.to_dict(), key.public_key(), expected_item=second.item,
                          expected_sha256=second.sha256, expected_station=station.station_id) == []


def test_the_registrar_refuses_a_log_that_does_not_share_the_index_unit_of_work(tmp_path: Path) -> None:
    one = SqliteDatabase.open(tmp_path / "one.db")
    other = SqliteDatabase.open(tmp_path / "other.db")
    try:
        key = StationKey.generate()
        uploads = TusUploadStore(tmp_path / "uploads", max_size_bytes=1 << 20, expire_after_s=3600)
        objects = FileObjectStore(tmp_path / "objects")
        with pytest.raises(ValueError, match="share one unit of work"):
            Registrar(one.index, objects, MerkleLog(other.log_store, key, ORIGIN), uploads)
        # Control: the index and the log store of one database are accepted together.
        Registrar(one.index, objects, MerkleLog(one.log_store, key, ORIGIN), uploads)
    finally:
        one.close()
        other.close()


async def test_the_service_reads_and_writes_only_through_the_backend_it_is_given(
    tmp_path: Path, station: FakeStation
) -> None:
    """The running central (HTTP, registration, read side, log endpoints) with the wrapped backend: every
    kind of work shows up in the wrapper's counts, so none of it took another way to the database."""
    hooks = Hooks()
    opened: list[WrappedDatabase] = []

    def open_database(config: CentralConfig) -> CentralDatabase:
        database = WrappedDatabase(SqliteDatabase.open(config.layout.index_db), hooks)
        opened.append(database)
        return database

    config = central_config(tmp_path / "central-store", dev=True)
    running = await start_central(config, signing_key=StationKey.generate(), open_database=open_database)
    try:
        assert len(opened) == 1
        index = opened[0].index
        enroll(index, station)
        index.enroll_reader("aud", "c" * 64)
        acquired = station.acquire(b"content through the wrapped backend")
        async with aiohttp.ClientSession() as session:
            status, doc = await register_over_http(session, running.url, station, acquired,
                                                   {DEV_STATION_HEADER: station.station_id})
            assert status == 201, doc
            status, item = await get_json(session, f"{running.url}/v1/items/{acquired.item}",
                                          {DEV_READER_HEADER: "aud"})
            assert status == 200 and item["item"] == acquired.item, item
            status, head = await get_json(session, f"{running.url}/v1/log/tree-head",
                                          {DEV_STATION_HEADER: station.station_id})
            assert status == 200 and head["tree_size"] == 1, head
    finally:
        await running.stop()
    for call in ("station", "insert_ledger_entries", "insert_checkpoint", "insert_item:after",
                 "item", "log_access", "append_leaf", "append_head", "latest_head", "leaf_entry"):
        assert hooks.calls[call] >= 1, f"the service never called {call} on the backend it was given"

