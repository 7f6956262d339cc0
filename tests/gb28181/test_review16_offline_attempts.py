"""Review 16: a download that a device's going offline cut short (the platform stops the device's sessions
on its offline transition) is sealed incomplete and counts as one of the three attempts, exactly like a
device that sent a short file. A 4G recorder that drops off the network three times during a long
recording (or a station stopped three times mid-download) gets the recording given up for good; a
transfer with no byte in the same situation is "not the recording's fault" (scheduler: DeviceGone) and
costs nothing. Real media receiver over UDP, real pipeline and store; the platform is a seam."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.manscdp import AssembledAnswer, RecordItem
from edge.gb28181.media import MediaTransport, open_receiver
from edge.gb28181.sessions import EndReason, SessionResult
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.sources.gb28181.downloads import DeviceGone
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler
from tests.gb28181.media_sender import SourceMedia, ps_packs, rtp_packets, send_udp
from tests.gb28181.test_download_damage import SETTINGS, SSRC, media

__all__ = ["media"]  # the module fixture

DEVICE = "34020000001320000016"
CHANNEL = "34020000001310000016"
NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
ITEM = RecordItem(device_id=CHANNEL, name="rec", file_path="/sd/1.ps", address="",
                  start_time=datetime(2026, 12, 5, 19, 0), end_time=datetime(2026, 12, 5, 19, 0, 2),
                  secrecy=0, type="time")


class Platform:
    """A device that goes offline a third of the way through every download."""

    def __init__(self, packets: list[bytes], share: float) -> None:
        self.packets = packets[:int(len(packets) * share)]
        self.registry = {DEVICE: SimpleNamespace(online=True, clock_offset_s=0.0)}
        self.downloads = 0

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_catalog(self, device_id: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(device_id=CHANNEL)]

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        return AssembledAnswer(source=device_id, sn=1, cmd_type="RecordInfo", device_id=channel_id,
                               name="cam", sum_num=1, items=(ITEM,), complete=True, parts=1, duplicates=0)

    def device_time_to_unix(self, moment: str) -> int:
        return int((datetime.fromisoformat(moment).replace(tzinfo=UTC) - timedelta(hours=8)).timestamp())

    async def download(self, device_id: str, channel_id: str, start: str, end: str, raw_path: Path,
                       **_kw: Any) -> SessionResult:
        self.downloads += 1
        receiver = await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=(35000, 35999),
                                       ssrc=SSRC, raw_path=raw_path, idle_timeout_s=1.0, max_bytes=1 << 30)
        if self.packets:
            await send_udp(self.packets, receiver.local_port)
        self.registry[DEVICE].online = False  # the platform's offline transition: session.stop()
        outcome = await receiver.close()
        return SessionResult(call_id=f"c{self.downloads}", end_reason=EndReason.STOPPED, ssrc_offered=SSRC,
                             ssrc_answered=None, ssrc_answer_text=None, ssrc_used=SSRC, file_size_bytes=None,
                             outcome=outcome)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _four_passes(media: SourceMedia, store: StationStore, tmp_path: Path, share: float) -> int:
    platform = Platform(rtp_packets(ps_packs(media), ssrc=SSRC), share)
    pipeline = IngestPipeline(store, SETTINGS)
    policy = SimpleNamespace(
        wants_device=lambda _d: True, may_download_now=lambda _n: True,
        query_range=lambda now: (now - timedelta(days=1), now), channels_for=lambda _d, c: list(c),
        devices={}, transport_for=lambda _d: "udp", speed=1, utc_offset_minutes=480)
    scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: NOW)
    progress = DeviceProgress()
    for _ in range(4):  # the device registers again each time, and goes offline mid-transfer again
        platform.registry[DEVICE].online = True
        with contextlib.suppress(DeviceGone):
            await scheduler._pass(DEVICE, progress)
    return platform.downloads


async def test_downloads_cut_by_the_device_going_offline_do_not_use_up_the_attempts(
        media: SourceMedia, store: StationStore, tmp_path: Path) -> None:
    asked = await _four_passes(media, store, tmp_path, 1 / 3)
    assert asked == 4, f"asked {asked} times in 4 passes, then given up"


async def test_control_the_device_going_offline_before_a_byte_costs_no_attempt(
        media: SourceMedia, store: StationStore, tmp_path: Path) -> None:
    assert await _four_passes(media, store, tmp_path, 0) == 4
