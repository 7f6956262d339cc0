"""An asyncio MQTT client over paho-mqtt 2.x (callback API version 2): the one place where paho's network
loop meets asyncio.

Threads. paho's network I/O (TCP connect, TLS handshake, reads, writes, keep-alive pings) runs in one
dedicated thread per connection, in paho's own `loop()`, which also drains decrypted bytes still pending
in the TLS object. Every socket write happens on that thread: the client registers a (no-op)
`on_socket_register_write` callback, so that `publish()`, `subscribe()` and `ack()` called on the event
loop only queue their packet and wake the network thread; an OpenSSL connection is never read and written
by two threads at once. paho's callbacks run on the network thread and do nothing but hand their
arguments to the event loop (`call_soon_threadsafe`), where all of this client's state lives. The handoff
is FIFO, so a CONNACK is always seen before the messages and acknowledgements that follow it, and a
publish registers its waiter before the event loop can see its PUBACK.

Delivery. One persistent session (MQTT 5: clean start off and a session expiry; 3.1.1: clean session
off) and QoS 1. The paho client object lives as long as this client, so QoS 1 messages not acknowledged
when a connection drops are sent again after the next CONNACK. `publish()` returns once the broker has
acknowledged (PUBACK, whose MQTT 5 reason code decides: 0x80 and above raise `PublishRefused`), or raises
`PublishTimeout`; a broker's acknowledgement means only that the broker took the message. Received QoS 1
messages are acknowledged only after their handler returned, on the connection they came on: a handler
that fails, or a connection lost meanwhile, leaves the message to the broker, which sends it again on the
next connection of the session. Delivery is at least once, so handlers must be idempotent.

Poison. A message whose handler keeps failing must not hold one of the broker's in-flight slots of the
connection for ever (Mosquitto sends a client at most max_inflight_messages unacknowledged QoS 1 messages:
that many held and nothing more comes). Failed deliveries are counted per message (its topic and the
SHA-256 of its payload, the last `_FAILURE_MEMORY` messages remembered); once `_RECONNECT_AT_HELD_FAILURES`
failed messages are held on one connection the client reconnects, so that the broker sends them again; a
message whose handler failed `POISON_AFTER_FAILURES` times is acknowledged and logged as poison (one
line: topic, size and digest, never the payload), and its count is forgotten, so that an identical message
published later starts again at zero. A message whose handler failed fewer times is never acknowledged.

Order. A connection's messages are handled one at a time, each before the next is looked at, and each is
acknowledged when its handler has returned. A receiver that must not let one slow message hold up the
others (the central's) makes its handlers quick instead: it commits what is slow to a durable queue of its
own and handles it from there (edge.central.receive_queue). This client once had concurrent subscriptions
(N messages at once, one key's in order) holding a key's waiting messages unacknowledged in memory: one
station's backlog behind its slow message filled the broker's in-flight window (Mosquitto's
max_inflight_messages, 20) and stalled every station, a message held over the per-key bound was overtaken
by its key's later ones, and after a broker crash copies in hand were dropped as "sent again" by a broker
that no longer had them (review 10); they were removed with their only user.

Memory. QoS 1 deliveries are bounded by the broker's in-flight window; QoS 0 ones are not (a QoS 0 publish
is delivered at QoS 0 whatever the subscription's QoS, and Mosquitto sends QoS 0 without limit), and paho's
thread reads them as fast as they come while a handler works. A subscription made with ``qos1_only``
(the central's, whose stations always publish QoS 1) drops a QoS 0 message as it arrives on the event loop,
before it waits for the dispatcher, counts it (`dropped_qos0`) and logs at most once a minute.

Connections. `run()` (a supervised task) connects, and when the connection ends or cannot be made,
waits an exponential back-off with jitter and tries again, until `close()`. A broker that refuses the
connection (a CONNACK with a failure reason, such as 0x86 bad user name or password or 0x87 not
authorised; or a TLS alert rejecting the client certificate) is reported as `ConnectionState.REFUSED`
with its reason, never as connected. Subscriptions are remembered and sent again after every connection
whose session the broker did not keep, and shared subscriptions (``$share/...``) after every connection:
Mosquitto 2.0 loses them over a graceful restart while it reports the session present.

Secrets. The password is a callable (a `SecretRef.resolve`) called at each connection; it is not held
by this object between connections, never logged and never in a repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.mqtt.client_ids import loggable_client_id
from edge.mqtt.filetransfer import publish_packet_bytes
from edge.runtime.supervise import Liveness, SupervisorError, current_liveness

__all__ = [
    "POISON_AFTER_FAILURES",
    "ConnectionState",
    "ConnectionStatus",
    "InboundMessage",
    "MessageHandler",
    "MqttClient",
    "MqttClosed",
    "MqttError",
    "MqttSettings",
    "PacketTooLarge",
    "ProtocolVersion",
    "PublishAck",
    "PublishRefused",
    "PublishTimeout",
    "ReconnectBackoff",
    "SubscribeRefused",
    "WillMessage",
]

log = logging.getLogger(__name__)

# Reason codes of 0x80 and above are failures (MQTT 5 §2.4).
FAILURE_REASON_CODE = 0x80
# How long the network thread waits in select() when nothing happens; also how often it beats liveness.
_LOOP_TIMEOUT_S = 1.0
# After close() asked for a DISCONNECT, how long the network thread may take to send it and end.
_STOP_GRACE_S = 5.0
# A message whose handler failed this many times (counted across the deliveries of the session) is
# acknowledged and logged as poison: it would otherwise hold a broker in-flight slot for ever.
POISON_AFTER_FAILURES = 5
# This many failed messages held unacknowledged on one connection and the client reconnects so that the
# broker sends them again (Mosquitto's max_inflight_messages, 20 in config/mosquitto, stalls the connection).
_RECONNECT_AT_HELD_FAILURES = 10
# How many failing messages' counts are remembered (oldest forgotten first).
_FAILURE_MEMORY = 4096
# Dropped (QoS 0) messages are logged at most once per this many seconds.
_DROP_LOG_INTERVAL_S = 60.0
# Text of a TLS alert the broker sent: it rejected the certificate we presented (or presented none).
_TLS_ALERT = re.compile(r"\b(?:SSLV3|TLSV1|TLSV13)_ALERT_([A-Z_]+)\b")


class ProtocolVersion(StrEnum):
    V5 = "5"
    V311 = "3.1.1"


class ReconnectBackoff(Protocol):
    """Delay before the next connection attempt after `attempt` consecutive failures
    (`edge.uplink.policy.Backoff` is one)."""

    def next_delay(self, attempt: int) -> float: ...


@dataclass(frozen=True)
class WillMessage:
    """What the broker publishes for this client when its connection ends without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: Literal[0, 1] = 1
    retain: bool = True


@dataclass(frozen=True)
class MqttSettings:
    """How to reach and log in to one broker."""

    host: str
    port: int
    client_id: str = field(repr=False)  # may hold a secret (edge.mqtt.client_ids): logs use log_id
    tls: ssl.SSLContext = field(repr=False)
    protocol: ProtocolVersion = ProtocolVersion.V5
    keepalive_s: int = 60
    session_expiry_s: int = 7 * 86400
    username: str = ""
    # Called at each connection (a `SecretRef.resolve`): the password itself is never stored here.
    password: Callable[[], str] | None = field(default=None, repr=False)
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 60.0
    will: WillMessage | None = None

    @property
    def log_id(self) -> str:
        """The client id with its secret part shortened, for logs, reprs and task names."""
        return loggable_client_id(self.client_id)

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("an MQTT client id is required: the broker keys the persistent session by it")
        if bool(self.username) != (self.password is not None):
            raise ValueError("username and password go together")


class ConnectionState(StrEnum):
    IDLE = "idle"
    """`run()` has not started."""
    CONNECTING = "connecting"
    CONNECTED = "connected"
    """The broker accepted the connection (CONNACK with success)."""
    REFUSED = "refused"
    """The broker refused the connection: a CONNACK failure reason, or a TLS alert against our certificate."""
    DISCONNECTED = "disconnected"
    """No connection: the broker could not be reached, or the connection was lost; a retry follows."""
    CLOSED = "closed"


@dataclass(frozen=True)
class ConnectionStatus:
    state: ConnectionState
    reason: str = ""
    """Why the state is what it is: the broker's reason, the TLS alert, or the network error."""
    reason_code: int | None = None
    """The CONNACK or DISCONNECT reason code (MQTT 5 numbering; a 3.1.1 CONNACK code mapped to it)."""
    session_present: bool = False
    connections: int = 0
    """Connections the broker accepted since `run()` started."""
    failed_attempts: int = 0
    """Consecutive attempts that did not lead to an accepted connection."""
    unconfirmed_subscriptions: int = 0
    """Subscriptions not (yet) in effect: sent but not acknowledged by a SUBACK on this session, or
    refused. Messages published before a subscription is in effect are not delivered to it."""


@dataclass(frozen=True)
class PublishAck:
    reason_code: int
    reason: str


@dataclass(frozen=True)
class InboundMessage:
    topic: str
    payload: bytes = field(repr=False)
    qos: int
    retain: bool
    duplicate: bool
    response_topic: str | None = None
    correlation_data: bytes | None = field(default=None, repr=False)
    user_properties: tuple[tuple[str, str], ...] = ()


MessageHandler = Callable[[InboundMessage], Awaitable[None]]


class MqttError(Exception):
    """Base of this client's errors."""


class MqttClosed(MqttError):
    """The client was closed."""


class PublishRefused(MqttError):
    def __init__(self, topic: str, reason_code: int, reason: str) -> None:
        super().__init__(f"broker refused the publish to {topic}: {reason} (0x{reason_code:02x})")
        self.topic = topic
        self.reason_code = reason_code
        self.reason = reason


class PacketTooLarge(MqttError):
    """The PUBLISH would exceed the Maximum Packet Size the broker announced in its CONNACK (MQTT 5).

    Raised before anything is queued: a broker drops the connection of a client that sends a larger packet
    (MQTT 5 §3.1.2.11.4), and paho, which does not check the limit, would send the same message again after
    every reconnection, for ever."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(
            f"publish to {topic}: {size} bytes exceed the broker's maximum packet size of {limit}"
        )
        self.size = size
        self.limit = limit


class PublishTimeout(MqttError):
    """No acknowledgement within the time limit; the message may still be delivered later (QoS 1)."""


class SubscribeRefused(MqttError):
    def __init__(self, topic_filter: str, reason_code: int, reason: str) -> None:
        super().__init__(f"broker refused the subscription {topic_filter}: {reason} (0x{reason_code:02x})")
        self.topic_filter = topic_filter
        self.reason_code = reason_code
        self.reason = reason


class _DropLog:
    """Counts messages dropped unhandled, and logs them at a bounded rate: the first, then at most one line
    per `_DROP_LOG_INTERVAL_S` saying how many came since the last line."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    def note(self, topic: str) -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < _DROP_LOG_INTERVAL_S:
            return
        log.warning("MQTT %d message(s) %s (the last on %.200s; %d since this client started)",
                    self._unlogged, self.what, topic, self.count)
        self._unlogged = 0
        self._logged_at = now


@dataclass
class _Subscription:
    qos: int
    handler: MessageHandler
    confirmed: asyncio.Future[None]
    qos1_only: bool = False


@dataclass
class _Attempt:
    """What the network thread learned about one connection (written there, read after it ended)."""

    accepted: bool = False
    refused: bool = False
    error: str = ""


def _reason(code: ReasonCode) -> tuple[int, str]:
    return int(code.value), str(code.getName())


def _matches(topic_filter: str, topic: str) -> bool:
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else topic_filter
    return bool(paho.topic_matches_sub(topic_filter, topic))


class _HandshakeClosingSocket(ssl.SSLSocket):
    """An SSLSocket that closes itself when its handshake fails. paho wraps and handshakes the socket
    before it holds on to it, so a refused or untrusted handshake would otherwise leave the socket to the
    garbage collector, one per attempt."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _supervised_liveness() -> Liveness | None:
    try:
        return current_liveness()
    except SupervisorError:
        return None


class MqttClient:
    """One broker connection with a persistent session; see the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        backoff: ReconnectBackoff,
        on_status: Callable[[ConnectionStatus], None] | None = None,
    ) -> None:
        self._settings = settings
        self._backoff = backoff
        self._on_status = on_status
        self._status = ConnectionStatus(ConnectionState.IDLE)
        self._status_changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_acks: dict[int, asyncio.Future[tuple[int, str]]] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._confirmed: set[str] = set()
        self._suback_for: dict[int, str] = {}
        self._inbound: asyncio.Queue[tuple[int, paho.MQTTMessage]] = asyncio.Queue()
        # Failed deliveries per message (topic and payload digest); failed messages held on this connection.
        self._failures: OrderedDict[bytes, int] = OrderedDict()
        self._held_failures = 0
        self._qos0_drops = _DropLog(
            "at QoS 0 on a subscription for QoS 1 only dropped unhandled (nothing bounds QoS 0 deliveries)")
        self._generation = 0
        self._closing = False
        # The Maximum Packet Size of the broker's last CONNACK (None: it announced none).
        self._broker_max_packet: int | None = None
        self._wake = asyncio.Event()
        self._stop_thread = threading.Event()
        self._attempt = _Attempt()
        self._paho = self._make_paho()

    def __repr__(self) -> str:
        s = self._settings
        return f"MqttClient({s.log_id!r} at {s.host}:{s.port}, {self._status.state.value})"

    # -- public interface -------------------------------------------------------------------------------

    @property
    def status(self) -> ConnectionStatus:
        return self._status

    @property
    def settings(self) -> MqttSettings:
        return self._settings

    @property
    def dropped_qos0(self) -> int:
        """QoS 0 messages a subscription for QoS 1 only dropped unhandled since this client was made."""
        return self._qos0_drops.count

    async def wait_for(
        self, predicate: Callable[[ConnectionStatus], bool], timeout_s: float
    ) -> ConnectionStatus:
        """The first status (the current one included) that satisfies `predicate`; `TimeoutError` after
        `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while not predicate(self._status):
                await self._status_changed.wait()
        return self._status

    async def wait_connected(self, timeout_s: float) -> ConnectionStatus:
        return await self.wait_for(lambda s: s.state is ConnectionState.CONNECTED, timeout_s)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: Literal[0, 1] = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Iterable[tuple[str, str]] = (),
        timeout_s: float | None = None,
        message_expiry_s: int | None = None,
    ) -> PublishAck:
        """Publish and return once the broker acknowledged (QoS 1: PUBACK; QoS 0: written).
        ``message_expiry_s`` (MQTT 5 Message Expiry Interval): the broker drops the message, instead of
        delivering it, once it has waited that long for a subscriber (an offline central). Raises
        `PublishRefused` for a failure reason code (MQTT 5), `PublishTimeout`, or `MqttClosed`. Published
        while disconnected, the message waits for the next connection (within the time limit)."""
        acknowledged = self.publish_started(
            topic, payload, qos=qos, retain=retain, response_topic=response_topic,
            correlation_data=correlation_data, user_properties=user_properties, timeout_s=timeout_s,
            message_expiry_s=message_expiry_s)
        return await acknowledged

    def publish_started(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: Literal[0, 1] = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Iterable[tuple[str, str]] = (),
        timeout_s: float | None = None,
        message_expiry_s: int | None = None,
    ) -> Awaitable[PublishAck]:
        """`publish`, with the message queued for the network thread before this returns (so ahead of
        anything queued after it, an acknowledgement of a received message included); the broker's
        acknowledgement is what the returned awaitable gives (or raises, as `publish`). Raises at once what
        `publish` raises before sending (`MqttClosed`, `PacketTooLarge`, `MqttError`)."""
        if self._closing:
            raise MqttClosed(f"{self!r} is closed")
        properties = self._publish_properties(response_topic, correlation_data, tuple(user_properties),
                                              message_expiry_s)
        limit = self._broker_max_packet
        if limit is not None:
            size = publish_packet_bytes(topic, len(payload), properties_bytes=_properties_bytes(properties),
                                        mqtt5=self._settings.protocol is ProtocolVersion.V5)
            if size > limit:
                raise PacketTooLarge(topic, size, limit)
        info = self._paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"cannot publish to {topic}: {paho.error_string(info.rc)}")
        if qos == 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise MqttError(f"cannot publish to {topic} at QoS 0: not connected")
        waiter = asyncio.get_running_loop().create_future()
        # Registered before the event loop can run the PUBACK's handoff (see the module docstring).
        self._pending_acks[info.mid] = waiter
        limit_s = self._settings.publish_timeout_s if timeout_s is None else timeout_s
        return self._acknowledgement(topic, info.mid, waiter, limit_s)

    async def _acknowledgement(
        self, topic: str, mid: int, waiter: asyncio.Future[tuple[int, str]], limit_s: float
    ) -> PublishAck:
        try:
            async with asyncio.timeout(limit_s):
                code, reason = await waiter
        except TimeoutError:
            raise PublishTimeout(f"no acknowledgement of the publish to {topic} in {limit_s:g} s") from None
        finally:
            self._pending_acks.pop(mid, None)
        if code >= FAILURE_REASON_CODE:
            raise PublishRefused(topic, code, reason)
        return PublishAck(code, reason)

    async def subscribe(
        self,
        topic_filter: str,
        handler: MessageHandler,
        *,
        qos: Literal[0, 1] = 1,
        timeout_s: float = 30.0,
        qos1_only: bool = False,
    ) -> None:
        """Subscribe, and return once the broker confirmed it (SUBACK), on this connection or the next one;
        `SubscribeRefused` for a failure reason code. The subscription is made again after every
        reconnection whose session the broker did not keep. Its messages are handled one at a time (see
        "Order" in the module docstring); ``qos1_only``: QoS 0 messages are dropped as they come (see
        "Memory")."""
        if self._closing:
            raise MqttClosed(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        subscription = _Subscription(qos, handler, loop.create_future(), qos1_only)
        self._subscriptions[topic_filter] = subscription
        self._confirmed.discard(topic_filter)
        self._count_unconfirmed()
        if self._status.state is ConnectionState.CONNECTED:
            self._send_subscribe(topic_filter, subscription)
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(subscription.confirmed)

    async def run(self) -> None:
        """Connect, and reconnect with back-off whenever the connection ends, until `close()` (or until
        cancelled). Meant to be a supervised task (`edge.runtime.supervise`)."""
        self._loop = asyncio.get_running_loop()
        liveness = _supervised_liveness()
        dispatcher = asyncio.create_task(self._dispatch(), name=f"mqtt-dispatch-{self._settings.log_id}")
        failures = 0
        try:
            while not self._closing:
                self._set_status(replace(self._status, state=ConnectionState.CONNECTING, reason=""))
                attempt = await self._one_connection(liveness)
                failures = 0 if attempt.accepted else failures + 1
                if self._closing:
                    break
                if not attempt.refused:
                    state = ConnectionState.DISCONNECTED
                    reason = attempt.error or self._status.reason or "connection ended"
                    code = self._status.reason_code if attempt.accepted else None
                    self._set_status(replace(self._status, state=state, reason=reason, reason_code=code))
                self._set_status(replace(self._status, failed_attempts=failures))
                delay_s = self._backoff.next_delay(max(failures, 1))
                log.info(
                    "MQTT %s: %s (%s); next attempt in %.1f s",
                    self._settings.log_id, self._status.state.value, self._status.reason, delay_s,
                )
                await self._back_off(delay_s, liveness)
        finally:
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
            self._closing = True
            for waiter in self._pending_acks.values():
                if not waiter.done():
                    waiter.set_exception(MqttClosed(f"{self!r} closed before the acknowledgement"))
            for subscription in self._subscriptions.values():
                if not subscription.confirmed.done():
                    subscription.confirmed.set_exception(MqttClosed(f"{self!r} closed before the SUBACK"))
                # Retrieved here, so that nobody's unawaited confirmation is logged as never retrieved.
                if subscription.confirmed.done() and not subscription.confirmed.cancelled():
                    subscription.confirmed.exception()
            # paho closes its socket and its wake-up socket pair only in loop_stop(), which belongs to its
            # own thread mode; the network thread of the last connection has ended by now.
            self._paho._reset_sockets()
            self._set_status(replace(self._status, state=ConnectionState.CLOSED))

    async def _back_off(self, delay_s: float, liveness: Liveness | None) -> None:
        """Wait `delay_s` (or until `close()`), marking the task alive meanwhile: waiting out a back-off is
        what this task should be doing while the broker is away."""
        self._wake.clear()
        deadline = asyncio.get_running_loop().time() + delay_s
        while not self._wake.is_set():
            if liveness is not None:
                liveness.beat()
            remaining_s = deadline - asyncio.get_running_loop().time()
            if remaining_s <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining_s, _LOOP_TIMEOUT_S)):
                    await self._wake.wait()

    async def close(self) -> None:
        """Disconnect cleanly (a DISCONNECT: the broker does not publish the will) and make `run()` return.
        The session stays on the broker for `session_expiry_s`."""
        self._closing = True
        self._wake.set()
        self._stop_network_thread()
        if self._status.state not in (ConnectionState.IDLE, ConnectionState.CLOSED):
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda s: s.state is ConnectionState.CLOSED, _STOP_GRACE_S + 5)

    # -- the network thread -----------------------------------------------------------------------------

    async def _one_connection(self, liveness: Liveness | None) -> _Attempt:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        self._attempt = _Attempt()
        self._stop_thread.clear()
        thread = threading.Thread(
            target=self._network_main,
            args=(loop, ended, liveness),
            name=f"mqtt-{self._settings.log_id}",
            daemon=True,
        )
        thread.start()
        try:
            await asyncio.shield(ended)
        except asyncio.CancelledError:
            self._stop_network_thread()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(_STOP_GRACE_S + 2 * self._settings.connect_timeout_s):
                    await asyncio.shield(ended)
            raise
        return self._attempt

    def _stop_network_thread(self) -> None:
        # DISCONNECT first: queuing it wakes the network thread at once (the thread itself sends one only
        # when it finds the connection still up).
        if self._paho.is_connected():
            self._paho.disconnect()
        self._stop_thread.set()

    def _network_main(
        self, loop: asyncio.AbstractEventLoop, ended: asyncio.Future[None], liveness: Liveness | None
    ) -> None:
        """The network thread: one connection, from TCP connect to its end."""
        try:
            rc = self._connect_blocking()
            stop_asked_at: float | None = None
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = self._paho.loop(timeout=_LOOP_TIMEOUT_S)
                if liveness is not None:
                    liveness.beat()
                if self._stop_thread.is_set():
                    # close() or cancellation: send a DISCONNECT (the broker then keeps the will to itself),
                    # give it a moment to go out, then stop regardless.
                    if stop_asked_at is None:
                        stop_asked_at = time.monotonic()
                        if self._paho.is_connected():
                            self._paho.disconnect()
                    elif time.monotonic() - stop_asked_at > _STOP_GRACE_S:
                        break
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self._attempt.error = self._attempt.error or paho.error_string(rc)
        except ssl.SSLCertVerificationError as exc:
            self._attempt.error = f"broker certificate not trusted: {exc.verify_message or exc}"
        except (OSError, ValueError) as exc:
            self._attempt.error = f"cannot connect to {self._settings.host}:{self._settings.port}: {exc}"
        except Exception as exc:  # e.g. a password reference that cannot be resolved (ConfigError)
            self._attempt.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._classify_tls_refusal()
            with contextlib.suppress(RuntimeError):  # the event loop is already closed
                loop.call_soon_threadsafe(self._network_ended, ended)

    def _connect_blocking(self) -> MQTTErrorCode:
        s = self._settings
        if s.username:
            assert s.password is not None  # MqttSettings checks they go together
            self._paho.username_pw_set(s.username, s.password())
        if s.protocol is ProtocolVersion.V5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it untyped
            properties.SessionExpiryInterval = s.session_expiry_s
            rc = self._paho.connect(s.host, s.port, s.keepalive_s, clean_start=False, properties=properties)
        else:
            rc = self._paho.connect(s.host, s.port, s.keepalive_s)
        if s.username:
            self._paho.username_pw_set(s.username, None)  # the CONNECT packet is built; forget the password
        return rc

    def _classify_tls_refusal(self) -> None:
        """A broker that rejects our client certificate does so with a TLS alert, which with TLS 1.3 the
        client reads only after its side of the handshake is done, as an error before any CONNACK."""
        if self._attempt.accepted or self._attempt.refused:
            return
        alert = _TLS_ALERT.search(self._attempt.error)
        if alert is not None:
            self._attempt.refused = True
            self._attempt.error = f"TLS: the broker rejected the client certificate ({alert.group(0)})"

    def _network_ended(self, ended: asyncio.Future[None]) -> None:
        if self._attempt.refused and self._status.state is not ConnectionState.REFUSED:
            log.warning(
                "MQTT broker %s:%s refused %s: %s",
                self._settings.host, self._settings.port, self._settings.log_id, self._attempt.error,
            )
            self._set_status(
                replace(
                    self._status, state=ConnectionState.REFUSED, reason=self._attempt.error, reason_code=None
                )
            )
        if not ended.done():
            ended.set_result(None)

    # -- paho callbacks (network thread): hand everything to the event loop -----------------------------

    def _make_paho(self) -> paho.Client:
        s = self._settings
        if s.protocol is ProtocolVersion.V5:
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=MQTTProtocolVersion.MQTTv5,
                manual_ack=True,
            )
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=s.client_id, clean_session=False,
                protocol=MQTTProtocolVersion.MQTTv311, manual_ack=True,
            )
        s.tls.sslsocket_class = _HandshakeClosingSocket
        client.tls_set_context(s.tls)
        client.connect_timeout = s.connect_timeout_s
        client.max_queued_messages_set(0)
        # Only the network thread writes to the socket (see the module docstring).
        client.on_socket_register_write = _no_op_socket_callback
        client.on_socket_unregister_write = _no_op_socket_callback
        client.on_socket_open = _no_delay
        if s.will is not None:
            client.will_set(s.will.topic, s.will.payload, qos=s.will.qos, retain=s.will.retain)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_publish = self._paho_publish
        client.on_subscribe = self._paho_subscribe
        client.on_message = self._paho_message
        client.on_log = self._paho_log
        return client

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the event loop is already closed
                self._loop.call_soon_threadsafe(callback, *args)

    def _paho_connect(
        self, _client: paho.Client, _userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        # The broker's Maximum Packet Size (absent: no limit but the protocol's). Read here, on the network
        # thread, before the CONNACK's handoff: publishes queued after it are checked against it.
        limit = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
        self._broker_max_packet = limit if isinstance(limit, int) and limit > 0 else None
        if reason_code.is_failure:
            self._attempt.refused = True
            self._attempt.error = str(reason_code.getName())
        else:
            self._attempt.accepted = True
        self._post(self._on_connack, bool(flags.session_present), *_reason(reason_code))

    def _paho_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason_code: ReasonCode, _properties: Any
    ) -> None:
        self._post(self._on_disconnect, *_reason(reason_code))

    def _paho_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, reason_code: ReasonCode, _properties: Any
    ) -> None:
        self._post(self._on_puback, mid, *_reason(reason_code))

    def _paho_subscribe(
        self, _client: paho.Client, _userdata: Any, mid: int, reason_codes: list[ReasonCode], _props: Any
    ) -> None:
        self._post(self._on_suback, mid, [_reason(code) for code in reason_codes])

    def _paho_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self._post(self._on_message, message)

    def _paho_log(self, _client: paho.Client, _userdata: Any, level: int, text: str) -> None:
        # paho's error lines carry the socket or TLS error of a failed read or write (never a password).
        if level == paho.MQTT_LOG_ERR and not self._attempt.accepted:
            self._attempt.error = text

    # -- on the event loop ------------------------------------------------------------------------------

    def _set_status(self, status: ConnectionStatus) -> None:
        if status == self._status:
            return
        self._status = status
        changed, self._status_changed = self._status_changed, asyncio.Event()
        changed.set()
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:
                log.exception("MQTT status listener failed")

    def _on_connack(self, session_present: bool, code: int, reason: str) -> None:
        s = self._settings
        if code >= FAILURE_REASON_CODE:
            log.warning(
                "MQTT broker %s:%s refused %s: %s (0x%02x)", s.host, s.port, s.log_id, reason, code
            )
            self._set_status(
                replace(self._status, state=ConnectionState.REFUSED, reason=reason, reason_code=code)
            )
            return
        self._generation += 1
        self._held_failures = 0
        log.info(
            "MQTT %s connected to %s:%s (MQTT %s, session %s)",
            s.log_id, s.host, s.port, s.protocol.value, "resumed" if session_present else "new",
        )
        if not session_present:
            self._confirmed.clear()
        else:
            # Mosquitto 2.0 (2.0.11 seen) keeps a session over a graceful restart but not its shared
            # subscriptions, and says "session present": the central would be deaf until its session
            # expired. A shared subscription is made again after every connection (idempotent).
            self._confirmed = {f for f in self._confirmed if not f.startswith("$share/")}
        self._set_status(
            replace(
                self._status,
                state=ConnectionState.CONNECTED,
                reason=reason,
                reason_code=code,
                session_present=session_present,
                connections=self._status.connections + 1,
                failed_attempts=0,
            )
        )
        for topic_filter, subscription in self._subscriptions.items():
            if topic_filter not in self._confirmed:
                self._send_subscribe(topic_filter, subscription)
        self._count_unconfirmed()

    def _count_unconfirmed(self) -> None:
        unconfirmed = sum(1 for topic_filter in self._subscriptions if topic_filter not in self._confirmed)
        self._set_status(replace(self._status, unconfirmed_subscriptions=unconfirmed))

    def _on_disconnect(self, code: int, reason: str) -> None:
        self._suback_for.clear()
        if self._status.state is ConnectionState.CONNECTED:
            self._set_status(
                replace(self._status, state=ConnectionState.DISCONNECTED, reason=reason, reason_code=code)
            )

    def _on_puback(self, mid: int, code: int, reason: str) -> None:
        waiter = self._pending_acks.get(mid)
        if waiter is not None and not waiter.done():
            waiter.set_result((code, reason))

    def _send_subscribe(self, topic_filter: str, subscription: _Subscription) -> None:
        rc, mid = self._paho.subscribe(topic_filter, qos=subscription.qos)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._suback_for[mid] = topic_filter
        # Otherwise the connection is gone: the next CONNACK sends it again.

    def _on_suback(self, mid: int, codes: list[tuple[int, str]]) -> None:
        topic_filter = self._suback_for.pop(mid, None)
        subscription = self._subscriptions.get(topic_filter) if topic_filter is not None else None
        if topic_filter is None or subscription is None or not codes:
            return
        code, reason = codes[0]
        if code >= FAILURE_REASON_CODE:
            log.error("MQTT broker refused the subscription %s: %s (0x%02x)", topic_filter, reason, code)
            if not subscription.confirmed.done():
                subscription.confirmed.set_exception(SubscribeRefused(topic_filter, code, reason))
            return
        self._confirmed.add(topic_filter)
        if not subscription.confirmed.done():
            subscription.confirmed.set_result(None)
        self._count_unconfirmed()

    def _on_message(self, message: paho.MQTTMessage) -> None:
        if message.qos == 0 and self._subscriptions:
            # Dropped here, as it arrives, not after waiting for the dispatcher: nothing else bounds how
            # many come while a handler works (see "Memory" in the module docstring).
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = None
            if topic is not None and any(sub.qos1_only and _matches(f, topic)
                                         for f, sub in self._subscriptions.items()):
                self._qos0_drops.note(topic)
                return
        self._inbound.put_nowait((self._generation, message))

    async def _dispatch(self) -> None:
        while True:
            generation, message = await self._inbound.get()
            await self._dispatch_one(generation, message)

    async def _dispatch_one(self, generation: int, message: paho.MQTTMessage) -> None:
        """Handles ``message`` (or drops it: nothing to hand it to) and acknowledges it when its handler
        returned (see "Order" in the module docstring)."""
        try:
            inbound = _inbound_message(message)
        except UnicodeDecodeError:  # MQTT requires UTF-8 topics; a broker that forwards others is wrong
            log.warning("MQTT message with a topic that is not UTF-8: acknowledged and dropped")
            self._acknowledge(generation, message, True)
            return
        subscription = next(
            (sub for f, sub in self._subscriptions.items() if _matches(f, inbound.topic)), None
        )
        if subscription is None:
            log.warning("MQTT message on %s matches no subscription; acknowledged and dropped", inbound.topic)
            self._acknowledge(generation, message, True)
            return
        acknowledge = await self._handle(generation, inbound, subscription.handler)
        self._acknowledge(generation, message, acknowledge)

    async def _handle(self, generation: int, inbound: InboundMessage, handler: MessageHandler) -> bool:
        """Runs the handler: True when the message is to be acknowledged (handled, or poison)."""
        try:
            await handler(inbound)
        except Exception:
            return self._failed(generation, inbound)
        if self._failures:
            self._failures.pop(_message_key(inbound), None)
        return True

    def _acknowledge(self, generation: int, message: paho.MQTTMessage, acknowledge: bool) -> None:
        # Acknowledged on the connection it came on only: after a reconnection its packet id means nothing,
        # and the broker sends the message again.
        if acknowledge and message.qos > 0 and generation == self._generation and (
            self._status.state is ConnectionState.CONNECTED
        ):
            self._paho.ack(message.mid, message.qos)

    def _failed(self, generation: int, inbound: InboundMessage) -> bool:
        """Counts a failed delivery of ``inbound``: True when it is poison (acknowledge it), else False
        (leave it to the broker; reconnect when too many failed messages are held)."""
        key = _message_key(inbound)
        failures = self._failures.pop(key, 0) + 1
        if failures >= POISON_AFTER_FAILURES:
            # Forgotten once acknowledged as poison: an identical message published later (a station
            # sending the same request again after a fix on the central) starts again at zero. An
            # acknowledgement lost to a reconnection costs another POISON_AFTER_FAILURES failures.
            log.error(
                "MQTT message on %.200s (%d bytes, SHA-256 %s) failed its handler %d times: acknowledged as "
                "poison and dropped", inbound.topic, len(inbound.payload), key.hex(), failures,
            )
            return True
        self._failures[key] = failures
        while len(self._failures) > _FAILURE_MEMORY:
            self._failures.popitem(last=False)
        log.exception(
            "MQTT handler for %.200s failed (%d of %d); the message is not acknowledged (the broker sends it "
            "again on the next connection of the session)", inbound.topic, failures, POISON_AFTER_FAILURES,
        )
        self._hold(generation)
        return False

    def _hold(self, generation: int) -> None:
        """Counts a failed message left unacknowledged on its connection; at `_RECONNECT_AT_HELD_FAILURES`
        the client reconnects, so that the broker sends them again instead of keeping their slots."""
        if generation == self._generation:
            self._held_failures += 1
            if self._held_failures >= _RECONNECT_AT_HELD_FAILURES and self._paho.is_connected():
                log.warning("MQTT %s holds %d messages whose handler failed: reconnecting so that the broker "
                            "sends them again",
                            self._settings.log_id, self._held_failures)
                self._held_failures = 0
                self._paho.disconnect()

    def _publish_properties(
        self,
        response_topic: str | None,
        correlation_data: bytes | None,
        user_properties: tuple[tuple[str, str], ...],
        message_expiry_s: int | None = None,
    ) -> Properties | None:
        if (response_topic is None and correlation_data is None and not user_properties
                and message_expiry_s is None):
            return None
        if self._settings.protocol is not ProtocolVersion.V5:
            raise MqttError("response topic, correlation data, user properties and expiry need MQTT 5")
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it untyped
        if response_topic is not None:
            properties.ResponseTopic = response_topic
        if correlation_data is not None:
            properties.CorrelationData = correlation_data
        if user_properties:
            properties.UserProperty = list(user_properties)
        if message_expiry_s is not None:
            properties.MessageExpiryInterval = max(1, min(int(message_expiry_s), 0xFFFFFFFF))
        return properties


def _message_key(inbound: InboundMessage) -> bytes:
    """What identifies one message across its deliveries: the digest of its topic and payload."""
    return hashlib.sha256(inbound.topic.encode("utf-8") + b"\0" + inbound.payload).digest()


def _properties_bytes(properties: Properties | None) -> int:
    """Length of a PUBLISH's properties without their own length prefix (what `Properties.pack` prefixes)."""
    if properties is None:
        return 0
    packed = properties.pack()  # type: ignore[no-untyped-call]  # paho leaves it untyped
    prefix = 1
    while packed[prefix - 1] & 0x80:
        prefix += 1
    return len(packed) - prefix


def _no_op_socket_callback(_client: paho.Client, _userdata: Any, _sock: Any) -> None:
    """Registered so that paho never writes from the calling thread (see the module docstring)."""


def _no_delay(_client: paho.Client, _userdata: Any, sock: Any) -> None:
    """TCP_NODELAY on the connection's socket. A transfer is a chain of small packets each waiting for the
    other side's (PUBACK, the receiver's result): with Nagle's algorithm and delayed ACKs each waited ~40 ms
    (64 MiB in 256 KiB segments through the central's receiver: 6.7 s with Nagle here, 1.1 s without)."""
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (a test's socket pair, say)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _inbound_message(message: paho.MQTTMessage) -> InboundMessage:
    properties = getattr(message, "properties", None)
    response_topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
    correlation = getattr(properties, "CorrelationData", None) if properties is not None else None
    users = getattr(properties, "UserProperty", None) if properties is not None else None
    return InboundMessage(
        topic=message.topic,
        payload=bytes(message.payload),
        qos=message.qos,
        retain=bool(message.retain),
        duplicate=bool(message.dup),
        response_topic=response_topic,
        correlation_data=bytes(correlation) if correlation is not None else None,
        user_properties=tuple((str(k), str(v)) for k, v in users) if users else (),
    )
