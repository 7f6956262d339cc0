"""The bay LED tells the officer which error class a docking ended in: the real agent, the recorder bus
and the bay board simulator on a pty (protocol 2), one docking per class. The generic red ERROR is the
control: it is what every one of these showed before protocol 2."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.serial.dock import BayLed
from edge.sources.usb.bay_leds import ERROR_CLASS_LEDS, OUTCOME_LEDS, led_after_removal, led_for_error
from edge.sources.usb.offload import OffloadOutcome
from simulators.recorder.faultfs import VolumeFaults

from .harness import Station, simulated_station, spec


def test_every_error_class_and_outcome_has_its_own_pattern() -> None:
    classes = [
        "not_allowed", "wrong_password", "disk_full", "pulled_early", "files_failed", "awaiting_receipt"
    ]
    leds = [led_for_error(c) for c in classes]
    assert len(set(leds)) == len(classes) and BayLed.ERROR not in leds
    # Space kept for the rooms recording (issue 11) is the full pattern: the same for the officer (the
    # recorder untouched, dock it again later); the dock screen's text tells the two apart.
    assert set(ERROR_CLASS_LEDS) == {*classes, "rooms_recording"}
    assert led_for_error("rooms_recording") is led_for_error("disk_full")
    assert led_for_error("device_error") is BayLed.ERROR and led_for_error(None) is BayLed.ERROR
    assert set(OUTCOME_LEDS) == set(OffloadOutcome)
    failures = [OUTCOME_LEDS[o] for o in (OffloadOutcome.PARTIAL, OffloadOutcome.DEVICE_GONE,
                                          OffloadOutcome.STORE_FULL, OffloadOutcome.FAILED)]
    assert len(set(failures)) == 4


def test_a_recorder_leaving_mid_docking_leaves_the_pulled_pattern() -> None:
    assert led_after_removal(BayLed.COPYING) is BayLed.PULLED
    assert led_after_removal(BayLed.PULLED) is BayLed.PULLED
    for shown in (BayLed.DONE, BayLed.DENIED, BayLed.RECEIPT, BayLed.PARTIAL, None):
        assert led_after_removal(shown) is BayLed.IDLE


async def _shows(station: Station, bay: int, led: BayLed) -> None:
    assert await station.led_shows(bay, led), f"bay {bay} shows {station.dock.led(bay)}, expected {led}"


async def test_not_allow_listed_and_wrong_password_show_their_own_patterns(tmp_path: Path) -> None:
    allowed, stranger, wrong = spec(0), spec(1), spec(2, password="999999")
    allow = [{"device_serial": r.device_serial, "usb_serial": r.usb_serial} for r in (allowed, wrong)]
    async with simulated_station(tmp_path, [allowed, stranger, wrong], recorders={"allow": allow}) as station:
        await station.dock_recorder(stranger.device_serial, 2)
        await station.dock_recorder(wrong.device_serial, 3)
        await station.dock_recorder(allowed.device_serial, 1)
        await _shows(station, 2, BayLed.DENIED)
        await _shows(station, 3, BayLed.PASSWORD)
        await _shows(station, 1, BayLed.DONE)
        assert BayLed.ERROR not in station.dock.led_history(2) + station.dock.led_history(3)


async def test_pulled_early_stays_pulled_after_the_bay_empties_until_it_is_put_back(tmp_path: Path) -> None:
    s = spec(0, faults=VolumeFaults(unplug_after_bytes=100_000))
    async with simulated_station(tmp_path, [s]) as station:
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        assert station.agent.results[0].outcome is OffloadOutcome.DEVICE_GONE
        await _shows(station, 1, BayLed.PULLED)
        told = len(station.dock.led_history(1))
        station.dock.remove(1)  # the bay board sees the bay empty: the officer still has to read it
        async with asyncio.timeout(20):
            while len(station.dock.led_history(1)) == told:
                await asyncio.sleep(0.02)
        assert station.dock.led_history(1)[told:] == [BayLed.PULLED]
        station.dock.insert(1, charge_percent=40)  # put back
        await _shows(station, 1, BayLed.IDLE)


async def test_files_failed_and_disk_full_show_their_own_patterns(tmp_path: Path) -> None:
    broken = spec(0, faults=VolumeFaults(read_error=("*_0001.MP4", 4096)))
    async with simulated_station(tmp_path, [broken]) as station:
        await station.dock_recorder(broken.device_serial, 4)
        await station.wait_results(1)
        assert station.agent.results[0].outcome is OffloadOutcome.PARTIAL
        await _shows(station, 4, BayLed.PARTIAL)
    full_root = tmp_path / "full"
    full_root.mkdir()
    s = spec(1)
    async with simulated_station(full_root, [s], offload={"min_free_bytes": 1 << 62}) as station:
        await station.dock_recorder(s.device_serial, 5)
        await station.wait_results(1)
        assert station.agent.results[0].outcome is OffloadOutcome.STORE_FULL
        await _shows(station, 5, BayLed.FULL)
