"""The serial line under every driver here (dock controller, room panel, card reader): one pyserial port
opened exclusively, its stale input flushed, a reader thread that hands raw chunks to the event loop,
writes off the loop, and a release that stops the thread and closes the port.

What a driver does with the bytes (framing, decoding, replies, events) stays in the driver; this module
only moves bytes. The reader thread touches nothing but the port: every chunk, and the one error that
ends it, is posted to the event loop (`on_bytes`, `on_read_error`), where all driver state lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import serial

__all__ = ["READ_POLL_S", "WRITE_TIMEOUT_S", "SerialLine", "open_port"]

log = logging.getLogger(__name__)

READ_POLL_S = 0.05  # how long the reader thread blocks before checking whether it must stop
WRITE_TIMEOUT_S = 1.0  # a UART never takes this long for 256 bytes; longer means the link is stuck
# What a pyserial port raises when the line is gone or was never there (TypeError: a closed port's fd).
PORT_ERRORS = (serial.SerialException, OSError, TypeError)


async def open_port(url: str, *, baudrate: int, what: str, error: type[Exception],
                    write_timeout_s: float | None = WRITE_TIMEOUT_S) -> Any:
    """The port at `url` (any `serial_for_url` URL), opened exclusively (a second program on the line
    would take half the bytes); `error("cannot open <what> at <url>: ...")` when it cannot be."""
    try:
        return await asyncio.to_thread(
            serial.serial_for_url, url, baudrate=baudrate, timeout=READ_POLL_S,
            write_timeout=write_timeout_s, exclusive=True,
        )
    except (serial.SerialException, OSError, ValueError) as exc:
        raise error(f"cannot open {what} at {url}: {exc}") from exc


class SerialLine:
    """An open port's byte transport. `start()` flushes what was queued before the driver listened (answers
    to someone else's commands, stale events or card reads) and starts the reader thread; `write()` sends
    off the event loop (pyserial writes block: a wedged tty must not stall the loop); `release()` stops
    the reader and closes the port, once, whatever ended the line."""

    def __init__(self, port: Any, *, on_bytes: Callable[[bytes], None],
                 on_read_error: Callable[[Exception], None]) -> None:
        self.port = port
        self._loop = asyncio.get_running_loop()
        self._on_bytes = on_bytes
        self._on_read_error = on_read_error
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    async def start(self, thread_name: str) -> None:
        """Flush the input and start reading; the port's error (`PORT_ERRORS`) when it cannot flush."""
        await asyncio.to_thread(self.port.reset_input_buffer)
        self._reader = threading.Thread(target=self._read_loop, name=thread_name, daemon=True)
        self._reader.start()

    async def write(self, frame: bytes) -> None:
        """Send `frame`; the port's error (`PORT_ERRORS`) when the line takes it not."""
        await asyncio.to_thread(self.port.write, frame)

    async def release(self, name: str) -> None:
        self._stop.set()
        # Already gone is fine: the read poll timeout ends the reader anyway.
        with contextlib.suppress(*PORT_ERRORS, AttributeError):
            self.port.cancel_read()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join)
        try:
            await asyncio.to_thread(self.port.close)
        except (serial.SerialException, OSError) as exc:
            log.debug("%s: error closing port: %s", name, exc)

    def _read_loop(self) -> None:
        port = self.port
        while not self._stop.is_set():
            try:
                data = port.read(port.in_waiting or 1)
            except Exception as exc:  # any escape would end the thread silently; report every kind
                if not self._stop.is_set():
                    self._post(self._on_read_error, exc)
                return
            if data:
                self._post(self._on_bytes, bytes(data))

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed under us: nobody left to tell
            self._stop.set()
