"""The auditor's disclosure, statistics and spot-check pages in a real headless Chromium, against a central a
real station filled: the auditor lists a case, downloads its package from the page, and the package verifies
with `edge verify` after unzip, and fails after a byte is flipped; every read is in the access log."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from edge.central.config import CentralConfig
from edge.central.embedded import EmbeddedCentral, free_port
from edge.central.identity import load_signing_key
from edge.central.service import RunningCentral, start_central
from tests.audit.conftest import CASE, StationEvidence, build_station_evidence
from tests.browser.conftest import LiveServer, screenshot
from tests.tamper.stores import run_edge

READER = "auditor-browser"


@pytest.fixture(scope="session")
def station_evidence(tmp_path_factory: pytest.TempPathFactory) -> StationEvidence:
    return build_station_evidence(tmp_path_factory)


@pytest.fixture
def central_url(tmp_path: Path, station_evidence: StationEvidence,
                live_server: LiveServer) -> Iterator[tuple[str, RunningCentral]]:
    """The station's central store (a copy) served in development mode, where the browser names its reader
    in a header (a browser holding a reader certificate is the console's sign-in, not these pages')."""
    store = tmp_path / "central-store"
    shutil.copytree(station_evidence.central_store, store, symlinks=True)
    config = CentralConfig.model_validate({
        "central": {"id": "DEMO-CENTRAL", "store_dir": str(store)},
        "server": {"listen": "127.0.0.1", "port": free_port(), "insecure_plain_http": True,
                   "names": ["localhost", "127.0.0.1"]},
    })
    running = live_server.run(start_central(config))
    try:
        yield str(running.url), running
    finally:
        live_server.run(running.stop())


def test_download_a_package_from_the_page_and_verify_it(page: Page, tmp_path: Path,
                                                         central_url: tuple[str, RunningCentral],
                                                         station_evidence: StationEvidence) -> None:
    url, running = central_url
    page.context.set_extra_http_headers({"X-Edge-Reader": READER})
    page.goto(f"{url}/audit/disclosure")
    expect(page.locator("button[type=submit]")).to_have_text("查看证据")
    page.fill("input[name=case]", CASE)
    page.click("button[type=submit]")
    rows = page.locator("#case-items tr")
    expect(rows).to_have_count(7)  # a header and the case's six items
    screenshot(page, "audit-disclosure")
    with page.expect_download() as info:
        page.click("#download")
    archive = tmp_path / "downloaded.zip"
    info.value.save_as(archive)
    folder = tmp_path / "package"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    assert run_edge("verify", str(folder)).code == 4  # holds; origin unproven without a pinned key
    # The agency's central key pinned from outside the package: every check holds and every disclosed
    # custody entry is bound to the station's signature (OK, not NOT BOUND).
    pinned = tmp_path / "central-signing.pub"
    central = EmbeddedCentral.make_config(station_evidence.central_store)  # the key of the served copy
    pinned.write_bytes(load_signing_key(central).public_pem())
    verdict = run_edge("verify", "--central-key", str(pinned), str(folder))
    assert verdict.code == 0 and "OK: disclosure package" in verdict.stdout, verdict
    original = next(folder.glob("items/*/*.mp4"))
    data = bytearray(original.read_bytes())
    data[-1] ^= 0xFF
    original.write_bytes(bytes(data))
    verdict = run_edge("verify", "--central-key", str(pinned), str(folder))
    assert verdict.code == 1 and verdict.names(original.relative_to(folder).as_posix()), verdict
    log = running.parts.index.access_log()
    assert [r["what"] for r in log if r["item"] is None] == ["disclosure-preview", "disclosure-package"]
    assert len([r for r in log if r["what"] == "disclosure"]) == 6
    assert {r["reader"] for r in log} == {READER}


def test_statistics_page_in_chinese_and_english(page: Page, central_url: tuple[str, RunningCentral]) -> None:
    url, _ = central_url
    page.context.set_extra_http_headers({"X-Edge-Reader": READER})
    page.goto(f"{url}/audit/stats")
    page.fill("input[name=from]", "2000-01-01")
    page.fill("input[name=to]", "2100-01-01")
    page.click("button[type=submit]")
    expect(page.locator("#total-items")).to_contain_text("8")
    expect(page.locator("#total-items small")).to_have_text("证据数")
    expect(page.locator("#by-officer tr")).to_have_count(3)
    # Station text is shown as text: the unit's Chinese name, not markup.
    expect(page.locator("#by-unit")).to_contain_text("宁波市综合行政执法局")
    screenshot(page, "audit-stats-zh")
    page.click("#lang")
    expect(page.locator("#total-items small")).to_have_text("Items")
    expect(page.locator("#lang")).to_have_text("中文")
    screenshot(page, "audit-stats-en")


def test_pages_refuse_an_unauthenticated_browser(page: Page, central_url: tuple[str, RunningCentral]) -> None:
    url, _ = central_url
    for path in ("/audit/stats", "/audit/disclosure", "/audit/spot-check", "/audit/static/audit.js"):
        response = page.goto(f"{url}{path}")
        assert response is not None and response.status == 401, path
    page.context.set_extra_http_headers({"X-Edge-Reader": READER})
    response = page.goto(f"{url}/audit/spot-check")
    assert response is not None and response.status == 200  # control
    # No inline script or style runs on these pages (the other tests show they work under this policy).
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_spot_check_from_the_page_prints_a_report(page: Page,
                                                  central_url: tuple[str, RunningCentral]) -> None:
    url, running = central_url
    page.context.set_extra_http_headers({"X-Edge-Reader": READER})
    page.goto(f"{url}/audit/spot-check")
    page.fill("input[name=from]", "2000-01-01")
    page.fill("input[name=to]", "2100-01-01")
    page.fill("input[name=size]", "3")
    page.fill("input[name=seed]", "11")
    with page.context.expect_page() as opened:
        page.click("button[type=submit]")
    report = opened.value
    report.wait_for_load_state()
    expect(report.locator("#seed")).to_have_text("11")
    expect(report.locator("tr[data-item]")).to_have_count(3)
    expect(report.locator("tr[data-ok=false]")).to_have_count(0)
    report.emulate_media(media="print")
    screenshot(report, "audit-spot-check-report")
    # The reproduce link (hidden in print) draws the same items again.
    assert report.locator("a.reproduce").is_hidden()
    items = report.locator("tr[data-item]").evaluate_all("rows => rows.map(r => r.dataset.item)")
    report.emulate_media(media="screen")
    report.click("a.reproduce")
    expect(report.locator("tr[data-item]")).to_have_count(3)
    again = report.locator("tr[data-item]").evaluate_all("rows => rows.map(r => r.dataset.item)")
    assert again == items
    checks = [r for r in running.parts.index.access_log() if r["what"] == "spot-check" and r["item"] is None]
    assert len(checks) == 2 and all('"seed":11' in r["query"] for r in checks)
