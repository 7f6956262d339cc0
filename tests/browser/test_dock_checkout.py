"""The dock screen's check-out page in real headless Chromium against the real agent (its local API on
loopback TCP, the recorder bus with real mounts, the bay board on a pty): an officer types 警号 and PIN on
the pad; a suspended officer and a wrong PIN are refused with their words, the right PIN of an active
officer is issued the recorder that came back in control mode after its offload, and the bay board lights
that bay."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from drivers.serial.card_reader_protocol import CardFraming
from drivers.serial.dock import BayLed
from simulators.card_reader import CardReaderSimulator
from tests.browser.conftest import LiveServer, screenshot
from tests.equipment.test_desk_agent import docked_and_back_in_control, never_a_pin, outcome_after, registry
from tests.station.harness import Station, simulated_station, spec

WAIT_MS = 90_000


@pytest.fixture
def api_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-desk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def type_in(page: Page, officer_no: str, pin: str) -> None:
    page.locator("#checkout-officer").click()
    page.locator("#checkout-clear").click()
    for digit in officer_no:
        page.locator(f"#checkout-key-{digit}").click()
    page.locator("#checkout-pin").click()
    page.locator("#checkout-clear").click()
    for digit in pin:
        page.locator(f"#checkout-key-{digit}").click()
    page.locator("#checkout-submit").click()


def test_the_dock_screen_checks_a_recorder_out_by_officer_number_and_pin(
    page: Page, live_server: LiveServer, tmp_path: Path, api_dir: Path
) -> None:
    recorder = spec(0, officer_no="119999", officer_name="李四")
    registry(tmp_path)  # 110001 张伟 PIN 2468 active; 110002 王芳 PIN 1357 suspended
    api = {"socket_path": str(api_dir / "station.sock"), "tcp_port": 0}
    reader = CardReaderSimulator(CardFraming.HEX_LINE)
    reader.start()
    stack = AsyncExitStack()
    stack.callback(reader.stop)
    station: Station = live_server.run(stack.enter_async_context(simulated_station(
        tmp_path, [recorder], api=api,
        equipment={"enabled": True, "card_reader": {"port": reader.tty_path}})))
    try:
        assert station.agent.api is not None and station.agent.api.tcp_url is not None
        live_server.run(docked_and_back_in_control(station, recorder.device_serial, 1), timeout=120)
        page.set_viewport_size({"width": 1920, "height": 1080})
        page.goto(station.agent.api.tcp_url + "/dock")
        expect(page.locator("body")).to_have_attribute("data-checkout", "ready", timeout=WAIT_MS)
        expect(page.locator("#checkout-open")).to_have_text("领用记录仪")
        # A card the registry does not know, at the reader: its refusal appears at the foot of the screen.
        live_server.run(outcome_after(station, 0, present=lambda: reader.present("0A1B2C3D")), timeout=120)
        toast = page.locator("#checkout-toast")
        expect(toast).to_have_text("此卡未登记", timeout=WAIT_MS)
        expect(toast).to_have_attribute("data-outcome", "refused")
        page.locator("#checkout-open").click()
        expect(page.locator("#checkout")).to_be_visible()
        result = page.locator("#checkout-result")

        type_in(page, "110002", "1357")  # suspended, with the right PIN
        expect(result).to_have_attribute("data-outcome", "refused", timeout=WAIT_MS)
        expect(result).to_have_text("该警员已停用，请联系管理员")
        expect(page.locator("#checkout-pin")).to_have_value("")  # the PIN never stays on the screen
        screenshot(page, "dock-checkout-suspended-zh")

        type_in(page, "110001", "9999")  # active, wrong PIN
        expect(result).to_have_text("警号或密码错误", timeout=WAIT_MS)
        expect(result).to_have_attribute("data-outcome", "refused")
        assert station.ledger("assigned") == []
        assert station.bus.recorder_state(recorder.device_serial).info.officer_no == "119999"

        type_in(page, "110001", "2468")  # the control: the same officer with the right PIN
        expect(result).to_have_attribute("data-outcome", "assigned", timeout=WAIT_MS)
        expect(result).to_have_text("张伟（警号 110001）：请取 1 号托架的执法记录仪")
        assert live_server.run(station.led_shows(1, BayLed.ATTENTION), timeout=60)
        info = station.bus.recorder_state(recorder.device_serial).info
        assert (info.officer_no, info.officer_name) == ("110001", "张伟")
        [assigned] = station.ledger("assigned")
        assert (assigned["method"], assigned["bay"]) == ("pin", 1)
        screenshot(page, "dock-checkout-assigned-zh")

        page.locator("#checkout-language").click()
        expect(result).to_have_text("take the recorder from bay 1")
        expect(page.locator("#checkout-submit")).to_have_text("Check out")
        screenshot(page, "dock-checkout-assigned-en")
        page.locator("#checkout-close").click()
        expect(page.locator("#checkout")).to_be_hidden()
        never_a_pin(station.ledger("refused") + station.ledger("assigned"), {"2468", "1357", "9999"})
    finally:
        live_server.run(stack.aclose(), timeout=120)
