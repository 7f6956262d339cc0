"""The MQTT receiver's durable receive queue (edge.central.receive_queue) on its own: what it keeps over a
reopen, its bound per station in messages and bytes, duplicates, one process per queue file, a file that
is not a queue, and the runner's order (one message at a time per station, others side by side)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from edge.central.receive_queue import (
    Admission,
    Lane,
    QueueBusy,
    QueuedMessage,
    QueueRunner,
    ReceiveQueue,
    queue_path,
)


def _open(path: Path, *, messages: int = 3, size: int = 100) -> ReceiveQueue:
    return ReceiveQueue.open(path, per_station_messages=messages, per_station_bytes=size)


def _add(queue: ReceiveQueue, station: str, payload: bytes, lane: Lane = Lane.API) -> Admission:
    topic = f"evidence/stations/{station}/api/request/tree-head"
    admission, digest = queue.reserve(lane, station, topic, payload)
    if admission is Admission.ADDED:
        queue.insert(lane, station, topic, payload, None, digest)
        queue.queued(lane, station)
    return admission


def test_what_is_queued_is_there_after_a_reopen_and_the_bound_counts_it(tmp_path: Path) -> None:
    path = queue_path(tmp_path, "central")
    queue = _open(path)
    assert [_add(queue, "st-a", b"%d" % n) for n in range(4)] == [Admission.ADDED] * 3 + [Admission.FULL]
    assert _add(queue, "st-b", b"0") is Admission.ADDED  # the bound is per station
    queue.close()
    reopened = _open(path)
    try:
        assert reopened.waiting_of("st-a") == (3, 3) and reopened.waiting == 4
        assert _add(reopened, "st-a", b"more") is Admission.FULL
        head = reopened.head(Lane.API, "st-a")
        assert isinstance(head, QueuedMessage) and head.payload == b"0"
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    finally:
        reopened.close()


def test_the_bound_in_bytes_and_a_duplicate_of_a_waiting_message(tmp_path: Path) -> None:
    queue = _open(queue_path(tmp_path, "central"), messages=10, size=10)
    try:
        assert _add(queue, "st-a", b"123456") is Admission.ADDED
        assert _add(queue, "st-a", b"123456") is Admission.DUPLICATE  # the broker's redelivery
        assert _add(queue, "st-a", b"12345") is Admission.FULL  # 11 bytes
        assert _add(queue, "st-a", b"1234") is Admission.ADDED  # 10 bytes: room
        assert _add(queue, "st-a", b"123456", Lane.CONTENT) is Admission.FULL  # lanes share the bound
        assert (queue.refused_full, queue.duplicates) == (2, 1)
    finally:
        queue.close()


def test_one_process_per_queue_file(tmp_path: Path) -> None:
    path = queue_path(tmp_path, "worker-w1")
    first = _open(path)
    try:
        with pytest.raises(QueueBusy, match="in use by another process"):
            _open(path)
    finally:
        first.close()
    _open(path).close()  # free again once the first let go


def test_a_file_that_is_not_a_queue_is_set_aside_named_and_a_new_queue_starts(tmp_path: Path) -> None:
    path = queue_path(tmp_path, "central")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not an SQLite database" * 100)
    queue = _open(path)
    try:
        assert queue.set_aside is not None and "not a usable SQLite file" in queue.set_aside
        aside = [p.name for p in path.parent.iterdir() if ".damaged-" in p.name]
        assert len(aside) == 1 and aside[0] in queue.set_aside
        assert _add(queue, "st-a", b"x") is Admission.ADDED
    finally:
        queue.close()
    control = _open(path)  # a good file is not set aside
    try:
        assert control.set_aside is None and control.waiting == 1
    finally:
        control.close()


async def test_the_runner_keeps_each_stations_order_and_serves_others_beside_a_slow_one(
    tmp_path: Path
) -> None:
    queue = _open(queue_path(tmp_path, "central"), messages=50, size=1000)
    release = asyncio.Event()
    handled: list[tuple[str, bytes]] = []
    changed = asyncio.Event()

    async def handler(message: QueuedMessage) -> None:
        if message.payload == b"a0":
            await release.wait()
        handled.append((message.station, message.payload))
        changed.set()

    runner = QueueRunner(queue, {Lane.API: handler, Lane.CONTENT: handler}, concurrency=2,
                         on_damaged=_no_damage)
    task = asyncio.create_task(runner.run())
    try:
        for n in range(5):
            assert await runner.add(Lane.API, "st-a", f"t/st-a/{n}", b"a%d" % n, None) is Admission.ADDED
        for n in range(5):
            assert await runner.add(Lane.API, "st-b", f"t/st-b/{n}", b"b%d" % n, None) is Admission.ADDED
        async with asyncio.timeout(10):
            while len(handled) < 5:
                changed.clear()
                await changed.wait()
        # st-b went on while st-a's first was slow; none of st-a's overtook it.
        assert handled == [("st-b", b"b%d" % n) for n in range(5)]
        release.set()
        async with asyncio.timeout(10):
            while len(handled) < 10 or queue.waiting:
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await changed.wait()
        assert [p for s, p in handled if s == "st-a"] == [b"a%d" % n for n in range(5)]
        assert runner.handled == 10
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        queue.close()


async def test_a_lane_counted_but_empty_in_the_file_is_forgotten_not_offered_for_ever(tmp_path: Path) -> None:
    """White-box: a count without its row (an insert cancelled while its commit ran is counted at the next
    open instead) must not make the runner offer that station again and again. Control: a real message
    after it is handled."""
    queue = _open(queue_path(tmp_path, "central"))
    handled: list[bytes] = []

    async def handler(message: QueuedMessage) -> None:
        handled.append(message.payload)

    queue.queued(Lane.API, "ghost")  # counted, never inserted
    runner = QueueRunner(queue, {Lane.API: handler, Lane.CONTENT: handler}, concurrency=1,
                         on_damaged=_no_damage)
    offered = 0
    real_head = queue.head

    def head(lane: Lane, station: str) -> QueuedMessage | str | None:
        nonlocal offered
        offered += station == "ghost"
        return real_head(lane, station)

    queue.head = head  # type: ignore[method-assign]
    task = asyncio.create_task(runner.run())
    try:
        assert await runner.add(Lane.API, "st-a", "t/st-a/0", b"real", None) is Admission.ADDED
        async with asyncio.timeout(10):
            while not handled:
                await asyncio.sleep(0.01)
        assert handled == [b"real"] and offered == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        queue.close()


async def _no_damage(station: str, detail: str) -> None:
    """The runner's damaged-row report, where no row is damaged."""
