"""RoomPanelDriver: the host side of the room panel protocol (`room_panel_protocol`), async, over pyserial.

Layers as in the dock driver: pyserial transport (any `serial_for_url` URL) → a reader thread that hands
raw chunks to the event loop (both: `serial_line.SerialLine`) → `LineFramer` + `decode_line` (pure
codec) → this driver: one command at a time (stop and wait, re-sent on timeout), a heartbeat that also
finds lost events and re-asserts the lamp, and a bounded queue of what the panel reported (`PanelInput`).

All driver state is touched on the event loop thread only; the reader thread only reads bytes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from drivers.serial.room_panel_protocol import (
    MAX_SEQ,
    PROTOCOL_VERSION,
    BootEvent,
    Button,
    ButtonEvent,
    HostCommand,
    IdentityQuery,
    IdentityReply,
    Lamp,
    LampReply,
    NakReason,
    NakReply,
    PanelError,
    PanelProtocolError,
    PanelReply,
    PingCommand,
    PingReply,
    Reading,
    ReadingEvent,
    ReadingQuery,
    ReadingReply,
    SetLampCommand,
    decode_line,
    new_framer,
    next_seq,
)
from drivers.serial.serial_line import PORT_ERRORS, SerialLine, open_port

log = logging.getLogger(__name__)

# Every n-th heartbeat re-sends the lamp state: a panel that restarted with its BOOT lost shows OFF.
LAMP_EVERY_HEARTBEATS = 4


class PanelConnectionError(PanelError):
    """The panel cannot be reached: open failed, or no answer to the handshake."""


class PanelConnectionLost(PanelConnectionError):
    """An open link died: I/O error, hang-up, or a command unanswered after every retry."""


class PanelClosedError(PanelError):
    """The driver was closed by its owner."""


class PanelNakError(PanelError):
    def __init__(self, message: str, *, reason: NakReason) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ButtonPressed:
    button: Button
    event_seq: int  # the panel's event number: ledger entries name it


@dataclass(frozen=True)
class ReadingTaken:
    reading: Reading


@dataclass(frozen=True)
class EventsLost:
    """Presses or readings that never reached the consumer: event numbers skipped on the line (noise, a
    bad checksum), or inputs the driver dropped because its queue was full (the consumer lagged)."""

    count: int
    detail: str


@dataclass(frozen=True)
class PanelRestarted:
    firmware: str


PanelInput = ButtonPressed | ReadingTaken | EventsLost | PanelRestarted


@dataclass(frozen=True)
class PanelIdentity:
    panel_serial: str
    firmware: str
    protocol: int
    has_sensor: bool


@dataclass
class PanelDriverStats:
    bad_frames: int = 0
    timeouts: int = 0
    retransmissions: int = 0
    stale_replies: int = 0
    unexpected_messages: int = 0
    lost_events: int = 0
    duplicate_events: int = 0
    dropped_inputs: int = 0  # not queued: the consumer lagged
    boots: int = 0


def _went_backwards(new_seq: int, last_seq: int) -> bool:
    """True if `new_seq` is behind `last_seq`, telling a restart apart from a wrap past 65535."""
    return new_seq < last_seq and last_seq - new_seq < MAX_SEQ // 2


class _InputIterator:
    """A plain async iterator, so a cancelled `__anext__` loses nothing."""

    def __init__(self, driver: RoomPanelDriver) -> None:
        self._driver = driver

    def __aiter__(self) -> _InputIterator:
        return self

    async def __anext__(self) -> PanelInput:
        return await self._driver._next_input()


class RoomPanelDriver:
    """One room panel. `await RoomPanelDriver.open(url)`; `inputs()` yields what the panel reports;
    `set_lamp` returns once the panel acknowledged. After `PanelConnectionLost` the driver is dead:
    close it and open a new one (the room hardware task does)."""

    def __init__(self, port: Any, url: str, *, reply_timeout_s: float, retries: int, heartbeat_s: float,
                 queue_size: int) -> None:
        self._url = url
        self._name = url
        self._loop = asyncio.get_running_loop()
        self._reply_timeout_s = reply_timeout_s
        self._retries = retries
        self._heartbeat_s = heartbeat_s
        self._queue_size = queue_size
        self._framer = new_framer()
        self.stats = PanelDriverStats()
        self._command_lock = asyncio.Lock()
        # A random start: a restarted host must not take its predecessor's late replies for its own.
        self._seq = secrets.randbelow(MAX_SEQ) + 1
        self._pending: tuple[HostCommand, asyncio.Future[PanelReply]] | None = None
        self._identity: PanelIdentity | None = None
        self._last_event_seq: int | None = None  # None until the first PING tells us where the panel is
        self._lamp: Lamp | None = None
        self._queue: collections.deque[PanelInput] = collections.deque()
        # Inputs dropped since the queue filled, told (EventsLost) as soon as the consumer frees a slot.
        self._overflow = 0
        self._queue_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._line = SerialLine(port, on_bytes=self._on_bytes, on_read_error=self._on_read_error)
        self._lost: PanelConnectionLost | None = None
        self._closed = False
        self._released: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, url: str, *, baudrate: int = 115200, reply_timeout_s: float = 0.5, retries: int = 2,
        heartbeat_s: float = 2.0, queue_size: int = 64,
    ) -> RoomPanelDriver:
        if reply_timeout_s <= 0 or heartbeat_s <= 0 or retries < 0 or queue_size < 1:
            raise ValueError("reply_timeout_s and heartbeat_s must be > 0, retries >= 0, queue_size >= 1")
        port = await open_port(url, baudrate=baudrate, what="room panel", error=PanelConnectionError)
        driver = cls(port, url, reply_timeout_s=reply_timeout_s, retries=retries, heartbeat_s=heartbeat_s,
                     queue_size=queue_size)
        try:
            await driver._start()
        except BaseException:
            await driver.close()
            raise
        return driver

    async def _start(self) -> None:
        try:
            await self._line.start(f"panel-reader {self._url}")
        except PORT_ERRORS as exc:
            raise PanelConnectionError(f"{self._url}: cannot flush input: {exc}") from exc
        reply = await self._transact(IdentityQuery)
        assert isinstance(reply, IdentityReply)
        if reply.protocol != PROTOCOL_VERSION:
            raise PanelConnectionError(
                f"{self._url}: panel speaks room panel protocol {reply.protocol}, this driver "
                f"{PROTOCOL_VERSION}"
            )
        self._identity = PanelIdentity(reply.panel_serial, reply.firmware, reply.protocol, reply.has_sensor)
        self._name = f"{reply.panel_serial}@{self._url}"
        await self._transact(PingCommand)  # where the panel's event numbers stand
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name=f"panel-heartbeat {self._url}"))
        log.info("room panel %s: firmware %s, sensor %s", self._name, reply.firmware,
                 "yes" if reply.has_sensor else "no")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(PanelClosedError(f"room panel {self._name} closed"))
        self._queue_changed.set()
        if self._released is None:
            self._released = asyncio.create_task(self._line.release(f"room panel {self._name}"))
        await self._released

    async def __aenter__(self) -> RoomPanelDriver:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- public API ----------------------------------------------------------------------------------

    @property
    def identity(self) -> PanelIdentity:
        if self._identity is None:
            raise PanelConnectionError(f"room panel {self._url}: not opened")
        return self._identity

    @property
    def connected(self) -> bool:
        return self._identity is not None and self._lost is None and not self._closed

    @property
    def junk_bytes(self) -> int:
        return self._framer.discarded_bytes

    @property
    def overlong_lines(self) -> int:
        return self._framer.overlong_lines

    async def set_lamp(self, lamp: Lamp) -> None:
        """Show `lamp`; returns once the panel acknowledged it. Re-asserted by the heartbeat."""
        self._lamp = Lamp(lamp)  # the desired state: what a re-assertion sends
        await self._assert_lamp()

    async def _assert_lamp(self) -> None:
        # The frame is made under the command lock from the desired state at that moment, so a
        # re-assertion queued behind a newer set_lamp never brings an older state back.
        await self._transact(lambda seq: SetLampCommand(seq, self._lamp or Lamp.OFF))

    async def read_environment(self) -> Reading | None:
        """The sensor's reading now; None if the sensor did not answer the panel. `PanelNakError`
        (NOSENSOR) from a panel without a sensor."""
        reply = await self._transact(ReadingQuery)
        assert isinstance(reply, ReadingReply)
        return reply.reading

    def inputs(self) -> AsyncIterator[PanelInput]:
        """What the panel reports, in order; raises `PanelConnectionLost` after the last queued input if
        the link died; ends when the driver is closed."""
        return _InputIterator(self)

    async def _next_input(self) -> PanelInput:
        while True:
            if self._queue:
                item = self._queue.popleft()
                self._tell_overflow()
                return item
            if self._lost is not None:
                raise PanelConnectionLost(str(self._lost)) from self._lost
            if self._closed:
                raise StopAsyncIteration
            self._queue_changed.clear()
            await self._queue_changed.wait()

    # -- commands ------------------------------------------------------------------------------------

    async def _transact(self, make: Callable[[int], HostCommand]) -> PanelReply:
        async with self._command_lock:
            if self._closed:
                raise PanelClosedError(f"room panel {self._name} is closed")
            if self._lost is not None:
                raise PanelConnectionLost(str(self._lost)) from self._lost
            self._seq = next_seq(self._seq)
            command = make(self._seq)
            frame = command.to_bytes()
            for attempt in range(1 + self._retries):
                if attempt:
                    self.stats.retransmissions += 1
                future: asyncio.Future[PanelReply] = self._loop.create_future()
                self._pending = (command, future)
                try:
                    await self._write(frame)
                    async with asyncio.timeout(self._reply_timeout_s):
                        reply = await future
                except TimeoutError:
                    self.stats.timeouts += 1
                    continue
                finally:
                    self._pending = None
                    if future.done() and not future.cancelled():
                        future.exception()
                if isinstance(reply, NakReply):
                    raise PanelNakError(f"room panel {self._name} refused {command.COMMAND}: {reply.reason}",
                                        reason=reply.reason)
                return reply
            lost = PanelConnectionLost(f"room panel {self._name}: no reply to {command.COMMAND} after "
                                       f"{1 + self._retries} attempts of {self._reply_timeout_s}s")
            self._lose(lost)
            raise lost

    async def _write(self, frame: bytes) -> None:
        try:
            await self._line.write(frame)
        except PORT_ERRORS as exc:
            lost = PanelConnectionLost(f"room panel {self._name}: write failed: {exc}")
            self._lose(lost)
            raise lost from exc

    async def _heartbeat_loop(self) -> None:
        for beat in itertools.count(1):
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._transact(PingCommand)
                if self._lamp is not None and beat % LAMP_EVERY_HEARTBEATS == 0:
                    await self._assert_lamp()
            except (PanelConnectionError, PanelClosedError):
                return
            except PanelError as exc:
                log.warning("room panel %s: heartbeat refused: %s", self._name, exc)

    # -- receive path (event loop thread) -----------------------------------------------------------

    def _on_read_error(self, exc: Exception) -> None:
        self._lose(PanelConnectionLost(f"room panel {self._name}: read failed: {exc}"))

    def _on_bytes(self, data: bytes) -> None:
        if self._closed or self._lost is not None:
            return
        for line in self._framer.feed(data):
            try:
                message = decode_line(line)
            except PanelProtocolError as exc:
                self.stats.bad_frames += 1
                log.warning("room panel %s: bad frame dropped (%s)", self._name, exc)
                continue
            if isinstance(message, PingReply | IdentityReply | LampReply | ReadingReply | NakReply):
                self._on_reply(message)
            elif isinstance(message, ButtonEvent | ReadingEvent):
                self._on_event(message)
            elif isinstance(message, BootEvent):
                self._on_boot(message)
            else:
                self.stats.unexpected_messages += 1
                log.warning("room panel %s: host-side message from the panel ignored", self._name)

    def _on_reply(self, reply: PanelReply) -> None:
        pending = self._pending
        if pending is None or pending[1].done() or reply.seq != pending[0].seq:
            self.stats.stale_replies += 1
            return
        command, future = pending
        expected = {PingCommand: PingReply, IdentityQuery: IdentityReply, SetLampCommand: LampReply,
                    ReadingQuery: ReadingReply}[type(command)]
        wrong_nak = isinstance(reply, NakReply) and reply.command != command.COMMAND
        wrong_lamp = (isinstance(reply, LampReply) and isinstance(command, SetLampCommand)
                      and reply.lamp != command.lamp)
        if not isinstance(reply, expected | NakReply) or wrong_nak or wrong_lamp:
            self.stats.unexpected_messages += 1
            log.warning("room panel %s: reply %s does not answer %s", self._name, reply, command)
            return
        if isinstance(reply, PingReply):
            self._check_event_seq(reply.event_seq)
        future.set_result(reply)

    def _check_event_seq(self, event_seq: int) -> None:
        last = self._last_event_seq
        if last is not None and event_seq != last:
            if _went_backwards(event_seq, last):  # it restarted and its BOOT was lost
                self._panel_restarted("(unannounced)")
            else:
                skipped = (event_seq - last) % MAX_SEQ
                self._missed(skipped, f"the panel's last event is {event_seq}, the last seen {last}")
        self._last_event_seq = event_seq

    def _on_event(self, event: ButtonEvent | ReadingEvent) -> None:
        last = self._last_event_seq
        if last is not None:
            if event.seq == last:
                self.stats.duplicate_events += 1
                return
            expected = next_seq(last)
            if event.seq != expected:
                skipped = (event.seq - expected) % MAX_SEQ
                self._missed(skipped, f"event {event.seq} arrived, {expected} expected")
        self._last_event_seq = event.seq
        if isinstance(event, ButtonEvent):
            log.info("room panel %s: %s pressed (event %d)", self._name, event.button, event.seq)
            self._publish(ButtonPressed(event.button, event.seq))
        else:
            self._publish(ReadingTaken(event.reading))

    def _missed(self, count: int, detail: str) -> None:
        self.stats.lost_events += count
        log.warning("room panel %s: %d event(s) lost: %s", self._name, count, detail)
        self._publish(EventsLost(count, f"skipped on the line: {detail}"))

    def _on_boot(self, event: BootEvent) -> None:
        identity = self._identity
        if identity is not None and event.panel_serial != identity.panel_serial:
            self._lose(PanelConnectionLost(f"room panel {self._name}: another panel ({event.panel_serial}) "
                                           "booted on this line"))
            return
        self._panel_restarted(event.firmware)

    def _panel_restarted(self, firmware: str) -> None:
        self.stats.boots += 1
        self._last_event_seq = 0
        log.warning("room panel %s: panel restarted; lamp restored", self._name)
        self._publish(PanelRestarted(firmware))
        if self._lamp is not None:
            self._tasks.append(self._loop.create_task(self._restore_lamp()))

    async def _restore_lamp(self) -> None:
        with contextlib.suppress(PanelError):
            await self._assert_lamp()

    def _publish(self, item: PanelInput) -> None:
        if len(self._queue) >= self._queue_size:
            # The bound stays (a storm of presses must not grow memory), but the loss is told: the slot
            # the consumer frees next carries an EventsLost with the count, in order after what it has.
            if not self._overflow:
                log.warning("room panel %s: input queue full (%d): inputs dropped until the consumer "
                            "catches up", self._name, self._queue_size)
            self.stats.dropped_inputs += 1
            self._overflow += 1
            return
        self._queue.append(item)
        self._queue_changed.set()

    def _tell_overflow(self) -> None:
        if self._overflow and len(self._queue) < self._queue_size:
            count, self._overflow = self._overflow, 0
            log.warning("room panel %s: %d input(s) dropped while the queue was full", self._name, count)
            self._queue.append(EventsLost(count, f"dropped by the driver: its queue of {self._queue_size} "
                                                 "was full, the consumer lagged"))

    def _lose(self, lost: PanelConnectionLost) -> None:
        if self._lost is not None or self._closed:
            return
        self._lost = lost
        log.error("%s", lost)
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(lost)
        self._queue_changed.set()
        if self._released is None:
            self._released = self._loop.create_task(self._line.release(f"room panel {self._name}"))


__all__ = [
    "ButtonPressed",
    "EventsLost",
    "Lamp",
    "PanelClosedError",
    "PanelConnectionError",
    "PanelConnectionLost",
    "PanelDriverStats",
    "PanelError",
    "PanelIdentity",
    "PanelInput",
    "PanelNakError",
    "PanelRestarted",
    "Reading",
    "ReadingTaken",
    "RoomPanelDriver",
]
