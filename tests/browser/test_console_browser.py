"""The auditor console in a real headless Chromium against a real central (its mutual-TLS port; TLS asks
for a client certificate and this browser has none), with evidence that came the real way: a simulated
recorder's ffmpeg-made MP4, docked at a real station agent, uploaded over tus and registered with its
ledger. The auditor signs in with a password and a TOTP code, searches the case, opens the item, plays
its video (currentTime advances, readyState >= 2), and finds every read on the access log page; with the
content in a local folder, and in an S3 bucket on a real Ceph RGW (played by HTTP Range requests from it).

Chromium is told to accept the test central's certificate (``ignore_https_errors``): an agency installs
its CA in its browsers; this test is about the console, not about distributing the CA.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from edge.central.config import S3ObjectsConfig
from edge.central.console.credentials import hash_password
from edge.central.console.enrolments import enrol_totp
from edge.central.console.secret_key import ConsoleSecretKey
from edge.central.embedded import EmbeddedCentral
from edge.central.index import ItemQuery, ReaderScope, Role
from edge.sources.usb.offload import OffloadOutcome
from tests.browser.conftest import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    DEFAULT_VIEWPORT,
    LiveServer,
    chromium_available,
    screenshot,
)
from tests.central.ceph import CephGateway, ceph_gateway  # noqa: F401 (the fixture, for the S3 case)
from tests.central.s3 import SECRET_ENV, new_bucket, s3_objects_config
from tests.prerequisites import require
from tests.station.harness import simulated_station, spec

CASE = "A-2026-0042"
UNIT = "330100000000"  # the simulated recorders' unit (tests/station/harness.py)
PASSWORD = "auditor password 2026"
EVERYTHING = ReaderScope("test", Role.SUPERVISOR, frozenset())


@pytest.fixture
def https_page(tmp_path: Path) -> Iterator[Page]:
    """The rig's fresh headless Chromium (tests/browser/conftest.py), accepting the test central's CA."""
    require(chromium_available(), f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport=DEFAULT_VIEWPORT, ignore_https_errors=True,
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def _evidence_through_a_station(
    live_server: LiveServer, root: Path, objects: S3ObjectsConfig | None
) -> EmbeddedCentral:
    """A recorder docked at a station agent, its files uploaded to a central that keeps running (its
    objects in ``objects``' bucket, or in its local folder)."""

    async def produce() -> EmbeddedCentral:
        config = EmbeddedCentral.make_config(root / "central-store")
        if objects is not None:
            central_section = config.central.model_copy(update={"objects": objects})
            config = config.model_copy(update={"central": central_section})
        bundle = EmbeddedCentral.initialise(config, root, "TEST-STATION", root / "store")
        central = await EmbeddedCentral.serve(config, bundle)
        recorder = spec(0, files=2, file_mb=0.3)
        try:
            async with simulated_station(
                root, [recorder], uplink=central.uplink_config(),
                wipe={"policy": "after-receipt", "receipt_wait_s": 60},
                case_defaults={"case_number": CASE, "location": "西湖区文三路", "subject": "占道经营"},
            ) as station:
                await station.dock_recorder(recorder.device_serial, 1)
                await station.wait_results(1)
                assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE]
        except BaseException:
            await central.stop()
            raise
        return central

    return live_server.run(produce(), timeout=240)


@pytest.fixture(params=["files", "s3"])
def central(
    request: pytest.FixtureRequest, live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmbeddedCentral]:
    """The central with the station's evidence, its objects in a local folder or in an S3 bucket on a real
    Ceph RGW (tests/central/ceph.py); stopped after the browser closed (a test asks for it before
    ``https_page``), so no connection of the browser's is left behind."""
    objects = None
    if request.param == "s3":
        gateway: CephGateway = request.getfixturevalue("ceph_gateway")
        monkeypatch.setenv(SECRET_ENV, gateway.secret_access_key)
        objects = s3_objects_config(gateway, new_bucket(gateway))
    running = _evidence_through_a_station(live_server, tmp_path, objects)
    try:
        yield running
    finally:
        live_server.run(running.stop())


def _on_server(live_server: LiveServer, work: Any) -> Any:
    """Run ``work()`` on the central's loop (its index is used from that thread)."""

    async def call() -> Any:
        return work()

    return live_server.run(call())


def _account(central: EmbeddedCentral) -> str:
    console = central.running.parts.console
    console.create_account("li.legal", hash_password(PASSWORD), by="admin")
    console.grant("li.legal", Role.READER, [UNIT], by="admin", reason="browser test")
    secret = pyotp.random_base32()
    key = ConsoleSecretKey.load(central.running.parts.config.layout.console_key)
    enrol_totp(console, key, "li.legal", secret, by="admin")
    return secret


def _items(central: EmbeddedCentral) -> dict[str, str]:
    """Every accepted item with the extension of its original name."""
    index = central.running.parts.index
    page, _ = index.query_items(ItemQuery(limit=100), EVERYTHING)
    found = {}
    for row in page:
        record = index.item(row["item"])
        assert record is not None
        found[record.item] = str(record.manifest["original"]["name"]).rsplit(".", 1)[-1].lower()
    return found


def test_auditor_signs_in_searches_plays_and_finds_every_read_logged(
    central: EmbeddedCentral, https_page: Page, live_server: LiveServer
) -> None:
    page = https_page
    secret = _on_server(live_server, lambda: _account(central))
    items = _on_server(live_server, lambda: _items(central))
    videos = [item for item, extension in items.items() if extension == "mp4"]
    assert videos, f"the recorder made an MP4: {items}"

    page.goto(f"{central.console_url}/console/")
    expect(page.locator("#signin-view")).to_be_visible()
    # Chinese by default, English on request, and back.
    expect(page.locator("#signin-view h2")).to_have_text("登录")
    page.click("#lang")
    expect(page.locator("#signin-view h2")).to_have_text("Sign in")
    page.click("#lang")
    expect(page.locator("#signin-view h2")).to_have_text("登录")
    screenshot(page, "console-signin")
    page.fill("#signin-name", "li.legal")
    page.fill("#signin-password", PASSWORD)
    page.fill("#signin-totp", pyotp.TOTP(secret).now())
    page.click("#signin-submit")
    # Generous: the password's hash is deliberately slow, and slower on a loaded machine.
    expect(page.locator("#search-view")).to_be_visible(timeout=60_000)
    expect(page.locator("#who")).to_contain_text("li.legal")

    page.fill("#search-case", CASE)
    page.click("#search-submit")
    expect(page.locator("#results tbody tr")).to_have_count(len(items))
    screenshot(page, "console-search")

    page.locator(f"#results a.item-link[href='#/item/{videos[0]}']").click()
    expect(page.locator("#item-view")).to_be_visible()
    expect(page.locator("#item-id")).to_have_text(videos[0])
    expect(page.locator("#receipt-status")).to_have_attribute("data-verified", "true")
    expect(page.locator("#timeline tbody tr[data-event='acquired']")).to_have_count(1)
    expect(page.locator("#timeline tbody tr[data-event='receipt']")).to_have_count(1)
    video = page.locator("video#player")
    expect(video).to_be_visible()
    video.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function(
        "() => { const v = document.querySelector('video#player');"
        " return v !== null && v.readyState >= 2 && v.currentTime > 0.2; }",
        timeout=30_000,
    )
    screenshot(page, "console-item")

    page.click("a[href='#/log']")
    expect(page.locator("#log-view")).to_be_visible()
    expect(page.locator("#log tbody tr").first).to_be_visible()
    expect(page.locator(f"#log tbody tr[data-what='media'][data-item='{videos[0]}']")).to_have_count(1)
    expect(page.locator(f"#log tbody tr[data-what='item'][data-item='{videos[0]}']")).to_have_count(1)
    expect(page.locator("#log tbody tr[data-what='search']")).to_have_count(1)
    screenshot(page, "console-access-log")

    # What the page showed is what the central recorded: every read, by this reader.
    recorded = _on_server(live_server, lambda: central.running.parts.index.access_log())
    assert {(r["what"], r["item"]) for r in recorded} >= {("item", videos[0]), ("media", videos[0])}
    assert any(r["what"] == "search" and f"case={CASE}" in (r["query"] or "") for r in recorded)
    assert {r["reader"] for r in recorded} == {"li.legal"}
    media = [r for r in recorded if r["what"] == "media"]
    assert len(media) == 1 and media[0]["bytes_served"] > 0
