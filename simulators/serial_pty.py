"""A device at the far end of a real pty: the host opens `tty_path` as it would open `/dev/ttyUSB0`.

`PtyDevice` owns the pseudo-terminal and a thread that hands every chunk the host writes to
`on_bytes` (overridden by each simulator); `write` sends bytes back like a UART with nobody listening
drops them when the host does not read. Used by the dock, room panel, PTZ and card reader simulators.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import tty
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

_WRITE_STALL_S = 0.2  # nobody reads the pty this long: drop output like a UART with no listener


class PtyDevice:
    name = "pty device"
    error: type[Exception] = RuntimeError  # what a misuse (started twice, no tty yet) raises

    def __init__(self) -> None:
        self._master_fd = -1
        self._slave_fd = -1
        self._wake_r = -1
        self._wake_w = -1
        self._tty_path: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.output_dropped_bytes = 0

    def start(self) -> Self:
        if self._thread is not None:
            raise self.error(f"{self.name} already started")
        self._master_fd, self._slave_fd = os.openpty()
        # Raw: a UART is a plain byte pipe. Our own slave fd stays open so the master never sees a
        # hang-up while no host has the port open.
        tty.setraw(self._slave_fd)
        os.set_blocking(self._master_fd, False)
        self._tty_path = os.ttyname(self._slave_fd)
        self._wake_r, self._wake_w = os.pipe()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.name} {self._tty_path}", daemon=True)
        self._thread.start()
        self.started()
        return self

    def started(self) -> None:
        """Called once the pty exists (a board sends its power-up frame here)."""

    def stop(self) -> None:
        """Close the pty: a host that has it open sees a hang-up."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        thread.join()
        self._thread = None
        for fd in (self._master_fd, self._slave_fd, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master_fd = self._slave_fd = self._wake_r = self._wake_w = -1

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def tty_path(self) -> str:
        if self._tty_path is None:
            raise self.error(f"{self.name} not started: no tty yet")
        return self._tty_path

    @property
    def running(self) -> bool:
        return self._thread is not None

    def on_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def idle(self) -> None:
        """Called about every `idle_interval_s` (periodic output such as sensor readings)."""

    idle_interval_s: float | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._master_fd, self._wake_r], [], [], self.idle_interval_s)
            if not readable:
                self.idle()
                continue
            if self._wake_r in readable:
                os.read(self._wake_r, 64)
                continue
            try:
                data = os.read(self._master_fd, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                log.error("%s: pty read failed, device stops: %s", self.name, exc)
                return
            if data:
                self.on_bytes(data)

    def write(self, data: bytes) -> None:
        if self._master_fd < 0:
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master_fd, view)
            except BlockingIOError:
                _, writable, _ = select.select([], [self._master_fd], [], _WRITE_STALL_S)
                if not writable:
                    self.output_dropped_bytes += len(view)
                    return
                continue
            except OSError as exc:
                self.output_dropped_bytes += len(view)
                log.debug("%s: pty write failed: %s", self.name, exc)
                return
            view = view[written:]
