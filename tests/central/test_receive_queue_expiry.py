"""Review 13, finding 2, at the queue: a queued message carries what was left of its MQTT 5 Message Expiry;
when its turn comes after that passed it is removed unhandled and counted. The judgement is conservative
(a message wrongly taken as expired goes unanswered, one wrongly handled only costs work): a wall clock
stepped forward does not expire a row this process queued before its monotonic deadline, nor does a
clock stepped back before the row's queueing; a row from before a restart (no monotonic deadline left)
goes by its wall-clock deadline. A queue file made before the expiry column keeps its rows. The clocks are
the module's own, replaced here, so that nothing sleeps."""

from __future__ import annotations

import asyncio
import sqlite3
import time as real_time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.central import receive_queue
from edge.central.receive_queue import Admission, Lane, QueuedMessage, QueueRunner, ReceiveQueue, queue_path


@dataclass
class _Clocks:
    wall: float = 1_800_000_000.0
    mono: float = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    strftime = staticmethod(real_time.strftime)
    gmtime = staticmethod(real_time.gmtime)


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> _Clocks:
    fake = _Clocks()
    monkeypatch.setattr(receive_queue, "time", fake)
    return fake


def _open(path: Path) -> ReceiveQueue:
    return ReceiveQueue.open(path, per_station_messages=10, per_station_bytes=1000)


def _insert(queue: ReceiveQueue, payload: bytes, expiry_s: int | None,
            station: str = "st-a") -> QueuedMessage:
    topic = f"evidence/stations/{station}/api/request/tree-head"
    admission, digest = queue.reserve(Lane.API, station, topic, payload)
    assert admission is Admission.ADDED
    queue.insert(Lane.API, station, topic, payload, None, digest, expiry_s)
    queue.queued(Lane.API, station)
    head = queue.head(Lane.API, station)
    assert isinstance(head, QueuedMessage)
    return head


def test_expiry_is_judged_on_both_clocks_and_by_the_wall_clock_after_a_restart(
    tmp_path: Path, clocks: _Clocks
) -> None:
    path = queue_path(tmp_path, "central")
    queue = _open(path)
    try:
        message = _insert(queue, b"x", 10)
        assert message.expires_at == clocks.wall + 10
        assert not queue.expired(message)
        clocks.wall += 3600  # the wall clock stepped forward (NTP); 0 s passed
        assert not queue.expired(message), "a wall clock stepped forward expired a message early"
        clocks.mono += 11  # control: the expiry has really passed
        assert queue.expired(message)
        assert not queue.expired(_insert(queue, b"no expiry", None, "st-b"))
    finally:
        queue.close()
    reopened = _open(path)  # a restart: the monotonic deadlines are gone, the rows keep their wall-clock one
    try:
        found = reopened.head(Lane.API, "st-a")
        assert isinstance(found, QueuedMessage) and found.expires_at is not None
        assert reopened.expired(found)
        clocks.wall = found.queued_at - 1  # the wall clock stepped back before its queueing: cannot tell
        assert not reopened.expired(found)
        clocks.wall = found.expires_at - 1  # before its deadline
        assert not reopened.expired(found)
    finally:
        reopened.close()


async def test_the_runner_removes_an_expired_message_unhandled_and_counts_it(
    tmp_path: Path, clocks: _Clocks
) -> None:
    queue = _open(queue_path(tmp_path, "central"))
    handled: list[bytes] = []
    expired: list[bytes] = []
    done = asyncio.Event()

    async def handler(message: QueuedMessage) -> None:
        handled.append(message.payload)
        if message.payload == b"control":
            done.set()

    runner = QueueRunner(queue, {Lane.API: handler, Lane.CONTENT: handler}, concurrency=1,
                         on_damaged=_no_damage,
                         on_expired=lambda message: expired.append(message.payload))
    topic = "evidence/stations/st-a/api/request/tree-head"
    assert await runner.add(Lane.API, "st-a", topic, b"expires", None, expiry_s=5) is Admission.ADDED
    assert await runner.add(Lane.API, "st-a", topic, b"control", None, expiry_s=5000) is Admission.ADDED
    clocks.wall += 6
    clocks.mono += 6
    task = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(10):
            await done.wait()
            while queue.waiting:
                await asyncio.sleep(0.01)
        assert handled == [b"control"] and expired == [b"expires"] and runner.expired == 1
        assert queue.waiting == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        queue.close()


def test_a_queue_file_from_before_the_expiry_column_keeps_its_rows(tmp_path: Path) -> None:
    path = queue_path(tmp_path, "central")
    queue = _open(path)
    try:
        _insert(queue, b"old", None)
    finally:
        queue.close()
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("ALTER TABLE queued DROP COLUMN expires_at")  # the file as the code before review 13 made it
    old.close()
    reopened = _open(path)
    try:
        message = reopened.head(Lane.API, "st-a")
        assert reopened.set_aside is None and reopened.waiting == 1
        assert isinstance(message, QueuedMessage) and message.payload == b"old" and message.expires_at is None
    finally:
        reopened.close()


async def _no_damage(station: str, detail: str) -> None:
    """The runner's damaged-row report, where no row is damaged."""
