"""The real DockDriver against the real DockSimulator over a pty, with every fault model."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from dock_helpers import BayView, ScriptedBoard, fold_until, frame, next_event, sim_view

from drivers.serial.dock import (
    BayEvent,
    BayEventKind,
    BayLed,
    DockClosedError,
    DockConnectionError,
    DockConnectionLost,
    DockDriver,
    DockNakError,
    DockUsageError,
)
from drivers.serial.dock_protocol import (
    BayState,
    IdentityReply,
    LedReply,
    NakReason,
    NakReply,
    PingReply,
    SetLedCommand,
    StatusQuery,
    StatusReply,
    decode_line,
)
from simulators.dock import DockSimulator

MakeSim = Callable[..., DockSimulator]
OpenDriver = Callable[..., Awaitable[DockDriver]]


async def test_identity_and_status(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(6, board_serial="DK-7", firmware="fw-2.1")
    sim.insert(2, 80)
    sim.insert(5, None)
    driver = await open_driver(sim.tty_path)
    assert driver.connected
    assert (driver.identity.board_serial, driver.identity.firmware, driver.identity.bay_count) == (
        "DK-7", "fw-2.1", 6
    )
    status = await driver.status()
    assert (status.board_serial, status.firmware) == ("DK-7", "fw-2.1")
    assert [(b.bay, b.present, b.charge_percent, b.led) for b in status.bays] == [
        (1, False, None, BayLed.OFF),
        (2, True, 80, BayLed.OFF),
        (3, False, None, BayLed.OFF),
        (4, False, None, BayLed.OFF),
        (5, True, None, BayLed.OFF),
        (6, False, None, BayLed.OFF),
    ]


async def test_occupied_bays_are_announced_at_open(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(4)
    sim.insert(3, 64)
    sim.insert(1, 10)
    driver = await open_driver(sim.tty_path)
    events = driver.events()
    assert [await next_event(events), await next_event(events)] == [
        BayEvent(1, BayEventKind.INSERTED, 10, synthetic=True),
        BayEvent(3, BayEventKind.INSERTED, 64, synthetic=True),
    ]


async def test_no_announcement_when_disabled(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(4)
    sim.insert(3, 64)
    driver = await open_driver(sim.tty_path, announce_present=False)
    events = driver.events()
    sim.remove(3)
    assert await next_event(events) == BayEvent(3, BayEventKind.REMOVED, None)


async def test_set_led_is_reflected_in_the_simulator(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(4)
    driver = await open_driver(sim.tty_path)
    for led in (BayLed.IDLE, BayLed.COPYING, BayLed.DONE):
        await driver.set_led(2, led)
        assert sim.led(2) is led  # ACK means lit: no waiting needed
    await driver.set_led(4, BayLed.ERROR)
    assert sim.led_history(2) == [BayLed.IDLE, BayLed.COPYING, BayLed.DONE]
    assert sim.led_history(4) == [BayLed.ERROR]
    assert sim.led(1) is BayLed.OFF
    assert (await driver.status()).bays[1].led is BayLed.DONE


async def test_set_led_out_of_range_is_refused_before_the_wire(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(4)
    driver = await open_driver(sim.tty_path)
    received_before = sim.stats.frames_received
    for bay in (0, 5, 33):
        with pytest.raises(DockUsageError, match=f"bay must be 1..4, got {bay}"):
            await driver.set_led(bay, BayLed.DONE)
    assert sim.stats.frames_received == received_before
    assert driver.connected


async def test_inserted_removed_charge_events(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(8)
    driver = await open_driver(sim.tty_path)
    events = driver.events()
    sim.insert(3, 42)
    sim.set_charge(3, 43)
    sim.insert(8, None)
    sim.set_charge(8, 7)
    sim.remove(3)
    got = [await next_event(events) for _ in range(5)]
    assert got == [
        BayEvent(3, BayEventKind.INSERTED, 42),
        BayEvent(3, BayEventKind.CHARGE, 43),
        BayEvent(8, BayEventKind.INSERTED, None),
        BayEvent(8, BayEventKind.CHARGE, 7),
        BayEvent(3, BayEventKind.REMOVED, None),
    ]
    assert driver.stats.gaps == 0
    assert driver.stats.synthesized_events == 0


FAULTS: list[dict[str, Any]] = [
    {"garbage_every_n": 2},
    {"bad_checksum_every_n": 3},
    {"split_writes": True},
    {"drop_events_every_n": 2},
    {"reply_delay_s": 0.05},
    {"garbage_every_n": 3, "bad_checksum_every_n": 5, "split_writes": True, "drop_events_every_n": 4},
]


def _fault_id(fault: dict[str, Any]) -> str:
    return "+".join(f"{key}={value}" for key, value in fault.items())


@pytest.mark.parametrize("fault", FAULTS, ids=_fault_id)
async def test_driver_survives_fault(
    make_sim: MakeSim, open_driver: OpenDriver, fault: dict[str, Any]
) -> None:
    sim = make_sim(8, seed=7, **fault)
    sim.insert(8, 99)  # present before open: must come through the announcement despite the faults
    driver = await open_driver(sim.tty_path, reply_timeout_s=0.15, heartbeat_s=0.3)
    events = driver.events()
    view: BayView = {}
    await fold_until(events, view, sim_view(sim))

    for bay in range(1, 9):
        await driver.set_led(bay, BayLed.IDLE)
    for bay, charge in ((1, 10), (2, 20), (3, None), (4, 40), (5, 50)):
        sim.insert(bay, charge)
    sim.set_charge(1, 11)
    sim.set_charge(3, 33)
    sim.remove(2)
    sim.remove(8)
    sim.insert(2, 22)
    for bay in (1, 3, 4):
        await driver.set_led(bay, BayLed.COPYING)
    sim.set_charge(4, 41)
    sim.remove(5)

    # Lost events are recovered by a gap, or at the latest by the next heartbeat's event number.
    await fold_until(events, view, sim_view(sim))
    assert [sim.led(bay) for bay in range(1, 9)] == [BayLed.COPYING, BayLed.IDLE, BayLed.COPYING,
                                                     BayLed.COPYING, *[BayLed.IDLE] * 4]
    assert sim.led_history(1) == [BayLed.IDLE, BayLed.COPYING]
    status = await driver.status()
    assert {b.bay: b.charge_percent for b in status.bays if b.present} == sim_view(sim)
    await driver.ping()
    assert driver.connected

    stats = driver.stats
    if fault.get("garbage_every_n"):
        assert stats.junk_bytes > 0
    if fault.get("bad_checksum_every_n"):
        assert stats.bad_frames > 0
        assert sim.stats.frames_corrupted > 0
    if fault.get("drop_events_every_n"):
        assert sim.stats.events_dropped > 0
        assert stats.gaps > 0
        assert stats.resyncs > 0
    if list(fault) == ["split_writes"] or list(fault) == ["reply_delay_s"]:
        assert (stats.bad_frames, stats.junk_bytes, stats.gaps, stats.timeouts) == (0, 0, 0, 0)


async def test_event_gap_resync_synthesises_the_missed_event(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(4, drop_events_every_n=2)
    # No heartbeat in the way: the gap itself must trigger the resync.
    driver = await open_driver(sim.tty_path, heartbeat_s=60)
    events = driver.events()
    sim.insert(1, 10)  # event 1 sent
    sim.insert(2, 20)  # event 2 dropped
    sim.insert(3, 30)  # event 3 sent: gap
    got = [await next_event(events) for _ in range(3)]
    assert got == [
        BayEvent(1, BayEventKind.INSERTED, 10),
        BayEvent(3, BayEventKind.INSERTED, 30),
        BayEvent(2, BayEventKind.INSERTED, 20, synthetic=True),
    ]
    stats = driver.stats
    assert (stats.gaps, stats.synthesized_events) == (1, 1)
    assert stats.resyncs == 1


async def test_lost_last_event_is_found_by_the_heartbeat(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(4, drop_events_every_n=1)  # nothing gets through
    driver = await open_driver(sim.tty_path, heartbeat_s=0.05)
    events = driver.events()
    sim.insert(4, 55)
    assert await next_event(events) == BayEvent(4, BayEventKind.INSERTED, 55, synthetic=True)
    sim.set_charge(4, 60)
    assert await next_event(events) == BayEvent(4, BayEventKind.CHARGE, 60, synthetic=True)
    sim.remove(4)
    assert await next_event(events) == BayEvent(4, BayEventKind.REMOVED, None, synthetic=True)


async def test_unseen_swap_is_reported_as_removed_then_inserted(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(4)
    sim.insert(2, 90)
    driver = await open_driver(sim.tty_path, heartbeat_s=60)
    events = driver.events()
    assert await next_event(events) == BayEvent(2, BayEventKind.INSERTED, 90, synthetic=True)
    sim.faults.drop_events_every_n = 1
    sim.remove(2)
    sim.insert(2, 15)  # another recorder, same bay, both events lost
    await driver.ping()  # its reply carries event number 2, driver has seen 0
    assert [await next_event(events), await next_event(events)] == [
        BayEvent(2, BayEventKind.REMOVED, None, synthetic=True),
        BayEvent(2, BayEventKind.INSERTED, 15, synthetic=True),
    ]


async def test_insert_into_a_bay_believed_occupied_implies_a_lost_removal(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(4)
    sim.insert(1, 50)
    driver = await open_driver(sim.tty_path, heartbeat_s=60)
    events = driver.events()
    assert (await next_event(events)).bay == 1
    sim.faults.drop_events_every_n = 1
    sim.remove(1)
    sim.faults.drop_events_every_n = 0
    sim.insert(1, 70)
    got = [await next_event(events) for _ in range(2)]
    assert got == [
        BayEvent(1, BayEventKind.REMOVED, None, synthetic=True),
        BayEvent(1, BayEventKind.INSERTED, 70),
    ]
    await driver.ping()  # the resync the gap caused is done before this reply is handled
    assert driver.stats.inconsistent_events == 1
    assert driver.stats.gaps == 1


async def test_board_reboot_restores_leds(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(4)
    sim.insert(2, 50)
    driver = await open_driver(sim.tty_path, heartbeat_s=60)
    events = driver.events()
    assert (await next_event(events)).bay == 2
    await driver.set_led(2, BayLed.COPYING)
    await driver.set_led(3, BayLed.ERROR)
    sim.reboot()
    assert await asyncio.to_thread(sim.wait_for_led, 2, BayLed.COPYING, 5.0)
    assert await asyncio.to_thread(sim.wait_for_led, 3, BayLed.ERROR, 5.0)
    assert sim.led(1) is BayLed.OFF
    await driver.ping()
    stats = driver.stats
    assert stats.boots == 1
    # The reset insertion counters are adopted, not mistaken for a swap.
    assert stats.synthesized_events == 1
    sim.remove(2)  # numbering restarted at 1: no gap
    assert await next_event(events) == BayEvent(2, BayEventKind.REMOVED, None)
    assert driver.stats.gaps == 0


async def test_reboot_with_its_boot_lost_is_recognised(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(4)
    sim.insert(2, 50)  # event 1
    driver = await open_driver(sim.tty_path, heartbeat_s=60)
    events = driver.events()
    assert await next_event(events) == BayEvent(2, BayEventKind.INSERTED, 50, synthetic=True)
    await driver.set_led(2, BayLed.COPYING)
    sim.silent = True
    sim.reboot()  # BOOT lost on the wire
    sim.silent = False
    sim.insert(3, 30)  # event 1 again: numbers went backwards
    assert await next_event(events) == BayEvent(3, BayEventKind.INSERTED, 30)
    assert await asyncio.to_thread(sim.wait_for_led, 2, BayLed.COPYING, 5.0)
    await driver.ping()
    stats = driver.stats
    assert (stats.boots, stats.gaps) == (0, 1)
    assert stats.synthesized_events == 1  # bay 2's reset counter is not taken for a swap


async def test_silence_raises_connection_lost_from_events(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(4)
    driver = await open_driver(sim.tty_path, reply_timeout_s=0.1, retries=1, heartbeat_s=0.05)
    events = driver.events()
    sim.silent = True
    with pytest.raises(DockConnectionLost, match="no reply to PING after 2 attempts"):
        await next_event(events)
    assert not driver.connected
    with pytest.raises(DockConnectionLost):
        await driver.set_led(1, BayLed.IDLE)
    with pytest.raises(DockConnectionLost):
        await next_event(events)  # stays raised for every later call


async def test_silence_raises_connection_lost_from_a_pending_call(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(4)
    driver = await open_driver(sim.tty_path, reply_timeout_s=0.1, retries=2, heartbeat_s=60)
    sim.silent = True
    with pytest.raises(DockConnectionLost, match="no reply to LED after 3 attempts"):
        await driver.set_led(1, BayLed.DONE)
    assert driver.stats.timeouts == 3
    assert driver.stats.retransmissions == 2
    assert sim.stats.frames_received >= 3  # the board got them; it just does not answer


async def test_events_queued_before_the_loss_are_delivered_first(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(4)
    driver = await open_driver(sim.tty_path, reply_timeout_s=0.1, retries=0, heartbeat_s=60)
    sim.insert(1, 5)
    await driver.ping()  # the event is in the queue once this returns
    sim.silent = True
    with pytest.raises(DockConnectionLost):
        await driver.ping()
    events = driver.events()
    assert await next_event(events) == BayEvent(1, BayEventKind.INSERTED, 5)
    with pytest.raises(DockConnectionLost):
        await next_event(events)


async def test_pty_hangup_is_a_lost_connection(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(4)
    driver = await open_driver(sim.tty_path, heartbeat_s=60)
    events = driver.events()
    sim.stop()
    with pytest.raises(DockConnectionLost, match="read failed"):
        await next_event(events)
    assert not driver.connected


async def test_slow_reply_is_retried_and_the_late_duplicate_ignored(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(4)
    driver = await open_driver(sim.tty_path, reply_timeout_s=0.2, retries=3, heartbeat_s=60)
    sim.faults.reply_delay_s = 0.3
    await driver.set_led(1, BayLed.DONE)  # attempt 1 times out; its late ACK answers attempt 2
    sim.faults.reply_delay_s = 0.0
    await driver.ping()  # queued behind the board's answer to the duplicate
    stats = driver.stats
    assert stats.timeouts >= 1
    assert stats.stale_replies >= 1
    assert sim.led_history(1) == [BayLed.DONE]  # the retransmission did not count twice
    assert driver.connected


async def test_slow_consumer_overflow_reannounces_state(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(8)
    driver = await open_driver(sim.tty_path, event_queue_size=4, heartbeat_s=60)
    for bay in range(1, 9):
        sim.insert(bay, bay)
    for bay in range(1, 9):
        sim.set_charge(bay, 50 + bay)
    for bay in (2, 4, 6):
        sim.remove(bay)
    sim.insert(4, 12)
    await driver.ping()  # every event above has been handled once this returns
    assert driver.stats.dropped_events == 20 - 4
    view: BayView = {}
    seen = await fold_until(driver.events(), view, sim_view(sim))
    assert len(seen) <= 4 + 2 * 8
    assert all(event.synthetic for event in seen[4:])
    sim.set_charge(1, 99)  # back to normal service
    assert await next_event(driver.events()) == BayEvent(1, BayEventKind.CHARGE, 99)


async def test_close_ends_events_and_refuses_calls(make_sim: MakeSim, open_driver: OpenDriver) -> None:
    sim = make_sim(4)
    driver = await open_driver(sim.tty_path)
    events = driver.events()

    async def first_event() -> BayEvent:
        return await anext(events)

    waiter = asyncio.create_task(first_event())
    await asyncio.sleep(0)  # let it block on the empty queue
    await driver.close()
    with pytest.raises(StopAsyncIteration):
        await waiter
    assert not driver.connected
    with pytest.raises(DockClosedError):
        await driver.set_led(1, BayLed.OFF)
    await driver.close()  # idempotent


async def test_cancelled_wait_does_not_break_the_event_iterator(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(4)
    driver = await open_driver(sim.tty_path)
    events = driver.events()

    async def first_event() -> BayEvent:
        return await anext(events)

    waiter = asyncio.create_task(first_event())
    await asyncio.sleep(0)  # let it block on the empty queue
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    sim.insert(1, 1)
    assert await next_event(events) == BayEvent(1, BayEventKind.INSERTED, 1)


async def test_context_manager_and_reopen(make_sim: MakeSim) -> None:
    sim = make_sim(4)
    async with await DockDriver.open(sim.tty_path, reply_timeout_s=0.25, heartbeat_s=60) as driver:
        await driver.set_led(1, BayLed.IDLE)
        with pytest.raises(DockConnectionError, match="cannot open"):
            await DockDriver.open(sim.tty_path)  # opened exclusively
    async with await DockDriver.open(sim.tty_path, reply_timeout_s=0.25, heartbeat_s=60) as driver:
        await driver.set_led(1, BayLed.DONE)
    assert sim.led_history(1) == [BayLed.IDLE, BayLed.DONE]


async def test_open_errors() -> None:
    with pytest.raises(DockConnectionError, match="cannot open"):
        await DockDriver.open("/dev/does-not-exist-dock")
    with pytest.raises(DockUsageError):
        await DockDriver.open("loop://", retries=-1)
    # loop:// hands our own commands back: a "board" that never answers is refused, not hung on.
    with pytest.raises(DockConnectionError, match="no reply to VER"):
        await DockDriver.open("loop://", reply_timeout_s=0.05, retries=1)


async def test_open_silent_board(make_sim: MakeSim) -> None:
    sim = make_sim(4, silent=True)
    with pytest.raises(DockConnectionLost, match="no reply to VER"):
        await DockDriver.open(sim.tty_path, reply_timeout_s=0.05, retries=1)
    # The failed open released the port: once the board speaks again, it opens.
    sim.silent = False
    async with await DockDriver.open(sim.tty_path, reply_timeout_s=0.25, heartbeat_s=60) as driver:
        assert driver.connected


# -- a hostile board -------------------------------------------------------------------------------


def _polite(line: bytes) -> list[bytes]:
    """A correct 2-bay board, used as the base of hostile scripts."""
    message = decode_line(line)
    seq = message.seq
    if line.startswith(b"$%d,VER" % seq):
        return [IdentityReply(seq, 1, 2, "HOSTILE-1", "fw").to_bytes()]
    if line.startswith(b"$%d,STA" % seq):
        empty = BayState(False, BayLed.OFF, 0, None)
        return [StatusReply(seq, 0, (empty, empty)).to_bytes()]
    if line.startswith(b"$%d,PING" % seq):
        return [PingReply(seq, 0).to_bytes()]
    assert isinstance(message, SetLedCommand)
    return [LedReply(seq, message.bay, message.led).to_bytes()]


async def test_nak_is_raised_and_busy_is_retried(
    scripted_board: Callable[[Callable[[bytes], list[bytes]]], ScriptedBoard]
) -> None:
    busy_left = [2]

    def respond(line: bytes) -> list[bytes]:
        message = decode_line(line)
        if isinstance(message, SetLedCommand) and message.led is BayLed.ATTENTION:
            return [NakReply(message.seq, "LED", NakReason.VALUE).to_bytes()]
        if isinstance(message, SetLedCommand) and busy_left[0] > 0:
            busy_left[0] -= 1
            return [NakReply(message.seq, "LED", NakReason.BUSY).to_bytes()]
        return _polite(line)

    board = scripted_board(respond)
    async with await DockDriver.open(board.tty_path, reply_timeout_s=0.5, heartbeat_s=60) as driver:
        await driver.set_led(1, BayLed.DONE)  # two BUSY, then ACK
        assert driver.stats.naks == 2
        with pytest.raises(DockNakError, match=r"refused LED .*VALUE") as caught:
            await driver.set_led(1, BayLed.ATTENTION)
        assert caught.value.reason is NakReason.VALUE
        busy_left[0] = 10  # more than the attempts: refused, but the link is alive
        with pytest.raises(DockNakError, match="still busy for LED after 4 attempts") as caught:
            await driver.set_led(2, BayLed.DONE)
        assert caught.value.reason is NakReason.BUSY
        assert driver.connected
        await driver.ping()


async def test_hostile_replies_are_counted_and_survived(
    scripted_board: Callable[[Callable[[bytes], list[bytes]]], ScriptedBoard]
) -> None:
    def respond(line: bytes) -> list[bytes]:
        message = decode_line(line)
        if isinstance(message, SetLedCommand):
            return [
                b"\xff\xfe$$$garbage\r\n",  # junk and broken frames
                frame(f"{message.seq},ACK,LED,{message.bay},BLINK"),  # CRC fine, content not
                LedReply(message.seq, 2 if message.bay == 1 else 1, message.led).to_bytes(),  # wrong bay
                LedReply(message.seq + 100, message.bay, message.led).to_bytes(),  # wrong number
                frame(f"{message.seq},PING"),  # a host command from the board
                frame("7,REM,2"),  # removal of a bay believed empty (and a gap)
                frame("8,INS,9,"),  # a bay the board does not have
                LedReply(message.seq, message.bay, message.led).to_bytes(),  # finally, the real ACK
            ]
        return _polite(line)

    board = scripted_board(respond)
    async with await DockDriver.open(board.tty_path, reply_timeout_s=0.5, heartbeat_s=60) as driver:
        await driver.set_led(1, BayLed.DONE)
        await driver.ping()
        stats = driver.stats
        assert stats.bad_frames >= 2
        assert stats.junk_bytes > 0
        assert stats.unexpected_messages == 2  # wrong bay, host command
        assert stats.stale_replies == 1
        assert stats.inconsistent_events == 2
        assert stats.gaps >= 1
        assert stats.timeouts == 0
        assert driver.connected


async def test_a_different_board_booting_on_the_line_kills_the_link(
    scripted_board: Callable[[Callable[[bytes], list[bytes]]], ScriptedBoard]
) -> None:
    board = scripted_board(_polite)
    async with await DockDriver.open(board.tty_path, reply_timeout_s=0.5, heartbeat_s=60) as driver:
        events = driver.events()
        board.send(frame("0,BOOT,1,2,IMPOSTOR-9,fw"))
        with pytest.raises(DockConnectionLost, match=r"different board booted.*IMPOSTOR-9"):
            await next_event(events)


async def test_status_with_a_different_bay_count_kills_the_link(
    scripted_board: Callable[[Callable[[bytes], list[bytes]]], ScriptedBoard]
) -> None:
    status_queries = [0]

    def respond(line: bytes) -> list[bytes]:
        message = decode_line(line)
        if isinstance(message, StatusQuery):
            status_queries[0] += 1
            if status_queries[0] > 1:  # the first one, during open, is honest
                return [frame(f"{message.seq},ACK,STA,0,3,0O0,0O0,0O0")]
        return _polite(line)

    board = scripted_board(respond)
    async with await DockDriver.open(board.tty_path, reply_timeout_s=0.5, heartbeat_s=60) as driver:
        with pytest.raises(DockConnectionLost, match="status has 3 bays, identity said 2"):
            await driver.status()
