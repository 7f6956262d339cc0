"""Group commit and shared directory fsyncs: fewer fsyncs, never a state acted on before it is durable."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.custody.errors import LedgerError
from edge.custody.ledger import EntryType
from edge.durable import files
from edge.durable.files import DirectorySync
from edge.ingest.commit import GroupCommit
from edge.ingest.copy import StoreFullError
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def entries(store: StationStore, type_: str) -> list[str | None]:
    return [e.item for e in store.ledger.entries() if e.type == type_]


async def test_transitions_submitted_together_share_one_transaction(store: StationStore) -> None:
    repository = IngestRepository(store)
    commits = GroupCommit(store)
    items = [f"item-{n}" for n in range(20)]
    await asyncio.gather(
        *(commits.run(functools.partial(repository.entry, EntryType.ERROR, item, {"n": 1})) for item in items)
    )
    assert commits.transactions == 1 and commits.transitions == 20
    assert entries(store, EntryType.ERROR) == items
    assert store.ledger.verify() == []


async def test_a_failing_transition_is_rolled_back_alone(store: StationStore) -> None:
    repository = IngestRepository(store)
    commits = GroupCommit(store)

    def half_done_then_broken() -> None:
        repository.entry(EntryType.ERROR, "broken", {"n": 1})  # appended, then rolled back
        repository.entry("Not A Type", "broken", {})

    results = await asyncio.gather(
        commits.run(lambda: repository.entry(EntryType.ERROR, "first", {})),
        commits.run(half_done_then_broken),
        commits.run(lambda: repository.entry(EntryType.ERROR, "last", {})),
        return_exceptions=True,
    )
    assert isinstance(results[1], LedgerError)
    assert commits.transactions == 1
    assert entries(store, EntryType.ERROR) == ["first", "last"], "nothing of the broken one is left"
    assert store.ledger.verify() == []


async def test_no_caller_resumes_before_the_log_is_fsynced(
    store: StationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    syncing = asyncio.Event()
    release = threading.Event()
    real_sync = store.sync_log

    def slow_sync() -> None:
        loop.call_soon_threadsafe(syncing.set)
        assert release.wait(10)
        real_sync()

    monkeypatch.setattr(store, "sync_log", slow_sync)
    repository = IngestRepository(store)
    commits = GroupCommit(store)
    caller = asyncio.create_task(commits.run(lambda: repository.entry(EntryType.ERROR, "x", {})))
    sync_started = asyncio.create_task(syncing.wait())
    await asyncio.wait({caller, sync_started}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    try:
        # Committed (visible to the connection), but the log is not yet on the disk: the caller waits.
        assert sync_started.done() and not caller.done()
        assert entries(store, EntryType.ERROR) == ["x"]
    finally:
        release.set()
    await caller
    assert commits.syncs == 1


async def test_a_failed_log_sync_fails_every_caller_of_that_group(
    store: StationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_sync() -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "sync_log", broken_sync)
    repository = IngestRepository(store)
    commits = GroupCommit(store)
    results = await asyncio.gather(
        *(commits.run(lambda: repository.entry(EntryType.ERROR, "x", {})) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, OSError) for r in results)


def test_the_stores_own_transactions_sync_the_log(
    store: StationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(store, "sync_log", lambda: synced.append(store.ledger.head()[0]))
    entry = store.record(EntryType.ERROR, None, {"n": 1})
    assert synced == [entry.seq], "synced after the commit that holds the entry"
    with pytest.raises(RuntimeError), store.transaction():
        store.ledger.append(EntryType.ERROR, None, {"n": 2})
        raise RuntimeError("rolled back")
    assert synced == [entry.seq], "nothing to sync after a rollback"


def test_renames_into_one_directory_share_an_fsync_that_started_after_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[threading.Event] = [threading.Event(), threading.Event()]
    finish: list[threading.Event] = [threading.Event(), threading.Event()]
    calls: list[int] = []

    def fake_fsync(path: Path) -> None:
        number = len(calls)
        calls.append(number)
        started[number].set()
        assert finish[number].wait(10)

    monkeypatch.setattr(files, "fsync_dir", fake_fsync)
    syncs = DirectorySync()
    returned: dict[str, int] = {}

    def request(name: str) -> None:
        syncs.sync(tmp_path)
        returned[name] = len(calls)

    first = threading.Thread(target=request, args=("first",))
    first.start()
    assert started[0].wait(10)  # fsync #0 is running for the first request
    late = [threading.Thread(target=request, args=(name,)) for name in ("second", "third")]
    for thread in late:
        thread.start()
    # Both late requests are registered (they have no event of their own to wait on) ...
    deadline = time.monotonic() + 10
    while syncs._requested.get(tmp_path) != 3:
        assert time.monotonic() < deadline, "the late requests never registered"
        time.sleep(0.001)
    finish[0].set()
    first.join(10)
    assert returned == {"first": 1}
    # The two requests made while fsync #0 ran need one more, which they share.
    assert started[1].wait(10)
    assert set(returned) == {"first"}, "fsync #0 started before their renames: it does not cover them"
    finish[1].set()
    for thread in late:
        thread.join(10)
    assert calls == [0, 1] and returned == {"first": 1, "second": 2, "third": 2}


async def test_a_full_disk_met_by_the_commit_is_a_store_full_error(store: StationStore) -> None:
    """Another bay can fill the disk between a copy's ENOSPC and the reserve's release: the group commit
    then meets SQLite's own "database or disk is full", which must reach the run as StoreFullError (it
    stops as "station disk full"), not as a bare sqlite3 error that escapes the run."""
    repository = IngestRepository(store)
    commits = GroupCommit(store)
    await commits.run(lambda: repository.entry(EntryType.ERROR, "control", {"n": 1}))  # control: room
    # A real SQLITE_FULL: the database may not grow past the pages it has.
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    big = {"n": "x" * 200_000}
    with pytest.raises(StoreFullError, match="station disk is full") as raised:
        await commits.run(lambda: repository.entry(EntryType.ERROR, "too-big", big))
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert entries(store, EntryType.ERROR) == ["control"]
    # Other failures pass through as they are.
    with pytest.raises(LedgerError):
        await commits.run(lambda: repository.entry("Not A Type", "x", {}))
