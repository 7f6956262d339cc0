"""CardReaderDriver: the host side of a serial card reader (STX frames or hex lines), async, over pyserial.

Layers: pyserial transport (any `serial_for_url` URL: `/dev/serial/by-id/...`, a pty) → a reader thread
that hands raw chunks to the event loop → `CardFrameDecoder` (pure codec, `card_reader_protocol`) → this
driver: repeat suppression and a bounded queue of card presentations.

Readers repeat a card's frame while it stays in the field (an RDM6300 every ~50 ms). One presentation is
one `CardPresented`: a read of the same UID within `repeat_hold_s` of its previous read is a repeat (the
window slides with each repeat, so a card held for a minute is one presentation). The queue keeps the
newest `queue_size` presentations; each carries its monotonic time so that a consumer can refuse a stale
one (a tap made while nobody listened must not check a recorder out minutes later).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from drivers.serial.card_reader_protocol import CardFrameDecoder, CardFraming, CardRead
from drivers.serial.serial_line import PORT_ERRORS, SerialLine, open_port

__all__ = [
    "CardPresented",
    "CardReaderClosed",
    "CardReaderConnectionError",
    "CardReaderConnectionLost",
    "CardReaderDriver",
    "CardReaderError",
    "CardReaderStats",
]

log = logging.getLogger(__name__)



class CardReaderError(Exception):
    """Base of the card reader driver's errors."""


class CardReaderConnectionError(CardReaderError):
    """The port cannot be opened."""


class CardReaderConnectionLost(CardReaderError):
    """The port failed while open (unplugged reader, hung-up pty)."""


class CardReaderClosed(CardReaderError):
    """The driver was closed."""


@dataclass(frozen=True)
class CardPresented:
    """One presentation of a card: its UID (upper-case hex), the framing, when (time.monotonic())."""

    uid: str
    framing: CardFraming
    monotonic_s: float


@dataclass
class CardReaderStats:
    reads: int = 0  # well-formed frames decoded
    presented: int = 0  # presentations queued
    repeats_suppressed: int = 0
    dropped_stale: int = 0  # presentations pushed out of a full queue
    bad_frames: int = 0
    junk_bytes: int = 0
    wrong_framing: int = 0  # well-formed reads in a framing the reader was not configured for


class CardReaderDriver:
    """Open with `await CardReaderDriver.open(url)`; `await next_card()` or `async for card in cards()`."""

    def __init__(self, port: Any, url: str, *, repeat_hold_s: float, queue_size: int,
                 clock: Callable[[], float] = time.monotonic, framing: CardFraming | None = None) -> None:
        self._url = url
        self._repeat_hold_s = repeat_hold_s
        self._framing = framing  # None: either framing
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._decoder = CardFrameDecoder()
        self._queue: collections.deque[CardPresented] = collections.deque(maxlen=queue_size)
        self._changed = asyncio.Event()
        self._last: tuple[str, float] | None = None
        self._stats = CardReaderStats()
        self._lost: CardReaderConnectionLost | None = None
        self._closed = False
        self._line = SerialLine(port, on_bytes=self._on_bytes, on_read_error=self._on_lost)

    @classmethod
    async def open(cls, url: str, *, baudrate: int = 9600, repeat_hold_s: float = 1.0,
                   queue_size: int = 16, framing: CardFraming | None = None) -> CardReaderDriver:
        """Open the port exclusively and start reading. `CardReaderConnectionError` if it cannot be. With
        `framing`, reads in the other framing are dropped and counted (a reader that suddenly speaks
        another framing is not the reader that was installed)."""
        if repeat_hold_s < 0 or queue_size < 1:
            raise ValueError(
                f"repeat_hold_s must be >= 0 and queue_size >= 1, got {repeat_hold_s}, {queue_size}")
        # The reader only sends: no write timeout to set.
        port = await open_port(url, baudrate=baudrate, what="card reader", error=CardReaderConnectionError,
                               write_timeout_s=None)
        driver = cls(port, url, repeat_hold_s=repeat_hold_s, queue_size=queue_size, framing=framing)
        try:
            await driver._line.start(f"card-reader {url}")  # a card read before we listened is stale
        except PORT_ERRORS as exc:
            await driver.close()
            raise CardReaderConnectionError(f"{url}: cannot flush input: {exc}") from exc
        log.info("card reader %s open", url)
        return driver

    @property
    def url(self) -> str:
        return self._url

    @property
    def stats(self) -> CardReaderStats:
        snapshot = replace(self._stats)
        snapshot.bad_frames = self._decoder.bad_frames
        snapshot.junk_bytes = self._decoder.junk_bytes
        return snapshot

    async def next_card(self) -> CardPresented:
        """The oldest queued presentation, waiting for one; raises when lost or closed (after the queue
        is drained: presentations read before a loss are still delivered)."""
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._lost is not None:
                raise self._lost
            if self._closed:
                raise CardReaderClosed(f"card reader {self._url} closed")
            self._changed.clear()
            await self._changed.wait()

    async def cards(self) -> AsyncIterator[CardPresented]:
        """Presentations until the driver is closed; a lost connection raises."""
        while True:
            try:
                yield await self.next_card()
            except CardReaderClosed:
                return

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        await self._line.release(f"card reader {self._url}")

    async def __aenter__(self) -> CardReaderDriver:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- receive path -----------------------------------------------------------------------------------

    def _on_lost(self, exc: Exception) -> None:
        if self._closed or self._lost is not None:
            return
        self._lost = CardReaderConnectionLost(f"card reader {self._url}: read failed: {exc}")
        log.error("%s", self._lost)
        self._changed.set()

    def _on_bytes(self, data: bytes) -> None:
        if self._closed:
            return
        bad_before = self._decoder.bad_frames
        for read in self._decoder.feed(data):
            self._on_read(read)
        if self._decoder.bad_frames != bad_before:
            log.warning("card reader %s: %d bad frames dropped", self._url,
                        self._decoder.bad_frames - bad_before)

    def _on_read(self, read: CardRead) -> None:
        now = self._clock()
        self._stats.reads += 1
        if self._framing is not None and read.framing is not self._framing:
            self._stats.wrong_framing += 1
            log.warning("card reader %s: a %s read dropped (configured for %s)", self._url, read.framing,
                        self._framing)
            return
        last = self._last
        self._last = (read.uid, now)
        if last is not None and last[0] == read.uid and now - last[1] <= self._repeat_hold_s:
            self._stats.repeats_suppressed += 1
            return
        if len(self._queue) == self._queue.maxlen:
            self._stats.dropped_stale += 1
        self._queue.append(CardPresented(read.uid, read.framing, now))
        self._stats.presented += 1
        self._changed.set()
