"""DockDriver: the host side of the dock bay controller protocol, async, over pyserial.

Layers: pyserial transport (any `serial_for_url` URL) → a reader thread that hands raw chunks to the event
loop → `LineFramer` + `decode_line` (pure codec, `dock_protocol`) → this driver's state: one outstanding
command at a time, event sequence tracking, resync, heartbeat, a bounded event queue.

Everything that touches driver state runs on the event loop thread: the reader thread only reads bytes
and posts them with `call_soon_threadsafe`, so replies and events are handled in wire order. That order is
what makes resync exact: a status reply reflects every event that arrived before it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any

from drivers.serial.dock_protocol import (
    MAX_BAYS,
    MAX_SEQ,
    POWER_CYCLE_PROTOCOL,
    SUPPORTED_PROTOCOLS,
    BayLed,
    BoardEvent,
    BoardReply,
    BootEvent,
    ChargeEvent,
    DockError,
    DockProtocolError,
    HostCommand,
    IdentityQuery,
    IdentityReply,
    InsertedEvent,
    LedReply,
    LineFramer,
    Message,
    NakReason,
    NakReply,
    PingCommand,
    PingReply,
    PowerCycleCommand,
    PowerCycleReply,
    RemovedEvent,
    SetLedCommand,
    StatusQuery,
    StatusReply,
    decode_line,
    led_for_protocol,
    next_seq,
)
from drivers.serial.serial_line import PORT_ERRORS, SerialLine, open_port

log = logging.getLogger(__name__)

# Every n-th heartbeat asks for the full status instead of a PING (LEDs a restart turned dark).
STATUS_EVERY_HEARTBEATS = 5


class DockConnectionError(DockError):
    """The board cannot be reached: open failed, or no answer to the handshake."""


class DockConnectionLost(DockConnectionError):
    """An open link died: I/O error, hang-up, or a command or heartbeat unanswered after every retry."""


class DockNakError(DockError):
    """The board refused a command (NAK); not retried because retrying cannot help."""

    def __init__(self, message: str, *, command: str, reason: NakReason) -> None:
        super().__init__(message)
        self.command = command
        self.reason = reason


class DockClosedError(DockError):
    """The driver was closed by its owner."""


class DockUsageError(DockError, ValueError):
    """The caller asked for something the board cannot do (bay out of range)."""


class BayEventKind(StrEnum):
    INSERTED = "INSERTED"
    REMOVED = "REMOVED"
    CHARGE = "CHARGE"


@dataclass(frozen=True)
class BayEvent:
    bay: int
    kind: BayEventKind
    charge_percent: int | None
    # True when inferred (resync after lost events, queue catch-up, announcement at open) rather than
    # received as such from the board.
    synthetic: bool = False


@dataclass(frozen=True)
class BayStatus:
    bay: int
    present: bool
    charge_percent: int | None
    led: BayLed


@dataclass(frozen=True)
class DockStatus:
    board_serial: str
    firmware: str
    bays: tuple[BayStatus, ...]


@dataclass(frozen=True)
class DockIdentity:
    board_serial: str
    firmware: str
    bay_count: int
    protocol: int


@dataclass
class DockDriverStats:
    """Counters since open; `DockDriver.stats` returns a copy."""

    lines: int = 0  # complete candidate frames cut from the stream
    bad_frames: int = 0  # lines that failed to decode (checksum, syntax, range...)
    junk_bytes: int = 0  # bytes outside any frame, or in dropped frames
    truncated_lines: int = 0
    overlong_lines: int = 0
    unexpected_messages: int = 0  # well-formed but wrong here (host commands echoed, mismatched ACKs)
    stale_replies: int = 0  # replies for a command no longer outstanding
    timeouts: int = 0  # attempts that got no reply within reply_timeout_s
    retransmissions: int = 0
    naks: int = 0
    gaps: int = 0  # event sequence gaps, including a PING/STA event_seq ahead of the last event seen
    resyncs: int = 0
    boots: int = 0
    inconsistent_events: int = 0  # REM/CHG for a bay believed empty, INS for a bay believed occupied
    synthesized_events: int = 0
    dropped_events: int = 0  # not queued because the consumer lagged (state re-announced later)


@dataclass
class _BayView:
    present: bool = False
    insertions: int = 0  # the board's counter, modulo 16
    charge_percent: int | None = None


@dataclass
class _Pending:
    command: HostCommand
    future: asyncio.Future[BoardReply]

    def accepts(self, reply: BoardReply) -> bool:
        command = self.command
        if isinstance(reply, NakReply):
            return reply.command == _command_token(command)
        if isinstance(command, PingCommand):
            return isinstance(reply, PingReply)
        if isinstance(command, IdentityQuery):
            return isinstance(reply, IdentityReply)
        if isinstance(command, StatusQuery):
            return isinstance(reply, StatusReply)
        if isinstance(command, PowerCycleCommand):
            return isinstance(reply, PowerCycleReply) and (reply.bay, reply.off_ms) == (command.bay,
                                                                                         command.off_ms)
        return isinstance(reply, LedReply) and (reply.bay, reply.led) == (command.bay, command.led)


def _command_token(command: HostCommand) -> str:
    return command.COMMAND.value


def _went_backwards(new_seq: int, last_seq: int) -> bool:
    """True if `new_seq` is behind `last_seq`, telling a restart apart from a wrap past 65535."""
    return new_seq < last_seq and last_seq - new_seq < MAX_SEQ // 2


def _diff(bay: int, old: _BayView, new: _BayView, *, infer_swap: bool) -> list[BayEvent]:
    """Events that turn `old` into `new`, all synthetic."""
    if old.present and not new.present:
        return [BayEvent(bay, BayEventKind.REMOVED, None, synthetic=True)]
    if not old.present and new.present:
        return [BayEvent(bay, BayEventKind.INSERTED, new.charge_percent, synthetic=True)]
    if not new.present:
        return []
    if infer_swap and old.insertions != new.insertions:
        return [
            BayEvent(bay, BayEventKind.REMOVED, None, synthetic=True),
            BayEvent(bay, BayEventKind.INSERTED, new.charge_percent, synthetic=True),
        ]
    if new.charge_percent is not None and new.charge_percent != old.charge_percent:
        return [BayEvent(bay, BayEventKind.CHARGE, new.charge_percent, synthetic=True)]
    return []


class _EventIterator:
    """A plain async iterator (not an async generator), so cancelling one `__anext__` does not end it."""

    def __init__(self, driver: DockDriver) -> None:
        self._driver = driver

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> BayEvent:
        return await self._driver._next_event()


class DockDriver:
    """Async driver for one dock bay controller board. Create with `await DockDriver.open(url)`.

    Event stream: `events()` yields `BayEvent`s in order; it is one shared queue (run one consumer and
    fan out in the service). The queue holds at most `event_queue_size` events: when the consumer lags
    further, new events are dropped and counted, and once the consumer has emptied the queue the driver
    announces the difference between what it delivered and the current state as synthetic events. So a
    slow consumer loses intermediate charge readings and short insert/remove blips, never the state.

    After `DockConnectionLost` the driver is dead: every call raises it, `events()` raises it once
    the queued events are consumed. Close it and open a new one (the service's supervisor does).
    """

    def __init__(
        self,
        port: Any,
        url: str,
        *,
        reply_timeout_s: float,
        retries: int,
        heartbeat_s: float,
        event_queue_size: int,
        announce_present: bool,
    ) -> None:
        self._url = url
        self._name = url
        self._loop = asyncio.get_running_loop()
        self._reply_timeout_s = reply_timeout_s
        self._retries = retries
        self._heartbeat_s = heartbeat_s
        self._event_queue_size = event_queue_size
        self._announce_present = announce_present

        self._framer = LineFramer()
        self._stats = DockDriverStats()
        self._command_lock = asyncio.Lock()
        # A random start, like a TCP initial sequence number: a restarted host must not look like a
        # retransmission of the previous host's last command, nor accept its late replies.
        self._seq = secrets.randbelow(MAX_SEQ) + 1
        self._pending: _Pending | None = None

        self._identity: DockIdentity | None = None
        self._bays: list[_BayView] = []
        self._announced: list[_BayView] = []
        self._board_leds: list[BayLed] = []
        self._desired_leds: dict[int, BayLed] = {}
        self._synced = False
        self._last_event_seq = 0
        self._boot_pending = False

        self._queue: collections.deque[BayEvent] = collections.deque()
        self._queue_changed = asyncio.Event()
        self._overflowed = False

        self._resync_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._line = SerialLine(port, on_bytes=self._on_bytes, on_read_error=self._on_read_error)
        self._lost: DockConnectionLost | None = None
        self._closed = False
        self._port_released: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        baudrate: int = 115200,
        reply_timeout_s: float = 0.5,
        retries: int = 3,
        heartbeat_s: float = 2.0,
        event_queue_size: int = 256,
        announce_present: bool = True,
    ) -> DockDriver:
        """Open the port, check identity and protocol, read full status, start heartbeat.

        `retries` is the number of re-sends after the first attempt. With `announce_present`, every bay
        occupied at open is reported as a synthetic INSERTED event first.
        Raises `DockConnectionError` if the port cannot be opened or the board does not answer.
        """
        if reply_timeout_s <= 0 or heartbeat_s <= 0:
            raise DockUsageError(
                f"timeouts must be > 0, got reply {reply_timeout_s}s, heartbeat {heartbeat_s}s"
            )
        if retries < 0:
            raise DockUsageError(f"retries must be >= 0, got {retries}")
        if event_queue_size < 1:
            raise DockUsageError(f"event_queue_size must be >= 1, got {event_queue_size}")
        port = await open_port(url, baudrate=baudrate, what="dock controller", error=DockConnectionError)
        driver = cls(
            port, url, reply_timeout_s=reply_timeout_s, retries=retries, heartbeat_s=heartbeat_s,
            event_queue_size=event_queue_size, announce_present=announce_present,
        )
        try:
            await driver._start()
        except BaseException:
            await driver.close()
            raise
        return driver

    async def _start(self) -> None:
        try:
            await self._line.start(f"dock-reader {self._url}")
        except PORT_ERRORS as exc:
            raise DockConnectionError(f"{self._url}: cannot flush input: {exc}") from exc

        reply = await self._transact(IdentityQuery)
        assert isinstance(reply, IdentityReply)
        if reply.protocol not in SUPPORTED_PROTOCOLS:
            supported = ", ".join(str(v) for v in sorted(SUPPORTED_PROTOCOLS))
            raise DockConnectionError(
                f"{self._url}: board speaks dock protocol {reply.protocol}, this driver {supported}"
            )
        self._identity = DockIdentity(reply.board_serial, reply.firmware, reply.bays, reply.protocol)
        self._name = f"{reply.board_serial}@{self._url}"
        self._bays = [_BayView() for _ in range(reply.bays)]
        self._announced = [_BayView() for _ in range(reply.bays)]
        self._board_leds = [BayLed.OFF] * reply.bays
        await self._transact(StatusQuery)  # reconciled on arrival; sets _synced
        log.info(
            "dock %s: firmware %s, %d bays, %d occupied", self._name, reply.firmware, reply.bays,
            sum(bay.present for bay in self._bays),
        )
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name=f"dock-heartbeat {self._url}"))
        self._tasks.append(asyncio.create_task(self._resync_loop(), name=f"dock-resync {self._url}"))

    async def close(self) -> None:
        """Stop background work, fail pending calls with `DockClosedError`, end `events()`, close the port."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pending is not None and not self._pending.future.done():
            self._pending.future.set_exception(DockClosedError(f"dock {self._name} closed"))
        self._queue_changed.set()
        if self._port_released is None:
            self._port_released = asyncio.create_task(self._line.release(f"dock {self._name}"))
        await self._port_released

    async def __aenter__(self) -> DockDriver:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- public API -----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._synced and self._lost is None and not self._closed

    @property
    def identity(self) -> DockIdentity:
        if self._identity is None:
            raise DockConnectionError(f"dock {self._url}: not opened")
        return self._identity

    @property
    def url(self) -> str:
        return self._url

    @property
    def stats(self) -> DockDriverStats:
        snapshot = dataclasses.replace(self._stats)
        snapshot.lines = self._framer.lines
        snapshot.junk_bytes = self._framer.discarded_bytes
        snapshot.truncated_lines = self._framer.truncated_lines
        snapshot.overlong_lines = self._framer.overlong_lines
        return snapshot

    async def status(self) -> DockStatus:
        """Query the board's full status now (also reconciles: missed changes become synthetic events)."""
        reply = await self._transact(StatusQuery)
        assert isinstance(reply, StatusReply)
        identity = self.identity
        bays = tuple(
            BayStatus(number, state.present, state.charge_percent, state.led)
            for number, state in enumerate(reply.bays, start=1)
        )
        return DockStatus(identity.board_serial, identity.firmware, bays)

    async def set_led(self, bay: int, led: BayLed) -> BayLed:
        """Set one bay's LED; returns once the board acknowledged it (the LED is lit), with the state
        the board shows: `led` itself, or on an older board (protocol 1 or 2) the nearest state it knows."""
        identity = self.identity
        if not 1 <= bay <= identity.bay_count:
            raise DockUsageError(f"dock {self._name}: bay must be 1..{identity.bay_count}, got {bay}")
        shown = led_for_protocol(BayLed(led), identity.protocol)
        if shown is not led:
            log.debug("dock %s: bay %d: protocol %d board shows %s for %s", self._name, bay,
                      identity.protocol, shown, led)
        await self._transact(lambda seq: SetLedCommand(seq, bay, shown))
        self._desired_leds[bay] = shown
        return shown

    async def power_cycle(self, bay: int, off_ms: int) -> None:
        """Cut the bay's power (charger and USB VBUS) for `off_ms` and restore it: to a docked recorder an
        unplug and a plug. Returns once the board acknowledged (the power is off then). Protocol 4 boards
        only: an earlier one raises `DockUsageError` without being asked."""
        identity = self.identity
        if not 1 <= bay <= identity.bay_count:
            raise DockUsageError(f"dock {self._name}: bay must be 1..{identity.bay_count}, got {bay}")
        if identity.protocol < POWER_CYCLE_PROTOCOL:
            raise DockUsageError(f"dock {self._name}: a protocol {identity.protocol} board cannot "
                                 f"power-cycle a bay (protocol {POWER_CYCLE_PROTOCOL} added PWR)")
        await self._transact(lambda seq: PowerCycleCommand(seq, bay, off_ms))

    async def ping(self) -> None:
        """One heartbeat round trip now."""
        await self._transact(PingCommand)

    def events(self) -> AsyncIterator[BayEvent]:
        """Bay events as they come; raises `DockConnectionLost` after the last queued event if the link
        died, ends when the driver is closed. Safe to wrap each `__anext__` in a timeout: a cancelled wait
        loses nothing and the iterator stays usable."""
        return _EventIterator(self)

    async def _next_event(self) -> BayEvent:
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._overflowed and self._lost is None and not self._closed:
                self._catch_up()
                continue
            if self._lost is not None:
                raise DockConnectionLost(str(self._lost)) from self._lost
            if self._closed:
                raise StopAsyncIteration
            self._queue_changed.clear()
            await self._queue_changed.wait()

    # -- commands -------------------------------------------------------------------------------------

    def _raise_if_down(self) -> None:
        if self._closed:
            raise DockClosedError(f"dock {self._name} is closed")
        if self._lost is not None:
            raise DockConnectionLost(str(self._lost)) from self._lost

    async def _transact(self, make: Callable[[int], HostCommand]) -> BoardReply:
        """Send one command, wait for its reply; re-send the same frame on timeout or BUSY."""
        async with self._command_lock:
            self._raise_if_down()
            self._seq = next_seq(self._seq)
            command = make(self._seq)
            frame = command.to_bytes()
            token = _command_token(command)
            attempts = 1 + self._retries
            for attempt in range(1, attempts + 1):
                if attempt > 1:
                    self._stats.retransmissions += 1
                future: asyncio.Future[BoardReply] = self._loop.create_future()
                self._pending = _Pending(command, future)
                try:
                    await self._write(frame)
                    async with asyncio.timeout(self._reply_timeout_s):
                        reply = await future
                except TimeoutError:
                    self._stats.timeouts += 1
                    log.debug("dock %s: no reply to %s %d, attempt %d/%d", self._name, token, command.seq,
                              attempt, attempts)
                    continue
                finally:
                    self._pending = None
                    if future.done() and not future.cancelled():
                        future.exception()  # consumed here or below; keeps asyncio from reporting it
                if not isinstance(reply, NakReply):
                    return reply
                self._stats.naks += 1
                if reply.reason is not NakReason.BUSY:
                    raise DockNakError(
                        f"dock {self._name}: board refused {token} {command.seq}: {reply.reason}",
                        command=token, reason=reply.reason,
                    )
                log.debug("dock %s: board busy for %s %d, attempt %d/%d", self._name, token, command.seq,
                          attempt, attempts)
                if attempt == attempts:  # it answers, so the link is fine: refuse this command only
                    raise DockNakError(
                        f"dock {self._name}: board still busy for {token} after {attempts} attempts",
                        command=token, reason=NakReason.BUSY,
                    )
            lost = DockConnectionLost(
                f"dock {self._name}: no reply to {token} after {attempts} attempts"
                f" of {self._reply_timeout_s}s each"
            )
            self._lose(lost)
            raise lost

    async def _write(self, frame: bytes) -> None:
        try:
            await self._line.write(frame)
        except PORT_ERRORS as exc:
            lost = DockConnectionLost(f"dock {self._name}: write failed: {exc}")
            self._lose(lost)
            raise lost from exc

    # -- background tasks ----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        for beat in itertools.count(1):
            await asyncio.sleep(self._heartbeat_s)
            try:
                if beat % STATUS_EVERY_HEARTBEATS:
                    await self._transact(PingCommand)
                    continue
                # A board that restarted while no bay event happened, with its BOOT lost on the line,
                # keeps its event number at 0 like before: only its dark LEDs show it (see _reconcile).
                await self._transact(StatusQuery)
                if any(self._board_leds[bay - 1] != led for bay, led in self._desired_leds.items()):
                    await self._restore_leds()
            except (DockConnectionError, DockClosedError):
                return
            except DockError as exc:
                log.warning("dock %s: heartbeat refused: %s", self._name, exc)

    async def _resync_loop(self) -> None:
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted.clear()
            self._stats.resyncs += 1
            try:
                await self._transact(StatusQuery)  # reconciled on arrival
                await self._restore_leds()
            except (DockConnectionError, DockClosedError):
                return
            except DockError as exc:
                log.warning("dock %s: resync failed, will retry: %s", self._name, exc)
                await asyncio.sleep(self._heartbeat_s)
                self._resync_wanted.set()

    async def _restore_leds(self) -> None:
        """Re-send LEDs the board does not show as set (after its reboot it shows all OFF)."""
        for bay, led in sorted(self._desired_leds.items()):
            if self._board_leds[bay - 1] != led:
                log.warning("dock %s: bay %d LED is %s, restoring %s", self._name, bay,
                            self._board_leds[bay - 1], led)
                await self._transact(functools.partial(SetLedCommand, bay=bay, led=led))

    # -- receive path (event loop thread) ------------------------------------------------------------

    def _on_read_error(self, exc: Exception) -> None:
        self._lose(DockConnectionLost(f"dock {self._name}: read failed: {exc}"))

    def _on_bytes(self, data: bytes) -> None:
        if self._closed or self._lost is not None:
            return
        junk_before = self._framer.discarded_bytes
        lines = self._framer.feed(data)
        if self._framer.discarded_bytes != junk_before:
            log.debug("dock %s: skipped %d junk bytes", self._name,
                      self._framer.discarded_bytes - junk_before)
        for line in lines:
            try:
                message = decode_line(line)
            except DockProtocolError as exc:
                self._stats.bad_frames += 1
                log.warning("dock %s: bad frame dropped (%s): %r", self._name, exc, line[:80])
                continue
            self._dispatch(message)
            if self._lost is not None:
                return

    def _dispatch(self, message: Message) -> None:
        replies = PingReply | IdentityReply | StatusReply | LedReply | PowerCycleReply | NakReply
        if isinstance(message, replies):
            self._on_reply(message)
        elif isinstance(message, InsertedEvent | RemovedEvent | ChargeEvent | BootEvent):
            self._on_event(message)
        else:
            self._stats.unexpected_messages += 1
            log.warning("dock %s: host-side message from the board ignored: %s", self._name, message)

    def _on_reply(self, reply: BoardReply) -> None:
        pending = self._pending
        if pending is None or pending.future.done() or reply.seq != pending.command.seq:
            self._stats.stale_replies += 1
            log.debug("dock %s: stale reply ignored: %s", self._name, reply)
            return
        if not pending.accepts(reply):
            self._stats.unexpected_messages += 1
            log.warning("dock %s: reply %s does not answer %s", self._name, reply, pending.command)
            return
        if isinstance(reply, StatusReply):
            self._reconcile(reply)
            if self._lost is not None:
                return
        elif isinstance(reply, PingReply):
            self._check_event_seq(reply.event_seq, "PING")
        elif isinstance(reply, LedReply):
            self._board_leds[reply.bay - 1] = reply.led
        pending.future.set_result(reply)

    def _check_event_seq(self, event_seq: int, source: str) -> None:
        if self._synced and event_seq != self._last_event_seq:
            self._stats.gaps += 1
            log.warning("dock %s: %s says last event %d, last seen %d: events lost, resyncing",
                        self._name, source, event_seq, self._last_event_seq)
            if _went_backwards(event_seq, self._last_event_seq):
                self._restarted_unseen()
            self._resync_wanted.set()

    def _restarted_unseen(self, why: str = "event numbers went backwards") -> None:
        """The board restarted and its BOOT was lost (event numbers went backwards, or LEDs it had
        acknowledged went dark)."""
        log.warning("dock %s: %s: board restarted unseen", self._name, why)
        self._boot_pending = True
        self._board_leds = [BayLed.OFF] * len(self._board_leds)

    def _on_event(self, event: BoardEvent) -> None:
        if isinstance(event, BootEvent):
            self._on_boot(event)
            return
        if not self._synced:
            return  # the status reply that completes open() covers it
        expected = next_seq(self._last_event_seq)
        if event.seq != expected:
            self._stats.gaps += 1
            log.warning("dock %s: event %d arrived, expected %d: events lost, resyncing",
                        self._name, event.seq, expected)
            # The board never repeats a number, so even an equal one means it started counting again.
            if event.seq == self._last_event_seq or _went_backwards(event.seq, self._last_event_seq):
                self._restarted_unseen()
            self._resync_wanted.set()
        self._last_event_seq = event.seq
        if event.bay > len(self._bays):
            self._stats.inconsistent_events += 1
            log.warning("dock %s: event for bay %d of %d dropped", self._name, event.bay, len(self._bays))
            return
        bay = event.bay
        known = self._bays[bay - 1]
        if isinstance(event, InsertedEvent):
            if known.present:
                self._stats.inconsistent_events += 1
                log.warning("dock %s: bay %d inserted while believed occupied: removal was lost",
                            self._name, bay)
                self._publish(BayEvent(bay, BayEventKind.REMOVED, None, synthetic=True))
            known.present = True
            known.insertions = (known.insertions + 1) % 16
            known.charge_percent = event.charge_percent
            self._publish(BayEvent(bay, BayEventKind.INSERTED, event.charge_percent))
        elif not known.present:
            self._stats.inconsistent_events += 1
            log.warning("dock %s: %s for bay %d believed empty: dropped", self._name, event, bay)
        elif isinstance(event, RemovedEvent):
            known.present = False
            known.charge_percent = None
            self._publish(BayEvent(bay, BayEventKind.REMOVED, None))
        else:
            known.charge_percent = event.charge_percent
            self._publish(BayEvent(bay, BayEventKind.CHARGE, event.charge_percent))

    def _on_boot(self, event: BootEvent) -> None:
        self._stats.boots += 1
        identity = self._identity
        expected = (
            None if identity is None else (identity.board_serial, identity.bay_count, identity.protocol)
        )
        if identity is not None and (event.board_serial, event.bays, event.protocol) != expected:
            # A firmware update can change the protocol too: reopening negotiates it again.
            self._lose(DockConnectionLost(
                f"dock {self._name}: a different board booted on this line: {event.board_serial} with "
                f"{event.bays} bays, protocol {event.protocol}, expected {identity.board_serial} with "
                f"{identity.bay_count}, protocol {identity.protocol}"
            ))
            return
        log.warning("dock %s: board restarted (firmware %s): resyncing and restoring LEDs",
                    self._name, event.firmware)
        self._last_event_seq = 0
        self._boot_pending = True
        self._board_leds = [BayLed.OFF] * len(self._board_leds)
        if self._synced:
            self._resync_wanted.set()

    def _reconcile(self, reply: StatusReply) -> None:
        """Adopt a status snapshot; differences from what events told us become synthetic events."""
        if len(reply.bays) != len(self._bays):
            self._lose(DockConnectionLost(
                f"dock {self._name}: status has {len(reply.bays)} bays, identity said {len(self._bays)}"
            ))
            return
        # A board changes an LED only when told, or by going dark when it restarts: an LED the board
        # acknowledged that is now OFF means a restart whose BOOT was lost.
        if self._synced and not self._boot_pending and any(
            state.led is BayLed.OFF and self._board_leds[number] is not BayLed.OFF
            for number, state in enumerate(reply.bays)
        ):
            self._restarted_unseen("LEDs it had acknowledged went dark")
        # At open the board's insertion counters are adopted; after its reboot they restarted at 0.
        infer_swap = self._synced and not self._boot_pending
        announce = self._synced or self._announce_present
        for number, state in enumerate(reply.bays, start=1):
            new = _BayView(state.present, state.insertions, state.charge_percent)
            old = self._bays[number - 1]
            if not new.present and old.insertions != new.insertions and infer_swap:
                log.warning("dock %s: bay %d had a recorder inserted and removed unseen", self._name, number)
            changes = _diff(number, old, new, infer_swap=infer_swap)
            self._bays[number - 1] = new
            self._board_leds[number - 1] = state.led
            if not announce:
                self._announced[number - 1] = dataclasses.replace(new)
                continue
            for change in changes:
                if self._synced:
                    log.warning("dock %s: resync: bay %d %s (event was lost)", self._name, number,
                                change.kind)
                self._stats.synthesized_events += 1
                self._publish(change)
        self._last_event_seq = reply.event_seq
        self._boot_pending = False
        self._synced = True

    # -- event queue ---------------------------------------------------------------------------------

    def _publish(self, event: BayEvent) -> None:
        if self._overflowed or len(self._queue) >= self._event_queue_size:
            if not self._overflowed:
                log.warning("dock %s: event queue full (%d): dropping events until the consumer catches up,"
                            " then re-announcing state", self._name, self._event_queue_size)
            self._overflowed = True
            self._stats.dropped_events += 1
            return
        self._enqueue(event)

    def _enqueue(self, event: BayEvent) -> None:
        announced = self._announced[event.bay - 1]
        if event.kind is BayEventKind.INSERTED:
            announced.present = True
            announced.insertions = self._bays[event.bay - 1].insertions
            announced.charge_percent = event.charge_percent
        elif event.kind is BayEventKind.REMOVED:
            announced.present = False
            announced.charge_percent = None
        else:
            announced.charge_percent = event.charge_percent
        self._queue.append(event)
        self._queue_changed.set()

    def _catch_up(self) -> None:
        """After an overflow, with the queue empty: announce what the consumer missed (<= 2 per bay)."""
        self._overflowed = False
        for number, (announced, known) in enumerate(zip(self._announced, self._bays, strict=True), start=1):
            for change in _diff(number, dataclasses.replace(announced), known, infer_swap=True):
                self._stats.synthesized_events += 1
                self._enqueue(change)
        log.info("dock %s: consumer caught up; %d synthetic events re-announce the state",
                 self._name, len(self._queue))

    # -- failure ---------------------------------------------------------------------------------------

    def _lose(self, lost: DockConnectionLost) -> None:
        if self._lost is not None or self._closed:
            return
        self._lost = lost
        log.error("%s", lost)
        if self._pending is not None and not self._pending.future.done():
            self._pending.future.set_exception(lost)
        self._queue_changed.set()
        # Release the device now (it is opened exclusively) so a new driver can take it at once.
        if self._port_released is None:
            self._port_released = self._loop.create_task(self._line.release(f"dock {self._name}"))


__all__ = [
    "MAX_BAYS",
    "BayEvent",
    "BayEventKind",
    "BayLed",
    "BayStatus",
    "DockClosedError",
    "DockConnectionError",
    "DockConnectionLost",
    "DockDriver",
    "DockDriverStats",
    "DockError",
    "DockIdentity",
    "DockNakError",
    "DockProtocolError",
    "DockStatus",
    "DockUsageError",
]
