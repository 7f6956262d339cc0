"""Which listed recordings are sealed (`sealed_downloads_in`, review 22 finding 13): the work is bounded by
the recordings asked, not by how many the device has sealed, and the facts are read from the manifests.

Work is counted as SQLite virtual-machine steps (a progress handler called at every step): deterministic,
no clock. Control: the same device's whole history (no identities given) costs in proportion to it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from edge.ingest.store import StationStore
from edge.sources.gb28181.recordings import SOURCE_KIND, sealed_downloads_in, sealed_downloads_off_loop

DEVICE = "34020000001320000001"


def _identity(n: int) -> str:
    start = f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}"
    return f"34020000001310000001|{start}|2026-01-01T01:00:00|/sd/{n}.mp4"


def _seal(store: StationStore, count: int) -> None:
    with store.transaction():
        for n in range(count):
            item = f"item-{n}"
            original = {"role": "raw-ps", "file_size_bytes": 1000 + n}
            if n % 2:
                original.update(complete=False, incomplete="short", lossy=True, attempt=2)
            store.conn.execute("INSERT INTO acquisitions(source, device, original, version, item, state) "
                               "VALUES (?, ?, ?, ?, ?, 'sealed')",
                               (SOURCE_KIND, DEVICE, _identity(n), "raw-ps#2" if n % 2 else "raw-ps", item))
            store.conn.execute("INSERT INTO items(item, sha256, size, device_serial, acquired, manifest) "
                               "VALUES (?, ?, 1, ?, '2026-01-01T00:00:00Z', ?)",
                               (item, "0" * 64, DEVICE, json.dumps({"original": original})))


def _steps(conn: sqlite3.Connection, query: Callable[[], object]) -> int:
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        query()
    finally:
        conn.set_progress_handler(None, 1)
    return steps


def _work(tmp_path: Path, sealed: int) -> tuple[int, int]:
    store = StationStore(tmp_path / f"store-{sealed}", "TEST-STATION")
    try:
        _seal(store, sealed)
        asked = {_identity(1), _identity(2), "not listed before"}
        found = sealed_downloads_in(store.conn, DEVICE, asked)
        assert sorted(found) == sorted([_identity(1), _identity(2)])
        (odd,), (even,) = found[_identity(1)], found[_identity(2)]
        assert (odd.item, odd.attempt, odd.complete, odd.lossy, odd.incomplete, odd.file_size_listed) == (
            "item-1", 2, False, True, "short", "1001")
        assert (even.attempt, even.complete, even.lossy, even.incomplete, even.file_size_listed) == (
            1, True, False, None, "1002")
        bounded = _steps(store.conn, lambda: sealed_downloads_in(store.conn, DEVICE, asked))
        whole = _steps(store.conn, lambda: sealed_downloads_in(store.conn, DEVICE))
        return bounded, whole
    finally:
        store.close()


def test_the_sealed_recordings_of_a_listing_cost_what_was_asked_not_the_history(tmp_path: Path) -> None:
    small_bounded, small_whole = _work(tmp_path, 20)
    large_bounded, large_whole = _work(tmp_path, 5000)
    assert large_bounded <= small_bounded * 1.5 + 200, (
        f"3 recordings asked: {small_bounded} steps with 20 sealed, {large_bounded} with 5000")
    # Control: the whole history does grow with it (the count above is of the work that matters).
    assert large_whole > 50 * small_whole


async def test_the_off_loop_read_sees_what_is_committed(tmp_path: Path) -> None:
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        _seal(store, 4)
        found = await sealed_downloads_off_loop(store, DEVICE, {_identity(3), _identity(9)})
        assert list(found) == [_identity(3)] and found[_identity(3)][0].item == "item-3"
    finally:
        store.close()
