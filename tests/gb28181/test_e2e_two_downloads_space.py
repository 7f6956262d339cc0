"""Two devices' downloads at once on a station whose disk has room for one: end to end, a real station agent
(tests/station/harness.py) and two real device simulators (simulators/gb28181) over real sockets. The first
device's stream pauses halfway (`stall`), its booking still holding what it has to write; the second device
registers meanwhile: its download is refused up front (no INVITE for it), with a `store` ledger entry naming
the download in progress, and its recording stays on the device; the first is received whole and sealed.
Control: with room for both, both are downloaded and sealed.

The spool's disk is the rig's model (tests/gb28181/disk_rig.py `ModelDisk`, behind the receiver's and the
downloads' seams) sized from the recording's FileSize as the simulator lists it; the harness keeps no store
reserve, so a download books its FileSize once (edge.sources.gb28181.download_space)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.sources.gb28181.scheduler import GB28181_SPOOL_DIR
from edge.station import StationAgent
from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.media import generate_recordings
from simulators.gb28181.settings import DeviceSettings, parse_faults
from tests.gb28181.disk_rig import ModelDisk
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require
from tests.station.harness import Station, simulated_station

PLATFORM_ID = "34020000002000000001"
FIRST = "34020000001320000041"
SECOND = "34020000001320000042"
PASSWORD = "weak-5678"
STALL_S = 20.0  # the first stream's pause: the second device registers and is refused within it
BOOKED_BY_A_DOWNLOAD = "booked by 1 download(s) in progress"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """One recording (the same for both devices) and its size as the simulator lists it (FileSize)."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    media = tmp_path_factory.mktemp("gb-media")
    device_now = (datetime.now(UTC) + timedelta(hours=8)).replace(tzinfo=None, microsecond=0)
    [made] = generate_recordings(media, 1, start=device_now - timedelta(hours=2), seconds=4.0, size="320x240",
                                 rate=10, video_bitrate="400k")
    return media, made.stat().st_size


def gb_section(tmp_path: Path) -> dict[str, Any]:
    password_file = tmp_path / "gb-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    devices = {device_id: {"password": f"file:{password_file}", "media_transport": "tcp-passive"}
               for device_id in (FIRST, SECOND)}
    return {"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0, "sip_id": PLATFORM_ID,
            "devices": devices, "download": {"media_host": "127.0.0.1", "idle_timeout_s": 60, "speed": 1}}


async def device(agent: StationAgent, media: Path, device_id: str, faults: list[str]) -> SimulatedDevice:
    assert agent.gb28181 is not None
    async with asyncio.timeout(20):
        await agent.gb28181.started.wait()
    return SimulatedDevice(DeviceSettings(
        platform_host="127.0.0.1", platform_port=agent.gb28181.transport.port, platform_id=PLATFORM_ID,
        device_id=device_id, password=PASSWORD, media_dir=media, keepalive_interval_s=30.0,
        faults=parse_faults(faults)))


async def until(condition: Any, timeout_s: float, what: str) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)
    assert condition(), what


def progress_of(station: Station, device_id: str) -> dict[str, Any]:
    downloads: dict[str, Any] = station.agent.status.sections["gb28181"]()["downloads"]
    progress: dict[str, Any] = downloads.get(device_id, {})
    return progress


Passes = tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], int]


async def _two_devices(recordings: tuple[Path, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       level_in_file_sizes: float) -> Passes:
    """The first device's download, paused halfway; the second device's whole pass meanwhile; then the
    first's end. The first's progress, the second's when its pass during the first's download ended (the
    first's end asks it a new pass: review revgb), the `store` error entries, and the bookings left once the
    station stopped."""
    media, file_size = recordings
    async with simulated_station(tmp_path / "st", [], gb28181=gb_section(tmp_path)) as station:
        agent = station.agent
        scheduler = agent.gb28181_downloads
        assert scheduler is not None and agent.pipeline is not None
        spool = Path(agent.config.station.store_dir) / GB28181_SPOOL_DIR
        ModelDisk(spool, int(level_in_file_sizes * file_size)).install(monkeypatch)
        first = await device(agent, media, FIRST, [f"stall={STALL_S:g}"])
        second = await device(agent, media, SECOND, [])
        runners = [asyncio.ensure_future(first.run())]
        try:
            await until(lambda: progress_of(station, FIRST).get("state") == "downloading"
                        and any(p.stat().st_size for p in spool.glob("download-*.ps")), 60,
                        "the first download is under way")
            runners.append(asyncio.ensure_future(second.run()))
            await until(lambda: progress_of(station, SECOND).get("last_pass_at") is not None, 60,
                        "the second device's pass ended")
            second_pass = dict(progress_of(station, SECOND))
            await until(lambda: progress_of(station, FIRST).get("last_pass_at") is not None, 120,
                        "the first device's pass ended")
        finally:
            for simulated in (first, second):
                await simulated.close()
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
        refusals = [e for e in station.ledger("error") if e.get("stage") == "store"]
        first_progress = progress_of(station, FIRST)
    # Once stopped: a pass the first's end asked for the second may still have been under way before.
    booked_left = len(agent.pipeline.kept_space.booked())
    return first_progress, second_pass, refusals, booked_left


async def test_the_second_device_s_download_waits_while_the_first_needs_the_space(
        recordings: tuple[Path, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, refusals, booked_left = await _two_devices(recordings, tmp_path, monkeypatch, 1.7)
    assert first["done"] == 1 and first["incomplete"] == 0 and first["interrupted"] == 0, first
    assert second["done"] == 0 and second["waiting_for_room"] == 1 and second["failed"] == 0, second
    [refusal] = refusals
    assert refusal["device_id"] == SECOND and BOOKED_BY_A_DOWNLOAD in refusal["reason"], refusal
    assert booked_left == 0


async def test_control_with_room_for_both_both_are_downloaded(
        recordings: tuple[Path, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, refusals, booked_left = await _two_devices(recordings, tmp_path, monkeypatch, 6.0)
    assert first["done"] == 1 and first["incomplete"] == 0 and first["interrupted"] == 0, first
    assert second["done"] == 1 and second["waiting_for_room"] == 0, second
    assert refusals == [] and booked_left == 0
