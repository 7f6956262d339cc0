"""Review 13 of the receive queue (edge.central.receive_queue), white-box at its runner.

Finding: the runner's ``concurrency`` slots are shared by both lanes. While ``concurrency`` stations each
have a slow ``fin`` (a whole-file re-hash: seconds to minutes for a large file; at a shift change many
stations finish large files at once), no other station's API request is handled at all, however quick
(``ledger-head``, ``transfer-state``). Such a request was acknowledged into the queue, so the station gets
no busy answer: it waits its ``request_timeout_s`` and counts the request as unanswered (towards
failover), then sends it again under a new request id (another row, handled as well later). The default
is 4 slots (``[mqtt] queue_concurrency``)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from edge.central.mqtt_receiver import QueueSettings
from edge.central.receive_queue import (
    Admission,
    Lane,
    QueuedMessage,
    QueueRunner,
    ReceiveQueue,
    ReceiveQueueError,
    queue_path,
)

# Far more than a queued ledger-head needs (milliseconds), far less than a station's request_timeout_s.
API_WAIT_S = 5.0


async def _api_answered_while_fins_are_slow(tmp_path: Path, slow_stations: int) -> bool:
    """With the default concurrency, ``slow_stations`` stations each have a fin in hand that does not end;
    True when another station's API request is handled meanwhile."""
    concurrency = QueueSettings().concurrency
    queue = ReceiveQueue.open(queue_path(tmp_path, "central"), per_station_messages=64,
                              per_station_bytes=16 << 20)
    release = asyncio.Event()
    fins_in_hand: set[str] = set()
    entered = asyncio.Event()
    api_handled = asyncio.Event()

    async def content(message: QueuedMessage) -> None:
        fins_in_hand.add(message.station)
        if len(fins_in_hand) == slow_stations:
            entered.set()
        await release.wait()  # a fin verifying a large file

    async def api(message: QueuedMessage) -> None:
        api_handled.set()

    runner = QueueRunner(queue, {Lane.CONTENT: content, Lane.API: api}, concurrency=concurrency,
                         on_damaged=_no_damage)
    task = asyncio.create_task(runner.run())
    try:
        for n in range(slow_stations):
            station = f"st-fin-{n}"
            topic = f"evidence/stations/{station}/$file-async/{'a' * 32}.0000000{n}/fin/100/{'0' * 64}"
            assert await runner.add(Lane.CONTENT, station, topic, b"", None) is Admission.ADDED
        async with asyncio.timeout(10):
            await entered.wait()
        assert await runner.add(Lane.API, "st-quick", "evidence/stations/st-quick/api/request/ledger-head",
                                b'{"request_id":"x"}', None) is Admission.ADDED
        try:
            async with asyncio.timeout(API_WAIT_S):
                await api_handled.wait()
        except TimeoutError:
            return False
        return True
    finally:
        release.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        queue.close()


async def test_review13_slow_fins_of_as_many_stations_as_slots_stall_every_other_stations_api(
    tmp_path: Path
) -> None:
    slots = QueueSettings().concurrency
    assert await _api_answered_while_fins_are_slow(tmp_path, slots), (
        f"{slots} stations' slow fins took every slot of the receive queue: another station's quick API "
        f"request was not handled within {API_WAIT_S:g} s (it gets no busy answer; the station counts it "
        "as unanswered and sends it again)")


async def test_review13_control_one_slot_free_serves_the_api(tmp_path: Path) -> None:
    slots = QueueSettings().concurrency
    assert await _api_answered_while_fins_are_slow(tmp_path, slots - 1)


# Finding: ReceiveQueue.open takes every sqlite3.DatabaseError as "not a usable SQLite queue", and
# OperationalError (database is locked, disk I/O error, database or disk is full, unable to open) is one. A
# good queue file met by a passing condition at a start (here: another connection holding its write lock
# past SQLite's 5 s busy wait, as an operator's `sqlite3` session deleting a stuck row would; the same path
# is taken when a full disk refuses its -wal/-shm) is renamed ".damaged-<UTC>", recorded as a
# receive_queue_damaged incident, and a new, empty queue starts: the messages acknowledged into it are never
# handled (the stations only learn by their timeouts), and the incident says damage where there was none.


def _queue_with_one_message(path: Path) -> None:
    queue = ReceiveQueue.open(path, per_station_messages=3, per_station_bytes=100)
    try:
        topic = "evidence/stations/st-a/api/request/tree-head"
        admission, digest = queue.reserve(Lane.API, "st-a", topic, b"acknowledged")
        assert admission is Admission.ADDED
        queue.insert(Lane.API, "st-a", topic, b"acknowledged", None, digest)
    finally:
        queue.close()


def test_review13_a_queue_file_write_locked_at_open_is_not_set_aside_as_damaged(tmp_path: Path) -> None:
    path = queue_path(tmp_path, "central")
    _queue_with_one_message(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # someone else's write transaction, held
    try:
        try:
            queue = ReceiveQueue.open(path, per_station_messages=3, per_station_bytes=100)
        except ReceiveQueueError:
            return  # refusing to start (and trying again) keeps the acknowledged message: acceptable
    finally:
        other.execute("ROLLBACK")
        other.close()
    try:
        assert queue.set_aside is None and queue.waiting == 1, (
            f"a good queue file whose write lock was held at open was set aside as damaged "
            f"({queue.set_aside}); {queue.waiting} message(s) waiting of the 1 acknowledged into it")
    finally:
        queue.close()


def test_review13_control_a_queue_file_free_at_open_keeps_its_message(tmp_path: Path) -> None:
    path = queue_path(tmp_path, "central")
    _queue_with_one_message(path)
    queue = ReceiveQueue.open(path, per_station_messages=3, per_station_bytes=100)
    try:
        assert queue.set_aside is None and queue.waiting == 1
    finally:
        queue.close()


async def _no_damage(station: str, detail: str) -> None:
    """The runner's damaged-row report, where no row is damaged."""
