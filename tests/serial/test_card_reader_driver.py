"""The card reader driver over a real pty, against the simulator: presentations, repeats, faults, loss."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from drivers.serial.card_reader import (
    CardReaderClosed,
    CardReaderConnectionError,
    CardReaderConnectionLost,
    CardReaderDriver,
)
from drivers.serial.card_reader_protocol import CardFraming
from simulators.card_reader import CardReaderSimulator, CardReaderSimulatorError

WAIT_S = 20.0  # a generous bound on a loaded machine, not a measure


@pytest.fixture(params=list(CardFraming))
def sim(request: pytest.FixtureRequest) -> Iterator[CardReaderSimulator]:
    with CardReaderSimulator(request.param, repeat_interval_s=0.01) as simulator:
        yield simulator


@pytest.fixture
async def driver(sim: CardReaderSimulator) -> AsyncIterator[CardReaderDriver]:
    reader = await CardReaderDriver.open(sim.tty_path, repeat_hold_s=30.0)
    yield reader
    await reader.close()


async def present(sim: CardReaderSimulator, uid: str, repeats: int = 1) -> None:
    await asyncio.to_thread(sim.present, uid, repeats)


async def test_a_card_held_to_the_reader_is_one_presentation(sim: CardReaderSimulator,
                                                             driver: CardReaderDriver) -> None:
    await present(sim, "01000734E0", repeats=5)
    card = await asyncio.wait_for(driver.next_card(), WAIT_S)
    assert (card.uid, card.framing) == ("01000734E0", sim.framing)
    # Another card is a new presentation; the repeats of the first were suppressed, not queued.
    await present(sim, "100086F444")
    assert (await asyncio.wait_for(driver.next_card(), WAIT_S)).uid == "100086F444"
    assert driver.stats.repeats_suppressed == 4 and driver.stats.presented == 2


async def test_the_same_card_again_after_the_hold_is_a_new_presentation(sim: CardReaderSimulator) -> None:
    async with await CardReaderDriver.open(sim.tty_path, repeat_hold_s=0.0) as reader:
        await present(sim, "01000734E0")
        await asyncio.wait_for(reader.next_card(), WAIT_S)
        await asyncio.sleep(0.05)  # beyond a zero hold by any measure
        await present(sim, "01000734E0")
        assert (await asyncio.wait_for(reader.next_card(), WAIT_S)).uid == "01000734E0"


async def test_noise_split_writes_and_bad_checksums_yield_only_true_cards(sim: CardReaderSimulator,
                                                                          driver: CardReaderDriver) -> None:
    sim.faults.garbage_every_n = 2
    sim.faults.split_writes = True
    sim.faults.bad_checksum_every_n = 3
    uids = ["01000734E0", "100086F444", "02004DB005", "0A0B0C0D0E", "1122334455", "66778899AA"]
    for uid in uids:
        await present(sim, uid)
    expected = [uid for n, uid in enumerate(uids, start=1)
                if sim.framing is not CardFraming.STX_FRAME or n % 3]
    got = [(await asyncio.wait_for(driver.next_card(), WAIT_S)).uid for _ in expected]
    assert got == expected
    await present(sim, "0F0F0F0F0F")  # the 7th frame: neither noise (every 2nd) nor a bad checksum
    assert (await asyncio.wait_for(driver.next_card(), WAIT_S)).uid == "0F0F0F0F0F"
    assert driver.stats.junk_bytes > 0 or driver.stats.bad_frames > 0


async def test_a_reader_pulled_out_is_a_lost_connection_after_what_it_read(sim: CardReaderSimulator,
                                                                           driver: CardReaderDriver) -> None:
    await present(sim, "01000734E0")
    await asyncio.sleep(0.2)
    sim.hang_up()
    assert (await asyncio.wait_for(driver.next_card(), WAIT_S)).uid == "01000734E0"
    with pytest.raises(CardReaderConnectionLost):
        await asyncio.wait_for(driver.next_card(), WAIT_S)


async def test_closing_ends_the_iteration(sim: CardReaderSimulator) -> None:
    reader = await CardReaderDriver.open(sim.tty_path)
    seen: list[str] = []

    async def consume() -> None:
        async for card in reader.cards():
            seen.append(card.uid)

    task = asyncio.create_task(consume())
    await present(sim, "01000734E0")
    for _ in range(int(WAIT_S / 0.01)):
        if seen:
            break
        await asyncio.sleep(0.01)
    await reader.close()
    await asyncio.wait_for(task, WAIT_S)
    assert seen == ["01000734E0"]
    with pytest.raises(CardReaderClosed):
        await reader.next_card()


async def test_a_port_that_does_not_exist_is_a_clear_error(tmp_path: object) -> None:
    with pytest.raises(CardReaderConnectionError, match="cannot open card reader"):
        await CardReaderDriver.open("/dev/nonexistent-card-reader")


def test_the_simulator_refuses_a_uid_its_framing_cannot_carry() -> None:
    with CardReaderSimulator(CardFraming.STX_FRAME) as simulator, \
            pytest.raises(CardReaderSimulatorError, match="10 hex digits"):
        simulator.present("04A21B7C")


async def test_the_simulator_runs_on_its_own_and_takes_cards_on_stdin() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators", "card-reader", "--framing", "hex-line",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    try:
        tty_path = (await asyncio.wait_for(process.stdout.readline(), WAIT_S)).decode().strip()
        async with await CardReaderDriver.open(tty_path) as reader:
            process.stdin.write(b"card 04a21b7c 3\nbogus\n")
            await process.stdin.drain()
            card = await asyncio.wait_for(reader.next_card(), WAIT_S)
            assert (card.uid, card.framing) == ("04A21B7C", CardFraming.HEX_LINE)
            assert (await asyncio.wait_for(process.stdout.readline(), WAIT_S)).startswith(b"ok card")
            assert (await asyncio.wait_for(process.stdout.readline(), WAIT_S)).startswith(b"error: unknown")
        process.stdin.write(b"quit\n")
        await process.stdin.drain()
        assert await asyncio.wait_for(process.wait(), WAIT_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
