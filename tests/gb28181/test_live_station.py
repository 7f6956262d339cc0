"""Live channels in a real station agent: [gb28181.live] configures `LiveStreams` beside the platform, its
channels show in the status (`gb28181.live`) and in `edge gb28181 devices` (a real subprocess over the API
socket), and its events go to the store's ledger; the real device simulator streams the Play."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from edge.gb28181.live import LiveEventKind
from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.settings import DeviceSettings
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.gb28181.test_platform_station import edge_cli
from tests.prerequisites import require
from tests.station.harness import simulated_station

from .live_env import CHANNEL, DEVICE, PASSWORD, make_recording, next_event

PLATFORM_ID = "34020000002000000001"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("live-station"))


async def test_the_agents_live_channel_shows_in_the_status_and_the_ledger(media: Path,
                                                                          tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="edge-live-", dir="/tmp"))  # a socket path holds 107 bytes
    password_file = tmp_path / "gb-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    socket_path = short / "station.sock"
    gb28181 = {"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0, "sip_id": PLATFORM_ID,
               "devices": {DEVICE: {"password": f"file:{password_file}", "download": False}},
               "download": {"enabled": False, "media_host": "127.0.0.1", "idle_timeout_s": 2},
               "live": {"socket_dir": str(short / "live"), "media_transport": "tcp-passive", "linger_s": 0.1}}
    try:
        async with simulated_station(tmp_path / "station", [], gb28181=gb28181,
                                     api={"socket_path": str(socket_path)}) as station:
            agent = station.agent
            assert agent.gb28181 is not None and agent.gb28181_live is not None
            async with asyncio.timeout(20):
                await agent.gb28181.started.wait()
            device = SimulatedDevice(DeviceSettings(
                platform_host="127.0.0.1", platform_port=agent.gb28181.transport.port,
                platform_id=PLATFORM_ID, device_id=DEVICE, password=PASSWORD, media_dir=media,
                keepalive_interval_s=30.0))
            run = asyncio.ensure_future(device.run())
            try:
                await station.wait_ledger("device_connected", where=lambda d: d.get("device_id") == DEVICE)
                async with agent.gb28181_live.open(DEVICE, CHANNEL) as handle:
                    assert handle.socket_path == short / "live" / f"{DEVICE}-{CHANNEL}.sock"
                    assert handle.transport == "tcp-passive"
                    reader = handle.reader()
                    await next_event(handle, LiveEventKind.STARTED)
                    assert len(await reader.read()) > 0
                    status = agent.status.sections["gb28181"]()
                    [channel] = status["live"][DEVICE]
                    assert channel["channel_id"] == CHANNEL and channel["state"] == "streaming"
                    assert channel["consumers"] == 1 and channel["interruptions"] == 0
                    code, out, err = await edge_cli("gb28181", "devices", "--socket", str(socket_path))
                    assert code == 0, err
                    assert f"    live: {CHANNEL} streaming, 1 consumer(s), since 20" in out
                    assert ", 0 interruption(s)" in out
                    code, out, err = await edge_cli("gb28181", "devices", "--json", "--socket",
                                                    str(socket_path))
                    assert json.loads(out)["live"][DEVICE][0]["channel_id"] == CHANNEL
                stopped = await station.wait_ledger("session_stopped",
                                                    where=lambda d: d.get("live") == "stopped")
                assert stopped[0]["reason"] == "no consumer left" and stopped[0]["source"] == "gb28181"
                started = station.ledger("session_started")
                assert [(e["live"], e["device_id"], e["channel_id"]) for e in started] == [
                    ("started", DEVICE, CHANNEL)]
                assert agent.status.sections["gb28181"]()["live"] == {}
            finally:
                await device.close()
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
    finally:
        shutil.rmtree(short, ignore_errors=True)
