"""Review revgb of branch gbbook (a GB/T 28181 download books its expected size in the store's one booking
ledger, edge.sources.gb28181.download_space): what that booking does to the writers that cannot wait or
that matter more than a download.

Before gbbook a download booked nothing: its receiver's guard kept free what the rooms hold and what docking
copies booked, so a room's start and a docking copy always came first and the download was the one cut
(issue 11: a download can wait on its device; an interview cannot). Now a download's booking (four times
its listed FileSize with a reserve, a size the device chooses, up to 4 x max_recording_mb) is counted by a
room's start (edge.rooms.service `start`: every booking) and by a docking copy's check (every booking made
before its own), for the whole session (up to 10 x the listed length + 60 s for a device trickling 10 % of
real time). A device whose session is open and slow (a 4G link, or hostile) makes the station refuse an
interview room's start, and a body-worn camera's offload, on space the download would have yielded.

Real pipeline, store, room service (ffmpeg lavfi source) and docking copy through the pipeline; the disk is
the rig's model behind the seams that read it (tests/gb28181/disk_rig.py), the same figure for every
writer. The device is a fake at the platform's seam (`start_download`): its session is open and sends
nothing until the test ends. Controls: the same start and copy with no download in progress pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import edge.ingest.pipeline as pipeline_module
import edge.rooms.service as service_mod
import edge.sources.gb28181.downloads as downloads_module
from edge.custody.ledger import EntryType
from edge.gb28181.media import ROOM_PER_RECEIVED_BYTE
from edge.ingest.pipeline import IngestOutcome
from edge.rooms.service import RoomRefused, RoomService
from edge.sources.gb28181 import GbDownloads, RecordingRef, Transfer
from edge.sources.gb28181.downloads import WindowClosed
from edge.sources.gb28181.scheduler import GB28181_SPOOL_DIR
from edge.sources.local import LocalDirectory
from simulators.gb28181.media import generate_recordings
from tests.gb28181.disk_rig import RESERVE, ModelDisk, new_spool, station_downloads
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.gb28181.test_e2e_two_downloads_space import (
    FIRST,
    SECOND,
    STALL_S,
    device,
    gb_section,
    progress_of,
    until,
)
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.prerequisites import require
from tests.rooms.conftest import lavfi_source, rooms_config
from tests.rooms.rig import running
from tests.rooms.test_attach_export import FIELDS
from tests.station.harness import simulated_station
from tests.station.test_ingest_sources import CASE

MIB = 1 << 20
LISTED = 256 * MIB  # the recording's FileSize as the device lists it
PER_BYTE = ROOM_PER_RECEIVED_BYTE + 1  # what the download books per listed byte with a reserve
ROOM_START = 24 * MIB  # [rooms] start_min_free_bytes
# Room for the download's booking and 4 MiB more: room for a room's start (24 MiB + the 5 MiB margin of
# tests/rooms/conftest.py) or a docking copy (8 MiB) only if the download yields (it has written nothing).
LEVEL = RESERVE + PER_BYTE * LISTED + 4 * MIB
WAIT_S = 120.0


@contextlib.asynccontextmanager
async def a_slow_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, download: bool
                          ) -> AsyncIterator[tuple[GbDownloads, ModelDisk]]:
    """A device's download whose session is open and sends nothing yet (a 4G recorder on a slow link), for
    the block; `download` False: no download at all (the control)."""
    spool = new_spool(tmp_path)
    disk = ModelDisk(spool, LEVEL)
    disk.install(monkeypatch)
    started, gate = asyncio.Event(), asyncio.Event()

    async def start_download(_ref: RecordingRef, _raw: Path) -> Transfer:
        started.set()
        await asyncio.wait_for(gate.wait(), 3 * WAIT_S)
        raise WindowClosed("the test ends the session here")

    async with station_downloads(tmp_path, spool, start_download) as downloads:
        task = asyncio.ensure_future(downloads.download([replace(RECORDING, file_size_bytes=LISTED)])) \
            if download else None
        try:
            if task is not None:
                await asyncio.wait_for(started.wait(), WAIT_S)
                assert downloads.booked_space is not None and downloads.booked_space.passed, "admitted"
            yield downloads, disk
        finally:
            gate.set()
            if task is not None:
                await asyncio.wait_for(task, WAIT_S)


async def _room_start(downloads: GbDownloads, disk: ModelDisk, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """A room's start on the same store's disk: None when it started (then stopped), else the refusal."""
    monkeypatch.setattr(service_mod, "free_bytes", lambda _path: disk.free())
    service = RoomService(rooms_config(lavfi_source("a"), start_min_free_bytes=ROOM_START),
                          downloads.pipeline.store, downloads.pipeline, station_id="TEST-STATION")
    service.load()
    async with running(service):
        try:
            await service.start("xw-1", FIELDS, by="op")
        except RoomRefused as exc:
            return str(exc)
        await service.stop("xw-1", by="op")
        return None


@pytest.mark.parametrize("download", [True, False], ids=["download-in-progress", "control-no-download"])
async def test_a_slow_download_s_booking_never_refuses_an_interview_room_s_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, download: bool) -> None:
    """HIGH. A room's start counts every booking (edge.rooms.service), the download's four times its listed
    FileSize among them, for as long as the session lasts; the room is refused 507 on space the download
    would have given up (its guard keeps the room's hold and cuts itself). Rooms come before downloads."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    async with a_slow_download(tmp_path, monkeypatch, download=download) as (downloads, disk):
        refused = await _room_start(downloads, disk, monkeypatch)
    assert refused is None, f"an interview room's start was refused for a GB/T 28181 download: {refused}"


@pytest.mark.parametrize("download", [True, False], ids=["download-in-progress", "control-no-download"])
async def test_a_slow_download_s_booking_never_refuses_a_docking_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, download: bool) -> None:
    """MEDIUM. A docking copy's check counts every booking made before its own: a download whose session is
    open (a slow 4G link, a device trickling 10 % of real time for up to 10 x its listed length) refuses a
    body-worn camera's offload on space the download's guard would have yielded to it before gbbook."""
    drop = tmp_path / "BWC0001"
    drop.mkdir()
    (drop / "BWC0001.MP4").write_bytes(os.urandom(8 * MIB))
    source = LocalDirectory(drop, label="BWC0001", station_id="TEST-STATION", case=CASE,
                            collector_no="110002")
    async with a_slow_download(tmp_path, monkeypatch, download=download) as (downloads, disk):
        monkeypatch.setattr(pipeline_module, "free_bytes", lambda _path: disk.free())
        report = await asyncio.wait_for(downloads.pipeline.ingest(source, source.listing().items), WAIT_S)
        refusals = [e.data for e in downloads.pipeline.store.ledger.entries() if "BWC0001" in str(e.data)
                    and e.type == EntryType.ERROR]
    assert report.outcome == IngestOutcome.DONE and len(report.sealed) == 1, (
        f"a docking copy was refused for a GB/T 28181 download's booking: {report.outcome}")
    assert refusals == [], refusals


@pytest.mark.parametrize("when", ["during-its-check", "control-after-its-check"])
async def test_a_booking_its_own_check_gives_up_never_refuses_a_room_s_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """LOW. A hostile FileSize (2**62) books 4 x max_recording_mb (32 GiB by default) before its check reads
    the disk; alone, its check then books nothing (never admitted: review revs13a). A room's start in
    between (the check's statvfs, slow on a loaded disk) counts the booking its check gives up and is
    refused. Control: the same download once its check is done (session open, booking nothing)."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    spool = new_spool(tmp_path)
    disk = ModelDisk(spool, LEVEL)
    disk.install(monkeypatch)
    in_check, go, in_session = threading.Event(), threading.Event(), asyncio.Event()
    reads = 0

    def free_bytes(_path: Path) -> int:
        nonlocal reads
        reads += 1
        if reads == 2 and when == "during-its-check":  # the first is _ensure_room's, the second the check's
            in_check.set()
            go.wait(WAIT_S)
        return disk.free()

    monkeypatch.setattr(downloads_module, "free_bytes", free_bytes)

    async def start_download(_ref: RecordingRef, _raw: Path) -> Transfer:
        in_session.set()
        await asyncio.to_thread(go.wait, WAIT_S)
        raise WindowClosed("the test ends the session here")

    async with station_downloads(tmp_path, spool, start_download) as downloads:
        task = asyncio.ensure_future(downloads.download([replace(RECORDING, file_size_bytes=1 << 62)]))
        try:
            if when == "during-its-check":
                assert await asyncio.to_thread(in_check.wait, WAIT_S)
                assert [b.remaining for b in downloads.pipeline.kept_space.booked()] == [
                    PER_BYTE * downloads.max_recording_bytes]
            else:
                await asyncio.wait_for(in_session.wait(), WAIT_S)
                assert downloads.booked_space is not None and not downloads.booked_space.passed
            refused = await _room_start(downloads, disk, monkeypatch)
        finally:
            go.set()
            await asyncio.wait_for(task, WAIT_S)
    assert refused is None, f"a room's start was refused for a booking its own check gives up: {refused}"


async def test_a_device_refused_for_another_s_booking_is_downloaded_once_that_booking_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, e2e_recordings: tuple[Path, int]) -> None:
    """MEDIUM. End to end (real agent, two simulated devices over real sockets; tests/gb28181/
    test_e2e_two_downloads_space.py's setting): the second device is refused up front while the first's
    download holds its booking, and its pass ends. Its "next pass" comes only when it comes online again
    (edge.gb28181.platform's online listener fires on a transition; REGISTER refreshes and keepalives are
    none; policy on-registration): a recorder that stays registered keeps its recording on the device for
    days, though the first download ended a minute later. Control: test_e2e_two_downloads_space's room for
    both (the second is downloaded in the same setting)."""
    media, file_size = e2e_recordings
    async with simulated_station(tmp_path / "st", [], gb28181=gb_section(tmp_path)) as station:
        agent = station.agent
        assert agent.gb28181_downloads is not None
        spool = Path(agent.config.station.store_dir) / GB28181_SPOOL_DIR
        ModelDisk(spool, int(1.7 * file_size)).install(monkeypatch)
        first = await device(agent, media, FIRST, [f"stall={STALL_S:g}"])
        second = await device(agent, media, SECOND, [])
        runners = [asyncio.ensure_future(first.run())]
        try:
            await until(lambda: progress_of(station, FIRST).get("state") == "downloading"
                        and any(p.stat().st_size for p in spool.glob("download-*.ps")), 60,
                        "the first download is under way")
            runners.append(asyncio.ensure_future(second.run()))
            await until(lambda: progress_of(station, SECOND).get("waiting_for_room") == 1, 60,
                        "the second device was refused up front")
            await until(lambda: progress_of(station, FIRST).get("done") == 1, 120, "the first downloaded")
            # The first's bookings have ended; the second's download may hold its own by now (asked at once).
            assert agent.pipeline is not None
            assert all(SECOND in b.what for b in agent.pipeline.kept_space.booked())
            # Both devices stay registered (keepalives): the disk has room for the second's recording now.
            with contextlib.suppress(TimeoutError):
                await until(lambda: progress_of(station, SECOND).get("done") == 1, 150, "")
            second_progress = progress_of(station, SECOND)
            assert agent.gb28181 is not None
            registered = agent.gb28181.registry.get(SECOND)
            assert registered is not None and registered.online, "the second device stayed registered"
        finally:
            for simulated in (first, second):
                await simulated.close()
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
    assert second_progress.get("done") == 1, (
        f"the refused device's recording was never downloaded while it stayed online: {second_progress}")


@pytest.fixture(scope="module")
def e2e_recordings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """As test_e2e_two_downloads_space's `recordings`: one recording and its FileSize as listed."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    media = tmp_path_factory.mktemp("gb-media")
    device_now = (datetime.now(UTC) + timedelta(hours=8)).replace(tzinfo=None, microsecond=0)
    [made] = generate_recordings(media, 1, start=device_now - timedelta(hours=2), seconds=4.0, size="320x240",
                                 rate=10, video_bitrate="400k")
    return media, made.stat().st_size
