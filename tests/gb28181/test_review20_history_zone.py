"""Review 20 (LOW): the saved clock history (review 17 finding 11) does not record the zone its offsets were
measured in, so after the devices' zone is corrected (`utc_offset_minutes`: an installer finds the
recorders keep UTC, not Beijing time) and the agent restarted, recordings stamped before the station's
setting are sealed with an offset 8 h wrong.

An offset is device minus station, reading the device's zone-less DeviceTime in the configured zone. A
recorder keeping true UTC, read as Beijing time, is measured 8 h behind; that offset is saved with its
epoch. After the zone is set to UTC and the agent restarts, the same stamps are read as UTC (so they are
right: their offset is 0), but the restored epoch still gives them -8 h, and the manifest says
`device_tz_offset_min: 0` with `device_clock_offset_ms: -28800000`: a concrete wrong time. The file should
say its zone and a history of another zone be taken as lost (`before-history`), never applied.

Real platform, SIP sockets, history directory; two runs over the same directory."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.gb28181.sip import SipResponse
from drivers.gb28181.sip_transport import Peer
from edge.gb28181.platform import GbPlatform

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000027"
PASSWORD = "12345678"
EIGHT_HOURS_MS = 8 * 3600 * 1000
TOLERANCE_MS = 60_000


class SyncingDevice(TestDevice):
    """A recorder that sets its clock from a registration's Date (GB/T 28181 9.10.3)."""

    async def register(self, **kw: object) -> SipResponse:
        answer = await super().register(**kw)  # type: ignore[arg-type]
        date = answer.headers.get("Date")
        if answer.status == 200 and date:
            self.device_time = datetime.strptime(date, "%Y-%m-%dT%H:%M:%S.%f").replace(microsecond=0)
        return answer


def _platform(ledger: Ledger, history: Path, zone_min: int) -> GbPlatform:
    return GbPlatform(platform_settings({DEVICE: PASSWORD}, describe_devices=True, time_sync=True,
                                        utc_offset_minutes=zone_min),
                      record=ledger, clock_trusted=lambda: True, clock=FakeClock(), clock_history_dir=history)


async def _settle(platform: GbPlatform) -> None:
    while platform._tasks:
        await asyncio.gather(*list(platform._tasks))


async def _offset_after_restart_in_zone(tmp_path: Path, zone_after_min: int) -> tuple[int | None, str | None]:
    """Run 1 (Beijing zone) measures a UTC recorder and sets its clock; run 2 (`zone_after_min`) gives the
    offset of a recording the recorder stamped 9 h before the setting, in true UTC."""
    history = tmp_path / "gb28181-clocks"
    ledger = Ledger()
    platform = _platform(ledger, history, 480)
    await platform.start()
    utc_now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    device = await SyncingDevice(DEVICE, PASSWORD, platform.transport.port, device_time=utc_now).start()
    try:
        assert (await device.register()).status == 200
        await _settle(platform)  # measured 8 h behind (UTC read as Beijing time)
        assert (await device.register()).status == 200  # Date: set
        await _settle(platform)
        assert ledger.of("clock_set"), "the station never set the device's clock"
        stamped = (utc_now - timedelta(hours=9)).isoformat()  # true UTC, before the setting
        await platform.close()
        platform = _platform(ledger, history, zone_after_min)  # the agent restarted, zone maybe corrected
        await platform.start()
        device.platform = Peer(device.platform.transport, "127.0.0.1", platform.transport.port)
        assert (await device.register()).status == 200
        await _settle(platform)
        return platform.device_clock_reading(DEVICE, stamped)
    finally:
        await device.close()
        await platform.close()


async def test_a_history_measured_in_another_zone_is_not_applied_after_a_restart(tmp_path: Path) -> None:
    offset_ms, why = await _offset_after_restart_in_zone(tmp_path, 0)
    assert offset_ms is None or abs(offset_ms) < TOLERANCE_MS, (
        f"after the zone was corrected to UTC, a recording the UTC recorder stamped right is given "
        f"{offset_ms} ms ({why}): the saved offset was measured reading it as Beijing time")


async def test_control_the_same_zone_after_the_restart_keeps_the_saved_offset(tmp_path: Path) -> None:
    offset_ms, _ = await _offset_after_restart_in_zone(tmp_path, 480)
    assert offset_ms is not None and abs(offset_ms + EIGHT_HOURS_MS) < TOLERANCE_MS


async def test_the_reason_is_zone_changed(tmp_path: Path) -> None:
    """The stamp before the restart gets no offset, with the reason `zone-changed` (not a guess)."""
    offset_ms, why = await _offset_after_restart_in_zone(tmp_path, 0)
    assert offset_ms is None and why == "zone-changed"


def test_a_file_of_version_1_or_another_zone_is_refused_for_a_zone() -> None:
    """Pure: the zone is written and checked; a version-1 file (no zone) is refused when a zone is asked,
    read when none is (control); the same zone is read."""
    from edge.gb28181.clock_history import ClockHistoryZoneChanged, decode, encode
    from edge.gb28181.registry import ClockEpoch

    epochs = [ClockEpoch(-60.0, ended_at_device_s=1_800_000_000.0), ClockEpoch(0.5, None, 1_800_000_060.0)]
    data = encode(DEVICE, epochs, None, utc_offset_minutes=480)
    assert decode(DEVICE, data, utc_offset_minutes=480) == (epochs, None)
    with pytest.raises(ClockHistoryZoneChanged):
        decode(DEVICE, data, utc_offset_minutes=0)
    old = json.loads(data)
    del old["utc_offset_minutes"]
    old["version"] = 1
    for epoch in old["epochs"]:
        del epoch["matched_at_s"]  # version 3's (review 21): versions 1 and 2 had no such field
    v1 = json.dumps(old).encode()
    assert decode(DEVICE, v1) == (epochs, None)
    with pytest.raises(ClockHistoryZoneChanged):
        decode(DEVICE, v1, utc_offset_minutes=480)
