"""The station agent against simulated hardware: USB control protocol, volumes, bay LEDs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.serial.dock import BayLed, DockDriver
from edge.sources.usb.offload import OffloadOutcome
from edge.verify.station import verify_store
from simulators.recorder.faultfs import VolumeFaults

from .harness import simulated_station, spec


def evidence_on(bus: object, serial: str) -> list[str]:
    return [n for n in bus.volume_files(serial) if not n.endswith("PARAM.INI")]  # type: ignore[attr-defined]


async def test_docked_recorder_is_offloaded_verified_wiped_and_clock_set(tmp_path: Path) -> None:
    specs = [spec(0, clock_offset_s=-300.0), spec(1)]
    async with simulated_station(tmp_path, specs) as station:
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.dock_recorder(specs[1].device_serial, 2)
        await station.wait_results(2)
        assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE] * 2
        for s in specs:
            assert evidence_on(station.bus, s.device_serial) == []
        assert await station.led_shows(1, BayLed.DONE) and await station.led_shows(2, BayLed.DONE)
        assert BayLed.COPYING in station.dock.led_history(1)
        clock_set = station.ledger("clock_set")
        assert [c["device_serial"] for c in clock_set] == [specs[0].device_serial]
        assert abs(clock_set[0]["offset_before_ms"] + 300_000) < 2000
        assert abs(clock_set[0]["offset_after_ms"]) < 1000
        state = station.bus.recorder_state(specs[0].device_serial)
        assert abs(state.clock_utc_ms - time.time() * 1000) < 1500, "the recorder's clock was set"
        authenticated = station.ledger("device_authenticated")
        assert {a["identity"]["officer_no"] for a in authenticated} == {"110001", "110002"}
    assert verify_store(tmp_path / "store").ok


async def test_untrusted_station_clock_measures_but_never_sets(tmp_path: Path) -> None:
    specs = [spec(0, clock_offset_s=120.0)]
    async with simulated_station(
        tmp_path,
        specs,
        station={"id": "TEST-STATION", "store_dir": str(tmp_path / "store"), "clock": "untrusted"},
    ) as station:
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.wait_results(1)
        assert station.ledger("clock_set") == []
        measured = station.ledger("clock_measured")
        assert measured and abs(measured[0]["offset_ms"] - 120_000) < 2000
        assert measured[0]["station_synchronised"] is False


async def test_wrong_password_is_refused_and_nothing_is_copied(tmp_path: Path) -> None:
    specs = [spec(0, password="999999")]
    async with simulated_station(tmp_path, specs) as station:
        before = evidence_on(station.bus, specs[0].device_serial)
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.wait_ledger("refused")
        await station.agent.idle()
        assert "password" in station.ledger("refused")[0]["reason"]
        assert station.ledger("acquired") == []
        assert evidence_on(station.bus, specs[0].device_serial) == before
        assert await station.led_shows(1, BayLed.PASSWORD)


async def test_recorder_not_on_allow_list_is_refused(tmp_path: Path) -> None:
    specs = [spec(0), spec(1)]
    from .harness import station_config

    config = station_config(tmp_path, specs[:1])  # only the first recorder is allowed
    async with simulated_station(tmp_path, specs, agent_config=config) as station:
        await station.dock_recorder(specs[1].device_serial, 2)
        await station.wait_ledger("refused")
        await station.agent.idle()
        refused = station.ledger("refused")[0]
        # Refused before logging in (its USB serial is pinned by no entry): it never learns the password.
        assert refused["usb_serial"] == specs[1].usb_serial and "allow-list" in refused["reason"]
        assert station.bus.passwords_received(specs[1].device_serial) == []
        assert station.ledger("acquired") == []
        assert station.ledger("clock_set") == [], "an unknown recorder's clock is never touched"


async def test_a_bay_led_decided_before_the_dock_answers_shows_once_it_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bay board is slow to open (a board still booting at start, or one reconnecting): the docking
    # is decided before the agent can talk to it, and its LED must still show once it can.
    board_may_open = asyncio.Event()
    opening = asyncio.Event()
    real_open = DockDriver.open

    async def held_open(*args: Any, **kwargs: Any) -> DockDriver:
        opening.set()
        await board_may_open.wait()
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(DockDriver, "open", held_open)
    specs = [spec(0, password="999999")]
    async with simulated_station(tmp_path, specs) as station:
        await opening.wait()
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.wait_ledger("refused")
        await station.agent.idle()
        assert station.dock.led(1) is BayLed.OFF, "the board is not open yet: nothing can have been shown"
        board_may_open.set()
        assert await station.led_shows(1, BayLed.PASSWORD)


async def test_mass_storage_only_recorder_takes_identity_from_its_volume(tmp_path: Path) -> None:
    specs = [spec(0, msc_only=True)]
    async with simulated_station(tmp_path, specs) as station:
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.wait_results(1)
        result = station.agent.results[0]
        assert result.outcome is OffloadOutcome.DONE and len(result.items) == 3
        started = station.ledger("session_started")[0]
        assert started["identity"]["source"] == "PARAM.INI"
        assert started["identity"]["officer_no"] == "110001"


async def test_a_failing_bay_does_not_disturb_the_others(tmp_path: Path) -> None:
    specs = [spec(0, faults=VolumeFaults(unplug_after_bytes=100_000)), spec(1), spec(2)]
    async with simulated_station(tmp_path, specs) as station:
        for bay, s in enumerate(specs, start=1):
            await station.dock_recorder(s.device_serial, bay)
        await station.wait_results(3)
        outcomes = {r.outcome for r in station.agent.results}
        assert OffloadOutcome.DEVICE_GONE in outcomes
        done = [r for r in station.agent.results if r.outcome is OffloadOutcome.DONE]
        assert len(done) == 2 and all(len(r.items) == 3 for r in done)
        assert await station.led_shows(1, BayLed.PULLED)
        assert await station.led_shows(2, BayLed.DONE) and await station.led_shows(3, BayLed.DONE)
    assert verify_store(tmp_path / "store").ok
