"""Station telemetry over MQTT, from the status model (README "MQTT", contract section 1).

    <prefix>/stations/<S>/status/availability   retained "online" / "offline" (the last will: "offline")
    <prefix>/stations/<S>/status/station        retained: identity, start, central contact, tasks (name,
                                                state, restarts), counts, telemetry.events_dropped
    <prefix>/stations/<S>/status/bays/<bay>     retained, one per bay (the status model's BAY document
                                                without personal data: see below)
    <prefix>/stations/<S>/status/spool          retained: sealed items waiting for their receipt
    <prefix>/stations/<S>/status/storage        retained: the store's file system
    <prefix>/stations/<S>/status/clock          retained: whether the station clock is trusted
    <prefix>/stations/<S>/status/ledger         retained: local head {seq, hash}, central-witnessed head
    <prefix>/stations/<S>/events/<kind>         not retained: item-sealed, receipt, error

Every payload is canonical JSON. The documents are parts of the status model's JSON (edge.observe),
taken from its change stream, cut to what may sit in a broker's retained store (its persistence file, and
every client the ACL lets read): no personal data and no free text.

* A bay document (:func:`bay_document`) carries only: ``bay`` (the topic level below), ``state``,
  ``error_class``, ``officer_present`` (a boolean: a holder is known; never the officer's name or badge
  number), ``device`` as ``{"id", "model", "battery_pct"}`` where ``id`` is 16 hex digits of an HMAC of
  the recorder's serial under the station's ``device_salt`` (tells recorders apart, never names them; the
  salt is 32 random bytes made once in ``<store_dir>/mqtt-telemetry.salt``, 0600, so it is stable across
  restarts and key rotations, differs between stations, and is unknown to readers),
  the progress counters, ``speed_bps``, ``eta_s``, ``bouncing``, ``usb_serial_warning`` as ``{"problem",
  "bays"}`` (bay numbers only), ``since`` and ``updated_at``.
* The station document's tasks carry ``name``, ``state`` and ``restarts`` only: a task's last error
  (``last_event``) is free text that may quote a recorder's file names, and ``last_event_at`` is its
  liveness beat, new every second (the document would never settle).
* Error events carry the stage, never the error's prose (the central reads that in the ledger it
  witnesses).

Bounded, whatever the broker does. A retained topic is published only when its document differs from
the one the broker last took on this connection, and at most once per `min_interval_s` (a burst of
changes coalesces into its last state). After every (re)connection "online" goes out first, then every
document again (a broker that lost its retained store gets them back). Nothing is published while the
broker is away: paho would queue it without limit. Events wait in a queue of `event_queue` that drops its
oldest when full, counting what it dropped (`telemetry.events_dropped` in the station document).

Bay topic levels: a configured bay's number; a recorder in no known bay (the model's `device:SERIAL`
tile) gets `device-` and 16 hex digits of the HMAC-SHA-256 of its key under ``device_salt`` (a serial
from a device may hold `/`, `+` or `#`, and is not published). A tile the model retires is cleared (an
empty retained message).

Events come from ledger entries as they are appended, which may be just before their transaction commits:
an event announces; the ledger is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from edge.custody.canonical import canonical_json
from edge.custody.ledger import EntryType, LedgerEntry
from edge.custody.text import printable
from edge.mqtt.client import (
    ConnectionState,
    ConnectionStatus,
    MqttClient,
    MqttError,
    PublishRefused,
    WillMessage,
)

__all__ = [
    "OFFLINE",
    "ONLINE",
    "EventKind",
    "StatusFeed",
    "TelemetryPublisher",
    "TelemetrySettings",
    "availability_topic",
    "bay_document",
    "bay_topic_level",
    "device_id",
    "event_for_entry",
    "status_documents",
    "status_topic",
    "will_message",
]

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
STATUS_PARTS = ("station", "spool", "storage", "clock", "ledger")
# How long the stopping station waits for its "offline" to be acknowledged before it disconnects anyway.
OFFLINE_TIMEOUT_S = 3.0
# After a publish failed without a refusal (no acknowledgement in time), the next try waits for a change
# of connection, or this long.
_RETRY_AFTER_FAILURE_S = 5.0
_BAY_NUMBER = re.compile(r"^[0-9]{1,6}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class EventKind(StrEnum):
    ITEM_SEALED = "item-sealed"
    RECEIPT = "receipt"
    ERROR = "error"


@dataclass(frozen=True)
class TelemetrySettings:
    station: str
    topic_prefix: str
    min_interval_s: float = 2.0
    event_queue: int = 1000
    device_salt: bytes = b""
    """The HMAC key of published device ids (see the module docstring); the station's is its telemetry
    salt (edge.mqtt.station_settings.telemetry_device_salt). Empty: a plain SHA-256 (tests)."""


class StatusFeed(Protocol):
    """The status model's change stream (`edge.observe.board.Subscription`): a snapshot first (and again
    after falling behind), then `bay` and `station` changes."""

    async def get(self) -> tuple[str, Any]: ...

    def close(self) -> None: ...


# -- topics and documents (pure) -------------------------------------------------------------------------


def _root(prefix: str, station: str) -> str:
    return f"{prefix}/stations/{station}"


def availability_topic(prefix: str, station: str) -> str:
    return f"{_root(prefix, station)}/status/availability"


def status_topic(prefix: str, station: str, part: str) -> str:
    return f"{_root(prefix, station)}/status/{part}"


def bay_topic(prefix: str, station: str, key: str, salt: bytes = b"") -> str:
    return f"{_root(prefix, station)}/status/bays/{bay_topic_level(key, salt)}"


def event_topic(prefix: str, station: str, kind: EventKind) -> str:
    return f"{_root(prefix, station)}/events/{kind.value}"


def will_message(prefix: str, station: str) -> WillMessage:
    """The station's last will: its availability goes "offline" (retained) when its connection ends
    without a DISCONNECT (killed, cut off, silent past the keep-alive)."""
    return WillMessage(availability_topic(prefix, station), OFFLINE, qos=1, retain=True)


def bay_topic_level(key: str, salt: bytes = b"") -> str:
    if _BAY_NUMBER.fullmatch(key):
        return key
    return "device-" + device_id(key, salt)


def device_id(text: str, salt: bytes = b"") -> str:
    """16 hex digits that tell ``text`` (a serial, a tile key) apart without naming it."""
    data = text.encode("utf-8", "surrogateescape")
    digest = hmac.new(salt, data, hashlib.sha256) if salt else hashlib.sha256(data)
    return digest.hexdigest()[:16]


def bay_document(bay: Mapping[str, Any], salt: bytes = b"") -> dict[str, Any]:
    """The status model's BAY document without personal data or free text (see the module docstring):
    only the fields named there, copied when they have the model's types."""
    def number(key: str) -> int | float | None:
        value = bay.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    def word(key: str) -> str | None:
        value = bay.get(key)
        return printable(value)[:64] if isinstance(value, str) else None

    device = bay.get("device")
    published_device = None
    if isinstance(device, Mapping):
        serial = device.get("serial")
        battery = device.get("battery_pct")
        model = device.get("model")
        published_device = {
            "id": device_id(serial, salt) if isinstance(serial, str) and serial else None,
            "model": printable(model)[:64] if isinstance(model, str) else None,
            "battery_pct": battery if type(battery) is int else None,
        }
    warning = bay.get("usb_serial_warning")
    published_warning = None
    if isinstance(warning, Mapping):
        bays, problem = warning.get("bays"), warning.get("problem")
        published_warning = {
            "problem": printable(problem)[:32] if isinstance(problem, str) else None,
            "bays": [b for b in bays if type(b) is int] if isinstance(bays, list) else None,
        }
    key = bay.get("bay")
    return {
        "bay": bay_topic_level(key, salt) if isinstance(key, str) else None,
        "state": word("state"),
        "error_class": word("error_class"),
        "officer_present": bay.get("officer") is not None,
        "device": published_device,
        **{k: number(k) for k in ("files_done", "files_total", "bytes_done", "bytes_total", "speed_bps",
                                  "eta_s")},
        "bouncing": bay.get("bouncing") is True,
        "usb_serial_warning": published_warning,
        "since": word("since"),
        "updated_at": word("updated_at"),
    }


def status_documents(station: Mapping[str, Any], *, events_dropped: int = 0) -> dict[str, dict[str, Any]]:
    """The status model's STATION document cut into the retained parts (see the module docstring)."""
    ledger = station.get("ledger") or {}
    tasks = [
        {k: task.get(k) for k in ("name", "state", "restarts")}  # never last_event: free text
        for task in station.get("tasks") or []
    ]
    identity = {k: station.get(k) for k in ("id", "name", "unit", "version", "key_id", "started_at")}
    return {
        "station": {
            **identity,
            "central": station.get("central"),
            "tasks": tasks,
            "counts": station.get("counts"),
            "telemetry": {"events_dropped": events_dropped},
        },
        "spool": dict(station.get("spool") or {}),
        "storage": dict(station.get("disk") or {}),
        "clock": dict(station.get("clock") or {}),
        "ledger": {
            "local": {"seq": ledger.get("head_seq"), "hash": ledger.get("head_hash")},
            "witnessed": {"seq": ledger.get("witnessed_seq"), "at": ledger.get("witnessed_at")},
            "unwitnessed_entries": ledger.get("unwitnessed_entries"),
        },
    }


def event_for_entry(entry: LedgerEntry) -> tuple[EventKind, dict[str, Any]] | None:
    """The telemetry event of a ledger entry (None for entries that are no event)."""
    base: dict[str, Any] = {"seq": entry.seq, "time": entry.time, "item": entry.item}
    if entry.type == EntryType.SEALED and entry.item:
        digest = entry.data.get("manifest_sha256")
        return EventKind.ITEM_SEALED, {**base, "manifest_sha256": digest if _is_hex64(digest) else None}
    if entry.type == EntryType.RECEIPT and entry.item:
        return EventKind.RECEIPT, base
    if entry.type == EntryType.ERROR:
        stage = entry.data.get("stage")
        return EventKind.ERROR, {**base, "stage": printable(stage)[:64] if isinstance(stage, str) else None}
    return None


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


# -- the publisher ------------------------------------------------------------------------------------------


class TelemetryPublisher:
    """Keeps the broker's retained state of this station equal to the status model, and passes events on;
    see the module docstring. `run` is a supervised task; `ledger_entry` a ledger listener (any thread)."""

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        client: MqttClient,
        subscribe: Callable[[], StatusFeed],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.event_queue < 1 or settings.min_interval_s < 0:
            raise ValueError("event_queue must be >= 1 and min_interval_s >= 0")
        self.settings = settings
        self.client = client
        self._subscribe = subscribe
        self._clock = clock
        self._latest: dict[str, bytes] = {}
        """Retained topic -> the document it should hold (b"": cleared)."""
        self._published: dict[str, bytes] = {}
        """Retained topic -> the document the broker took on the current connection."""
        self._published_at: dict[str, float] = {}
        self._events: deque[tuple[str, bytes]] = deque()
        self.events_dropped = 0
        self.refused = 0
        """Publishes the broker refused (MQTT 5 reason codes; 3.1.1 brokers drop them silently)."""
        self._station_json: Mapping[str, Any] | None = None
        self._online_for: int | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def __repr__(self) -> str:
        return f"TelemetryPublisher(station={self.settings.station!r})"

    # -- intake -------------------------------------------------------------------------------------------

    def ledger_entry(self, entry: LedgerEntry) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):  # the loop closed: the station is stopping
                loop.call_soon_threadsafe(self._take_entry, entry)
            return
        self._take_entry(entry)

    def _take_entry(self, entry: LedgerEntry) -> None:
        event = event_for_entry(entry)
        if event is None:
            return
        kind, doc = event
        s = self.settings
        if len(self._events) >= s.event_queue:
            self._events.popleft()
            self.events_dropped += 1
            if self._station_json is not None:
                self._take_station(self._station_json)
        self._events.append((event_topic(s.topic_prefix, s.station, kind), canonical_json(doc)))
        self._wake.set()

    def _take(self, kind: str, data: Any) -> None:
        if kind == "snapshot":
            self._take_station(data["station"])
            for bay in data["bays"]:
                self._take_bay(bay)
        elif kind == "station":
            self._take_station(data)
        elif kind == "bay":
            self._take_bay(data)
        self._wake.set()

    def _take_station(self, station: Mapping[str, Any]) -> None:
        self._station_json = station
        s = self.settings
        for part, doc in status_documents(station, events_dropped=self.events_dropped).items():
            self._latest[status_topic(s.topic_prefix, s.station, part)] = canonical_json(doc)

    def _take_bay(self, bay: Mapping[str, Any]) -> None:
        key = bay.get("bay")
        if not isinstance(key, str) or not key:
            return
        s = self.settings
        topic = bay_topic(s.topic_prefix, s.station, key, s.device_salt)
        self._latest[topic] = (
            b"" if bay.get("state") == "removed" else canonical_json(bay_document(bay, s.device_salt))
        )

    # -- the task -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        feed = self._subscribe()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._intake(feed), name="telemetry-intake")
                group.create_task(self._watch_connection(), name="telemetry-connection")
                group.create_task(self._publish_loop(), name="telemetry-publish")
        finally:
            feed.close()
            await self._say_offline()

    async def _intake(self, feed: StatusFeed) -> None:
        while True:
            kind, data = await feed.get()
            try:
                self._take(kind, data)
            except (KeyError, TypeError, ValueError) as exc:  # the model's JSON is ours: a bug, not input
                log.error("telemetry: status %s not taken: %s", kind, exc)

    async def _watch_connection(self) -> None:
        while True:
            seen = self.client.status

            def changed(now: ConnectionStatus, seen: ConnectionStatus = seen) -> bool:
                return now.state is not seen.state or now.connections != seen.connections

            with contextlib.suppress(TimeoutError):
                await self.client.wait_for(changed, 3600)
            self._wake.set()

    def _connected(self) -> bool:
        return self.client.status.state is ConnectionState.CONNECTED

    async def _publish_loop(self) -> None:
        while True:
            self._wake.clear()
            if not self._connected():
                await self._wake.wait()
                continue
            try:
                delay_s = await self._publish_some()
            except MqttError as exc:
                # Not acknowledged in time, or the client closed: the connection is going (the next one
                # publishes everything again). Not at once again, while the connection may stand.
                log.info("telemetry: publish failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_RETRY_AFTER_FAILURE_S):
                        await self._wake.wait()
                continue
            if delay_s is None:
                await self._wake.wait()
            elif delay_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._wake.wait()

    async def _publish_some(self) -> float | None:
        """Publish what is due; the seconds until the next document is due (None: nothing pending)."""
        s = self.settings
        connections = self.client.status.connections
        if connections != self._online_for:
            # A new connection: say so first (the will may have said "offline" meanwhile), then every
            # document again.
            await self._send(availability_topic(s.topic_prefix, s.station), ONLINE, retain=True)
            self._online_for = connections
            self._published.clear()
            self._published_at.clear()
        while self._events and self._connected():
            topic, payload = self._events[0]
            await self._send(topic, payload, retain=False)
            if self._events and self._events[0] == (topic, payload):
                self._events.popleft()
        now = self._clock()
        next_due: float | None = None
        for topic, payload in list(self._latest.items()):
            if self._published.get(topic) == payload:
                continue
            due = self._published_at.get(topic, float("-inf")) + s.min_interval_s
            if due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            if not self._connected():
                return None
            await self._send(topic, payload, retain=True)
            self._published[topic] = payload
            self._published_at[topic] = self._clock()
            if payload == b"":
                del self._latest[topic]  # cleared on the broker; nothing to send after a reconnect
        return None if next_due is None else max(0.0, next_due - self._clock())

    async def _send(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish; a refusal by the broker (MQTT 5: its ACL, say) is logged and the message given up,
        so that a misconfigured ACL costs that document, never a loop of publishes."""
        try:
            await self.client.publish(topic, payload, retain=retain)
        except PublishRefused as exc:
            self.refused += 1
            log.warning("telemetry: %s", exc)

    async def _say_offline(self) -> None:
        """A stopping station disconnects cleanly, so the broker keeps its will: say "offline" here."""
        if not self._connected():
            return
        s = self.settings
        try:
            await self.client.publish(
                availability_topic(s.topic_prefix, s.station), OFFLINE, retain=True,
                timeout_s=OFFLINE_TIMEOUT_S,
            )
        except MqttError as exc:
            log.info("telemetry: offline not published: %s", exc)
