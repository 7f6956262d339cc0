"""The check-out desk's recorders, reached through the USB control protocol (drivers/usb).

`UsbRecorderBench` finds the recorders docked in control mode, logs in, and reads what each claims
(GetZFYInfo) and its status (battery, files); it writes an officer's identity (WriteZFYInfo), sets the
clock when asked, and reads the identity back. The station's rules come in as a :class:`RecorderAccess`
(`recorder_access_from_config` builds the one of a station configuration, with the allow-list rules of
the offload session): the password is sent only to a device whose USB serial the allow-list pins (unless
unknown recorders are allowed), and a recorder whose product serial the allow-list does not name is not
issued.

The driver is blocking (pyusb): every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from drivers.serial.dock import BayLed
from drivers.usb.protocol import RecorderInfo, RecorderSettings
from drivers.usb.recorder import (
    DEFAULT_IDS,
    RecorderDriver,
    RecorderError,
    RecorderHandle,
    RecorderMode,
    find_recorders,
)
from edge.config.station import StationConfig
from edge.equipment.checkout import DockedRecorder, IdentityWriteError, IdentityWritten

__all__ = ["ISSUED_LED", "RecorderAccess", "UsbRecorderBench", "recorder_access_from_config"]

# The bay of the recorder just issued: the pattern that asks the officer to act (take it).
ISSUED_LED = BayLed.ATTENTION


@dataclass(frozen=True)
class RecorderAccess:
    """The station's rules for talking to a docked recorder."""

    refusal_before_login: Callable[[str], str | None]  # usb_serial → why the password may not be sent
    password_for: Callable[[str], str | None]  # usb_serial → the password, None if none configured
    refusal_after_login: Callable[[str, str], str | None]  # (device_serial, usb_serial) → why not served
    bay_for_port: Callable[[str], int | None]


def recorder_access_from_config(config: StationConfig) -> RecorderAccess:
    recorders = config.recorders

    def before(usb_serial: str) -> str | None:
        if recorders.allow_unknown or (usb_serial and recorders.entry_for_usb(usb_serial) is not None):
            return None
        return "its USB serial is pinned by no allow-list entry: the password was not sent"

    def password(usb_serial: str) -> str | None:
        entry = recorders.entry_for_usb(usb_serial) if usb_serial else None
        ref = (entry.password if entry and entry.password else None) or recorders.default_password
        return None if ref is None else ref.resolve()

    def after(device_serial: str, usb_serial: str) -> str | None:
        entry = recorders.entry(device_serial)
        if entry is not None and entry.usb_serial and entry.usb_serial != usb_serial:
            return f"answers on USB serial {usb_serial}, the allow-list pins {entry.usb_serial}"
        if entry is None and not recorders.allow_unknown:
            return "not on the station's allow-list"
        return None

    return RecorderAccess(before, password, after, config.bay_for_port)


# Why a recorder the station is not finished with is not issued (it may hold files the station has not read):
# its docking is under way, or it ended without `done` and the bay power cycle that follows one.
DOCKING_UNDER_WAY = ("its docking at this station is under way or did not end done (not offloaded since it "
                     "was docked)")


# Why a recorder in mass-storage mode is not issued: its docking is copying it, or it was left so.
IN_MASS_STORAGE = ("in mass-storage mode: being offloaded, or not back in control mode since its docking "
                   "(the ledger says why)")

# Why a recorder answering where the station offloaded another one is not issued: swapped in (same port, same
# USB serial: a batch sharing a factory serial, or a copy) without a docking of its own since it was out.
SWAPPED_IN = "not the recorder offloaded at this attachment (recorder {expected}): swapped in unread"


class UsbRecorderBench:
    """`idle(port, usb_serial)`, when given, says which recorder the station has finished with at that
    attachment: the device serial its docking ended `done` with (the agent: no docking session of it is
    running, and it came back in control mode from its bay's power cycle), None when the station has not
    finished with any there. A recorder that is not idle is listed with that problem and never logged in to: a
    recorder docked a moment ago is in control mode too, until its session switches it to mass storage, and it
    may hold a shift's recordings. One that answers after login with another device serial than the one the
    station finished with was swapped in under the same USB serial (no poll sees such a swap): it is not
    issued, and `swapped_in(port, usb_serial)` (on the event loop) has the agent dock it."""

    def __init__(self, backend: Any, access: RecorderAccess, *,
                 set_led: Callable[[int | None, BayLed], Awaitable[None]] | None = None,
                 ids: Iterable[tuple[int, int]] = DEFAULT_IDS,
                 idle: Callable[[str, str], str | None] | None = None,
                 swapped_in: Callable[[str, str], None] | None = None) -> None:
        self.backend = backend
        self.access = access
        self._set_led = set_led
        self._ids = tuple(ids)
        self._idle = idle
        self._swapped_in = swapped_in

    async def docked(self) -> list[DockedRecorder]:
        handles = await asyncio.to_thread(find_recorders, self.backend, ids=self._ids)
        found = []
        for handle in handles:
            port = handle.location.port_path
            if handle.mode is not RecorderMode.CONTROL:
                if not handle.mass_storage_only:  # (a mass-storage-only model is never issued from here)
                    found.append(DockedRecorder(port, handle.usb_serial, self.access.bay_for_port(port),
                                                problem=IN_MASS_STORAGE))
                continue
            expected = None if self._idle is None else self._idle(port, handle.usb_serial)
            if self._idle is not None and expected is None:
                found.append(DockedRecorder(port, handle.usb_serial, self.access.bay_for_port(port),
                                            problem=DOCKING_UNDER_WAY))
                continue
            recorder = await asyncio.to_thread(self._inspect, handle)
            if expected is not None and recorder.device_serial and recorder.device_serial != expected:
                recorder = replace(recorder, problem=SWAPPED_IN.format(expected=expected))
                if self._swapped_in is not None:
                    self._swapped_in(port, handle.usb_serial)
            found.append(recorder)
        return found

    def _inspect(self, handle: RecorderHandle) -> DockedRecorder:
        port, usb_serial = handle.location.port_path, handle.usb_serial
        bay = self.access.bay_for_port(port)
        why = self.access.refusal_before_login(usb_serial)
        password = None if why else self.access.password_for(usb_serial)
        if why is None and password is None:
            why = "no recorder password configured"
        if why is not None or password is None:
            return DockedRecorder(port, usb_serial, bay, problem=why)
        try:
            with RecorderDriver(handle, self.backend) as driver:
                driver.login(password)
                info = driver.info()
                refusal = self.access.refusal_after_login(info.device_serial, usb_serial)
                if refusal is not None:
                    return DockedRecorder(port, usb_serial, bay, info.device_serial, claimed=info,
                                          problem=refusal)
                status = driver.status()
        except RecorderError as exc:
            return DockedRecorder(port, usb_serial, bay, problem=f"cannot be read: {exc}")
        return DockedRecorder(port, usb_serial, bay, info.device_serial, status.battery_percent,
                              status.file_count, info)

    async def write_identity(self, recorder: DockedRecorder, info: RecorderInfo, *, set_clock: bool,
                             settings: RecorderSettings | None = None) -> IdentityWritten:
        return await asyncio.to_thread(self._write, recorder, info, set_clock, settings)

    def _write(self, recorder: DockedRecorder, info: RecorderInfo, set_clock: bool,
               settings: RecorderSettings | None) -> IdentityWritten:
        handle = next((h for h in find_recorders(self.backend, ids=self._ids)
                       if h.location.port_path == recorder.port and h.usb_serial == recorder.usb_serial
                       and h.mode is RecorderMode.CONTROL), None)
        if handle is None:
            raise IdentityWriteError(f"no longer docked at {recorder.port}")
        if self._idle is not None:
            expected = self._idle(recorder.port, recorder.usb_serial)
            if expected is None:
                raise IdentityWriteError(DOCKING_UNDER_WAY)
            if expected != recorder.device_serial:
                raise IdentityWriteError(SWAPPED_IN.format(expected=expected))
        password = self.access.password_for(recorder.usb_serial)
        if password is None:
            raise IdentityWriteError("no recorder password configured")
        try:
            with RecorderDriver(handle, self.backend) as driver:
                driver.login(password)
                before = driver.info()
                if before.device_serial != recorder.device_serial:
                    raise IdentityWriteError(f"recorder {before.device_serial} is at {recorder.port} now, "
                                             f"not {recorder.device_serial}")
                settings_before = settings_read_back = None
                if settings is not None:
                    settings_before = driver.settings()
                    driver.write_settings(settings)
                    settings_read_back = driver.settings()
                driver.write_info(info)
                clock_set = False
                if set_clock:
                    driver.set_clock(int(time.time() * 1000), driver.clock().tz_offset_min)
                    clock_set = True
                read_back = driver.info()
        except RecorderError as exc:
            raise IdentityWriteError(str(exc)) from exc
        return IdentityWritten(before, read_back, clock_set, settings_before, settings_read_back)

    async def show_issued(self, recorder: DockedRecorder) -> None:
        if self._set_led is not None and recorder.bay is not None:
            await self._set_led(recorder.bay, ISSUED_LED)
