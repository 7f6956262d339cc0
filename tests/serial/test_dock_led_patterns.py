"""LED patterns per error class (dock protocol 2) and of a bouncing bay (protocol 3) through the real
driver and the simulator on a pty: every state reaches the board and comes back in its status, an older
protocol 1 or 2 board is shown the nearest state it knows, and a board that resets in the middle of
commands, with noise on the line or its BOOT
lost, ends up showing what the host last set."""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import tty
from collections.abc import Awaitable, Callable

from drivers.serial.dock import BayLed, DockDriver
from drivers.serial.dock_protocol import (
    LED_LETTERS,
    LED_PATTERNS,
    PROTOCOL_1_LEDS,
    PROTOCOL_2_LEDS,
    LedColour,
    LineFramer,
    NakReason,
    NakReply,
    SetLedCommand,
    decode_line,
    led_for_protocol,
)
from simulators.dock import DockSimulator

MakeSim = Callable[..., DockSimulator]
OpenDriver = Callable[..., Awaitable[DockDriver]]
NOT_PROTOCOL_1 = [led for led in BayLed if led not in PROTOCOL_1_LEDS]
WAIT_S = 10.0


def test_every_state_has_a_letter_and_a_pattern_and_no_two_look_alike() -> None:
    assert set(LED_LETTERS) == set(BayLed) == set(LED_PATTERNS)
    assert len(set(LED_LETTERS.values())) == len(BayLed)
    looks = [(p.colour, p.rhythm_ms) for p in LED_PATTERNS.values()]
    assert len(set(looks)) == len(looks), "two states look the same"
    # Among the states of one colour the rhythm alone tells them apart, and the rhythms are in words.
    for colour in LedColour:
        rhythms = [p.rhythm_ms for p in LED_PATTERNS.values() if p.colour is colour]
        assert len(set(rhythms)) == len(rhythms), colour
    assert len({p.rhythm for p in LED_PATTERNS.values()} - {"dark"}) == len(
        {p.rhythm_ms for p in LED_PATTERNS.values() if p.colour is not LedColour.OFF}
    )
    # The error classes an officer must act on are all distinct from the generic red ERROR and
    # from DONE, whatever the colour.
    for led in NOT_PROTOCOL_1:
        assert LED_PATTERNS[led] not in (LED_PATTERNS[BayLed.ERROR], LED_PATTERNS[BayLed.DONE])


def test_an_older_board_is_shown_the_nearest_state_it_knows() -> None:
    for led in BayLed:
        assert led_for_protocol(led, 3) is led
        for protocol, known in ((1, PROTOCOL_1_LEDS), (2, PROTOCOL_2_LEDS)):
            shown = led_for_protocol(led, protocol)
            assert shown in known
            if led in known:
                assert shown is led
    assert led_for_protocol(BayLed.PULLED, 1) is BayLed.ERROR
    assert led_for_protocol(BayLed.RECEIPT, 1) is BayLed.ATTENTION
    # A bouncing bay: ATTENTION ("needs a person") on a board before protocol 3, as before it existed.
    assert frozenset(BayLed) - {BayLed.BOUNCING} == PROTOCOL_2_LEDS
    assert led_for_protocol(BayLed.BOUNCING, 2) is BayLed.ATTENTION
    assert led_for_protocol(BayLed.BOUNCING, 1) is BayLed.ATTENTION


async def test_every_pattern_reaches_the_board_and_its_status(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(bays=len(BayLed))
    driver = await open_driver(sim.tty_path)
    assert driver.identity.protocol >= 3  # every pattern is known from protocol 3 on
    for bay, led in enumerate(BayLed, start=1):
        assert await driver.set_led(bay, led) is led
    assert [sim.led(bay) for bay in range(1, len(BayLed) + 1)] == list(BayLed)
    # Back from the board in its status tokens (one letter each).
    assert [bay.led for bay in (await driver.status()).bays] == list(BayLed)
    assert sim.stats.naks_sent == 0


def _ask_raw(tty_path: str, frame: bytes) -> NakReply:
    """Send one frame on the pty as a host would and read the board's answer (skipping its BOOT)."""
    fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        os.write(fd, frame)
        framer = LineFramer()
        while True:
            readable, _, _ = select.select([fd], [], [], WAIT_S)
            assert readable, "the board did not answer"
            for line in framer.feed(os.read(fd, 4096)):
                message = decode_line(line)
                if isinstance(message, NakReply):
                    return message
    finally:
        os.close(fd)


async def test_an_old_board_refuses_the_new_patterns_so_the_driver_sends_it_the_old_ones(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    old = make_sim(bays=len(NOT_PROTOCOL_1), protocol=1, firmware="simdock-0.9")
    # The control: a protocol 2 state sent as such is refused by protocol 1 firmware.
    refused = await asyncio.to_thread(_ask_raw, old.tty_path, SetLedCommand(7, 1, BayLed.DENIED).to_bytes())
    assert (refused.seq, refused.command, refused.reason) == (7, "LED", NakReason.VALUE)
    driver = await open_driver(old.tty_path)
    assert driver.identity.protocol == 1
    for bay, led in enumerate(NOT_PROTOCOL_1, start=1):
        assert await driver.set_led(bay, led) is led_for_protocol(led, 1)
    assert [old.led(bay) for bay in range(1, len(NOT_PROTOCOL_1) + 1)] == [
        BayLed.ERROR, BayLed.ERROR, BayLed.ERROR, BayLed.ERROR, BayLed.ERROR, BayLed.ATTENTION,
        BayLed.ATTENTION,
    ]
    assert old.stats.naks_sent == 1  # only the raw control above


async def test_a_protocol_2_board_refuses_bouncing_so_the_driver_sends_it_attention(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    board = make_sim(bays=2, protocol=2, firmware="simdock-1.4")
    # The control: BOUNCING sent as such is refused by protocol 2 firmware.
    bouncing = SetLedCommand(9, 1, BayLed.BOUNCING).to_bytes()
    refused = await asyncio.to_thread(_ask_raw, board.tty_path, bouncing)
    assert (refused.seq, refused.command, refused.reason) == (9, "LED", NakReason.VALUE)
    driver = await open_driver(board.tty_path)
    assert driver.identity.protocol == 2
    assert await driver.set_led(1, BayLed.BOUNCING) is BayLed.ATTENTION
    assert await driver.set_led(2, BayLed.PARTIAL) is BayLed.PARTIAL  # what protocol 2 knows, as it is
    assert (board.led(1), board.led(2)) == (BayLed.ATTENTION, BayLed.PARTIAL)
    assert board.stats.naks_sent == 1  # only the raw control above


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Wait for the board to reach a state (polling the simulator's record), or fail saying `what`."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(what) from None


async def test_a_board_that_resets_mid_command_on_a_noisy_line_ends_showing_the_last_patterns(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    sim = make_sim(bays=4, reset_every_n_leds=5, garbage_every_n=3, seed=8)
    driver = await open_driver(sim.tty_path)
    patterns = itertools.cycle([BayLed.COPYING, BayLed.PULLED, BayLed.DENIED, BayLed.PASSWORD,
                                BayLed.FULL, BayLed.PARTIAL, BayLed.RECEIPT, BayLed.DONE])
    last: dict[int, BayLed] = {}
    for _ in range(3):
        for bay in range(1, 5):
            last[bay] = next(patterns)
            await driver.set_led(bay, last[bay])
    await _until(lambda: all(sim.led(bay) is led for bay, led in last.items()),
                 f"board shows {[sim.led(b) for b in last]}, host set {list(last.values())}")
    assert sim.stats.resets >= 2 and sim.stats.junk_bytes_sent > 0
    # The resets really went dark on the board in between: recorded as shown.
    assert any(BayLed.OFF in sim.shown_history(bay)[1:] for bay in last)
    assert driver.stats.boots >= 2


async def test_a_reset_whose_boot_is_lost_is_noticed_and_the_patterns_restored(
    make_sim: MakeSim, open_driver: OpenDriver
) -> None:
    # No bay event ever happened, so the event numbers cannot show the restart: only the status can.
    sim = make_sim(bays=2)
    driver = await open_driver(sim.tty_path)
    await driver.set_led(1, BayLed.PULLED)
    await driver.set_led(2, BayLed.RECEIPT)
    sim.reboot(announce=False)
    assert sim.led(1) is BayLed.OFF
    await _until(lambda: sim.led(1) is BayLed.PULLED and sim.led(2) is BayLed.RECEIPT,
                 f"board still shows {sim.led(1)}, {sim.led(2)} after a reset with its BOOT lost")
    assert sim.shown_history(1) == [BayLed.PULLED, BayLed.OFF, BayLed.PULLED]
