"""PtzDriver: sends Pelco-D frames (`pelco_d`) to one camera over pyserial.

Pelco-D has no acknowledgement for motion and preset commands, so the driver can only say that the
frame left: it writes the whole frame and drains the port. Several cameras may share one RS-485 bus; the
driver opens the port exclusively, so one driver per bus (the room's camera is one address on it).
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

import serial

from drivers.serial import pelco_d
from drivers.serial.pelco_d import PelcoDFrame

log = logging.getLogger(__name__)

_WRITE_TIMEOUT_S = 1.0  # 7 bytes at 2400 baud take 30 ms; longer means the line is stuck


class PtzError(Exception):
    """The PTZ camera's serial line cannot be opened or written."""


class PtzDriver:
    """One Pelco-D camera at `address` on the serial line at `url`. Open with `await PtzDriver.open(...)`."""

    def __init__(self, port: Any, url: str, address: int) -> None:
        self._port = port
        self._url = url
        self.address = address
        self._lock = asyncio.Lock()
        self.frames_sent = 0

    @classmethod
    async def open(cls, url: str, *, address: int, baudrate: int = 2400) -> PtzDriver:
        pelco_d.stop(address)  # checks the address before the port is touched
        try:
            port = await asyncio.to_thread(
                serial.serial_for_url, url, baudrate=baudrate, timeout=0, write_timeout=_WRITE_TIMEOUT_S,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PtzError(f"cannot open PTZ line at {url}: {exc}") from exc
        return cls(port, url, address)

    async def close(self) -> None:
        try:
            await asyncio.to_thread(self._port.close)
        except (serial.SerialException, OSError) as exc:
            log.debug("ptz %s: error closing port: %s", self._url, exc)

    async def __aenter__(self) -> PtzDriver:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def send(self, frame: PelcoDFrame) -> None:
        """Write one frame and wait until it has left the port."""
        data = frame.to_bytes()
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, data)
            except (serial.SerialException, OSError) as exc:
                raise PtzError(f"ptz {self._url}: write failed: {exc}") from exc
            self.frames_sent += 1
        log.debug("ptz %s: sent %s", self._url, data.hex(" "))

    def _write(self, data: bytes) -> None:
        written = self._port.write(data)
        if written != len(data):
            raise serial.SerialException(f"wrote {written} of {len(data)} bytes")
        self._port.flush()

    async def go_to_preset(self, preset: int) -> None:
        await self.send(pelco_d.go_to_preset(self.address, preset))

    async def set_preset(self, preset: int) -> None:
        await self.send(pelco_d.set_preset(self.address, preset))

    async def clear_preset(self, preset: int) -> None:
        await self.send(pelco_d.clear_preset(self.address, preset))

    async def move(self, *, pan: int = 0, tilt: int = 0, zoom: int = 0, speed: int = 0x20) -> None:
        await self.send(pelco_d.move(self.address, pan=pan, tilt=tilt, zoom=zoom, pan_speed=speed,
                                     tilt_speed=speed))

    async def stop(self) -> None:
        await self.send(pelco_d.stop(self.address))
