"""Downloads end to end: a real station agent (tests/station/harness.py) runs the platform and its download
scheduler; the real device simulator (simulators/gb28181 SimulatedDevice, over real sockets) registers with
digest, answers Catalog and RecordInfo from its recordings (MP4 made by ffmpeg) and streams each one as PS
over RTP for s=Download, over UDP, TCP passive and TCP active. Each recording becomes two sealed items (raw
PS + MP4) whose MP4 has the source's duration and frame count (ffprobe); manifests name device, channel and
time range. Loss on the simulator gives a `gap` entry on the raw item; a restarted agent lists again and
downloads nothing twice; `edge verify` of the store is OK."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.station import StationAgent
from edge.verify.station import verify_store
from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.media import generate_recordings
from simulators.gb28181.settings import DeviceSettings, parse_faults
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.gb28181.test_platform_station import edge_cli
from tests.prerequisites import require
from tests.station.harness import simulated_station

PLATFORM_ID = "34020000002000000001"
DEVICE = "34020000001320000031"
CHANNEL = DEVICE[:10] + "131" + DEVICE[13:]
PASSWORD = "weak-5678"
SECONDS = 2.0
RATE = 10


def ffprobe(path: Path) -> tuple[float, int]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=nb_read_frames:format=duration", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout
    facts = json.loads(out)
    return float(facts["format"]["duration"]), int(facts["streams"][0]["nb_read_frames"])


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    media = tmp_path_factory.mktemp("gb-media")
    device_now = (datetime.now(UTC) + timedelta(hours=8)).replace(tzinfo=None, microsecond=0)
    generate_recordings(media, 2, start=device_now - timedelta(hours=2), seconds=SECONDS, size="320x240",
                        rate=RATE, spacing=timedelta(minutes=10))
    return media


def gb_section(tmp_path: Path, transport: str) -> dict[str, Any]:
    password_file = tmp_path / "gb-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    return {"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0, "sip_id": PLATFORM_ID,
            "devices": {DEVICE: {"password": f"file:{password_file}", "name": "记录仪 31",
                                 "media_transport": transport}},
            "download": {"media_host": "127.0.0.1", "idle_timeout_s": 3, "speed": 4}}


async def device_for(agent: StationAgent, media: Path, **overrides: Any) -> SimulatedDevice:
    assert agent.gb28181 is not None
    async with asyncio.timeout(20):
        await agent.gb28181.started.wait()
    values: dict[str, Any] = dict(platform_host="127.0.0.1", platform_port=agent.gb28181.transport.port,
                                  platform_id=PLATFORM_ID, device_id=DEVICE, password=PASSWORD,
                                  media_dir=media, keepalive_interval_s=30.0)
    values.update(overrides)
    return SimulatedDevice(DeviceSettings(**values))


async def one_pass(agent: StationAgent, device: SimulatedDevice, timeout_s: float = 90) -> dict[str, Any]:
    """Runs `device` until the agent's scheduler finished a pass over it; its progress then."""
    assert agent.gb28181_downloads is not None
    scheduler = agent.gb28181_downloads
    before = scheduler.passes_done
    runner = asyncio.ensure_future(device.run())
    try:
        async with asyncio.timeout(timeout_s):
            async with scheduler.pass_ended:
                await scheduler.pass_ended.wait_for(lambda: scheduler.passes_done > before)
    finally:
        await device.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    progress: dict[str, Any] = agent.status.sections["gb28181"]()["downloads"][DEVICE]
    return progress


def sealed(store: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Each sealed item's file and its manifest (from the sidecar)."""
    found = []
    for sidecar in sorted((store / "items").rglob("*.manifest.json")):
        document = json.loads(sidecar.read_text())
        found.append((sidecar.with_name(sidecar.name.removesuffix(".manifest.json")),
                      document.get("manifest", document)))
    return found


def manifests(store: Path) -> list[dict[str, Any]]:
    return [manifest for _, manifest in sealed(store)]


@pytest.mark.parametrize("transport", ["udp", "tcp-passive", "tcp-active"])
async def test_recordings_are_downloaded_sealed_and_not_twice(
        recordings: Path, tmp_path: Path, transport: str) -> None:
    section = gb_section(tmp_path, transport)
    api_dir = Path(tempfile.mkdtemp(prefix="edge-gb-", dir="/tmp"))  # a socket path holds 107 bytes
    socket_path = api_dir / "station.sock"
    try:
        async with simulated_station(tmp_path / "first", [], gb28181=section,
                                     api={"socket_path": str(socket_path)}) as station:
            started = time.monotonic()
            progress = await one_pass(station.agent, await device_for(station.agent, recordings))
            took_s = time.monotonic() - started
            config = station.config
            sealed_entries = len(station.ledger("sealed"))
            code, shown, err = await edge_cli("gb28181", "devices", "--socket", str(socket_path))
    finally:
        shutil.rmtree(api_dir, ignore_errors=True)
    assert code == 0, err
    assert "    downloads: idle; 2 done, 0 already sealed, 0 failed, 0 incomplete, last pass 20" in shown
    assert progress["done"] == 2 and progress["failed"] == 0 and progress["skipped"] == 0, progress
    assert progress["incomplete"] == 0 and progress["state"] == "idle"
    store = Path(config.station.store_dir)
    found = manifests(store)
    assert sorted(m["original"]["role"] for m in found) == ["mp4", "mp4", "raw-ps", "raw-ps"]
    sources = sorted(recordings.glob("*.mp4"))
    for manifest in found:
        assert manifest["source"]["kind"] == "gb28181"
        assert manifest["source"]["device_id"] == DEVICE and manifest["source"]["channel_id"] == CHANNEL
        assert manifest["original"]["name"] in {p.name for p in sources}
        times = json.loads((recordings / (manifest["original"]["name"] + ".json")).read_text())
        assert manifest["time"]["recorded_start"] == times["start"]
        assert manifest["time"]["recorded_end"] == times["end"]
    for path, manifest in sealed(store):
        if manifest["original"]["role"] != "mp4":
            continue
        duration, frames = ffprobe(path)
        source_duration, source_frames = ffprobe(recordings / manifest["original"]["name"])
        assert frames == source_frames == int(SECONDS * RATE)
        assert abs(duration - source_duration) < 1.5 / RATE
    raw_facts = [m for m in found if m["original"]["role"] == "raw-ps"]
    assert all(m["original"]["transport"] == transport for m in raw_facts)
    assert all(m["original"]["complete"] is True and "incomplete" not in m["original"] for m in raw_facts)
    print(f"\n{transport}: 2 recordings downloaded, sealed in {took_s:.1f} s (incl. register and conversion)",
          file=sys.stderr)

    # A restart lists again and downloads nothing twice.
    async with simulated_station(tmp_path / "second", [], agent_config=config) as station:
        again = await one_pass(station.agent, await device_for(station.agent, recordings))
        assert len(station.ledger("sealed")) == sealed_entries == 4  # the same ledger: nothing new sealed
    assert again["skipped"] == 2 and again["done"] == 0 and again["failed"] == 0, again
    assert len(manifests(store)) == 4
    report = verify_store(store)
    assert report.ok, report.problems


async def test_loss_on_the_wire_is_a_recorded_gap(recordings: Path, tmp_path: Path) -> None:
    section = gb_section(tmp_path, "udp")
    async with simulated_station(tmp_path / "st", [], gb28181=section) as station:
        device = await device_for(station.agent, recordings, faults=parse_faults(["loss=0.05"]), seed=7)
        progress = await one_pass(station.agent, device)
        gaps = [e for e in station.ledger("gap") if e.get("device_id") == DEVICE]
        config = station.config
    assert progress["done"] == 2, progress
    assert gaps and all(g["lost_packets"] > 0 and g["rtp_ranges"] for g in gaps)
    store = Path(config.station.store_dir)
    raw = [m for m in manifests(store) if m["original"]["role"] == "raw-ps"]
    assert raw and all(m["original"]["gaps"] for m in raw)  # the manifest says where bytes are missing
    report = verify_store(store)
    assert report.ok, report.problems


async def test_the_control_without_loss_records_no_gap(recordings: Path, tmp_path: Path) -> None:
    async with simulated_station(tmp_path / "st", [], gb28181=gb_section(tmp_path, "udp")) as station:
        progress = await one_pass(station.agent, await device_for(station.agent, recordings))
        assert progress["done"] == 2
        assert [e for e in station.ledger("gap") if e.get("device_id") == DEVICE] == []


async def test_a_stream_that_dies_halfway_is_sealed_as_incomplete(recordings: Path, tmp_path: Path) -> None:
    """The device stops streaming halfway (no 121, the media goes idle): what came is sealed, and the
    manifest and the ledger say the recording is incomplete; the control above has `incomplete == 0`."""
    async with simulated_station(tmp_path / "st", [], gb28181=gb_section(tmp_path, "udp")) as station:
        device = await device_for(station.agent, recordings, faults=parse_faults(["die-mid-stream"]))
        progress = await one_pass(station.agent, device)
        media = [e for e in station.ledger("error") if e.get("stage") == "media"]
        config = station.config
    assert progress["done"] == 2 and progress["incomplete"] == 2, progress
    raw = [m for m in manifests(Path(config.station.store_dir)) if m["original"]["role"] == "raw-ps"]
    assert len(raw) == 2 and all(m["original"]["complete"] is False for m in raw)
    # Half of a 2-s recording is within the span's tolerance (2 s: RecordInfo's whole seconds and a frame,
    # review 17), so what says it is short here is the bytes against the device's a=filesize.
    assert all("the device announced a=filesize" in m["original"]["incomplete"] for m in raw)
    assert len(media) == 2 and all(e["reason"].startswith("incomplete: ") for e in media)


async def test_a_device_that_leaves_mid_pass_gets_the_rest_downloaded_when_it_is_back(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The device unregisters while its recordings download: its pass ends without an error per recording
    left; at its next registration the pass lists again and downloads only what is not sealed."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    media = tmp_path_factory.mktemp("gb-media-three")
    device_now = (datetime.now(UTC) + timedelta(hours=8)).replace(tzinfo=None, microsecond=0)
    generate_recordings(media, 3, start=device_now - timedelta(hours=2), seconds=SECONDS, size="320x240",
                        rate=RATE, spacing=timedelta(minutes=10))
    async with simulated_station(tmp_path / "st", [], gb28181=gb_section(tmp_path, "tcp-passive")) as station:
        scheduler = station.agent.gb28181_downloads
        assert scheduler is not None
        device = await device_for(station.agent, media, faults=parse_faults(["slow"]))
        runner = asyncio.ensure_future(device.run())
        try:
            await station.wait_ledger("sealed", count=2, timeout_s=60)  # the first recording is in
        finally:
            await device.close()  # unregisters: offline, its session stopped
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        async with asyncio.timeout(60):
            async with scheduler.pass_ended:
                await scheduler.pass_ended.wait_for(lambda: scheduler.passes_done >= 1)
        first = dict(scheduler.snapshot()[DEVICE])
        assert first["failed"] == 0 and "offline" in (first["last_problem"] or ""), first
        # The recordings left are not each an error; at most the one whose session the leaving cut short
        # before any media came (when the device closes its media before its REGISTER Expires: 0 arrives).
        assert len([e for e in station.ledger("error") if e.get("stage") == "download"]) <= 1
        again = await one_pass(station.agent, await device_for(station.agent, media))
        store = Path(station.config.station.store_dir)
    raw = [m for m in manifests(store) if m["original"]["role"] == "raw-ps"]
    complete = [m for m in raw if m["original"]["complete"]]
    assert len({m["original"]["name"] for m in complete}) == len(complete) == 3  # each recording, once whole
    # One cut short by the device leaving is sealed as it came, and was downloaded again as attempt 2.
    assert all(m["original"]["incomplete"] for m in raw if not m["original"]["complete"])
    assert {m["original"].get("attempt", 1) for m in complete} <= {1, 2}
    assert again["failed"] == 0 and again["skipped"] >= 1
