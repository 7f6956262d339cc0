"""Review 16: with `time_sync` (the default) the 200 OK of a registration carries Date, the device sets its
clock from it (9.10.3), and only then, in the description that follows, is DeviceStatus asked: the offset
measured is the one after the station set the clock (about 0). The recordings then downloaded were made
before, under the old clock, yet their manifests carry that post-sync `device_clock_offset_ms`; the offset
the device's clock actually had (a recorder whose RTC reset after a battery swap: a year off) is never
measured, so nothing on the record says the recordings' times are wrong. Real platform and sockets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from drivers.gb28181.sip import SipResponse
from edge.gb28181.platform import GbPlatform

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000016"
PASSWORD = "12345678"
BEIJING = timedelta(hours=8)
YEAR = timedelta(days=365)


class SyncingDevice(TestDevice):
    """A recorder that sets its clock from a registration's Date, as the standard says devices do."""

    async def register(self, **kw: object) -> SipResponse:
        answer = await super().register(**kw)  # type: ignore[arg-type]
        date = answer.headers.get("Date")
        if answer.status == 200 and date:
            self.device_time = datetime.strptime(date, "%Y-%m-%dT%H:%M:%S.%f").replace(microsecond=0)
        return answer


async def _measured_offsets(time_sync: bool) -> list[float]:
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, describe_devices=True, time_sync=time_sync),
                          record=ledger, clock_trusted=lambda: True, clock=FakeClock())
    await platform.start()
    a_year_behind = (datetime.now(UTC) + BEIJING - YEAR).replace(tzinfo=None, microsecond=0)
    device = await SyncingDevice(DEVICE, PASSWORD, platform.transport.port, device_time=a_year_behind).start()
    try:
        assert (await device.register()).status == 200
        while platform._tasks:  # the description runs beside the registration
            await asyncio.gather(*list(platform._tasks))
        return [entry["offset_s"] for entry in ledger.of("clock_measured")]
    finally:
        await device.close()
        await platform.close()


async def test_the_device_clocks_offset_before_the_station_set_it_is_on_the_record() -> None:
    offsets = await _measured_offsets(time_sync=True)
    assert any(abs(o + YEAR.total_seconds()) < 60 for o in offsets), \
        f"offsets on the ledger {offsets}: the year the recordings' clock was off is nowhere"


async def test_control_without_time_sync_the_offset_is_measured() -> None:
    offsets = await _measured_offsets(time_sync=False)
    assert any(abs(o + YEAR.total_seconds()) < 60 for o in offsets), offsets
