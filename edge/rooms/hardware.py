"""A room's hardware over serial: the recording lamp and button panel, its climate sensor, the PTZ camera.

:class:`RoomHardware` is one supervised task per room that has a ``[rooms.room.panel]`` or
``[rooms.room.ptz]``. It never records anything itself: it asks :class:`~edge.rooms.service.RoomService`,
exactly as the local API does, so a button press is checked, refused and written to the ledger by the same
code as a request from the station's page.

* Buttons: START starts a session bound to the panel's ``start_case`` (without one it is refused: the
  button cannot say which case a proceeding belongs to); STOP stops; MARK marks. Every ledger entry they
  cause names ``room-panel:<panel serial>`` as who did it. A refused press (no case, nothing recording,
  a full disk ...) shows the REFUSE pattern for ``refusal_show_s``; the refusal is on the ledger.
* The lamp: OFF without a session; STEADY only while every source of the session records; BLINK while
  any does not (a gap, or a source still starting). Re-computed every ``LAMP_PERIOD_S`` from the service.
* The panel going away and coming back are `device_removed` / `device_connected` entries (one per
  change, not per reconnection attempt); recording goes on regardless. Lost panel events (a press the
  line swallowed, or one the driver dropped from its full queue while this task lagged, e.g. during a
  STOP) are an `error` entry with their count: the operator sees the lamp not change and presses again.
* The sensor's readings are kept per session (latest, range, count) in :meth:`status`, for operators;
  each reading becomes the composite overlay's extra line (``RoomService.set_overlay_line``), cleared
  when the panel goes away; :meth:`environment` is the latest reading alone.
* The PTZ camera goes to its ``preset`` whenever a session starts in the room (by panel or API). A
  session the agent resumed after a restart is left where the operator had the camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from drivers.serial.ptz import PtzDriver, PtzError
from drivers.serial.room_panel import (
    ButtonPressed,
    EventsLost,
    PanelConnectionError,
    PanelError,
    PanelIdentity,
    PanelNakError,
    PanelRestarted,
    ReadingTaken,
    RoomPanelDriver,
)
from drivers.serial.room_panel_protocol import Button, Lamp, Reading
from edge.config.rooms import RoomConfig, RoomPanelConfig, RoomPtzConfig
from edge.custody.ledger import EntryType, station_time_now
from edge.custody.text import printable
from edge.rooms.service import RoomRefused, RoomService

log = logging.getLogger(__name__)

LAMP_PERIOD_S = 0.25  # how often the lamp and the PTZ follow the sessions: well under a human's notice
_RECONNECT_INITIAL_S = 0.5


@dataclass
class ClimateRecord:
    """The sensor's readings during one session (or with no session: `room_session` None)."""

    room_session: str | None
    latest: Reading
    latest_utc: str
    count: int
    min_temperature_dc: int
    max_temperature_dc: int
    min_humidity_dpct: int
    max_humidity_dpct: int

    def add(self, reading: Reading, time_utc: str) -> None:
        self.latest, self.latest_utc = reading, time_utc
        self.count += 1
        self.min_temperature_dc = min(self.min_temperature_dc, reading.temperature_dc)
        self.max_temperature_dc = max(self.max_temperature_dc, reading.temperature_dc)
        self.min_humidity_dpct = min(self.min_humidity_dpct, reading.humidity_dpct)
        self.max_humidity_dpct = max(self.max_humidity_dpct, reading.humidity_dpct)

    def to_json(self) -> dict[str, Any]:
        return {
            "room_session": self.room_session,
            "temperature_c": self.latest.temperature_c,
            "humidity_percent": self.latest.humidity_percent,
            "time_utc": self.latest_utc,
            "readings": self.count,
            "temperature_range_c": [self.min_temperature_dc / 10, self.max_temperature_dc / 10],
            "humidity_range_percent": [self.min_humidity_dpct / 10, self.max_humidity_dpct / 10],
        }


class RoomHardware:
    def __init__(self, service: RoomService, room: RoomConfig) -> None:
        self.service = service
        self.room = room
        self.panel_config: RoomPanelConfig | None = room.panel
        self.ptz_config: RoomPtzConfig | None = room.ptz
        self.panel: PanelIdentity | None = None
        self._panel_present: bool | None = None  # None: not known yet (nothing on the ledger)
        self.lamp: Lamp | None = None  # what the panel last acknowledged
        self._refusing_until = 0.0
        self.climate: ClimateRecord | None = None
        self.events_lost = 0
        self.ptz_preset_for: str | None = None  # the session the camera was last sent to its preset for
        self.ptz_error: str | None = None

    # -- what others read ----------------------------------------------------------------------------

    def environment(self) -> dict[str, Any] | None:
        """The latest climate reading (temperature_c, humidity_percent, time_utc), for the overlay."""
        climate = self.climate
        if climate is None:
            return None
        return {"temperature_c": climate.latest.temperature_c,
                "humidity_percent": climate.latest.humidity_percent, "time_utc": climate.latest_utc}

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.panel_config is not None:
            result["panel"] = {
                "connected": bool(self._panel_present),
                "panel_serial": None if self.panel is None else self.panel.panel_serial,
                "sensor": None if self.panel is None else self.panel.has_sensor,
                "lamp": None if self.lamp is None else self.lamp.value,
                "events_lost": self.events_lost,
            }
            result["climate"] = None if self.climate is None else self.climate.to_json()
        if self.ptz_config is not None:
            result["ptz"] = {"address": self.ptz_config.address, "preset": self.ptz_config.preset,
                             "preset_for_session": self.ptz_preset_for, "error": self.ptz_error}
        return result

    def desired_lamp(self) -> Lamp:
        """What the lamp must show now, from the service's sessions and sources."""
        if time.monotonic() < self._refusing_until:
            return Lamp.REFUSE
        if self.service.active.get(self.room.id) is None:
            return Lamp.OFF
        recording = self.service.recording(self.room.id)
        sources = [] if recording is None else recording.status()
        if sources and all(source["recording"] for source in sources):
            return Lamp.STEADY
        return Lamp.BLINK

    # -- the supervised task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the room's panel and PTZ until cancelled."""
        jobs = []
        if self.panel_config is not None:
            jobs.append(self._panel_loop(self.panel_config))
        if self.ptz_config is not None:
            jobs.append(self._ptz_loop(self.ptz_config))
        await _all_or_none(*jobs)

    async def _panel_loop(self, config: RoomPanelConfig) -> None:
        backoff_s = _RECONNECT_INITIAL_S
        while True:
            try:
                driver = await RoomPanelDriver.open(
                    config.port, baudrate=config.baudrate, reply_timeout_s=config.reply_timeout_s,
                    heartbeat_s=config.heartbeat_s,
                )
            except PanelConnectionError as exc:
                await self._panel_gone(str(exc))
                await asyncio.sleep(backoff_s)
                backoff_s = min(config.reconnect_max_s, backoff_s * 2)
                continue
            backoff_s = _RECONNECT_INITIAL_S
            try:
                await self._panel_came(driver.identity)
                await _all_or_none(self._follow_lamp(driver, config), self._serve_inputs(driver, config))
            except PanelConnectionError as exc:
                await self._panel_gone(str(exc))
            except asyncio.CancelledError:
                await self._lamp_on_the_way_out(driver)
                raise
            finally:
                self.lamp = None
                await driver.close()

    async def _lamp_on_the_way_out(self, driver: RoomPanelDriver) -> None:
        """The agent stops: what records now stops too, so the lamp must not stay STEADY (the panel's own
        watchdog covers a host that dies without this)."""
        lamp = Lamp.BLINK if self.service.active.get(self.room.id) is not None else Lamp.OFF
        with contextlib.suppress(PanelError, TimeoutError):
            async with asyncio.timeout(1.0):
                await driver.set_lamp(lamp)

    async def _follow_lamp(self, driver: RoomPanelDriver, config: RoomPanelConfig) -> None:
        next_reading = 0.0
        read_for: str | None = None
        while True:
            session = self.service.active.get(self.room.id)
            if (None if session is None else session.session) != read_for:
                read_for = None if session is None else session.session
                next_reading = 0.0  # every session's record starts with a reading at its start
            lamp = self.desired_lamp()
            if lamp is not self.lamp:
                try:
                    await driver.set_lamp(lamp)
                except PanelNakError as exc:  # it answers, so the link is fine: this state is refused
                    log.error("room %s: panel refused lamp %s: %s", self.room.id, lamp, exc)
                self.lamp = lamp
                log.info("room %s: lamp %s", self.room.id, lamp)
            if driver.identity.has_sensor and time.monotonic() >= next_reading:
                next_reading = time.monotonic() + config.sensor_poll_s
                with contextlib.suppress(PanelError):
                    reading = await driver.read_environment()
                    if reading is not None:
                        self._keep_reading(reading)
            await asyncio.sleep(LAMP_PERIOD_S)

    async def _serve_inputs(self, driver: RoomPanelDriver, config: RoomPanelConfig) -> None:
        async for item in driver.inputs():
            if isinstance(item, ButtonPressed):
                await self._pressed(item, driver.identity, config)
            elif isinstance(item, ReadingTaken):
                self._keep_reading(item.reading)
            elif isinstance(item, EventsLost):
                self.events_lost += item.count
                await self._record(EntryType.ERROR, {
                    "stage": "room-panel", "room": self.room.id, "panel_serial": driver.identity.panel_serial,
                    "reason": f"{item.count} panel event(s) lost ({item.detail}): a button "
                              "press may not have been acted on",
                })
            elif isinstance(item, PanelRestarted):
                log.warning("room %s: panel %s restarted", self.room.id, driver.identity.panel_serial)
        raise PanelConnectionError(f"room {self.room.id}: panel input ended")

    async def _pressed(self, press: ButtonPressed, panel: PanelIdentity, config: RoomPanelConfig) -> None:
        room = self.room.id
        by = f"room-panel:{panel.panel_serial}"
        try:
            # Shielded: a request half done when this task is cancelled (the agent stops, the panel task
            # is restarted) runs to its end, as a request from the local API does.
            if press.button is Button.START:
                if config.start_case is None:
                    await self._refuse_start(by, press.event_seq)
                else:
                    await asyncio.shield(self.service.start(room, config.start_case.model_dump(), by=by))
            elif press.button is Button.STOP:
                await asyncio.shield(self.service.stop(room, by=by))
            else:
                note = f"panel MARK button (panel event {press.event_seq})"
                await asyncio.shield(self.service.mark(room, note, by=by))
        except RoomRefused as exc:
            log.warning("room %s: panel %s refused: %s", room, press.button, printable(str(exc)))
            self._refusing_until = time.monotonic() + config.refusal_show_s

    async def _refuse_start(self, by: str, event_seq: int) -> None:
        reason = (
            f"the START button of room {self.room.id} has no case to bind the session to (no "
            "[rooms.room.panel.start_case]): start the session with its case from the station "
            "(local API / edge room start); the panel's STOP and MARK then work"
        )
        await self._record(EntryType.REFUSED, {"stage": "room", "action": "start", "room": self.room.id,
                                               "by": by, "panel_event": event_seq, "reason": reason})
        raise RoomRefused(reason, 400)

    def _keep_reading(self, reading: Reading) -> None:
        session = self.service.active.get(self.room.id)
        session_id = None if session is None else session.session
        now = station_time_now()
        if self.climate is None or self.climate.room_session != session_id:
            self.climate = ClimateRecord(session_id, reading, now, 1, reading.temperature_dc,
                                         reading.temperature_dc, reading.humidity_dpct, reading.humidity_dpct)
        else:
            self.climate.add(reading, now)
        # The composite's overlay line (temperature and humidity burnt into the picture, as room
        # specifications ask): replaced at each reading, cleared when the panel goes away (a stale value
        # must not stay on the picture).
        self.service.set_overlay_line(self.room.id, overlay_line(reading))

    async def _panel_came(self, panel: PanelIdentity) -> None:
        self.panel = panel
        self._panel_present = True
        await self._record(EntryType.DEVICE_CONNECTED, {
            "kind": "room_panel", "room": self.room.id, "panel_serial": panel.panel_serial,
            "firmware": panel.firmware, "sensor": panel.has_sensor,
        })

    async def _panel_gone(self, why: str) -> None:
        if self._panel_present is False:
            return  # one entry per outage, not one per reconnection attempt
        self._panel_present = False
        if self.climate is not None:
            self.service.set_overlay_line(self.room.id, "")
        log.error("room %s: panel unavailable (recording goes on): %s", self.room.id, printable(why))
        await self._record(EntryType.DEVICE_REMOVED, {
            "kind": "room_panel", "room": self.room.id,
            "panel_serial": None if self.panel is None else self.panel.panel_serial,
            "reason": printable(why)[:300],
        })

    # -- PTZ --------------------------------------------------------------------------------------------

    async def _ptz_loop(self, config: RoomPtzConfig) -> None:
        resumed = self.service.active.get(self.room.id)
        self.ptz_preset_for = None if resumed is None else resumed.session
        while True:
            session = self.service.active.get(self.room.id)
            if session is not None and session.session != self.ptz_preset_for:
                self.ptz_preset_for = session.session
                await self._go_to_preset(config, session.session)
            await asyncio.sleep(LAMP_PERIOD_S)

    async def _go_to_preset(self, config: RoomPtzConfig, session: str) -> None:
        try:
            ptz = await PtzDriver.open(config.port, address=config.address, baudrate=config.baudrate)
            async with ptz:
                await ptz.go_to_preset(config.preset)
        except PtzError as exc:
            self.ptz_error = printable(str(exc))[:300]
            log.error("room %s: PTZ camera not sent to preset %d: %s", self.room.id, config.preset,
                      self.ptz_error)
            await self._record(EntryType.ERROR, {
                "stage": "room-ptz", "room": self.room.id, "room_session": session,
                "reason": f"the PTZ camera could not be sent to preset {config.preset} (aim it by hand): "
                          f"{self.ptz_error}",
            })
            return
        self.ptz_error = None
        log.info("room %s: PTZ camera %d sent to preset %d for session %s", self.room.id, config.address,
                 config.preset, session)

    async def _record(self, type_: str, data: dict[str, Any]) -> None:
        pipeline = self.service.pipeline
        await pipeline.commit(lambda: pipeline.repository.entry(type_, None, data))


def overlay_line(reading: Reading) -> str:
    """The overlay's line for a reading: 温度 23.6℃  湿度 51.2%RH."""
    return f"温度 {reading.temperature_c:.1f}℃  湿度 {reading.humidity_percent:.1f}%RH"


async def _all_or_none(*jobs: Any) -> None:
    """Run `jobs` together; the first to fail (or end) cancels the others and its error is raised."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["LAMP_PERIOD_S", "ClimateRecord", "RoomHardware", "overlay_line"]
