"""A room's serial hardware (edge.rooms.hardware) with real ffmpeg, pipeline, store and ledger, and the real
panel and PTZ drivers against their simulators on real ptys: sessions started, marked and stopped by the
panel's buttons (ledger entries name the panel); the lamp following every source (BLINK while a killed
source is down, STEADY once it records again); a START the panel cannot bind to a case refused; the panel
going away and back without touching the recording; the PTZ camera sent to its preset at start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from drivers.serial.pelco_d import PtzAction
from drivers.serial.room_panel_protocol import Button, Lamp, Reading
from edge.config.rooms import RoomsSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.hardware import RoomHardware
from edge.rooms.service import RoomService
from edge.verify.station import verify_store
from simulators.ptz import PtzCameraSimulator, PtzPosition
from simulators.room_panel import PanelFaults, RoomPanelSimulator
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

WAIT_S = 60.0  # generous: ffmpeg start-up on a loaded machine
CASE: dict[str, Any] = {"case_number": "A3301062026000777", "collector": "张三", "subject": "听证过程"}
PRESET = 3


@pytest.fixture
def panel() -> Iterator[RoomPanelSimulator]:
    with RoomPanelSimulator(panel_serial="PANEL-XW1", reading=Reading(236, 512)) as sim:
        yield sim


@pytest.fixture
def camera() -> Iterator[PtzCameraSimulator]:
    with PtzCameraSimulator(address=5) as sim:
        sim.store_preset(PRESET, PtzPosition(120.0, -15.0, 2.0))
        yield sim


def _config(
    panel: RoomPanelSimulator, camera: PtzCameraSimulator | None, *, start_case: bool
) -> RoomsSection:
    doc = rooms_config(lavfi_source("a"), lavfi_source("b")).model_dump()
    doc["room"][0]["panel"] = {"port": panel.tty_path, "reply_timeout_s": 0.3, "heartbeat_s": 0.3,
                               "reconnect_max_s": 0.5, "refusal_show_s": 1.0,
                               **({"start_case": CASE} if start_case else {})}
    if camera is not None:
        doc["room"][0]["ptz"] = {"port": camera.tty_path, "address": 5, "preset": PRESET, "baudrate": 9600}
    return RoomsSection.model_validate(doc)


@contextlib.asynccontextmanager
async def room_running(
    config: RoomsSection, store: StationStore, pipeline: IngestPipeline
) -> AsyncIterator[tuple[RoomService, RoomHardware]]:
    service = RoomService(config, store, pipeline, station_id=STATION)
    service.load()
    hardware = RoomHardware(service, config.room[0])
    service.hardware_status["xw-1"] = hardware.status
    tasks = [asyncio.create_task(service.run()), asyncio.create_task(hardware.run())]
    try:
        yield service, hardware
    finally:
        for task in reversed(tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _lamp(panel: RoomPanelSimulator, lamp: Lamp) -> None:
    assert await asyncio.to_thread(panel.wait_for_lamp, lamp, WAIT_S), (lamp, panel.lamp_history())


async def test_buttons_start_mark_and_stop_a_session_and_the_camera_goes_to_its_preset(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, panel: RoomPanelSimulator,
    camera: PtzCameraSimulator,
) -> None:
    by = "room-panel:PANEL-XW1"
    async with room_running(_config(panel, camera, start_case=True), store, pipeline) as (service, hardware):
        connected = await watch.until(lambda: watch.of("device_connected", kind="room_panel"))
        assert connected[0].data["panel_serial"] == "PANEL-XW1" and connected[0].data["room"] == "xw-1"
        await asyncio.to_thread(panel.press, Button.START)
        started = (await watch.until(lambda: watch.of("session_started", by=by)))[0]
        session = started.data["room_session"]
        assert started.data["case"]["case_number"] == CASE["case_number"]
        # Every source records: steady. The camera was sent to the room's preset.
        await _lamp(panel, Lamp.STEADY)
        assert await asyncio.to_thread(camera.wait_for, 1, WAIT_S)
        assert [(c.action, c.preset) for c in camera.commands] == [(PtzAction.GO_TO_PRESET, PRESET)]
        assert camera.position == PtzPosition(120.0, -15.0, 2.0)
        mark_event = await asyncio.to_thread(panel.press, Button.MARK)
        mark = (await watch.until(lambda: watch.of("mark", by=by)))[0]
        assert mark.data["room_session"] == session and f"panel event {mark_event}" in mark.data["note"]
        await watch.until(lambda: len(watch.of("segment_sealed", source="b")) >= 2)
        hw = service.status()["rooms"][0]["hardware"]
        assert hw["panel"]["connected"] and hw["panel"]["lamp"] == "STEADY"
        assert hw["climate"]["temperature_c"] == 23.6 and hw["climate"]["humidity_percent"] == 51.2
        assert hw["climate"]["room_session"] == session and hw["ptz"]["preset_for_session"] == session
        assert hardware.environment() == {"temperature_c": 23.6, "humidity_percent": 51.2,
                                          "time_utc": hw["climate"]["time_utc"]}
        assert service.overlay_lines["xw-1"] == "温度 23.6℃  湿度 51.2%RH"  # the composite's extra line
        await asyncio.to_thread(panel.press, Button.STOP)
        stopped = (await watch.until(lambda: watch.of("session_stopped", by=by)))[0]
        assert stopped.data["room_session"] == session and stopped.data["marks"] == 1
        await _lamp(panel, Lamp.OFF)
        assert "xw-1" not in service.active
    # While the stop closes and seals the last segments nothing records: the lamp blinks until it is done.
    history = panel.lamp_history()
    assert history[0] is Lamp.OFF and history[-1] is Lamp.OFF and Lamp.REFUSE not in history
    assert Lamp.STEADY in history[-3:-1]
    assert len(camera.commands) == 1  # once per session start, not once per lamp period
    assert watch.of("refused") == []
    assert verify_store(store.layout.root).ok


async def test_the_lamp_blinks_while_a_source_is_down_and_is_steady_again_once_it_records(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, panel: RoomPanelSimulator,
) -> None:
    async with room_running(_config(panel, None, start_case=False), store, pipeline) as (service, _):
        # Started from the station (with its case): the panel is not needed for that.
        await service.start("xw-1", {**CASE, "persons": []}, by="operator")
        await _lamp(panel, Lamp.STEADY)
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 1)
        recording = service.recording("xw-1")
        assert recording is not None and recording.sources["a"].pid is not None
        steady_until = len(panel.lamp_history())
        os.kill(recording.sources["a"].pid, signal.SIGKILL)
        await _lamp(panel, Lamp.BLINK)
        await watch.until(lambda: watch.of("gap", source="a", state="open"))
        await watch.until(lambda: watch.of("gap", source="a", state="closed"))
        await _lamp(panel, Lamp.STEADY)
        assert panel.lamp_history()[steady_until - 1 :] == [Lamp.STEADY, Lamp.BLINK, Lamp.STEADY]
        await service.stop("xw-1", by="operator")
        await _lamp(panel, Lamp.OFF)


async def test_start_without_a_case_for_the_panel_is_refused_and_shown(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, panel: RoomPanelSimulator,
) -> None:
    by = "room-panel:PANEL-XW1"
    async with room_running(_config(panel, None, start_case=False), store, pipeline) as (service, _):
        await watch.until(lambda: watch.of("device_connected", kind="room_panel"))
        event = await asyncio.to_thread(panel.press, Button.START)
        refused = (await watch.until(lambda: watch.of("refused", by=by)))[0]
        assert refused.data["action"] == "start" and refused.data["panel_event"] == event
        assert "start_case" in refused.data["reason"]
        await _lamp(panel, Lamp.REFUSE)
        await _lamp(panel, Lamp.OFF)  # shown for refusal_show_s, then the room's state again
        # STOP with nothing recording: refused by the service, shown the same way.
        await asyncio.to_thread(panel.press, Button.STOP)
        stop_refused = (await watch.until(lambda: [e for e in watch.of("refused", by=by)
                                                   if e.data["action"] == "stop"]))[0]
        assert "no session" in stop_refused.data["reason"]
        await _lamp(panel, Lamp.REFUSE)
        await _lamp(panel, Lamp.OFF)
        assert watch.of("session_started") == [] and service.active == {}
        # Control: with a session started at the station, the panel's STOP works.
        await service.start("xw-1", {**CASE, "persons": []}, by="operator")
        await _lamp(panel, Lamp.STEADY)
        await asyncio.to_thread(panel.press, Button.STOP)
        await watch.until(lambda: watch.of("session_stopped", by=by))


async def test_the_panel_going_away_and_back_is_on_the_ledger_and_recording_goes_on(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, panel: RoomPanelSimulator,
) -> None:
    async with room_running(_config(panel, None, start_case=True), store, pipeline) as (service, _):
        await watch.until(lambda: watch.of("device_connected", kind="room_panel"))
        await asyncio.to_thread(panel.press, Button.START)
        await _lamp(panel, Lamp.STEADY)
        panel.faults.silent = True  # unplugged (or hung): no answer to anything
        removed = (await watch.until(lambda: watch.of("device_removed", kind="room_panel")))[0]
        assert removed.data["panel_serial"] == "PANEL-XW1"
        assert service.overlay_lines["xw-1"] == ""  # no stale reading left on the picture
        sealed_then = len(watch.of("segment_sealed", source="a"))
        # Recording goes on without its panel; reconnection attempts add no entries.
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= sealed_then + 2)
        assert "xw-1" in service.active and len(watch.of("device_removed", kind="room_panel")) == 1
        panel.faults.silent = False
        panel.reboot(announce=False)  # plugged back in: dark until told
        await watch.until(lambda: len(watch.of("device_connected", kind="room_panel")) >= 2)
        await _lamp(panel, Lamp.STEADY)  # the lamp shows the session again
        await asyncio.to_thread(panel.press, Button.STOP)
        await watch.until(lambda: watch.of("session_stopped", by="room-panel:PANEL-XW1"))
    assert watch.of("gap") == []  # the panel's outage is no interruption of the recording


async def test_an_unreachable_ptz_is_an_error_entry_and_the_session_records(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, panel: RoomPanelSimulator,
    camera: PtzCameraSimulator,
) -> None:
    config = _config(panel, camera, start_case=True)
    camera.stop()  # the camera's line is gone
    async with room_running(config, store, pipeline) as (service, _):
        await watch.until(lambda: watch.of("device_connected", kind="room_panel"))
        await asyncio.to_thread(panel.press, Button.START)
        error = (await watch.until(lambda: watch.of("error", stage="room-ptz")))[0]
        assert f"preset {PRESET}" in error.data["reason"] and "by hand" in error.data["reason"]
        await _lamp(panel, Lamp.STEADY)
        assert "xw-1" in service.active


async def test_the_lamp_is_not_left_steady_when_the_agent_stops(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    # A panel whose own host watchdog would not trip during the test: only the host can turn the lamp.
    with RoomPanelSimulator(panel_serial="PANEL-XW1", host_timeout_s=3600.0) as panel:
        config = _config(panel, None, start_case=True)
        service = RoomService(config, store, pipeline, station_id=STATION)
        service.load()
        hardware = RoomHardware(service, config.room[0])
        recording = asyncio.create_task(service.run())
        serving = asyncio.create_task(hardware.run())
        try:
            await watch.until(lambda: watch.of("device_connected", kind="room_panel"))
            await asyncio.to_thread(panel.press, Button.START)
            await _lamp(panel, Lamp.STEADY)
            serving.cancel()  # the agent stops: its tasks are cancelled
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            assert panel.lamp is Lamp.BLINK  # a session is open and nothing will record it
        finally:
            recording.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recording


async def test_a_press_lost_on_the_line_is_an_error_entry_and_a_noisy_line_still_works(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, panel: RoomPanelSimulator,
) -> None:
    async with room_running(_config(panel, None, start_case=True), store, pipeline) as (service, _):
        await watch.until(lambda: watch.of("device_connected", kind="room_panel"))
        panel.faults = PanelFaults(drop_events_every_n=1)  # the START press never reaches the station
        await asyncio.to_thread(panel.press, Button.START)
        lost = (await watch.until(lambda: watch.of("error", stage="room-panel")))[0]
        assert lost.data["panel_serial"] == "PANEL-XW1" and "1 panel event(s) lost" in lost.data["reason"]
        assert watch.of("session_started") == [] and panel.lamp is Lamp.OFF  # nothing changed: press again
        # Control, on a line with junk before every frame and every 4th checksum bad: the press again works.
        panel.faults = PanelFaults(garbage_every_n=1, bad_checksum_every_n=4)
        for _ in range(5):  # whatever the line loses is reported, and one of the presses gets through
            await asyncio.to_thread(panel.press, Button.START)
            if await asyncio.to_thread(panel.wait_for_lamp, Lamp.STEADY, 10.0):
                break
        started = await watch.until(lambda: watch.of("session_started", by="room-panel:PANEL-XW1"))
        assert len(started) == 1  # later presses were refused: a session already records
        assert "xw-1" in service.active
