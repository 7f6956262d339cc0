"""The dock screen's fleet panel in real headless Chromium, against a real station agent whose recorders
were checked out at the desk (real USB control protocol, simulated recorders) and dock through the real
mount path: recorders kept past `overdue_after_h` show overdue, red, with their holders, Chinese
first; one docked back shows in its bay, ready, and the one still out comes first; docked too, the
alert clears, without a reload.
An officer name with HTML in it is shown as text."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from simulators.recorder.device import DEFAULT_FIRMWARE_VERSION
from tests.browser.conftest import LiveServer, screenshot
from tests.equipment.test_fleet import check_out
from tests.station.harness import Station, eventually, simulated_station, spec, station_config

WAIT_MS = 60_000
HOSTILE_NAME = "<b>赵敏</b>"
OFFICERS = ("警号,姓名,单位编号,单位名称,卡号\n"
            "110001,张伟,330100000000,杭州市综合行政执法局,01000734E0\n"
            f"220001,{HOSTILE_NAME},330100000000,杭州市综合行政执法局,04A21B7C\n")


@pytest.fixture
def api_dir() -> Iterator[Path]:
    """A short directory for the API's socket (a Unix socket path holds 107 bytes; pytest's are long)."""
    path = Path(tempfile.mkdtemp(prefix="edge-fleetdock-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_fleet_panel_shows_an_overdue_recorder_first_and_follows_the_returns(
    page: Page, live_server: LiveServer, tmp_path: Path, api_dir: Path
) -> None:
    returned = spec(0, files=1, battery_percent=95)  # 张伟's, docked back during the test
    kept = spec(1, files=0, battery_percent=90)  # the other officer's: overdue, then docked back
    taken = live_server.run(check_out(tmp_path, [returned, kept], [], officers=OFFICERS), timeout=120)
    assert taken == [returned.device_serial, kept.device_serial]
    config = station_config(tmp_path, [returned, kept],
                            equipment={"enabled": True, "overdue_check_s": 1, "overdue_after_h": 2 / 3600},
                            api={"socket_path": str(api_dir / "station.sock"), "tcp_port": 0})
    stack = AsyncExitStack()
    station: Station = live_server.run(stack.enter_async_context(
        simulated_station(tmp_path, [], agent_config=config)))
    try:
        assert station.agent.api is not None and station.agent.api.tcp_url is not None
        page.set_viewport_size({"width": 1920, "height": 1080})
        page.goto(station.agent.api.tcp_url + "/dock")
        expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=WAIT_MS)
        page.evaluate("window.__sameDocument = true")

        panel = page.locator("#fleet")
        expect(panel).to_be_visible(timeout=WAIT_MS)
        expect(panel.locator(".fleet-title")).to_have_text("执法记录仪")
        late = panel.locator(f'.fleet-recorder[data-serial="{kept.device_serial}"]')
        back = panel.locator(f'.fleet-recorder[data-serial="{returned.device_serial}"]')
        # Both out since the desk, past a due time of two seconds: both overdue, alerted.
        expect(late).to_have_attribute("data-state", "overdue", timeout=WAIT_MS)
        expect(back).to_have_attribute("data-state", "overdue", timeout=WAIT_MS)
        expect(panel).to_have_attribute("data-overdue", "")
        expect(late.locator(".fleet-state")).to_have_text("逾期未还")
        # Its holder by the station's record, the name as the text it is.
        expect(late.locator(".fleet-who")).to_contain_text(f"{HOSTILE_NAME} 警号 220001 · 领用于 ")
        expect(late.locator(".fleet-who")).to_contain_text(" 归还")
        assert late.locator(".fleet-who *").count() == 0 and page.locator("#fleet b").count() == 0
        expect(panel.locator(".fleet-summary")).to_have_text("共 2 台 · 2 台逾期未还")
        screenshot(page, "dock-fleet-overdue-zh")

        # 张伟 docks his back: it shows in bay 1, offloaded, charged: ready to issue; the one still out
        # and overdue comes first.
        live_server.run(station.dock_recorder(returned.device_serial, 1))
        expect(back).to_have_attribute("data-state", "docked", timeout=WAIT_MS)
        expect(back.locator(".fleet-who")).to_have_text("1 号位 · 可领用", timeout=WAIT_MS)
        expect(back.locator(".fleet-facts")).to_contain_text("电量 95%")
        # Its firmware version as the recorder's GET_VERSION gave it at this docking.
        expect(back.locator(".fleet-facts")).to_contain_text(f"固件 {DEFAULT_FIRMWARE_VERSION}")
        expect(panel.locator(".fleet-recorder").first).to_have_attribute("data-serial", kept.device_serial)
        expect(panel.locator(".fleet-summary")).to_have_text("共 2 台 · 1 台逾期未还 · 1 台在位")
        page.locator("#language").click()
        expect(panel.locator(".fleet-title")).to_have_text("Recorders")
        expect(late.locator(".fleet-state")).to_have_text("overdue")
        expect(back.locator(".fleet-who")).to_have_text("bay 1 · ready to issue")
        expect(panel.locator(".fleet-summary")).to_contain_text("1 OVERDUE")
        screenshot(page, "dock-fleet-overdue-en")

        # The overdue one comes back: the alert clears on the screen.
        live_server.run(station.dock_recorder(kept.device_serial, 2))
        expect(late).to_have_attribute("data-state", "docked", timeout=WAIT_MS)
        expect(panel).not_to_have_attribute("data-overdue", "", timeout=WAIT_MS)
        expect(panel.locator(".fleet-summary")).not_to_contain_text("OVERDUE")
        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
        alerts = station.ledger("overdue")
        assert sorted(a["device_serial"] for a in alerts) == [returned.device_serial, kept.device_serial]
    finally:
        live_server.run(stack.aclose(), timeout=120)


def test_a_station_that_knows_no_recorder_shows_no_fleet_panel(
    page: Page, live_server: LiveServer, tmp_path: Path, api_dir: Path
) -> None:
    api = {"socket_path": str(api_dir / "station.sock"), "tcp_port": 0}
    stack = AsyncExitStack()
    station: Station = live_server.run(stack.enter_async_context(simulated_station(tmp_path, [], api=api)))
    try:
        assert station.agent.api is not None and station.agent.api.tcp_url is not None
        monitor = station.agent.fleet
        assert monitor is not None
        live_server.run(eventually(lambda: monitor.summary() is not None, WAIT_MS / 1000))  # read once
        page.goto(station.agent.api.tcp_url + "/dock")
        expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=WAIT_MS)
        # The page read the fleet (empty: nothing allowed, nothing docked) and keeps the panel hidden; the
        # control is the other test, where the same panel shows.
        fleet = page.evaluate("fetch('/api/v1/fleet').then((r) => r.json())")
        assert fleet["recorders"] == [] and fleet["station"] == "TEST-STATION"
        expect(page.locator("#fleet")).to_be_attached()
        expect(page.locator("#fleet")).to_be_hidden()
        assert page.locator(".fleet-recorder").count() == 0
    finally:
        live_server.run(stack.aclose(), timeout=120)
