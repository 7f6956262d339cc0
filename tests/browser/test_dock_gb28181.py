"""The dock screen's GB/T 28181 devices panel, against a real station agent running the platform
([gb28181] enabled) and the real device simulator (simulators/gb28181 SimulatedDevice over real SIP
sockets), shown in real headless Chromium: the device shows online with its keepalive, address, channels
and downloads (its one recording downloaded), then offline once it unregisters; a name the device sends
with HTML and script in it is shown as text; without [gb28181] the panel is not there."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.media import generate_recordings
from simulators.gb28181.settings import Channel, DeviceSettings
from tests.browser.conftest import LiveServer, screenshot
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require
from tests.station.harness import Station, simulated_station

PLATFORM_ID = "34020000002000000001"
DEVICE = "34020000001320000077"
CHANNEL = "34020000001310000077"
PASSWORD = "weak-5678"
# What a hostile device calls itself in its DeviceInfo answer (no configured name: the page shows this).
# The registry keeps 64 characters of a device's name: this one fits whole.
HOSTILE_NAME = '<img src=x onerror="__xss=1"><script>__xss=2</script>记录<b>7</b>'
WAIT_MS = 60_000


@pytest.fixture
def api_dir() -> Iterator[Path]:
    """A short directory for the API's socket (a Unix socket path holds 107 bytes; pytest's are long)."""
    path = Path(tempfile.mkdtemp(prefix="edge-gbdock-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def gb_section(tmp_path: Path) -> dict[str, Any]:
    password_file = tmp_path / "gb-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    return {"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0, "sip_id": PLATFORM_ID,
            "devices": {DEVICE: {"password": f"file:{password_file}"}},
            "download": {"media_host": "127.0.0.1"}}


def one_recording(media: Path) -> Path:
    """One short recording on the device (device-local time, Beijing), for one download to be done."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    media.mkdir()
    device_now = (datetime.now(UTC) + timedelta(hours=8)).replace(tzinfo=None, microsecond=0)
    generate_recordings(media, 1, start=device_now - timedelta(hours=1), seconds=2.0, size="320x240", rate=10)
    return media


async def start_device(station: Station, stack: AsyncExitStack, media: Path) -> SimulatedDevice:
    """The simulated device registered and kept alive on the live server's loop until the stack closes."""
    platform = station.agent.gb28181
    assert platform is not None
    async with asyncio.timeout(20):
        await platform.started.wait()
    device = SimulatedDevice(DeviceSettings(
        platform_host="127.0.0.1", platform_port=platform.transport.port, platform_id=PLATFORM_ID,
        device_id=DEVICE, password=PASSWORD, media_dir=media, keepalive_interval_s=2.0,
        device_name=HOSTILE_NAME, channels=(Channel(CHANNEL, "镜头 1"),),
    ))
    runner = asyncio.ensure_future(device.run())

    async def stop() -> None:
        await device.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    stack.push_async_callback(stop)
    async with asyncio.timeout(20):
        await device.registered.wait()
    return device


def test_the_panel_shows_a_device_online_then_offline_and_its_text_as_text(
    page: Page, live_server: LiveServer, tmp_path: Path, api_dir: Path
) -> None:
    media = one_recording(tmp_path / "device-media")
    api = {"socket_path": str(api_dir / "station.sock"), "tcp_port": 0}
    stack = AsyncExitStack()
    station: Station = live_server.run(stack.enter_async_context(
        simulated_station(tmp_path, [], api=api, gb28181=gb_section(tmp_path))
    ))
    device_stack = AsyncExitStack()
    try:
        assert station.agent.api is not None and station.agent.api.tcp_url is not None
        device = live_server.run(start_device(station, device_stack, media))
        page.set_viewport_size({"width": 1920, "height": 1080})
        page.goto(station.agent.api.tcp_url + "/dock")
        expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=WAIT_MS)
        page.evaluate("window.__sameDocument = true")

        panel = page.locator("#gb28181")
        expect(panel).to_be_visible()
        expect(panel.locator(".gb-title")).to_have_text("国标设备 (GB/T 28181)")
        row = panel.locator(f'.gb-device[data-device-id="{DEVICE}"]')
        expect(row).to_have_attribute("data-online", "true", timeout=WAIT_MS)
        expect(row.locator(".gb-id")).to_have_text(DEVICE)
        expect(row.locator(".gb-state")).to_contain_text("在线 · 心跳", timeout=WAIT_MS)
        expect(panel.locator(".gb-summary")).to_have_text("1 台 · 1 台在线")
        expect(row.locator(".gb-facts")).to_contain_text(f"udp:127.0.0.1:{device.sip_port}")
        # DeviceInfo, Catalog and DeviceStatus are asked when the device comes online (describe_devices).
        expect(row.locator(".gb-facts")).to_contain_text("1 个通道", timeout=WAIT_MS)
        expect(row.locator(".gb-facts")).to_contain_text("时钟偏差", timeout=WAIT_MS)
        # The device's own name, HTML and script included, is shown as the text it is (the control: it
        # is shown at all), and nothing of it became an element or ran.
        expect(row.locator(".gb-name")).to_have_text(HOSTILE_NAME, timeout=WAIT_MS)
        assert row.locator(".gb-name *").count() == 0
        assert page.locator("#gb28181 img, #gb28181 script, #gb28181 b").count() == 0
        assert page.evaluate("window.__xss") is None
        # The download scheduler's pass over it: its one recording downloaded, then the pass's end.
        expect(row.locator(".gb-downloads")).to_contain_text("下载: ", timeout=WAIT_MS)
        expect(row.locator(".gb-downloads")).to_contain_text("完成 1", timeout=WAIT_MS)
        expect(row.locator(".gb-downloads")).to_contain_text("上次 ", timeout=WAIT_MS)
        expect(row.locator(".gb-downloads")).to_contain_text("下载: 空闲", timeout=WAIT_MS)
        assert "失败" not in row.locator(".gb-downloads").inner_text()
        screenshot(page, "dock-gb28181-online-zh")

        page.locator("#language").click()
        expect(panel.locator(".gb-title")).to_have_text("GB/T 28181 devices")
        expect(row.locator(".gb-state")).to_contain_text("online · keepalive ")
        expect(panel.locator(".gb-summary")).to_have_text("1 device · 1 online")
        screenshot(page, "dock-gb28181-online-en")

        # The device unregisters (Expires: 0): the panel follows without a reload.
        live_server.run(device_stack.aclose(), timeout=60)
        assert device.log.unregistered
        expect(row).to_have_attribute("data-online", "false", timeout=WAIT_MS)
        expect(row.locator(".gb-state")).to_contain_text("offline · keepalive ")
        expect(panel.locator(".gb-summary")).to_have_text("1 device · 0 online")
        page.locator("#language").click()
        expect(row.locator(".gb-state")).to_contain_text("离线 · 心跳")
        screenshot(page, "dock-gb28181-offline-zh")
        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
        assert page.evaluate("window.__xss") is None
    finally:
        live_server.run(device_stack.aclose(), timeout=60)
        live_server.run(stack.aclose(), timeout=120)


def test_without_the_platform_there_is_no_panel(
    page: Page, live_server: LiveServer, tmp_path: Path, api_dir: Path
) -> None:
    api = {"socket_path": str(api_dir / "station.sock"), "tcp_port": 0}
    stack = AsyncExitStack()
    station: Station = live_server.run(stack.enter_async_context(simulated_station(tmp_path, [], api=api)))
    try:
        assert station.agent.gb28181 is None
        assert station.agent.api is not None and station.agent.api.tcp_url is not None
        page.goto(station.agent.api.tcp_url + "/dock")
        # Live: the status and the stream's snapshot were both rendered, the header with them.
        expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=WAIT_MS)
        expect(page.locator("#fact-clock dd")).not_to_have_text("")
        # The page has the panel (the control: the other test shows it) and keeps it hidden.
        expect(page.locator("#gb28181")).to_be_attached()
        expect(page.locator("#gb28181")).to_be_hidden()
        assert page.locator(".gb-device").count() == 0
    finally:
        live_server.run(stack.aclose(), timeout=120)
