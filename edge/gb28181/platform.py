"""The GB/T 28181 platform service: the station as the SIP server its devices register to.

`GbPlatform` binds the SIP transport (drivers.gb28181.sip_transport: UDP and TCP on one port), answers
REGISTER through the registrar (edge.gb28181.registrar), tracks keepalives and online state in the device
registry (edge.gb28181.registry), sends MANSCDP queries and matches their answers (edge.gb28181.queries),
and opens media sessions (edge.gb28181.sessions). `run()` is its supervised task: it holds the transport
and checks, every second, which devices went silent and which multi-part answers stopped coming.

Where devices are: every request goes to the source address of the device's last authenticated REGISTER
(never its Contact: 4G devices put private addresses there). A REGISTER proves the device (digest) and may
move it anywhere. A keepalive proves nothing (MANSCDP carries no authentication), and behind a carrier NAT
many subscribers share one host, so a keepalive moves nothing: from another host it is answered 404, which
makes the device register again, with its password; from another port of the device's host (a NAT that
rebound the device's port, or a neighbour behind the same NAT) it keeps the device online but requests
stay at the registered address; it is counted (`counters.keepalives_other_port`, the device's
`keepalive_other_port` in the operator view) and a `refused` entry (limited as below) says so. What a real
rebinding costs is bounded by the registration's expiry (`register_expires_max_s`, 3600 s by default): the
device registers again, from its new port, within it.
A MediaStatus 121 outside any dialog (devices that send it so) ends the device's one history session only
when it comes from exactly where the device registered (transport, host and port); from anywhere else it is
answered 403, counted (`counters.media_status_refused`) and a limited `refused` entry: anyone behind the
same carrier NAT could otherwise end the device's download.
A MANSCDP answer (Response: DeviceStatus, Catalog, RecordInfo ...) is taken likewise only from exactly
where the device registered; from another port it is answered 403, counted (`counters.answers_refused`) and
a limited `refused` entry: a neighbour's forged DeviceStatus would otherwise set the device's clock offset
(review 22). SNs are random per query (edge.gb28181.queries.SnAllocator), so none can be predicted.
A MESSAGE whose body names another device than its From (a device claiming another's id) gets 403.
A large MANSCDP body (from `OFF_LOOP_PARSE_BYTES`) is parsed in a worker thread, two at most at once, so
SIP and RTP keep flowing while a 10000-record RecordInfo part is read.

Device clocks (time sync, GB/T 28181 9.10.3: the only way a platform sets a device's clock is the Date
of a REGISTER 200 OK). A recorder's clock may be far off (an RTC reset after a battery swap: a year), and
its recordings are stamped with it; setting it before measuring it would lose that offset for good. So
the 200 OK of a device whose clock was not measured since the station last set it carries no Date: the
DeviceStatus asked when it comes online (with the description, or alone when `describe_devices` is off)
measures its offset (`clock_measured`), and the device's next registration (within the expiry granted,
`register_expires_max_s`) carries Date, recorded as `clock_set` with the offset before (or null when the
device's DeviceStatus has no DeviceTime: then nothing more could be known). A device within
`CLOCK_SYNC_MIN_OFFSET_S` is left alone. After a setting DeviceStatus is asked again, so the offset
after it is on the record too. Only while the station clock is trusted and `time_sync` is on. A
DeviceStatus answered while the station's clock is untrusted (booted before NTP) measures the station's
error too: it is on the ledger (`clock_measured` with `station_clock_trusted: false`) but is not the
device's offset, gives no recording an offset and no Date is sent on it; the clock is measured again
once the station's clock is trusted (at the device's next registration, or when the trust comes). The
registry keeps the clock's epochs: `device_clock_offset_ms(device, recorded)` gives a recording the offset
of the clock that stamped it (before or after a setting), and `download()` puts it in its result; a stamp
that two clocks made (a clock that was ahead, set back: the overlap) or that no known clock made gets
none, and the result says why (`device_clock_unknown`: ambiguous, between-clocks, not-measured,
before-history, step-window-unknown: around a step of the device's own clock whose time is not known).
With `clock_history_dir` (the station's `gb28181-clocks/`) the epochs of a clock the station set are kept
across restarts (edge.gb28181.clock_history), with when each was last matched by a measurement (the drift
allowed after a restart grows from it): read when the device first registers in a run; a file that cannot
be used is an error entry and the device's earlier stamps get no offset.

Ledger (through `record`, the store's, kept to the existing entry types with `"source": "gb28181"`):
`device_authenticated` for an accepted registration that says something (with `registration`: `first` in
this run, `online` again, `date` sent, `changed` address, expiry or User-Agent, or a `refresh`; every
change of address is an entry, a device flapping between addresses beyond a bound an hour one entry with the
count and the addresses (edge.gb28181.address_moves); the other changes and refreshes limited to once an
hour per what they say, with the count held back: `_registration_entry`; with `date_sent`, and why it was
withheld),
`device_connected` and `device_removed` when a device comes online and goes offline (and why),
`clock_measured` for a DeviceStatus answer's clock offset, `clock_set` when a 200 OK carried Date,
`refused` for devices refused (unknown id, wrong password) and `error` for unreadable input, both limited
(edge.custody.entry_limits.LimitedEntries) to one entry a minute per configured device and host, else per
host, and to a budget over all sources. Logs name the device (escaped), never raw bytes.

A device that comes online is described (`describe_devices`: DeviceInfo, Catalog, DeviceStatus, one after
the other) and announced to the online listeners (`add_online_listener`). The download scheduler (which
recordings to fetch, once, resuming after a restart) is the ingest source's
(edge.sources.gb28181.scheduler, wired by the station): it decides with edge.gb28181.policy and calls
`query_catalog`, `query_record_info` and `download`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drivers.gb28181.digest import DigestServer
from drivers.gb28181.manscdp import (
    AssembledAnswer,
    CatalogItem,
    CmdType,
    DeviceInfoResponse,
    DeviceStatusResponse,
    Keepalive,
    ManscdpError,
    ManscdpMessage,
    MediaStatus,
    RecordInfoQuery,
    RecordItem,
    Root,
    build_catalog_query,
    build_device_info_query,
    build_device_status_query,
    build_record_info_query,
    items_of,
    parse_message,
)
from drivers.gb28181.sdp import SessionKind
from drivers.gb28181.sip import SipProtocolError, SipRequest, SipResponse, request, response_to
from drivers.gb28181.sip_transport import Peer, SipTimers, SipTransport, SipTransportError
from edge.custody.entry_limits import LimitedEntries
from edge.custody.ledger import EntryType
from edge.custody.text import printable
from edge.gb28181 import clock_history
from edge.gb28181.address_moves import AddressMoves
from edge.gb28181.media import (
    DEFAULT_MAX_RECORDING_BYTES,
    DEFAULT_UNLISTED_RECORDING_BYTES,
    UdpReceiveBuffer,
    probe_udp_receive_buffer,
)
from edge.gb28181.queries import Answer, PendingQueries, QueryError, QueryKey, QueryTimeout, SnAllocator
from edge.gb28181.registrar import REFUSAL_BUDGET, REFUSAL_REPEAT_S, DevicePasswords, Outcome, Registrar
from edge.gb28181.registry import (
    CLOCK_DATE_RETRY_S,
    CLOCK_SYNC_MIN_OFFSET_S,
    MAX_CLOCK_OFFSET_S,
    ChannelView,
    ClockStep,
    ClockUnknown,
    DateIgnored,
    DeviceRegistry,
    SessionView,
    Transition,
    wall_text,
)
from edge.gb28181.sessions import (
    EndReason,
    MediaRequest,
    MediaSession,
    OpenReceiver,
    SessionError,
    SessionManager,
    SessionResult,
)

log = logging.getLogger(__name__)

SOURCE = "gb28181"
CHECK_INTERVAL_S = 1.0
MAX_CHANNELS_PER_DEVICE = 1024
# Devices remembered (only ones that passed digest are added; with allow_unknown_devices anyone who knows
# the shared password could otherwise add ids without end).
MAX_DEVICES = 10_000
MAX_REASON_CHARS = 300
MAX_SHOWN_ID_CHARS = 64
# A keepalive-sized MESSAGE is < 1 KiB; a RecordInfo part over TCP may be MiBs (Annex N: 10000 records).
MAX_MANSCDP_BODY_BYTES = 8 * 1024 * 1024
# Bodies from this size on are parsed off the event loop (a 10000-record RecordInfo part takes ~100 ms).
OFF_LOOP_PARSE_BYTES = 64 * 1024
MAX_PARALLEL_PARSES = 2
# After a 200 OK with Date, DeviceStatus is asked this much later: a device sets its clock once its
# registration is done, and a query that crossed the 200 would read the clock before.
CLOCK_SETTLE_S = 1.0

# `device_authenticated` entries of registrations that neither are a device's first, bring it online nor set
# its clock (`_registration_entry`): each state (address, expiry, ...) once an hour, this many an hour per
# device, over the station this many an hour (those held back are counted in the next entry let through).
REGISTRATION_REPEAT_S = 3600.0
REGISTRATION_CHANGE_BUDGET = 16
REGISTRATION_STATION_BUDGET = 4096

Record = Callable[[str, dict[str, Any]], object]


@dataclass(frozen=True)
class PlatformSettings:
    """What the platform needs, from the station's [gb28181] section (`from_config`) or a test."""

    sip_id: str
    domain: str
    listen_host: str
    listen_port: int
    advertised_host: str
    passwords: DevicePasswords
    names: dict[str, str]
    expires_min_s: int = 3600
    expires_max_s: int = 3600
    keepalive_interval_s: float = 60.0
    keepalive_timeout_count: int = 3
    time_sync: bool = True
    utc_offset_minutes: int = 480
    query_timeout_s: float = 30.0
    describe_devices: bool = True
    media_host: str = "0.0.0.0"
    media_port_range: tuple[int, int] = (30000, 30999)
    idle_timeout_s: float = 15.0
    max_recording_bytes: int = DEFAULT_MAX_RECORDING_BYTES
    unlisted_recording_bytes: int = DEFAULT_UNLISTED_RECORDING_BYTES

    @classmethod
    def from_config(cls, section: Any, env: dict[str, str] | None = None) -> PlatformSettings:
        """From a validated `Gb28181Section`; resolves the password references (ConfigError if one fails)."""
        passwords = {device_id: entry.password.resolve(env) for device_id, entry in section.devices.items()}
        unknown_ref = section.unknown_device_password
        unknown = None if unknown_ref is None else unknown_ref.resolve(env)
        download = section.download
        return cls(
            sip_id=section.sip_id, domain=section.domain, listen_host=section.listen_host,
            listen_port=section.listen_port, advertised_host=section.advertised_host,
            passwords=DevicePasswords(passwords, unknown),
            names={device_id: entry.name for device_id, entry in section.devices.items()},
            expires_min_s=section.register_expires_min_s, expires_max_s=section.register_expires_max_s,
            keepalive_interval_s=section.keepalive_interval_s,
            keepalive_timeout_count=section.keepalive_timeout_count, time_sync=section.time_sync,
            utc_offset_minutes=section.device_utc_offset_minutes, query_timeout_s=section.query_timeout_s,
            describe_devices=section.describe_devices,
            media_host=download.media_host,
            media_port_range=(download.media_port_min, download.media_port_max),
            idle_timeout_s=download.idle_timeout_s,
            max_recording_bytes=download.max_recording_mb * 1024 * 1024,
            unlisted_recording_bytes=download.unlisted_recording_mb * 1024 * 1024,
        )


class DeviceUnavailable(QueryError):
    """The device is not registered, or not online: nothing can be sent to it."""


class GbPlatform:
    """See the module docstring. `clock` is monotonic seconds (the seam of online/offline);
    `clock_trusted` says whether the station clock may set device clocks (Date in the 200 OK);
    `open_receiver` is the media seam (None: signalling only, sessions refused); `clock_history_dir` keeps
    the device clocks' epochs across restarts (edge.gb28181.clock_history; None: in memory only)."""

    def __init__(self, settings: PlatformSettings, *, record: Record, clock_trusted: Callable[[], bool],
                 open_receiver: OpenReceiver | None = None, clock: Callable[[], float] = time.monotonic,
                 timers: SipTimers | None = None, on_change: Callable[[], None] = lambda: None,
                 clock_history_dir: Path | None = None) -> None:
        self.settings = settings
        self._clock_history_dir = clock_history_dir
        self._history_loaded: set[str] = set()  # devices whose saved clock history was read in this run
        self._record = record
        self._clock = clock
        self._on_change = on_change
        self.registry = DeviceRegistry(
            keepalive_interval_s=settings.keepalive_interval_s,
            keepalive_timeout_count=settings.keepalive_timeout_count, clock=clock, configured=settings.names,
        )
        # One group: refusals come from addresses anyone can forge, so the budget is the station's.
        self._limiter = LimitedEntries(clock, repeat_s=REFUSAL_REPEAT_S, budget=REFUSAL_BUDGET,
                                       station_budget=REFUSAL_BUDGET)
        # Registrations that change nothing but the expiry, User-Agent or why no Date: limited
        # (`_registration_entry`).
        self._registrations = LimitedEntries(clock, repeat_s=REGISTRATION_REPEAT_S,
                                             budget=REGISTRATION_CHANGE_BUDGET,
                                             station_budget=REGISTRATION_STATION_BUDGET)
        self._address_moves = AddressMoves(clock)  # every move of a registered address, flapping bounded
        self._clock_trusted = clock_trusted
        self._measuring: set[str] = set()  # devices whose DeviceStatus for the clock is in flight
        self._absurd_clocks: set[str] = set()  # devices whose absurd DeviceTime is on the ledger (once)
        self._was_trusted = False  # the station clock's trust at the last check()
        self.registrar = Registrar(
            digest=DigestServer(settings.domain, os.urandom(32)), passwords=settings.passwords,
            expires_min_s=settings.expires_min_s, expires_max_s=settings.expires_max_s,
            time_sync=settings.time_sync, clock_trusted=clock_trusted,
            utc_offset_minutes=settings.utc_offset_minutes, to_tag=lambda: secrets.token_hex(6),
            may_set_clock=self._clock_sync_due,
        )
        self._timers = timers
        self.transport = self._new_transport(settings.listen_port)
        self.queries = PendingQueries(part_timeout_s=settings.query_timeout_s, clock=clock)
        self._sns = SnAllocator()
        self.sessions = SessionManager(
            transport=self.transport, sip_id=settings.sip_id, domain=settings.domain,
            advertised_host=settings.advertised_host, open_receiver=open_receiver,
            media_host=settings.media_host, port_range=settings.media_port_range,
            idle_timeout_s=settings.idle_timeout_s, max_bytes=settings.max_recording_bytes,
            on_change=self._session_changed,
        )
        self.started = asyncio.Event()
        self._closed = False
        self._media = open_receiver is not None
        self.udp_receive_buffer: UdpReceiveBuffer | None = None  # probed at the first start (media on)
        self._online_listeners: list[Callable[[str], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._parse_slots = asyncio.Semaphore(MAX_PARALLEL_PARSES)
        self.counters: dict[str, int] = {"registered": 0, "refused": 0, "bad_input": 0, "keepalives": 0,
                                         "keepalives_other_port": 0, "media_status_refused": 0,
                                         "answers_refused": 0}

    def __repr__(self) -> str:
        return f"GbPlatform(sip_id={self.settings.sip_id!r}, port={self.transport.port})"

    # -- lifecycle ---------------------------------------------------------------------------------------

    def _new_transport(self, port: int) -> SipTransport:
        return SipTransport(self._handle, host=self.settings.listen_host, port=port,
                            advertised_host=self.settings.advertised_host or None, timers=self._timers)

    async def start(self) -> None:
        if self._closed:
            # A restart by the supervisor: a closed transport cannot be reopened. The registry stays:
            # devices that registered are still where they were.
            self.transport = self._new_transport(self.transport.port)
            self.sessions.transport = self.transport
            self._closed = False
        await self.transport.start()
        if self._media and self.udp_receive_buffer is None:
            self._probe_udp_receive_buffer()
        self.started.set()

    def _probe_udp_receive_buffer(self) -> None:
        """What the kernel grants a UDP media socket's receive buffer (net.core.rmem_max caps it without an
        error): logged when less than asked, and in the operator view (`media_udp_receive_buffer`)."""
        try:
            self.udp_receive_buffer = probe_udp_receive_buffer()
        except OSError as exc:
            log.warning("gb28181: the UDP media receive buffer could not be probed: %s", exc)
            return
        if self.udp_receive_buffer.limited:
            log.warning("gb28181: %s", self.udp_receive_buffer.summary()["hint"])

    def add_online_listener(self, listener: Callable[[str], None]) -> None:
        """Called with the device id each time a device comes online (registered, or back from silence):
        the ingest source's cue to query and download (policy when = "on-registration")."""
        self._online_listeners.append(listener)

    async def close(self) -> None:
        self.started.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.sessions.close()
        finally:
            self._closed = True
            await self.transport.close()

    async def run(self) -> None:
        """The supervised task: serve until cancelled. A port that cannot be bound is an error entry (one a
        minute while the supervisor retries) and the task fails."""
        try:
            await self.start()
        except OSError as exc:
            where = f"{self.settings.listen_host}:{self.transport.port}"
            log.error("gb28181: cannot listen on %s (UDP and TCP): %s", where, exc.strerror or exc)
            self._limited(EntryType.ERROR, "listen", where, {
                "stage": "gb28181", "reason": f"cannot listen on {where}: {exc.strerror or exc}"})
            raise
        try:
            while True:
                await asyncio.sleep(CHECK_INTERVAL_S)
                self.check()
        finally:
            await self.close()

    def check(self) -> None:
        """Mark devices offline whose registration expired or who went silent; hand out stalled answers;
        when the station's clock has become trusted, measure again the clocks measured against it before."""
        for device_id, change in self.registry.check():
            self._transition(device_id, change)
        self.queries.expire()
        trusted = self._clock_trusted()
        if trusted and not self._was_trusted:
            for device in self.registry.devices():
                self._remeasure_if_wanted(device.device_id)
        self._was_trusted = trusted

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _describe(self, device_id: str) -> None:
        """DeviceInfo, Catalog and DeviceStatus of a device that came online, one after the other (devices
        answer one query at a time best); a failure is logged and leaves the rest to be asked."""
        for ask in (self.query_device_info, self.query_catalog, self.query_device_status):
            try:
                await ask(device_id)
            except (QueryError, ManscdpError) as exc:
                log.warning("gb28181 device %s: %s", device_id, printable(str(exc)[:MAX_REASON_CHARS]))
                if isinstance(exc, DeviceUnavailable):
                    return

    # -- the operator view -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "sip_id": self.settings.sip_id,
            "domain": self.settings.domain,
            "port": self.transport.port,
            "devices": self.registry.snapshot(),
            "counters": {**self.counters, "unsolicited_answers": self.queries.unsolicited},
            "sip_tcp": {"connections": self.transport.open_connections,
                        "proven": self.transport.proven_connections,
                        "shed": self.transport.connections_shed,
                        "refused_all_proven": self.transport.connections_refused_all_proven,
                        "budget": self.transport.tcp_connection_budget,
                        "per_address": self.transport.tcp_connections_per_host,
                        "nofile_soft_limit": self.transport.nofile_soft_limit},
            "media_udp_receive_buffer": None if self.udp_receive_buffer is None
            else self.udp_receive_buffer.summary(),
        }

    # -- ledger --------------------------------------------------------------------------------------------

    def _ledger(self, entry_type: str, data: dict[str, Any]) -> None:
        try:
            self._record(entry_type, {"source": SOURCE, **data})
        except Exception:  # the SIP service goes on; the store reports its own failures
            log.exception("gb28181: ledger entry %s not written", entry_type)

    def _limited(self, entry_type: str, kind: str, key: str, data: dict[str, Any]) -> None:
        counts = self._limiter.seen(kind, key)
        if counts is None:
            return
        self._ledger(entry_type, {**data, **counts})

    def _transition(self, device_id: str, change: Transition) -> None:
        device = self.registry.get(device_id)
        address = str(device.address) if device is not None and device.address is not None else None
        if change is Transition.ONLINE:
            log.info("gb28181 device %s online at %s", device_id, address)
            self._ledger(EntryType.DEVICE_CONNECTED, {"device_id": device_id, "address": address})
            if self.settings.describe_devices:
                self._spawn(self._describe(device_id))  # its DeviceStatus measures the clock too
            elif self.settings.time_sync:
                self._spawn(self._measure_clock(device_id))  # before the station may set it
            for listener in self._online_listeners:
                try:
                    listener(device_id)
                except Exception:  # a listener's bug must not cost the registration
                    log.exception("gb28181: online listener failed for device %s", device_id)
        else:
            log.warning("gb28181 device %s offline: %s", device_id, change.value)
            self._ledger(EntryType.DEVICE_REMOVED, {"device_id": device_id, "reason": change.value})
            if device is not None:
                for session in list(self.sessions.sessions.values()):
                    if session.request.device_id == device_id:
                        session.stop()
        self._on_change()

    def _source_key(self, device_id: str, peer: Peer) -> str:
        """What refusals are limited per: a device this platform knows at its host, else the host alone
        (so a peer that makes up a new device id for every request still gets one entry a minute)."""
        known = device_id in self.registry or self.settings.passwords.known(device_id)
        return f"{device_id}|{peer.host}" if known else peer.host

    def _bad_input(self, device_id: str, peer: Peer, what: str) -> None:
        self.counters["bad_input"] += 1
        shown_id = printable(device_id[:MAX_SHOWN_ID_CHARS])
        what = printable(what[:MAX_REASON_CHARS])
        log.warning("gb28181: %s from %s (device %s)", what, peer, shown_id or "unknown")
        self._limited(EntryType.ERROR, "bad-input", self._source_key(device_id, peer),
                      {"stage": "gb28181", "device_id": shown_id, "address": str(peer), "reason": what})

    # -- requests ------------------------------------------------------------------------------------------

    async def _handle(self, req: SipRequest, peer: Peer) -> SipResponse | None:
        try:
            if req.method == "REGISTER":
                return self._register(req, peer)
            if req.method == "MESSAGE":
                return await self._message(req, peer)
            if req.method == "ACK":
                return None
            if req.method in ("OPTIONS", "NOTIFY", "INFO", "BYE"):
                return response_to(req, 200 if req.method == "OPTIONS" else 481, to_tag=secrets.token_hex(6))
            return response_to(req, 405, to_tag=secrets.token_hex(6),
                               headers=[("Allow", "REGISTER, MESSAGE, ACK, BYE, OPTIONS")])
        except SipProtocolError as exc:
            self._bad_input("", peer, f"unreadable {req.method}: {exc}")
            return response_to(req, 400)

    def _register(self, req: SipRequest, peer: Peer) -> SipResponse:
        result = self.registrar.handle(req, peer)
        device_id = result.device_id
        if result.outcome is Outcome.REFUSED:
            self.counters["refused"] += 1
            self._limited(EntryType.REFUSED, str(result.response.status), self._source_key(device_id, peer),
                          {"device_id": device_id, "address": str(peer),
                           "reason": printable(result.reason[:MAX_REASON_CHARS])})
        elif result.outcome is Outcome.REGISTERED and device_id not in self.registry \
                and len(self.registry) >= MAX_DEVICES:
            log.error("gb28181: device %s not registered: %d devices already", device_id, MAX_DEVICES)
            return response_to(req, 503, to_tag=secrets.token_hex(6))
        elif result.outcome is Outcome.REGISTERED:
            self.counters["registered"] += 1
            self.transport.mark_proven(peer)  # a TCP connection that carried it may stay idle
            contacts = req.headers.get("Contact") or ""
            before = self.registry.get(device_id)
            was = None if before is None or before.address is None else (
                before.address, before.expires_s, before.user_agent)
            change = self.registry.registered(device_id, peer, expires_s=result.expires_s,
                                              contact=contacts[:200],
                                              user_agent=(req.headers.get("User-Agent") or "")[:120])
            self._load_clock_history(device_id)  # before anything of this run measures or sets its clock
            date = result.response.headers.get("Date")
            authenticated: dict[str, Any] = {"device_id": device_id, "address": str(peer),
                                             "expires_s": result.expires_s, "date_sent": date is not None}
            withheld = self._date_withheld(device_id) if date is None else None
            if withheld is not None:
                authenticated["date_withheld"] = withheld
            self._registration_entry(device_id, authenticated, was=was, came_online=change is not None,
                                     user_agent=(req.headers.get("User-Agent") or "")[:120])
            if date is not None:
                self._clock_was_set(device_id, date)
            if change is not None:
                self._transition(device_id, change)
            else:
                self._remeasure_if_wanted(device_id)
            self._on_change()
        elif result.outcome is Outcome.UNREGISTERED:
            change = self.registry.unregistered(device_id)
            if change is not None:
                self._transition(device_id, change)
        return result.response

    def _registration_entry(self, device_id: str, authenticated: dict[str, Any], *,
                            was: tuple[Peer | None, int, str] | None, came_online: bool,
                            user_agent: str) -> None:
        """The `device_authenticated` entry of an accepted REGISTER, when it says something (review 22):
        always for the device's first registration in this run, one that brings it online again, and one
        whose 200 OK set its clock. A change of the registered address is always an entry too (review 24:
        a device moved back to an address it was at within the hour as well), unless the device flaps
        beyond a bound an hour, which is one entry with the count and the addresses seen
        (edge.gb28181.address_moves), the next registration after that hour an entry at once. Any other
        is limited per what it says (expiry, User-Agent, why no Date, at an address): once an hour each,
        with how many were not recorded (`repeats_not_recorded`), at most `REGISTRATION_CHANGE_BUDGET` an
        hour per device. A device re-registering in a loop (firmware, or someone holding its password) so
        costs the ledger a bounded number of entries, and a change is on it at once."""
        held_back = self._address_moves.ended_window(device_id) or {}
        previous = None if was is None or was[0] is None else str(was[0])
        moved = previous is not None and previous != authenticated["address"]
        if was is None or came_online or authenticated["date_sent"]:
            why = "first" if was is None else "online" if came_online else "date"
            if moved and previous is not None:
                self._address_moves.moved(device_id, previous, authenticated["address"])  # counted; said here
            self._ledger(EntryType.DEVICE_AUTHENTICATED, {**authenticated, "registration": why, **held_back})
            return
        address, expires_s, agent = was
        changed = [name for name, old, new in (("address", str(address), authenticated["address"]),
                                                ("expires", expires_s, authenticated["expires_s"]),
                                                ("user_agent", agent, user_agent)) if old != new]
        data: dict[str, Any] = {**authenticated, "registration": "changed" if changed else "refresh"}
        if changed:
            data |= {"changed": changed, "previous_address": str(address)}
        key = "|".join((device_id, authenticated["address"], str(authenticated["expires_s"]), user_agent,
                        str(authenticated.get("date_withheld"))))
        if moved and previous is not None:
            flapping = self._address_moves.moved(device_id, previous, authenticated["address"])
            if flapping is not None:
                self._ledger(EntryType.DEVICE_AUTHENTICATED, {**data, **flapping, **held_back})
                self._registrations.recorded("registration", key)  # its refreshes here: limited from now
            return
        counts = self._registrations.seen("registration", key, device_id)
        if counts is not None or held_back:
            self._ledger(EntryType.DEVICE_AUTHENTICATED, {**data, **(counts or {}), **held_back})

    # -- device clocks -------------------------------------------------------------------------------------

    def _clock_sync_due(self, device_id: str) -> bool:
        device = self.registry.get(device_id)
        return device is not None and device.clock_sync_due and not device.clock_remeasure \
            and not self.registry.clock_date_backoff(device_id)

    def _remeasure_if_wanted(self, device_id: str) -> None:
        """A device whose clock was measured only against the untrusted station clock is measured again once
        the station's clock is trusted (at its next registration, or when the trust comes)."""
        device = self.registry.get(device_id)
        if device is not None and device.online and device.clock_remeasure and self._clock_trusted():
            self._spawn(self._measure_clock(device_id))

    def _date_withheld(self, device_id: str) -> str | None:
        """Why a registration's 200 OK carried no Date (None: time sync is off or the clock untrusted)."""
        if not self.settings.time_sync or not self._clock_trusted():
            return None
        device = self.registry.get(device_id)
        if device is not None and device.clock_remeasure:
            return ("the device's clock was measured only against the station's untrusted clock: measured "
                    "again first")
        if self.registry.clock_date_backoff(device_id):
            return (f"the device ignored the last Date it was sent: set again "
                    f"{CLOCK_DATE_RETRY_S / 3600:g} h after")
        if device is None or device.clock_offset_s is None or (
                device.clock_set_at is not None and (device.clock_measured_at or "") < device.clock_set_at):
            return "the device's clock is not measured yet (since the station last set it)"
        return f"the device's clock is within {CLOCK_SYNC_MIN_OFFSET_S:g} s"

    def _clock_was_set(self, device_id: str, date: str) -> None:
        """A 200 OK carried Date: the device sets its clock from it. On the ledger with the offset before;
        DeviceStatus is asked again for the offset after."""
        ended = self.registry.clock_set(device_id, datetime.now(UTC).timestamp())
        self._save_clock_history(device_id)
        device = self.registry.get(device_id)
        before = None if ended is None else ended.offset_s
        data: dict[str, Any] = {
            "device_id": device_id, "date": printable(date[:40]), "offset_before_s": before,
            "offset_before_ms": None if before is None else round(before * 1000),
            "offset_before_measured_at": None if device is None else device.clock_measured_at,
        }
        if before is None:
            data["reason"] = "the device does not report its time (DeviceStatus without DeviceTime)"
        log.info("gb28181 device %s: clock set from the registration's Date (offset before: %s s)", device_id,
                 before)
        self._ledger(EntryType.CLOCK_SET, data)
        self._spawn(self._measure_clock(device_id, after_s=CLOCK_SETTLE_S))
        self._on_change()

    async def _measure_clock(self, device_id: str, *, after_s: float = 0.0) -> None:
        if device_id in self._measuring:
            return
        self._measuring.add(device_id)
        try:
            if after_s:
                await asyncio.sleep(after_s)
            await self.query_device_status(device_id)
        except (QueryError, ManscdpError) as exc:
            # The Date stays withheld: the device's next coming online asks again.
            log.warning("gb28181 device %s: clock not measured: %s", device_id,
                        printable(str(exc)[:MAX_REASON_CHARS]))
        finally:
            self._measuring.discard(device_id)

    def device_clock_offset_ms(self, device_id: str, recorded: datetime | str) -> int | None:
        """The offset (device minus station, ms) of the device clock that stamped `recorded` (a device-local
        time as RecordInfo gives it): the one before the station set the clock for what was recorded before,
        the one measured since for what came after. None: not known (`device_clock_reading` says why)."""
        return self.device_clock_reading(device_id, recorded)[0]

    def device_clock_reading(self, device_id: str, recorded: datetime | str) -> tuple[int | None, str | None]:
        """(offset in ms, None) of the clock that stamped `recorded`, or (None, why not): an unreadable
        time, or a `ClockUnknown` (not measured, ambiguous, between clocks, before the history kept)."""
        try:
            stamped = self.device_time_to_unix(recorded)
        except SessionError:
            return None, "unreadable-time"
        self._load_clock_history(device_id)
        reading = self.registry.clock_reading_at(device_id, stamped, datetime.now(UTC).timestamp())
        if reading.offset_s is None:
            return None, None if reading.unknown is None else reading.unknown.value
        return round(reading.offset_s * 1000), None

    def _load_clock_history(self, device_id: str) -> None:
        """Once per run per device: the clock history a previous run saved. A file that cannot be used is
        logged and an error entry, and the device's history is taken as lost (never guessed)."""
        if self._clock_history_dir is None or device_id in self._history_loaded \
                or self.registry.get(device_id) is None:
            return
        self._history_loaded.add(device_id)
        try:
            saved = clock_history.load(self._clock_history_dir, device_id,
                                       utc_offset_minutes=self.settings.utc_offset_minutes)
        except clock_history.ClockHistoryZoneChanged as exc:
            reason = (f"the saved clock history of the device is not applied: {printable(str(exc)[:200])}; "
                      "recordings it stamped before now get no clock offset (zone-changed)")
            log.warning("gb28181 device %s: %s", device_id, reason)
            self._ledger(EntryType.ERROR, {"stage": "gb28181", "device_id": device_id, "reason": reason})
            self.registry.clock_history_lost(device_id, datetime.now(UTC).timestamp(),
                                             ClockUnknown.ZONE_CHANGED)
            return
        except (clock_history.ClockHistoryError, OSError) as exc:
            reason = (f"the saved clock history of the device cannot be used ({printable(str(exc)[:200])}): "
                      "recordings it stamped before now get no clock offset")
            log.warning("gb28181 device %s: %s", device_id, reason)
            self._ledger(EntryType.ERROR, {"stage": "gb28181", "device_id": device_id, "reason": reason})
            self.registry.clock_history_lost(device_id, datetime.now(UTC).timestamp())
            return
        if saved is not None:
            self.registry.clock_history_restored(device_id, *saved)

    def _save_clock_history(self, device_id: str, *, force: bool = False) -> None:
        """After a setting, or a trusted measurement of a clock the station set (or whose history was lost):
        the device's epochs on disk (a small atomic write). A failure is logged and an error entry: the
        history then holds for this run only. `force`: written even for one stretch (a setting the device
        ignored was undone: the file written at the setting must not keep it)."""
        device = self.registry.get(device_id)
        if self._clock_history_dir is None or device is None or not device.clock_epochs or (
                len(device.clock_epochs) < 2 and device.clock_history_from_s is None and not force):
            return  # a clock never set: the next run measures the same clock
        try:
            clock_history.save(self._clock_history_dir, device_id, device.clock_epochs,
                               device.clock_history_from_s,
                               utc_offset_minutes=self.settings.utc_offset_minutes)
        except (clock_history.ClockHistoryError, OSError) as exc:
            reason = f"the device's clock history was not saved: {printable(str(exc)[:200])}"
            log.error("gb28181 device %s: %s", device_id, reason)
            self._limited(EntryType.ERROR, "clock-history", device_id,
                          {"stage": "gb28181", "device_id": device_id, "reason": reason})

    async def _parse(self, body: bytes, charset: str | None) -> ManscdpMessage:
        """A MANSCDP body as a message. A large one (a RecordInfo part may hold 10000 records) is parsed in
        a worker thread, at most `MAX_PARALLEL_PARSES` at once, so SIP and RTP keep flowing meanwhile;
        a keepalive-sized one right here (a thread costs more than its parse)."""
        if len(body) < OFF_LOOP_PARSE_BYTES:
            return parse_message(body, charset_override=charset)
        async with self._parse_slots:
            return await asyncio.to_thread(parse_message, body, charset_override=charset)

    async def _message(self, req: SipRequest, peer: Peer) -> SipResponse:
        tag = secrets.token_hex(6)
        device_id = req.from_.sip_uri.user or ""
        device = self.registry.get(device_id)
        if device is None or not device.registered or device.address is None:
            self._bad_input(device_id, peer, "MESSAGE from a device that is not registered")
            return response_to(req, 404, to_tag=tag)
        if len(req.body) > MAX_MANSCDP_BODY_BYTES:
            self._bad_input(device_id, peer, f"MESSAGE body of {len(req.body)} bytes")
            return response_to(req, 413, to_tag=tag)
        if peer.host != device.address.host or peer.transport is not device.address.transport:
            # Not proof of anything: register again (with the password) to move to another host.
            self._bad_input(device_id, peer, f"MESSAGE from {peer}, registered at {device.address}")
            return response_to(req, 404, to_tag=tag)
        try:
            message = await self._parse(req.body, device.charset or None)
        except ManscdpError as exc:
            self._bad_input(device_id, peer, f"unreadable MANSCDP: {exc}")
            return response_to(req, 400, to_tag=tag)
        device = self.registry.get(device_id)
        if device is None or not device.registered or device.address is None:  # gone while it was parsed
            return response_to(req, 404, to_tag=tag)
        if message.root is Root.NOTIFY and message.cmd_type == CmdType.KEEPALIVE:
            if message.device_id != device_id:
                self._bad_input(device_id, peer, f"keepalive naming another device ({message.device_id})")
                return response_to(req, 403, to_tag=tag)
            return self._keepalive(req, peer, device_id, message, tag)
        if isinstance(message.payload, MediaStatus):
            return self._media_status(req, peer, device_id, device.address, message.payload, tag)
        if message.root is Root.RESPONSE and peer != device.address:
            # An answer is taken only from exactly where the device registered (review 22): behind a carrier
            # NAT another port of its host may be a neighbour, whose forged DeviceStatus would set the
            # device's clock offset on every recording. Nothing moves a device but a REGISTER.
            self.counters["answers_refused"] += 1
            reason = (f"{printable(message.cmd_type[:40])} answer from {peer}, not from where the device "
                      f"registered ({device.address}): not taken")
            log.warning("gb28181 device %s: %s", device_id, reason)
            self._limited(EntryType.REFUSED, "answer-port", self._source_key(device_id, peer),
                          {"device_id": device_id, "address": str(peer), "reason": reason})
            return response_to(req, 403, to_tag=tag)
        if peer != device.address:
            log.info("gb28181 device %s: %s from %s, registered at %s", device_id,
                     printable(message.cmd_type[:40]), peer, device.address)
        if message.root is Root.RESPONSE:
            self.queries.deliver(device_id, message)
        return response_to(req, 200, to_tag=tag)

    def _media_status(self, req: SipRequest, peer: Peer, device_id: str, registered_at: Peer,
                      status: MediaStatus, tag: str) -> SipResponse:
        """A MediaStatus outside any dialog: taken only from exactly where the device registered."""
        if peer != registered_at:
            self.counters["media_status_refused"] += 1
            reason = (f"MediaStatus {printable(status.notify_type[:8])} outside a dialog from {peer}, "
                      f"not from where the device registered ({registered_at}): not taken")
            log.warning("gb28181 device %s: %s", device_id, reason)
            self._limited(EntryType.REFUSED, "media-status", self._source_key(device_id, peer),
                          {"device_id": device_id, "address": str(peer), "reason": reason})
            return response_to(req, 403, to_tag=tag)
        session = self.sessions.media_status_for_device(device_id)
        if session is not None and status.is_file_end:
            session.end(EndReason.FILE_END)
        return response_to(req, 200, to_tag=tag)

    def _keepalive(self, req: SipRequest, peer: Peer, device_id: str, message: ManscdpMessage,
                   tag: str) -> SipResponse:
        device = self.registry.get(device_id)
        assert device is not None and device.address is not None
        if peer != device.address:
            # A NAT that rebound the device's port, or someone else behind the same carrier NAT: either way
            # not proof enough to send the device's requests there. It stays online; its next REGISTER
            # (within the expiry granted) moves it.
            self.counters["keepalives_other_port"] += 1
            log.info("gb28181 device %s: keepalive from %s, registered at %s: requests stay there", device_id,
                     peer, device.address)
            self._limited(EntryType.REFUSED, "keepalive-port", self._source_key(device_id, peer), {
                "device_id": device_id, "address": str(peer), "registered_at": str(device.address),
                "reason": "keepalive from another port of the device's host: not followed (only an "
                          "authenticated REGISTER moves a device)"})
        self.counters["keepalives"] += 1
        change = self.registry.keepalive(device_id, peer)
        if change is not None:
            self._transition(device_id, change)
        if isinstance(message.payload, Keepalive) and message.payload.status.upper() not in ("OK", ""):
            log.info("gb28181 device %s keepalive status %s", device_id,
                     printable(message.payload.status[:40]))
        return response_to(req, 200, to_tag=tag)

    # -- queries -------------------------------------------------------------------------------------------

    def _address_of(self, device_id: str) -> Peer:
        device = self.registry.get(device_id)
        if device is None or not device.online or device.address is None:
            raise DeviceUnavailable(f"device {device_id} is not online")
        return device.address

    async def _query(self, device_id: str, cmd_type: str, build: Callable[[int], bytes]) -> Answer:
        destination = self._address_of(device_id)
        sn = self._sns.allocate(self.queries.pending_sns)
        key = QueryKey(device_id, sn, cmd_type)
        waiter = self.queries.expect(key)
        try:
            body = build(sn)
            local = self.settings.advertised_host or self.transport.local_host_for(destination)
            message = request("MESSAGE", f"sip:{device_id}@{destination.host}:{destination.port}", [
                ("From", f"<sip:{self.settings.sip_id}@{self.settings.domain}>;tag={secrets.token_hex(6)}"),
                ("To", f"<sip:{device_id}@{self.settings.domain}>"),
                ("Call-ID", f"{secrets.token_hex(12)}@{local}"),
                ("CSeq", "1 MESSAGE"),
                ("Max-Forwards", "70"),
                ("Content-Type", "Application/MANSCDP+xml"),
            ], body)
            try:
                response = await self.transport.request(message, destination)
            except SipTransportError as exc:
                raise QueryError(f"{cmd_type} to {device_id}: {exc}") from None
            if response.status >= 300:
                raise QueryError(f"{cmd_type} to {device_id}: device answered {response.status}")
            # First part within the timeout; a multi-part answer may take as long again to complete.
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), 2 * self.settings.query_timeout_s
                                              + CHECK_INTERVAL_S)
            except TimeoutError:
                raise QueryTimeout(f"{cmd_type} SN {sn} to {device_id}: no answer in "
                                   f"{self.settings.query_timeout_s:g} s") from None
        finally:
            self.queries.forget(key)

    async def query_catalog(self, device_id: str) -> list[CatalogItem]:
        answer = await self._query(device_id, CmdType.CATALOG,
                                   lambda sn: build_catalog_query(sn, device_id))
        items = items_of(answer, CatalogItem) if isinstance(answer, AssembledAnswer) else []
        device = self.registry.get(device_id)
        if device is not None:
            device.channels = {
                item.device_id: ChannelView(item.device_id, item.name, item.status, item.manufacturer,
                                            item.model)
                for item in items[:MAX_CHANNELS_PER_DEVICE]
            }
            self._on_change()
        return items

    async def query_device_info(self, device_id: str) -> DeviceInfoResponse:
        answer = await self._query(device_id, CmdType.DEVICE_INFO,
                                   lambda sn: build_device_info_query(sn, device_id))
        payload = answer.payload if isinstance(answer, ManscdpMessage) else None
        if not isinstance(payload, DeviceInfoResponse):
            raise QueryError(f"DeviceInfo of {device_id}: answer without its fields")
        device = self.registry.get(device_id)
        if device is not None:
            device.device_info = {"name": payload.device_name[:64], "manufacturer": payload.manufacturer[:64],
                                  "model": payload.model[:64], "firmware": payload.firmware[:64]}
            self._on_change()
        return payload

    async def query_device_status(self, device_id: str) -> DeviceStatusResponse:
        """DeviceStatus; its DeviceTime gives the device's clock offset (device minus station, seconds),
        recorded in the registry and the ledger."""
        trusted = self._clock_trusted()
        asked = datetime.now(UTC)
        answer = await self._query(device_id, CmdType.DEVICE_STATUS,
                                   lambda sn: build_device_status_query(sn, device_id))
        answered = datetime.now(UTC)
        trusted = trusted and self._clock_trusted()  # trusted all along the round trip
        payload = answer.payload if isinstance(answer, ManscdpMessage) else None
        if not isinstance(payload, DeviceStatusResponse):
            raise QueryError(f"DeviceStatus of {device_id}: answer without its fields")
        measured_at = answered.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if payload.device_time is None:
            log.info("gb28181 device %s: DeviceStatus without DeviceTime: its clock cannot be measured",
                     device_id)
            self.registry.clock_measured(device_id, None, measured_at)
        elif (offset_s := self._clock_offset_s(payload.device_time, asked, answered)) is None:
            self._absurd_clock(device_id, payload.device_time_text, measured_at)
        else:
            measured: dict[str, Any] = {
                "device_id": device_id, "device_time": payload.device_time_text[:40],
                "offset_s": offset_s, "round_trip_s": round((answered - asked).total_seconds(), 3),
                "station_clock_trusted": trusted,
            }
            if trusted:
                round_trip_s = (answered - asked).total_seconds()
                step = self.registry.clock_measured(device_id, offset_s, measured_at,
                                                    station_now_s=answered.timestamp(),
                                                    error_s=round_trip_s / 2 + 1.0)
                if isinstance(step, ClockStep):
                    measured["device_clock_stepped"] = self._clock_stepped(device_id, step)
                elif isinstance(step, DateIgnored):
                    measured["device_ignored_date"] = self._date_ignored(device_id, step)
                self._save_clock_history(device_id, force=step is not None)
            else:
                # Device minus a station clock that may be wrong: not the device's offset. Kept apart, and
                # measured again once the station's clock is trusted (before any Date is sent).
                self.registry.clock_measured_untrusted(device_id, offset_s, measured_at)
                measured["reason"] = ("measured against the station's untrusted clock: not taken as the "
                                      "device's offset; measured again once the station's clock is trusted")
                log.info("gb28181 device %s: clock measured against the untrusted station clock (%s s): not "
                         "kept", device_id, offset_s)
            self._on_change()
            self._ledger(EntryType.CLOCK_MEASURED, measured)
        return payload

    def _clock_stepped(self, device_id: str, step: ClockStep) -> dict[str, Any]:
        """The device's clock stepped by itself (registry.ClockStep): what the ledger entry of the measurement
        says of it, and a warning in the log."""
        stepped = {
            "offset_from_s": step.offset_from_s, "offset_to_s": step.offset_to_s,
            "stepped_after": None if step.after_s is None else wall_text(step.after_s),
            "stepped_before": wall_text(step.before_s),
            "reason": ("the device's clock stepped by itself (no setting by the station: a reset at a "
                       "reboot, its menu, its own NTP): a new stretch of its clock begins; recordings of "
                       "the earlier clock keep its offset and are still listed, stamps both clocks may have "
                       "made in the window are ambiguous"),
        }
        if step.window_unknown:
            stepped["reason"] = str(stepped["reason"]) + (
                "; when it stepped is not known (its clock was restored from the saved history with neither "
                "the setting that began it nor a measurement that matched it): every stamp both clocks may "
                "have made, up to now, gets no offset (step-window-unknown)")
        log.warning("gb28181 device %s: its clock stepped by itself from %+.1f s to %+.1f s", device_id,
                    step.offset_from_s, step.offset_to_s)
        return stepped

    def _date_ignored(self, device_id: str, ignored: DateIgnored) -> dict[str, Any]:
        """The device did not take the Date it was sent (registry.DateIgnored): what the measurement's
        ledger entry says of it (one per setting, a setting at most once in `CLOCK_DATE_RETRY_S`)."""
        reason = (f"the device ignored the Date of its registration's 200 OK (its clock stayed "
                  f"{ignored.offset_after_s:+.1f} s off): its clock is taken as unchanged (its stretch "
                  f"continues), and it is set again only after {CLOCK_DATE_RETRY_S / 3600:g} h")
        log.warning("gb28181 device %s: %s", device_id, reason)
        return {"offset_before_s": ignored.offset_before_s, "offset_after_s": ignored.offset_after_s,
                "reason": reason}

    def _clock_offset_s(self, device_time: datetime, asked: datetime, answered: datetime) -> float | None:
        """Device minus station time, the device's zone-less local time read in the configured zone, the
        station's taken at the middle of the round trip (DeviceTime has whole seconds only). None: absurd
        (beyond `MAX_CLOCK_OFFSET_S`, or past the calendar's ends once read in the zone)."""
        zone = timedelta(minutes=self.settings.utc_offset_minutes)
        try:
            device_utc = device_time.replace(tzinfo=UTC) - zone
        except OverflowError:
            return None
        middle = asked + (answered - asked) / 2
        offset_s = round((device_utc - middle).total_seconds(), 3)
        return None if abs(offset_s) > MAX_CLOCK_OFFSET_S else offset_s

    def _absurd_clock(self, device_id: str, device_time_text: str, measured_at: str) -> None:
        """A DeviceTime absurdly far off (review 20): the clock is taken as unmeasurable (its recordings
        are asked over the station's range, given no offset; it may be set), logged, and a ledger entry the
        first time in this run (every later measurement would repeat it)."""
        self.registry.clock_measured(device_id, None, measured_at)
        shown = printable(device_time_text[:40])
        reason = (f"the device's clock says {shown}, more than {MAX_CLOCK_OFFSET_S / 86400 / 365.25:.0f} "
                  "years from the station's: taken as unmeasurable (its recordings are asked over the "
                  "station's range and given no clock offset)")
        log.warning("gb28181 device %s: %s", device_id, reason)
        if device_id not in self._absurd_clocks:
            self._absurd_clocks.add(device_id)
            self._ledger(EntryType.CLOCK_MEASURED, {
                "device_id": device_id, "device_time": shown, "offset_s": None, "absurd": True,
                "station_clock_trusted": self._clock_trusted(), "reason": reason})
        self._on_change()

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        """The recordings of `channel_id` between `start` and `end` (aware datetimes, converted to the
        devices' zone). The answer says whether every part came (`complete`)."""
        zone = timedelta(minutes=self.settings.utc_offset_minutes)
        try:
            query = RecordInfoQuery(start_time=(start.astimezone(UTC) + zone).replace(tzinfo=None),
                                    end_time=(end.astimezone(UTC) + zone).replace(tzinfo=None))
        except OverflowError:
            raise QueryError(f"RecordInfo of {channel_id}: range past the calendar's ends") from None
        answer = await self._query(device_id, CmdType.RECORD_INFO,
                                   lambda sn: build_record_info_query(sn, channel_id, query))
        if not isinstance(answer, AssembledAnswer):
            raise QueryError(f"RecordInfo of {channel_id}: answer without a record list")
        if not answer.complete:
            log.warning("gb28181 device %s channel %s: RecordInfo incomplete, %d of %d records", device_id,
                        printable(channel_id), len(answer.items), answer.sum_num)
        return answer

    def device_time_to_unix(self, moment: datetime | str) -> int:
        """A device-local time (as RecordInfo gives it: a naive datetime, or its ISO text) as Unix seconds,
        read in the devices' zone (`device_utc_offset_minutes`); an aware datetime as it is."""
        if isinstance(moment, str):
            text = moment
            try:
                moment = datetime.fromisoformat(text.strip())
            except ValueError:
                raise SessionError(f"time {printable(text[:40])!r} is not ISO 8601") from None
        if moment.tzinfo is not None:
            return int(moment.timestamp())
        zone = timedelta(minutes=self.settings.utc_offset_minutes)
        try:
            return int((moment.replace(tzinfo=UTC) - zone).timestamp())
        except OverflowError:
            raise SessionError(f"time {moment.isoformat()[:40]} is past the calendar's ends") from None

    def record_times(self, item: RecordItem) -> tuple[int, int]:
        """A record's start and end as Unix seconds (for `t=`), read in the devices' zone."""
        return self.device_time_to_unix(item.start_time), self.device_time_to_unix(item.end_time)

    # -- sessions ------------------------------------------------------------------------------------------

    async def start_session(self, req: MediaRequest) -> MediaSession:
        """INVITE (Play, Playback or Download) and return the running session; `SessionError` otherwise."""
        try:
            destination = self._address_of(req.device_id)
        except DeviceUnavailable as exc:
            raise SessionError(str(exc)) from None
        return await self.sessions.start(req, destination)

    async def download(self, device_id: str, channel_id: str, start: datetime | str, end: datetime | str,
                       raw_path: Path, *, transport: str, speed: int | None,
                       space: Any = None) -> SessionResult:
        """One recording, start to end: INVITE s=Download into a receiver writing `raw_path`, until
        MediaStatus 121, BYE, or the media ending. Times as RecordInfo gave them (device-local). What the
        ingest source's `start_download` seam needs: `result.outcome` and `result.facts()`. `space`: the
        download's own booking (edge.gb28181.media `ReceiverSpace`), for its receiver's guard."""
        session = await self.start_session(MediaRequest(
            device_id, channel_id, SessionKind.DOWNLOAD, transport, raw_path, self.device_time_to_unix(start),
            self.device_time_to_unix(end), speed=speed, space=space,
        ))
        result = await session.wait()
        # The offset of the clock that stamped the recording (it may have been set since), or why unknown.
        offset_ms, unknown = self.device_clock_reading(device_id, start)
        return replace(result, device_clock_offset_ms=offset_ms, device_clock_unknown=unknown)

    def _session_changed(self, session: MediaSession, state: str) -> None:
        device = self.registry.get(session.request.device_id)
        if device is None:
            return
        if state == "ended":
            device.sessions.pop(session.call_id, None)
        else:
            view = device.sessions.get(session.call_id)
            if view is None:
                view = device.sessions[session.call_id] = SessionView(
                    session.call_id, session.request.channel_id, session.request.kind.value,
                    session.request.transport, session.ssrc_offered)
            view.state = state
            view.ssrc_answered = session.ssrc_answered
        self._on_change()
