"""The dock screen following real dockings: the real agent serving its local API on loopback TCP, the
recorder bus (real mounts) and the bay board simulator on a pty, shown in real headless Chromium. The
tiles change state as the offload runs, the progress bar grows while files are copied, errors show their
words and what the officer must do, and each tile's LED dot shows what the bay board was told."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from simulators.recorder.faultfs import VolumeFaults
from tests.browser.conftest import LiveServer, screenshot
from tests.station.harness import Station, simulated_station, spec

DOCKING_MS = 90_000
LED_WAIT_MS = 20_000

# Every change of tile 1, as the page made it: its state words, files and progress bar width. Recorded by
# the page itself (a MutationObserver), so no quick step is missed between two looks from the test.
RECORD_JS = """() => {
  window.__tile1 = [];
  const record = () => {
    const tile = document.querySelector('.bay[data-bay="1"]');
    if (!tile) return;
    const entry = [tile.querySelector('.state').textContent, tile.querySelector('.files').textContent,
                   parseFloat(tile.querySelector('.fill').style.width || '0')];
    const last = window.__tile1[window.__tile1.length - 1];
    if (!last || last.join('|') !== entry.join('|')) window.__tile1.push(entry);
  };
  new MutationObserver(record).observe(document.getElementById('bays'),
    {subtree: true, childList: true, characterData: true, attributes: true});
  record();
}"""


@pytest.fixture
def api_dir() -> Iterator[Path]:
    """A short directory for the API's socket (a Unix socket path holds 107 bytes; pytest's are long)."""
    path = Path(tempfile.mkdtemp(prefix="edge-dock-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tile(page: Page, number: int) -> Any:
    return page.locator(f'.bay[data-bay="{number}"]')


def _shows_the_bay_led(page: Page, station: Station, number: int) -> None:
    """The tile's LED dot and the bay board come to agree (each is told on its own: wait for both)."""
    dot = _tile(page, number).locator(".led")
    for _ in range(LED_WAIT_MS // 100):
        if dot.get_attribute("data-led") == station.dock.led(number).value:
            return
        page.wait_for_timeout(100)
    shown = dot.get_attribute("data-led")
    # The board's whole history says which decision overwrote which (a PULLED later set IDLE was the
    # bay presence debounce overwriting a pulled-early bay: tests/station/test_dock_debounce.py).
    raise AssertionError(f"bay {number}: the screen shows {shown}, the board {station.dock.led(number)} "
                         f"(history {[led.value for led in station.dock.led_history(number)]})")


def test_the_dock_screen_follows_real_dockings(
    page: Page, live_server: LiveServer, tmp_path: Path, api_dir: Path
) -> None:
    # Bay 1 copies slowly enough (2 MB/s, three 1 MB files) that its progress is seen growing; bay 2 holds
    # a recorder the allow-list does not name; bay 3's recorder is pulled out after 100 kB.
    steady = spec(0, files=3, file_mb=1.0, rate_limit_bytes_per_s=2_000_000)
    stranger = spec(1)
    pulled = spec(2, faults=VolumeFaults(unplug_after_bytes=100_000))
    allow = [{"device_serial": s.device_serial, "usb_serial": s.usb_serial} for s in (steady, pulled)]
    api = {"socket_path": str(api_dir / "station.sock"), "tcp_port": 0}
    stack = AsyncExitStack()
    station: Station = live_server.run(stack.enter_async_context(simulated_station(
        tmp_path, [steady, stranger, pulled], api=api, recorders={"allow": allow}
    )))
    try:
        assert station.agent.api is not None and station.agent.api.tcp_url is not None
        page.set_viewport_size({"width": 1920, "height": 1080})
        page.goto(station.agent.api.tcp_url + "/dock")
        expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=DOCKING_MS)
        page.evaluate("window.__sameDocument = true")
        page.evaluate(RECORD_JS)

        live_server.run(station.dock_recorder(steady.device_serial, 1))
        tile = _tile(page, 1)
        expect(tile.locator(".state")).to_have_text("采集完成", timeout=DOCKING_MS)
        expect(tile.locator(".officer")).to_have_text(steady.officer_name)
        expect(tile.locator(".badge")).to_have_text(f"警号 {steady.officer_no}")
        expect(tile.locator(".files")).to_have_text("文件 3/3")
        history: list[list[Any]] = page.evaluate("window.__tile1")
        states = [state for state, _, _ in history]
        assert "正在采集" in states and states[-1] == "采集完成", history
        assert states.index("正在采集") < states.index("采集完成")
        copying_widths = [width for state, _, width in history if state == "正在采集"]
        assert copying_widths == sorted(copying_widths), history
        assert len({w for w in copying_widths if 0 < w < 100}) >= 2, f"progress did not move: {history}"
        _shows_the_bay_led(page, station, 1)

        live_server.run(station.dock_recorder(stranger.device_serial, 2))
        live_server.run(station.dock_recorder(pulled.device_serial, 3))
        expect(_tile(page, 2).locator(".state")).to_have_text("未登记的记录仪", timeout=DOCKING_MS)
        expect(_tile(page, 2).locator(".instruction")).to_contain_text("请将执法记录仪交给管理员")
        expect(_tile(page, 3).locator(".state")).to_have_text("拔出过早", timeout=DOCKING_MS)
        expect(_tile(page, 3).locator(".instruction")).to_contain_text("请将执法记录仪放回原位")
        for number in (2, 3):
            _shows_the_bay_led(page, station, number)
        assert {station.dock.led(n).value for n in (1, 2, 3)} == {"DONE", "DENIED", "PULLED"}
        screenshot(page, "dock-agent-zh")

        page.locator("#language").click()
        expect(_tile(page, 3).locator(".instruction")).to_contain_text("Put the recorder back in its bay")
        expect(_tile(page, 2).locator(".instruction")).to_contain_text(
            "Hand the recorder to the administrator"
        )
        screenshot(page, "dock-agent-en")
        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    finally:
        live_server.run(stack.aclose(), timeout=120)


async def _toggle(station: Station, bay: int, times: int, every_s: float) -> None:
    """A hostile or worn bay board: the bay's presence toggling just slower than the settle time (the
    sleeps pace the stimulus, they prove nothing)."""
    for n in range(times):
        if n % 2 == 0:
            station.dock.insert(bay, charge_percent=50)
        else:
            station.dock.remove(bay)
        await asyncio.sleep(every_s)


def test_the_dock_screen_warns_of_a_shared_usb_serial_and_shows_a_bouncing_bay(
    page: Page, live_server: LiveServer, tmp_path: Path, api_dir: Path
) -> None:
    # Two recorders claiming one USB serial in bays 1 and 2; bay 4's presence switch bounces, and the
    # configuration calls it bouncing after 3 changes too many.
    shared = "EEZ01SHARED00002"
    first, second = spec(0, usb_serial=shared), spec(1, usb_serial=shared)
    api = {"socket_path": str(api_dir / "station.sock"), "tcp_port": 0}
    stack = AsyncExitStack()
    station: Station = live_server.run(stack.enter_async_context(simulated_station(
        tmp_path, [first, second], api=api, dock={"bouncing": {"changes_max": 3, "calm_s": 60.0}}
    )))
    try:
        assert station.agent.api is not None and station.agent.api.tcp_url is not None
        page.set_viewport_size({"width": 1920, "height": 1080})
        page.goto(station.agent.api.tcp_url + "/dock")
        expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=DOCKING_MS)

        live_server.run(station.dock_recorder(first.device_serial, 1))
        live_server.run(station.dock_recorder(second.device_serial, 2))
        for number, other in ((1, 2), (2, 1)):
            expect(_tile(page, number).locator(".usb-serial")).to_have_text(
                f"USB序列号与{other}号托架相同，已按托架分别采集；请通知管理员", timeout=DOCKING_MS
            )
        for number in (1, 2):
            expect(_tile(page, number).locator(".state")).to_have_text("采集完成", timeout=DOCKING_MS)

        live_server.run(_toggle(station, 4, 6, 0.35), timeout=60)
        expect(_tile(page, 4).locator(".bouncing")).to_have_text(
            "本托架插拔信号异常，请通知管理员检查", timeout=DOCKING_MS
        )
        _shows_the_bay_led(page, station, 4)
        assert station.dock.led(4).value == "BOUNCING"
        screenshot(page, "dock-agent-usb-serial-bouncing-zh")

        # One of the two leaves: the other's warning goes, on the screen too.
        live_server.run(station.undock(second.device_serial, 2))
        expect(_tile(page, 1).locator(".usb-serial")).to_be_hidden(timeout=DOCKING_MS)
    finally:
        live_server.run(stack.aclose(), timeout=120)
