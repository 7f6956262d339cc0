"""The feed relay (edge.rooms.feed_relay) over real pipes, without ffmpeg: it passes the source's TS on
as whole packets in order; bytes out of step (hostile or damaged input) are skipped up to the next two
packets in a row, never passed on; a composite that does not read gets whole packets dropped, the
relay's memory bounded, the pipe's content still 188-byte aligned, and the loss reported once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os

import pytest

from edge.rooms import feed_relay
from edge.rooms.feed_relay import TS_PACKET_BYTES, FeedDrop, FeedRelay


def _packets(count: int, start: int = 0) -> bytes:
    """`count` TS packets, each its sync byte, then its number (4 bytes), then filler."""
    return b"".join(bytes([0x47]) + (start + i).to_bytes(4, "big") + bytes(TS_PACKET_BYTES - 5)
                    for i in range(count))


def _numbers(data: bytes) -> list[int]:
    assert len(data) % TS_PACKET_BYTES == 0
    packets = [data[i:i + TS_PACKET_BYTES] for i in range(0, len(data), TS_PACKET_BYTES)]
    assert all(p[0] == 0x47 for p in packets)
    return [int.from_bytes(p[1:5], "big") for p in packets]


def _drain(fd: int) -> bytes:
    out = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 1 << 16):
            out += chunk
    return out


async def _settle(relay: FeedRelay, until: int, composite_end: int, got: bytearray) -> None:
    for _ in range(200):
        got += _drain(composite_end)
        if len(got) >= until:
            return
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("damaged", [False, True])
async def test_the_relay_passes_whole_packets_and_skips_what_is_out_of_step(damaged: bool) -> None:
    relay = FeedRelay("a")
    task = asyncio.create_task(relay.run())
    composite_end = relay.composite_end()
    source_end = relay.source_end()
    got = bytearray()
    try:
        first, second = _packets(10), _packets(10, 10)
        # Damaged: garbage (with stray sync bytes) between the two runs, and the stream cut mid-packet.
        middle = b"\x47junk\x00\x47" * 7 if damaged else b""
        stream = first + middle + second
        for at in range(0, len(stream), 100):  # in odd pieces, as a pipe may give them
            os.write(source_end, stream[at:at + 100])
        os.close(source_end)  # the run ends: its last packet goes too
        source_end = -1
        await _settle(relay, 20 * TS_PACKET_BYTES, composite_end, got)
    finally:
        if source_end >= 0:
            os.close(source_end)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        relay.close()
        os.close(composite_end)
    assert _numbers(bytes(got)) == list(range(20))  # both: every whole packet, in order, nothing else
    assert relay.bytes_out_of_sync == (len(middle) if damaged else 0)
    assert relay.packets_dropped == 0


async def test_a_composite_that_does_not_read_gets_whole_packets_dropped_and_one_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feed_relay, "PIPE_BYTES", 4096)
    monkeypatch.setattr(feed_relay, "DROP_SETTLE_S", 0.2)
    drops: list[FeedDrop] = []
    relay = FeedRelay("a", buffer_bytes=20 * TS_PACKET_BYTES, on_drop=drops.append)
    task = asyncio.create_task(relay.run())
    composite_end = relay.composite_end()
    source_end = relay.source_end()
    got = bytearray()
    try:
        sent = 0
        for _ in range(40):  # 400 packets (75 kB) while the composite reads nothing
            os.write(source_end, _packets(10, sent))
            sent += 10
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        held = relay.status()
        assert held["buffered_bytes"] <= 20 * TS_PACKET_BYTES and held["dropping"]
        got += _drain(composite_end)  # the composite reads again: what the pipe and the buffer held
        for _ in range(10):  # packets flow again, past the settle time
            os.write(source_end, _packets(10, sent))
            sent += 10
            await asyncio.sleep(0.05)
            got += _drain(composite_end)
        os.close(source_end)  # the run ends: its last packet goes too
        source_end = -1
        await _settle(relay, len(got) + 1, composite_end, got)
    finally:
        if source_end >= 0:
            os.close(source_end)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        relay.close()
        os.close(composite_end)
    numbers = _numbers(bytes(got))  # whole packets only, in order, some missing
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert relay.packets_dropped == sent - len(numbers) > 0
    assert len(drops) == 1 and drops[0].packets == relay.packets_dropped and drops[0].source == "a"
    assert drops[0].to_ns >= drops[0].from_ns and not relay.status()["dropping"]
    assert numbers[-1] == sent - 1  # the newest went through once the composite read again


async def test_a_composite_that_reads_again_gets_the_feeds_last_second_not_its_oldest_packets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 27: what waited for a stopped composite is the feed's last backlog_s, the oldest dropped,
    so the composite renders what the source records now (control: the packets sent within the backlog
    before it reads again all reach it)."""
    monkeypatch.setattr(feed_relay, "PIPE_BYTES", 4096)
    monkeypatch.setattr(feed_relay, "COMPOSITE_PIPE_BYTES", 4096)
    monkeypatch.setattr(feed_relay, "COMPOSITE_START_S", 0.0)  # the composite started long ago
    relay = FeedRelay("a", backlog_s=0.5, on_drop=lambda drop: None)  # bytes unbounded in practice
    task = asyncio.create_task(relay.run())
    composite_end = relay.composite_end()
    source_end = relay.source_end()
    try:
        sent = 0
        for _ in range(30):  # 1.5 s of packets while the composite reads nothing
            os.write(source_end, _packets(10, sent))
            sent += 10
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        got = bytearray()
        await _settle(relay, 1 << 30, composite_end, got)  # reads all that waits (the bound: 10 s)
    finally:
        os.close(source_end)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        relay.close()
        os.close(composite_end)
    numbers = _numbers(bytes(got))
    after_pipe = [n for n in numbers if n > numbers[0] + 40]  # what the relay kept, past the pipe's content
    # The newest packets are there (control), and what the relay kept is recent: no more than the backlog
    # (0.5 s, 100 packets here) with a generous margin for a loaded machine, never the 1.5 s sent.
    assert numbers[-1] == sent - 2, numbers[-5:]  # the last one waits for its successor
    assert after_pipe and sent - after_pipe[0] <= 200, (after_pipe[:3], sent)
    assert relay.packets_dropped > 0


async def test_a_drop_that_goes_on_is_reported_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 27: a composite that reads, but far less than comes, has its loss reported every
    DROP_SPLIT_SETTLES x DROP_SETTLE_S of lost feed while it goes on, each piece after the one before."""
    monkeypatch.setattr(feed_relay, "PIPE_BYTES", 4096)
    monkeypatch.setattr(feed_relay, "COMPOSITE_PIPE_BYTES", 16384)
    monkeypatch.setattr(feed_relay, "COMPOSITE_START_S", 0.0)
    monkeypatch.setattr(feed_relay, "DROP_SETTLE_S", 0.1)  # a piece: 0.5 s
    drops: list[FeedDrop] = []
    relay = FeedRelay("a", backlog_s=0.1, on_drop=drops.append)
    task = asyncio.create_task(relay.run())
    composite_end = relay.composite_end()
    source_end = relay.source_end()
    try:
        sent = 0
        for _ in range(40):  # 2 s, a fifth of it read
            os.write(source_end, _packets(10, sent))
            sent += 10
            await asyncio.sleep(0.05)
            with contextlib.suppress(BlockingIOError):
                os.read(composite_end, 2 * TS_PACKET_BYTES)
        reported = list(drops)
    finally:
        os.close(source_end)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        relay.close()
        os.close(composite_end)
    assert relay.bytes_relayed > 16384, relay.status()  # control: the composite did read meanwhile
    assert len(reported) >= 2, reported
    assert all(a.to_ns <= b.from_ns for a, b in itertools.pairwise(reported)), reported
    assert sum(d.packets for d in drops) == relay.packets_dropped
