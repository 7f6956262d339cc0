"""The agency's fleet in the auditor console, in a real headless Chromium against a real central (its
mutual-TLS port) holding the latest fleet reports of two stations of two units.

A reader of unit 330100000000 (station ST-A) signs in, opens the fleet page and sees ST-A's overdue
recorder first, with its holder, due time, battery, storage and firmware; filters by state and station; a
recorder that both stations list is flagged without naming the other unit's station. ST-B's recorders are
not on the page, nor in the API when asked for by station; the control: a reader of ST-B's unit sees them.
Every fleet read is on the access log.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright.sync_api import Page, expect

from edge.central.console.credentials import hash_password
from edge.central.console.enrolments import enrol_totp
from edge.central.console.secret_key import ConsoleSecretKey
from edge.central.embedded import EmbeddedCentral
from edge.central.equipment import EquipmentStore
from edge.central.index import Role
from edge.equipment.fleet import (
    DockingRecord,
    FleetPolicy,
    FleetRecords,
    HolderRecord,
    LiveBay,
    StatusReading,
    build_fleet,
)
from edge.equipment.fleet_report import check_report, fleet_report_v2
from tests.browser.conftest import LiveServer, screenshot
from tests.browser.test_console_browser import https_page  # noqa: F401  (the fixture)

UNIT_A = "330100000000"
UNIT_B = "440300000000"
PASSWORD = "auditor password 2026"
TOTP_SECRETS: dict[str, str] = {}
POLICY = FleetPolicy(overdue_after=timedelta(hours=14), min_battery_percent=50)


def _report(station: str, records: FleetRecords, bays: dict[str, LiveBay], now: datetime) -> dict[str, Any]:
    return check_report(fleet_report_v2(build_fleet(records, bays, POLICY, now), station=station),
                        station=station)


def _reports(now: datetime) -> list[dict[str, Any]]:
    """ST-A: ZFY-LATE out 20 h with 110001 张伟 (overdue), ZFY-BAY in bay 3 with its health and firmware,
    ZFY-TWIN in bay 4. ST-B: ZFY-B2 out 2 h with 220001 赵敏, ZFY-TWIN as well (one recorder at two
    stations)."""
    docked = DockingRecord(3, now - timedelta(minutes=30), now - timedelta(minutes=20), "done")
    station_a = FleetRecords(
        allowed=["ZFY-LATE", "ZFY-BAY", "ZFY-TWIN"],
        dockings={"ZFY-BAY": docked, "ZFY-TWIN": DockingRecord(4, now - timedelta(hours=1), None, None)},
        docking_counts={"ZFY-BAY": 2, "ZFY-TWIN": 1},
        readings={"ZFY-BAY": StatusReading(now - timedelta(minutes=30), 95, 8 * 1024**3, 32 * 1024**3,
                                           "EEZ01", "V2.4.1_20260301")},
        open_assignments={
            "ZFY-LATE": HolderRecord(1, "110001", "张伟", UNIT_A, "", now - timedelta(hours=20))},
    )
    station_b = FleetRecords(
        allowed=["ZFY-B2", "ZFY-TWIN"],
        dockings={"ZFY-TWIN": DockingRecord(1, now - timedelta(hours=2), None, None)},
        open_assignments={"ZFY-B2": HolderRecord(7, "220001", "赵敏", UNIT_B, "", now - timedelta(hours=2))},
    )
    return [_report("ST-A", station_a, {"ZFY-BAY": LiveBay(3), "ZFY-TWIN": LiveBay(4)}, now),
            _report("ST-B", station_b, {"ZFY-TWIN": LiveBay(1)}, now)]


def _on_server(live_server: LiveServer, work: Any) -> Any:
    async def call() -> Any:
        return work()

    return live_server.run(call())


@pytest.fixture
def central(live_server: LiveServer, tmp_path: Path) -> Iterator[EmbeddedCentral]:
    running = live_server.run(EmbeddedCentral.start(tmp_path, "ST-A", tmp_path / "store"), timeout=240)

    def prepare() -> None:
        parts = running.running.parts
        parts.console.assign_station_unit("ST-A", UNIT_A, by="admin", reason="browser test")
        parts.console.assign_station_unit("ST-B", UNIT_B, by="admin", reason="browser test")
        store = EquipmentStore(parts.equipment)
        for report in _reports(datetime.now(UTC).replace(microsecond=0)):
            store.keep_report(report)
        for reader, unit in (("li.legal", UNIT_A), ("wang.audit", UNIT_B)):
            parts.console.create_account(reader, hash_password(PASSWORD), by="admin")
            parts.console.grant(reader, Role.READER, [unit], by="admin", reason="browser test")
            TOTP_SECRETS[reader] = pyotp.random_base32()
            key = ConsoleSecretKey.load(parts.config.layout.console_key)
            enrol_totp(parts.console, key, reader, TOTP_SECRETS[reader], by="admin")

    try:
        _on_server(live_server, prepare)
        yield running
    finally:
        live_server.run(running.stop())


def _sign_in(page: Page, central: EmbeddedCentral, reader: str) -> None:
    page.goto(f"{central.console_url}/console/")
    expect(page.locator("#signin-view")).to_be_visible()
    page.fill("#signin-name", reader)
    page.fill("#signin-password", PASSWORD)
    page.fill("#signin-totp", pyotp.TOTP(TOTP_SECRETS[reader]).now())
    page.click("#signin-submit")
    expect(page.locator("#who")).to_contain_text(reader)


def _serials(page: Page) -> list[str]:
    shown = page.locator("#fleet tbody tr").evaluate_all("rows => rows.map(r => r.dataset.serial)")
    return [str(serial) for serial in shown]


def test_the_fleet_page_shows_the_overdue_recorder_first_filters_and_keeps_to_the_readers_scope(
    central: EmbeddedCentral, https_page: Page, live_server: LiveServer  # noqa: F811
) -> None:
    page = https_page
    _sign_in(page, central, "li.legal")
    page.click("a[href='#/fleet']")
    expect(page.locator("#fleet-view")).to_be_visible()
    rows = page.locator("#fleet tbody tr")
    expect(rows).to_have_count(3)
    assert _serials(page) == ["ZFY-LATE", "ZFY-BAY", "ZFY-TWIN"]  # overdue first
    late = rows.first
    expect(late).to_have_attribute("data-state", "overdue")
    expect(late).to_contain_text("110001 张伟")
    expect(late).to_contain_text("逾期未还")
    expect(late).to_contain_text("6 小时")  # out 20 h, due after 14 h
    bay = page.locator("#fleet tbody tr[data-serial='ZFY-BAY']")
    for shown in ("V2.4.1_20260301", "95%", "8.0 GiB / 32.0 GiB", "在位", "done"):
        expect(bay).to_contain_text(shown)
    # At two stations: flagged, the other station (another unit's) counted, not named.
    twin = page.locator("#fleet tbody tr[data-serial='ZFY-TWIN']")
    expect(twin).to_have_attribute("data-flag", "two-stations")
    expect(twin).to_contain_text("ST-A +1")
    # Out of scope: ST-B's own recorder is not on the page, and ST-B is not offered as a filter.
    expect(page.locator("#fleet tbody tr[data-serial='ZFY-B2']")).to_have_count(0)
    expect(page.locator("#fleet tbody tr[data-station='ST-B']")).to_have_count(0)
    assert page.locator("#fleet-station option").all_text_contents()[1:] == ["ST-A"]
    screenshot(page, "console-fleet")

    page.select_option("#fleet-state", "overdue")
    page.click("#fleet-submit")
    expect(rows).to_have_count(1)
    assert _serials(page) == ["ZFY-LATE"]
    page.select_option("#fleet-state", "docked")
    page.select_option("#fleet-station", "ST-A")
    page.click("#fleet-submit")
    expect(rows).to_have_count(2)
    assert sorted(_serials(page)) == ["ZFY-BAY", "ZFY-TWIN"]
    # English on request.
    page.click("#lang")
    expect(page.locator("#fleet-view h2")).to_have_text("The agency's recorders")

    # Asked for by name, the other unit's station answers as one with nothing: no leak, no error.
    answer = page.evaluate(
        "() => fetch('/console/api/fleet?station=ST-B', {headers: {'X-Edge-Console': '1'}})"
        ".then(r => r.json().then(doc => [r.status, doc]))")
    assert answer[0] == 200 and answer[1]["recorders"] == [] and answer[1]["stations"] == []
    # A bad filter is refused, naming it.
    answer = page.evaluate(
        "() => fetch('/console/api/fleet?state=lost', {headers: {'X-Edge-Console': '1'}})"
        ".then(r => r.json().then(doc => [r.status, doc]))")
    assert answer[0] == 400 and "state" in answer[1]["detail"]

    recorded = _on_server(live_server, lambda: central.running.parts.index.access_log())
    fleet_reads = [r for r in recorded if r["what"] == "fleet"]
    assert len(fleet_reads) >= 5 and {r["reader"] for r in fleet_reads} == {"li.legal"}
    assert any("station=ST-B" in (r["query"] or "") for r in fleet_reads)

    # The control: a reader of ST-B's unit sees ST-B's recorders (and not ST-A's).
    page.click("#signout")
    expect(page.locator("#signin-view")).to_be_visible()
    page.click("#lang")  # back to Chinese
    _sign_in(page, central, "wang.audit")
    page.goto(f"{central.console_url}/console/#/fleet")
    expect(page.locator("#fleet-view")).to_be_visible()
    expect(rows).to_have_count(2)
    assert sorted(_serials(page)) == ["ZFY-B2", "ZFY-TWIN"]
    expect(page.locator("#fleet tbody tr[data-serial='ZFY-B2']")).to_contain_text("220001 赵敏")
    expect(page.locator("#fleet tbody tr[data-station='ST-A']")).to_have_count(0)


def test_the_fleet_api_needs_a_session(central: EmbeddedCentral, https_page: Page) -> None:  # noqa: F811
    page = https_page
    page.goto(f"{central.console_url}/console/")
    answer = page.evaluate(
        "() => fetch('/console/api/fleet', {headers: {'X-Edge-Console': '1'}}).then(r => r.status)")
    assert answer == 401
