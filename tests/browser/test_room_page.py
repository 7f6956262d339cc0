"""The room page (/rooms/) in real headless Chromium against the real agent API with a real room: two
lavfi sources recorded by ffmpeg, sealed through the ingest pipeline, the room routes served over
loopback TCP with ``[api] room_page_over_tcp``. The operator starts a session from the form, sees it
record and its segments sealed, marks, and stops with a confirmation (cancelled once: the control); a
source killed mid-session shows its GAP at once, with its reason, and recording again when it is back;
a refusal shows the service's own reason; both languages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from edge.config.station import ApiSection
from edge.custody.ledger import LedgerEntry
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.observe.api import LocalApi
from edge.observe.board import StatusBoard
from edge.observe.room_api import room_routes
from edge.rooms.service import RoomService
from tests.browser.conftest import LiveServer, screenshot
from tests.prerequisites import require
from tests.rooms.conftest import HAVE_FFMPEG, STATION, lavfi_source, rooms_config

# Generous: ffmpeg starts, seals and stops on a loaded 2-core machine.
EXPECT_MS = 60_000
CASE = "A3301062026000123"


@dataclass
class RoomStation:
    url: str
    store: StationStore
    service: RoomService
    live: LiveServer

    def entries(self, type_: str) -> list[LedgerEntry]:
        """The ledger's entries of a type, read on the server's loop (the store's one connection is the
        agent's, used from that loop)."""

        async def read() -> list[LedgerEntry]:
            return [e for e in self.store.ledger.entries() if e.type == type_]

        return self.live.run(read())


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-roompage-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _station(live_server: LiveServer, tmp_path: Path, short_dir: Path, over_tcp: bool = True,
             **rooms: Any) -> Iterator[RoomStation]:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    store = StationStore(tmp_path / "store", STATION)
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=256 * 1024))
    service = RoomService(rooms_config(lavfi_source("a", audio=True), lavfi_source("b"), **rooms), store,
                          pipeline, station_id=STATION)
    service.load()
    api = LocalApi(StatusBoard(identity={"id": STATION}, bays=[]), store,
                   ApiSection(socket_path=short_dir / "api.sock", tcp_port=0, room_page_over_tcp=over_tcp),
                   [room_routes(service)])

    async def start() -> asyncio.Task[None]:
        await api.start()
        return asyncio.create_task(service.run())

    task = live_server.run(start())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.stop()

    try:
        assert api.tcp_url is not None
        yield RoomStation(api.tcp_url, store, service, live_server)
    finally:
        live_server.run(stop(), timeout=120)
        store.close()


@pytest.fixture
def station(live_server: LiveServer, tmp_path: Path, short_dir: Path) -> Iterator[RoomStation]:
    yield from _station(live_server, tmp_path, short_dir)


@pytest.fixture
def slow_restart_station(live_server: LiveServer, tmp_path: Path, short_dir: Path) -> Iterator[RoomStation]:
    # A source that dies is restarted only after 15 s: its gap stays long enough to be seen, whatever
    # the page's 2 s reading and the machine's load.
    yield from _station(live_server, tmp_path, short_dir,
                        restart_backoff_initial_s=15.0, restart_backoff_max_s=15.0)


@pytest.fixture
def socket_only_station(live_server: LiveServer, tmp_path: Path, short_dir: Path) -> Iterator[RoomStation]:
    yield from _station(live_server, tmp_path, short_dir, over_tcp=False)


def _open(page: Page, station: RoomStation) -> Locator:
    page.goto(station.url + "/rooms")
    expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=EXPECT_MS)
    return page.locator('.room[data-room="xw-1"]')


def _source(card: Locator, source: str) -> Locator:
    return card.locator(f'.source[data-source="{source}"]')


def test_the_operator_starts_marks_and_stops_a_session_from_the_page(
    page: Page, station: RoomStation
) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    card = _open(page, station)
    expect(card).to_have_attribute("data-state", "idle")
    expect(card.locator(".room-state")).to_have_text("未录制")
    expect(card.locator(".room-name")).to_have_text("第一询问室")
    expect(card.locator(".start")).to_be_visible()
    expect(card.locator(".controls")).to_be_hidden()

    form = card.locator("form.start")
    form.locator('[name="case_number"]').fill(CASE)
    form.locator('[name="subject"]').fill("询问过程")
    form.locator('[name="collector"]').fill("张三")
    form.locator('[name="collector_no"]').fill("012345")
    form.locator('[name="persons"]').fill("李四:被询问人\n王五：询问人")
    form.locator(".start-button").click()

    expect(card).to_have_attribute("data-state", "recording", timeout=EXPECT_MS)
    expect(card.locator(".case-number")).to_have_text(CASE)
    expect(card.locator(".subject")).to_have_text("询问过程")
    expect(card.locator(".collector")).to_have_text("张三（012345）")
    expect(card.locator(".persons")).to_have_text("李四（被询问人）、王五（询问人）")
    expect(card.locator(".started")).to_contain_text("（root）")
    expect(card.locator(".elapsed")).to_have_text(re.compile(r"^已用时 \d+:\d\d:\d\d$"))
    for source in ("a", "b"):
        expect(_source(card, source)).to_have_attribute("data-state", "recording", timeout=EXPECT_MS)
        expect(_source(card, source).locator(".source-state")).to_have_text("录制中")
        # Segments sealed, counted on the page as the pipeline seals them, with the last seal's latency.
        expect(_source(card, source).locator(".source-sealed")).to_have_text(
            re.compile(r"^([2-9]|\d\d+)$"), timeout=EXPECT_MS)
        expect(_source(card, source).locator(".source-latency")).to_have_text(
            re.compile(r"^\d+\.\d\d 秒$"))
    expect(card.locator("form.start")).to_be_hidden()
    started = station.entries("session_started")
    assert len(started) == 1 and started[0].data["by"] == "root"
    assert started[0].data["case"]["case_number"] == CASE
    assert started[0].data["case"]["collector_no"] == "012345"
    assert started[0].data["persons"] == [{"name": "李四", "role": "被询问人"},
                                          {"name": "王五", "role": "询问人"}]
    sealed = {e.data["source"] for e in station.entries("segment_sealed")}
    assert sealed == {"a", "b"}

    card.locator('form.mark [name="note"]').fill("出示证据一")
    card.locator(".mark-button").click()
    expect(card.locator(".marks li").first).to_contain_text("打点：出示证据一（root）", timeout=EXPECT_MS)
    marks = station.entries("mark")
    assert [m.data["note"] for m in marks] == ["出示证据一"] and marks[0].data["by"] == "root"
    screenshot(page, "rooms-recording-zh")

    page.locator("#language").click()
    expect(card.locator(".room-state")).to_have_text("Recording")
    expect(_source(card, "a").locator(".source-state")).to_have_text("Recording")
    expect(card.locator(".elapsed")).to_have_text(re.compile(r"^Elapsed \d+:\d\d:\d\d$"))
    expect(card.locator(".stop-button")).to_have_text("Stop recording")
    screenshot(page, "rooms-recording-en")
    page.locator("#language").click()

    # The stop asks first, naming the case. Control: cancelled, nothing stops.
    card.locator(".stop-button").click()
    dialog = card.locator("dialog.confirm-stop")
    expect(dialog).to_be_visible()
    expect(dialog.locator(".confirm-text")).to_contain_text(CASE)
    dialog.locator(".cancel-button").click()
    expect(dialog).to_be_hidden()
    page.wait_for_timeout(2500)  # a poll or more later: still recording, nothing on the ledger
    expect(card).to_have_attribute("data-state", "recording")
    assert station.entries("session_stopped") == []

    card.locator(".stop-button").click()
    dialog.locator(".confirm-button").click()
    expect(card).to_have_attribute("data-state", "idle", timeout=EXPECT_MS)
    expect(card.locator(".start")).to_be_visible()
    expect(card.locator(".refusal")).to_be_hidden()
    stopped = station.entries("session_stopped")
    assert len(stopped) == 1 and stopped[0].data["by"] == "root" and stopped[0].data["manifest_item"]


def test_a_refusal_shows_the_services_reason(page: Page, station: RoomStation) -> None:
    card = _open(page, station)
    form = card.locator("form.start")
    form.locator('[name="case_number"]').fill("——")  # no letter or digit: the service refuses it
    form.locator('[name="subject"]').fill("询问过程")
    form.locator('[name="collector"]').fill("张三")
    form.locator(".start-button").click()
    refusal = card.locator(".refusal")
    expect(refusal).to_be_visible(timeout=EXPECT_MS)
    refused = [e for e in station.entries("refused") if e.data.get("action") == "start"]
    assert len(refused) == 1
    expect(refusal).to_have_text(f"操作被拒绝：{refused[0].data['reason']}")
    assert "case_number" in refused[0].data["reason"]
    expect(card).to_have_attribute("data-state", "idle")
    # A persons line that is not name:role is the page's own complaint: nothing goes to the station.
    form.locator('[name="case_number"]').fill(CASE)
    form.locator('[name="persons"]').fill("李四")
    form.locator(".start-button").click()
    expect(refusal).to_have_text("在场人员格式不对（应为 姓名:身份）：李四")
    assert len(station.entries("refused")) == 1 and station.entries("session_started") == []
    # Control: with the persons right, the same form starts the session.
    form.locator('[name="persons"]').fill("李四:被询问人")
    form.locator(".start-button").click()
    expect(card).to_have_attribute("data-state", "recording", timeout=EXPECT_MS)
    expect(refusal).to_be_hidden()
    screenshot(page, "rooms-refusal-then-start")


def test_a_source_killed_mid_session_shows_a_gap_at_once(
    page: Page, slow_restart_station: RoomStation
) -> None:
    station = slow_restart_station
    card = _open(page, station)
    fields = {"case_number": CASE, "collector": "张三", "subject": "询问过程",
              "persons": [{"name": "李四", "role": "被询问人"}]}
    station.live.run(station.service.start("xw-1", fields, by="root"))
    for source in ("a", "b"):
        expect(_source(card, source)).to_have_attribute("data-state", "recording", timeout=EXPECT_MS)
        expect(_source(card, source).locator(".source-sealed")).not_to_have_text("0", timeout=EXPECT_MS)
    recording = station.service.recording("xw-1")
    assert recording is not None
    pid = recording.sources["a"].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    row = _source(card, "a")
    expect(row).to_have_attribute("data-state", "gap", timeout=EXPECT_MS)
    expect(card).to_have_attribute("data-state", "gap")
    expect(card.locator(".room-state")).to_have_text("录制中 · 有中断")
    gaps = station.entries("gap")
    assert len(gaps) == 1 and gaps[0].data["source"] == "a"
    reason = gaps[0].data["reason"]
    expect(row.locator(".source-state")).to_contain_text("中断 自 ")
    expect(row.locator(".source-state")).to_contain_text(reason)
    # Control: the other source records on, and says so.
    expect(_source(card, "b")).to_have_attribute("data-state", "recording")
    screenshot(page, "rooms-gap-zh")
    page.locator("#language").click()
    expect(row.locator(".source-state")).to_contain_text("GAP since ")
    page.locator("#language").click()
    # Once the source is back (after its 15 s backoff), the page says so too.
    expect(row).to_have_attribute("data-state", "recording", timeout=EXPECT_MS)
    expect(card).to_have_attribute("data-state", "recording")


def test_the_pages_reading_of_source_states_and_persons(page: Page, station: RoomStation) -> None:
    """The page's own module (as served) on the cases the live tests pass through too fast to see."""
    _open(page, station)
    found = page.evaluate("""async () => {
      const m = await import('/rooms/model.js');
      const end = '2026-12-05T10:00:01.123456Z';
      return {
        states: [
          m.sourceState({recording: false, gap: null, last_segment_end_utc: null}),
          m.sourceState({recording: true, gap: null, last_segment_end_utc: null}),
          m.sourceState({recording: true, gap: null, last_segment_end_utc: end}),
          m.sourceState({recording: false, gap: {from_utc: end, reason: 'x'}, last_segment_end_utc: end}),
        ],
        persons: m.parsePersons('李四:被询问人\\n 王五：询问人 ；赵六:翻译\\n\\n'),
        bad: m.parsePersons('李四:被询问人\\n王五'),
        empty: m.parsePersons(''),
        since: m.secondsSince('2026-12-05T10:00:00.999999Z', Date.parse('2026-12-05T10:01:01.000Z')),
        never: m.secondsSince('not a time', 0),
      };
    }""")
    assert found["states"] == ["starting", "starting", "recording", "gap"]
    assert found["persons"] == {"persons": [{"name": "李四", "role": "被询问人"},
                                            {"name": "王五", "role": "询问人"},
                                            {"name": "赵六", "role": "翻译"}]}
    assert found["bad"] == {"bad": "王五"} and found["empty"] == {"persons": []}
    assert found["since"] == 60 and found["never"] is None


def test_the_page_says_why_when_the_station_does_not_serve_it_over_tcp(
    page: Page, socket_only_station: RoomStation
) -> None:
    page.goto(socket_only_station.url + "/rooms/")
    expect(page.locator("body")).to_have_attribute("data-connection", "refused", timeout=EXPECT_MS)
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("本页无权访问录制服务：")
    expect(page.locator("#banner")).to_contain_text("room_page_over_tcp is off")
    expect(page.locator(".room")).to_have_count(0)  # nothing of the rooms came


def test_the_page_is_its_own_files_only(page: Page, station: RoomStation) -> None:
    """The page's files are served with their policy, and nothing else under /rooms/ reaches the disk."""
    response = page.request.get(station.url + "/rooms/")
    assert response.ok and "script-src 'self'" in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    for name in ("main.js", "model.js", "i18n.js", "rooms.css"):
        assert page.request.get(f"{station.url}/rooms/{name}").ok, name
    # Controls of the refusal: a file beside them, a path out of the package, are not found.
    for path in ("/rooms/__init__.py", "/rooms/..%2f__init__.py", "/rooms/%2e%2e/__init__.py"):
        assert page.request.get(station.url + path).status == 404, path


def test_a_disk_space_warning_is_shown_while_there_is_one(page: Page, station: RoomStation) -> None:
    from edge.rooms.space import SpaceLevel, SpaceReading

    _open(page, station)
    warning = page.locator("#space")
    expect(warning).to_be_hidden()

    def reading(level: SpaceLevel, minutes: float | None) -> None:
        shown = SpaceReading(level, free_bytes=9 * 2**30, reserve_bytes=8 * 2**30, rate_bytes_per_s=2e6,
                             minutes_left=minutes)
        station.live.call_soon(lambda: setattr(station.service.space, "reading", shown))

    reading(SpaceLevel.LOW, 42.4)
    expect(warning).to_have_text("存储空间不足：约 42 分钟后将无法继续封存录像，请通知管理员",
                                 timeout=EXPECT_MS)
    expect(warning).to_have_attribute("data-level", "low")
    reading(SpaceLevel.CRITICAL, 7.0)
    expect(warning).to_have_text("存储空间即将用尽（约 7 分钟）：请立即通知管理员", timeout=EXPECT_MS)
    page.locator("#language").click()
    expect(warning).to_have_text("Disk space nearly gone (about 7 minutes): tell the administrator now")
    # Control: the level back to ok takes the warning away.
    reading(SpaceLevel.OK, None)
    expect(warning).to_be_hidden(timeout=EXPECT_MS)
    # A source the recording reserve stopped (review 29) is named until space is freed.
    held = station.service.reserve._held
    station.live.call_soon(lambda: held.add(("xw-1", "cam")))
    expect(warning).to_have_text("The disk is at its reserve: recording stopped for xw-1/cam (what they "
                                 "recorded is sealed). Tell the administrator to free space now",
                                 timeout=EXPECT_MS)
    expect(warning).to_have_attribute("data-level", "critical")
    station.live.call_soon(held.clear)
    expect(warning).to_be_hidden(timeout=EXPECT_MS)


def test_the_rooms_panel_lamp_climate_and_ptz_are_shown(page: Page, station: RoomStation) -> None:
    """The room's hardware as the status carries it (edge.rooms.hardware's status, given here by the
    service's hook for it): the panel's connection, its lamp, the climate reading, the PTZ preset."""
    card = _open(page, station)
    line = card.locator(".hardware")
    expect(line).to_be_hidden()  # control: a room without a panel or PTZ shows no line

    def hardware(doc: dict[str, Any]) -> None:
        station.live.call_soon(lambda: station.service.hardware_status.__setitem__("xw-1", lambda: doc))

    hardware({"panel": {"connected": True, "panel_serial": "P-1", "sensor": True, "lamp": "BLINK",
                        "events_lost": 0},
              "climate": {"temperature_c": 23.6, "humidity_percent": 51.2,
                          "time_utc": "2026-12-05T10:00:00Z"},
              "ptz": {"address": 1, "preset": 3, "preset_for_session": None, "error": None}})
    expect(line).to_be_visible(timeout=EXPECT_MS)
    expect(line.locator(".panel")).to_have_text("按钮面板：已连接")
    expect(line.locator(".lamp")).to_have_text("指示灯：闪烁")
    expect(line.locator(".climate")).to_have_text("温度 23.6℃ 湿度 51.2%RH")
    expect(line.locator(".ptz")).to_have_text("云台：预置位 3")
    hardware({"panel": {"connected": False, "panel_serial": None, "sensor": None, "lamp": None,
                        "events_lost": 0}, "climate": None,
              "ptz": {"address": 1, "preset": 3, "preset_for_session": None, "error": "<b>port gone</b>"}})
    expect(line.locator(".panel")).to_have_text("按钮面板：未连接", timeout=EXPECT_MS)
    expect(line.locator(".lamp")).to_have_text("")
    expect(line.locator(".climate")).to_have_text("")
    expect(line.locator(".ptz")).to_have_text("云台故障：<b>port gone</b>")  # device text as text
    assert line.locator("b").count() == 0
