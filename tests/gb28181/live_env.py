"""What the live-stream tests share: the real platform (edge.gb28181.platform, real media receiver) and
`LiveStreams` on loopback, and the real device simulator (simulators.gb28181) streaming a recording made
by ffmpeg as PS over RTP for Play."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge.gb28181.live import LiveEvent, LiveEventKind, LiveHandle, LiveSettings, LiveStreams
from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform
from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.media import generate_recordings
from simulators.gb28181.settings import DeviceSettings, parse_faults

from .platform_peer import PLATFORM_ID, Ledger, platform_settings

DEVICE = "34020000001320000051"
CHANNEL = DEVICE[:10] + "131" + DEVICE[13:]
PASSWORD = "weak-5151"
PACK_HEADER = b"\x00\x00\x01\xba"


def make_recording(directory: Path, *, seconds: float = 4.0, bitrate: str | None = None) -> Path:
    """One H.264 recording (no audio: ffmpeg reads GB G.711 audio wrongly, research notes 7), ending now."""
    media = directory / "media"
    device_now = (datetime.now(UTC) + timedelta(hours=8)).replace(tzinfo=None, microsecond=0)
    generate_recordings(media, 1, start=device_now - timedelta(minutes=5), seconds=seconds, size="320x240",
                        rate=10, audio=False, video_bitrate=bitrate)
    return media


@dataclass
class LiveEnv:
    platform: GbPlatform
    live: LiveStreams
    ledger: Ledger
    socket_dir: Path
    media: Path
    devices: list[SimulatedDevice] = field(default_factory=list)
    events: list[LiveEvent] = field(default_factory=list)
    _runs: list[asyncio.Future[Any]] = field(default_factory=list)

    async def device(self, *faults: str, **overrides: Any) -> SimulatedDevice:
        """A simulated device, registered (and online) before this returns."""
        values: dict[str, Any] = dict(
            platform_host="127.0.0.1", platform_port=self.platform.transport.port, platform_id=PLATFORM_ID,
            device_id=DEVICE, password=PASSWORD, media_dir=self.media, keepalive_interval_s=30.0,
            faults=parse_faults(list(faults)), bye_wait_s=5.0)
        values.update(overrides)
        device = SimulatedDevice(DeviceSettings(**values))
        self.devices.append(device)
        self._runs.append(asyncio.ensure_future(device.run()))
        async with asyncio.timeout(20):
            await device.registered.wait()
            while not self._online(DEVICE):
                await asyncio.sleep(0.01)
        return device

    def _online(self, device_id: str) -> bool:
        state = self.platform.registry.get(device_id)
        return state is not None and state.online

    def open(self, **kw: Any) -> LiveHandle:
        return self.live.open(DEVICE, CHANNEL, **kw)

    def ledger_live(self, event: str) -> list[dict[str, Any]]:
        return [data for _, data in self.ledger.entries if data.get("live") == event]


@contextlib.asynccontextmanager
async def live_env(media: Path, *, idle_timeout_s: float = 1.0,
                   **live_overrides: Any) -> AsyncIterator[LiveEnv]:
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, idle_timeout_s=idle_timeout_s), record=ledger,
                          clock_trusted=lambda: True, open_receiver=open_receiver)
    await platform.start()
    checker = asyncio.ensure_future(_check(platform))
    socket_root = Path(tempfile.mkdtemp(prefix="edge-live-", dir="/tmp"))  # a socket path holds 107 bytes
    values: dict[str, Any] = dict(socket_dir=socket_root / "live", transport="udp", linger_s=0.2,
                                  retry_min_s=0.2, retry_max_s=1.0)
    values.update(live_overrides)
    live = LiveStreams(platform, LiveSettings(**values), record=ledger)
    env = LiveEnv(platform, live, ledger, values["socket_dir"], media)
    live.add_listener(env.events.append)
    try:
        yield env
    finally:
        await live.close()
        for device in env.devices:
            await device.close()
        for run in env._runs:
            run.cancel()
        await asyncio.gather(*env._runs, return_exceptions=True)
        checker.cancel()
        await asyncio.gather(checker, return_exceptions=True)
        await platform.close()
        shutil.rmtree(socket_root, ignore_errors=True)


async def _check(platform: GbPlatform) -> None:
    """The platform's own once-a-second check (what `run()` does): devices that went silent go offline."""
    while True:
        await asyncio.sleep(0.5)
        platform.check()


async def next_event(handle: LiveHandle, kind: LiveEventKind, timeout_s: float = 30) -> LiveEvent:
    """The next event of `kind` on `handle` (others before it are passed over)."""
    async with asyncio.timeout(timeout_s):
        while True:
            event = await handle.next_event()
            if event.kind is kind:
                return event


async def read_at_least(reader: asyncio.StreamReader, size: int, timeout_s: float = 30) -> bytes:
    data = bytearray()
    async with asyncio.timeout(timeout_s):
        while len(data) < size:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    return bytes(data)
