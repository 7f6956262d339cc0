"""An out-of-dialog MediaStatus 121 is taken only from exactly where the device registered (transport,
host, port): from another port of its host (a carrier NAT's neighbour) it is answered 403, counted, and on
the ledger once a minute at most; the download goes on. Real platform, real UDP sockets."""

from __future__ import annotations

from pathlib import Path

from drivers.gb28181.manscdp import build_media_status
from drivers.gb28181.sdp import SessionKind
from edge.gb28181.platform import GbPlatform
from edge.gb28181.sessions import EndReason, MediaRequest

from .platform_peer import FakeClock, Ledger, ReceiverFactory, TestDevice, platform_settings

DEVICE = "34020000001320000016"
CHANNEL = "34020000001310000016"
PASSWORD = "12345678"


async def test_a_foreign_121_is_refused_counted_and_limited_on_the_ledger_and_the_devices_own_ends_it(
        tmp_path: Path) -> None:
    ledger, clock = Ledger(), FakeClock()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=ledger, clock_trusted=lambda: True,
                          clock=clock, open_receiver=ReceiverFactory())
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    neighbour = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()  # same host, other port
    try:
        assert (await device.register()).status == 200
        session = await platform.start_session(MediaRequest(
            DEVICE, CHANNEL, SessionKind.DOWNLOAD, "udp", tmp_path / "raw.ps", 1_764_550_800, 1_764_551_100))
        for _ in range(3):
            assert (await neighbour.message(build_media_status(90, DEVICE))).status == 403
        assert session.end_reason is None
        assert platform.counters["media_status_refused"] == 3
        [entry] = [e for e in ledger.of("refused") if "MediaStatus" in e["reason"]]
        assert entry["address"] == f"udp:127.0.0.1:{neighbour.sip.port}"  # type: ignore[union-attr]
        clock.now += 61
        assert (await neighbour.message(build_media_status(91, DEVICE))).status == 403
        later = [e for e in ledger.of("refused") if "MediaStatus" in e["reason"]]
        assert len(later) == 2 and later[1]["repeats_not_recorded"] == 2
        # Control: the device's own, from where it registered, ends the download.
        assert (await device.message(build_media_status(92, DEVICE))).status == 200
        assert session.end_reason is EndReason.FILE_END
        await session.wait()
    finally:
        await neighbour.close()
        await device.close()
        await platform.close()
