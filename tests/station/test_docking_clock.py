"""Recorder clocks at docking: set (校时) only when the station clock is trusted by a time-sync source,
and never on a recorder whose USB serial is not the one the allow-list pins."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from ..service.timesync_env import FakeChronyc
from .harness import simulated_station, spec

OFFSET_S = -300.0


def _device_offset_ms(station: object, device_serial: str) -> float:
    state = station.bus.recorder_state(device_serial)  # type: ignore[attr-defined]
    return float(state.clock_utc_ms - time.time() * 1000)


@pytest.mark.parametrize("pinned_right", [False, True], ids=["wrong-usb-serial", "control-right-serial"])
async def test_clock_is_set_only_on_the_pinned_usb_serial(tmp_path: Path, pinned_right: bool) -> None:
    recorder = spec(0, clock_offset_s=OFFSET_S)
    pin = recorder.usb_serial if pinned_right else "EEZ01" + "9" * 11
    allow = [{"device_serial": recorder.device_serial, "usb_serial": pin}]
    if not pinned_right:
        # Its USB serial is pinned, by another entry: it gets the password, says which recorder it
        # is, and that recorder's entry pins another USB serial.
        allow.append({"device_serial": "9999999", "usb_serial": recorder.usb_serial})
    # The harness's station clock is "trusted": 校时 is wanted for a recorder 300 s slow.
    async with simulated_station(tmp_path, [recorder], recorders={"allow": allow}) as station:
        await station.dock_recorder(recorder.device_serial, 1)
        if pinned_right:
            await station.wait_results(1)
            assert abs(_device_offset_ms(station, recorder.device_serial)) < 1500, "control: 校时 happened"
            assert len(station.ledger("clock_set")) == 1
            return
        async with asyncio.timeout(20):
            while not station.ledger("refused"):
                await asyncio.sleep(0.05)
        await station.agent.idle()
        refused = station.ledger("refused")[0]
        assert "USB serial" in refused["reason"] and pin in refused["reason"]
        # On the device's side: its clock still runs 300 s slow, so no SET_CLOCK ever reached it.
        assert abs(_device_offset_ms(station, recorder.device_serial) - OFFSET_S * 1000) < 1500
        assert station.ledger("clock_set") == [] and station.ledger("clock_measured") == []
        assert station.ledger("acquired") == []


@pytest.mark.parametrize("synchronised", [True, False], ids=["chrony-synchronised", "chrony-not"])
async def test_auto_sets_the_recorder_clock_only_when_a_source_says_synchronised(
    tmp_path: Path, synchronised: bool
) -> None:
    chronyc = FakeChronyc(tmp_path / "chrony")
    if not synchronised:
        chronyc.set(leap="Not synchronised", reference_id="00000000", name="", stratum=0)
    recorder = spec(0, clock_offset_s=OFFSET_S)
    async with simulated_station(
        tmp_path,
        [recorder],
        station={"clock": "auto"},
        time_sync={"chronyc": str(chronyc.path), "command_timeout_s": 10},
    ) as station:
        await station.dock_recorder(recorder.device_serial, 1)
        await station.wait_results(1)
        measured = station.ledger("clock_measured")[0]
        assert measured["station_clock"]["source"] == "chrony"
        assert measured["station_synchronised"] is synchronised
        assert measured["station_clock"]["trusted"] is synchronised
        offset_now = _device_offset_ms(station, recorder.device_serial)
        started = station.ledger("session_started")[0]["clock"]
    assert started["station_clock_source"] == "chrony"
    if synchronised:
        assert abs(offset_now) < 1500 and started["clock_set"] is True
    else:
        assert abs(offset_now - OFFSET_S * 1000) < 1500 and started["clock_set"] is False
    for path in (tmp_path / "store").rglob("*.manifest.json"):
        time_block = json.loads(path.read_bytes())["time"]
        assert time_block["station_clock_source"] == "chrony"
        assert time_block["station_clock_synchronised"] is synchronised
        assert "device_clock_offset_estimate" not in time_block, "measured, not estimated"
