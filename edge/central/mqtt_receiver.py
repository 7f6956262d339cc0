"""The central's MQTT receiver: evidence content (EMQX file transfer, scoped under each station's topics)
and the station API, through shared subscriptions, run beside the HTTP server when the configuration has
an ``[mqtt]`` section.

Subscriptions (MQTT 5, QoS 1, persistent sessions), on two connections, so that a registration (which
re-hashes the whole file) never holds up the segments of every station:

- client id ``[mqtt] client_id`` (default ``<central id>-<secret>``, unguessable: see
  :mod:`edge.mqtt.client_ids`; a worker's is that and ``-w-<name>``):
  ``$share/G/P/stations/+/$file-async/#`` and ``$share/G/P/stations/+/$file/#``, the file-transfer commands;
- client id ``<client_id>-api``: ``$share/G/P/stations/+/api/request/#``, the API
  (:mod:`edge.central.mqtt_api`); a content-only worker (``edge central mqtt-worker``) has no API.

G is ``[mqtt] shared_group``: the broker hands each message to one member of the group, so several
central processes split the load (they may share ``transfers_dir``: every transfer has its own file
lock, see :mod:`edge.central.mqtt_ingest_store`).

Each connection handles one message at a time and acknowledges it when its handler returns, and every
handler is quick: a segment, ``init`` or ``abort`` is carried out at once (a segment is durable when it is
answered, ~6 ms a MiB), while a ``fin`` (which re-reads and hashes the whole file) and every API request
(a registration re-hashes it too) are committed to the process's receive queue
(:mod:`edge.central.receive_queue`, SQLite with synchronous=FULL) and acknowledged then, and handled from
there, each station's in order, a few stations at once. So one station's slow message and its backlog
never fill the broker's in-flight window of a connection (every station stalled behind them, review 10),
and nothing is held unacknowledged in memory: a process killed after the acknowledgement finds the message
in its queue at the next start. A station whose share of the queue is full is answered busy at once (a
fin: 0x97, which pauses the upload; a request: 503 ``server_busy``), and that message is acknowledged.
A queued message keeps its MQTT 5 Message Expiry: one that expired while it waited is removed unhandled.
Order: a station sends a transfer's segments only after init's result and fin only after every segment's
result, so carrying segments out at once and fins from the queue keeps each transfer's order.

The station is always, and only, the station level S of the topic: the broker's ACL confines station S
to ``P/stations/S/#``, so that level names the publisher (nothing in a payload does). Every command is
carried out by the ingest store (in a worker thread: it fsyncs), and its result goes to
``$file-response/S`` as EMQX's response JSON (:class:`edge.mqtt.filetransfer.FileResponse`, whose topic is
the command's ``$file[-async]/...`` form, and packet id 0: the station's packet id does not reach us
through the broker); a segment is answered only once it is durable. A segment is acknowledged to the
broker only after its answer was published, a queued message only after it was committed: a receiver
killed before that gets it again (it is stored idempotently, and its duplicate is answered "already
stored"). A station that is not enrolled, or revoked, has its commands refused (0x83) before the store
sees them.

A topic that names no command is logged and dropped (there is nothing to echo); nothing anyone sends
makes the receiver stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.x509.oid import NameOID

from edge.central.background import periodic_task
from edge.central.config import CentralConfig, MqttSection
from edge.central.mqtt_ingest_store import MqttIngestStore, Outcome
from edge.central.receive_queue import (
    Admission,
    Lane,
    QueuedMessage,
    QueueRunner,
    ReceiveQueue,
    queue_path,
)
from edge.central.registration import Rejection
from edge.custody.text import printable
from edge.mqtt.client import (
    ConnectionStatus,
    InboundMessage,
    MessageHandler,
    MqttClient,
    MqttClosed,
    MqttError,
    MqttSettings,
    PacketTooLarge,
    ProtocolVersion,
    PublishTimeout,
    ReconnectBackoff,
)
from edge.mqtt.client_ids import load_or_create_client_secret, secret_client_id
from edge.mqtt.filetransfer import (
    Command,
    FileTransferError,
    FinCommand,
    ReasonCode,
    parse_scoped_topic,
    response_topic,
)
from edge.pki.bundle import BUNDLE_CLIENT_CERT
from edge.pki.certs import load_cert
from edge.pki.names import IdentityError
from edge.pki.tls import broker_ssl_context
from edge.runtime.sdnotify import SystemdNotifier
from edge.runtime.supervise import Supervisor, SupervisorGaveUp, TaskSpec
from edge.uplink.policy import Backoff

if TYPE_CHECKING:
    from edge.central.mqtt_api import ApiAnswer, MqttApi

__all__ = [
    "CentralNotStarted",
    "MqttReceiver",
    "QueueSettings",
    "SupervisedReceiver",
    "central_mqtt_settings",
    "mqtt_purge_task",
    "queue_settings",
    "run_mqtt_worker",
    "station_check_of",
    "transfers_store",
    "worker_mqtt_settings",
]

log = logging.getLogger(__name__)

# The queue of the central process; a worker's is "worker-<name>".
CENTRAL_QUEUE_NAME = "central"


@dataclass(frozen=True)
class QueueSettings:
    """The receive queue's bounds (edge.central.receive_queue; [mqtt] queue_*)."""

    per_station: int = 64
    per_station_bytes: int = 16 << 20
    concurrency: int = 4


# Results of commands carried out at once (segments, init, abort) whose PUBACK from the broker is still
# awaited, at most: the content connection's next message does not wait a round trip to the broker per
# segment, and what awaits stays bounded when the broker stops acknowledging.
_RESULTS_AWAITED = 64
# A subscription waits for a connection as long as it takes (the client reconnects meanwhile).
_SUBSCRIBE_WAIT_S = 7 * 86400.0

# How a station check's read is run off the loop: ``CentralParts.station_read``.
StationReads = Callable[[Callable[[str], str | None], str], Awaitable[str | None]]

StationCheck = Callable[[str], Awaitable[str | None]]
"""The reason a station may not send (not enrolled, revoked), or None when it may; awaited, its read of
the index off the event loop (:func:`station_check_of`)."""


def transfers_store(config: CentralConfig) -> MqttIngestStore:
    """The MQTT ingest store of ``config`` (``[mqtt] transfers_dir``; limits, quota and expiry from
    ``[uploads]``): the same settings in the central and in its content-only workers."""
    uploads = config.uploads
    mqtt = config.mqtt
    if mqtt is None:
        raise ValueError("the configuration has no [mqtt] section")
    return MqttIngestStore(
        config.mqtt_transfers_dir,
        max_size_bytes=uploads.max_size_bytes,
        max_segment_bytes=mqtt.max_segment_bytes,
        station_quota_bytes=uploads.station_quota_bytes,
        segments_ttl_s=uploads.expire_incomplete_s,
        max_segments_ttl_s=max(uploads.expire_incomplete_s, 7 * 24 * 3600.0),
        expire_complete_after_s=uploads.expire_unregistered_s,
    )


class CentralNotStarted(Exception):
    """A worker found no client-id secret: only the central makes it (a worker's identity/ is read-only
    under its systemd sandbox), so the central has never run; try again once it has."""


def central_mqtt_settings(config: CentralConfig, *, create_secret: bool = True) -> MqttSettings:
    """The receiver's connection: TLS with the central's broker certificate, whose CN must be the central
    id (the broker's ACL grants that user the stations' topics). `create_secret`: make the client-id
    secret when missing (the central); a worker only reads it and raises :class:`CentralNotStarted`
    without it. Raises :class:`IdentityError`."""
    mqtt = config.mqtt
    if mqtt is None:
        raise ValueError("the configuration has no [mqtt] section")
    cert_path = mqtt.client_bundle_dir / BUNDLE_CLIENT_CERT
    try:
        cert = load_cert(cert_path)
    except (OSError, ValueError) as exc:
        raise IdentityError(f"[mqtt] client_bundle_dir: cannot read {cert_path}: {exc}") from None
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [config.central.id]:
        raise IdentityError(
            f"[mqtt] client_bundle_dir: the certificate {cert_path} names CN={names}, expected the central "
            f"id {config.central.id!r} (the broker's ACL gives that user the stations' topics)"
        )
    try:
        tls = broker_ssl_context(ca_file=mqtt.ca_file, bundle_dir=mqtt.client_bundle_dir)
    except (OSError, ValueError) as exc:
        raise IdentityError(f"[mqtt]: cannot use the CA file or client bundle: {exc}") from None
    host, port = mqtt.host_port
    client_id = mqtt.client_id
    if not client_id:
        secret = load_or_create_client_secret(config.layout.mqtt_client_secret, create=create_secret)
        if secret is None:
            raise CentralNotStarted(
                f"no MQTT client secret in {config.layout.mqtt_client_secret}: the central makes it at its "
                "first start; start edge-central first")
        client_id = secret_client_id(config.central.id, secret)
    return MqttSettings(
        host=host,
        port=port,
        client_id=client_id,
        tls=tls,
        protocol=ProtocolVersion.V5,
        keepalive_s=mqtt.keepalive_s,
        session_expiry_s=mqtt.session_expiry_s,
        connect_timeout_s=mqtt.connect_timeout_s,
        publish_timeout_s=mqtt.publish_timeout_s,
    )


@dataclass
class ReceiverCounts:
    """What this process answered since it started (for tests and logs)."""

    commands: int = 0
    refused_commands: int = 0
    requests: int = 0
    dropped: int = 0
    queued: int = 0
    """Messages committed to the receive queue (then acknowledged), duplicates of waiting ones not."""
    busy: int = 0
    """Messages answered busy at once because their station's share of the queue was full."""
    expired: int = 0
    """Queued messages removed unhandled: their MQTT Message Expiry passed while they waited."""


class MqttReceiver:
    """One receiver process's subscriptions, receive queue and answers (see the module docstring)."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        prefix: str,
        shared_group: str,
        store: MqttIngestStore,
        api: MqttApi | None,
        station_check: StationCheck | None = None,
        backoff: ReconnectBackoff | None = None,
        queue_name: str = CENTRAL_QUEUE_NAME,
        queue_settings: QueueSettings | None = None,
    ) -> None:
        self.settings = settings
        self.prefix = prefix
        self.shared_group = shared_group
        self.store = store
        self.api = api
        self._station_check = station_check
        self._backoff = backoff if backoff is not None else Backoff(base_s=1.0, max_s=60.0)
        self.queue_path = queue_path(store.root, queue_name)
        self.queue_settings = queue_settings if queue_settings is not None else QueueSettings()
        self.counts = ReceiverCounts()
        self.client: MqttClient | None = None
        self.api_client: MqttClient | None = None
        # The queue of the current run (None between runs).
        self.queue: QueueRunner | None = None
        # The queue file opened at the process's start (open_queue), for the first run.
        self._opened: ReceiveQueue | None = None
        # The content connection's own thread for what it carries out at once (one message at a time), per
        # run: a segment never waits behind the default executor's threads, which queued fins and
        # registrations may all keep busy hashing whole files.
        self._inline_executor: ThreadPoolExecutor | None = None
        # Per run: the threads of queued fins (as many as the content lane's slots), so that fins hashing
        # whole files never take the default executor's threads, which the API lane's handlers use (a
        # registration's verification, ledger pages): the lanes' separate slots (review 13) hold in threads
        # too.
        self._fin_executor: ThreadPoolExecutor | None = None
        # Per run: results published at once whose broker acknowledgement is awaited in the background.
        self._result_slots = asyncio.Semaphore(_RESULTS_AWAITED)
        self._result_tasks: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()
        self._status_listeners: list[Callable[[ConnectionStatus], None]] = []

    def __repr__(self) -> str:
        return f"MqttReceiver({self.settings.log_id!r}, group {self.shared_group!r})"

    def queue_waiting(self) -> int:
        """Messages waiting in the receive queue (0 between runs)."""
        return self.queue.queue.waiting if self.queue is not None else 0

    @property
    def station_root(self) -> str:
        return f"{self.prefix}/stations"

    @property
    def api_client_id(self) -> str:
        """The API's own connection and session, so that API requests and segments do not queue behind
        each other in one connection's in-flight window."""
        return f"{self.settings.client_id}-api"

    def subscriptions(self) -> list[tuple[str, MessageHandler]]:
        """The content connection's subscriptions."""
        share = f"$share/{self.shared_group}/{self.station_root}/+"
        return [
            (f"{share}/$file-async/#", self._on_transfer),
            (f"{share}/$file/#", self._on_transfer),
        ]

    def api_subscriptions(self) -> list[tuple[str, MessageHandler]]:
        """The API connection's subscription (none without an API: a content-only worker)."""
        if self.api is None:
            return []
        return [(f"$share/{self.shared_group}/{self.station_root}/+/api/request/#", self._on_request)]

    async def wait_subscribed(self, timeout_s: float | None) -> None:
        """Until every subscription of the current run is in effect (None: however long it takes)."""
        async with asyncio.timeout(timeout_s):
            await self._subscribed.wait()

    def open_queue(self) -> None:
        """Open the receive queue now, for the first :meth:`run` (blocking: call it at the process's start).
        Raises :class:`edge.central.receive_queue.QueueUnavailable` (:class:`QueueBusy` among them) when
        the file cannot be used now: the process fails its start (exit 75, systemd starts it again) and
        the file, with the messages acknowledged into it, is left as it is."""
        if self._opened is None:
            self._opened = self._open_queue()

    def close_unused_queue(self) -> None:
        """Close the queue :meth:`open_queue` opened if no run took it (stopped before its first run), so
        that its lock does not outlive the receiver."""
        queue, self._opened = self._opened, None
        if queue is not None:
            queue.close()

    def _open_queue(self) -> ReceiveQueue:
        return ReceiveQueue.open(self.queue_path, per_station_messages=self.queue_settings.per_station,
                                 per_station_bytes=self.queue_settings.per_station_bytes)

    async def run(self) -> None:
        """Open the receive queue, connect, subscribe, answer and handle until cancelled (a supervised
        task: each run is a fresh client on the same persistent sessions, and the same queue file)."""
        self._subscribed.clear()
        queue, self._opened = self._opened, None
        if queue is None:
            queue = await asyncio.to_thread(self._open_queue)
        runner = QueueRunner(queue, {Lane.CONTENT: self._handle_queued_transfer,
                                     Lane.API: self._handle_queued_request},
                             concurrency=self.queue_settings.concurrency, on_damaged=self._queue_row_damaged,
                             on_expired=self._queue_message_expired)
        if queue.set_aside is not None:
            await asyncio.to_thread(self.store.record_incident, "", "receive_queue_damaged", queue.set_aside)
        if queue.waiting:
            log.info("MQTT receiver %s: %d message(s) waiting in %s from before", self.settings.log_id,
                     queue.waiting, queue.path)
        self.queue = runner
        self._inline_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqtt-inline")
        self._fin_executor = ThreadPoolExecutor(max_workers=self.queue_settings.concurrency,
                                                thread_name_prefix="mqtt-fin")
        self._result_slots = asyncio.Semaphore(_RESULTS_AWAITED)
        self.client = MqttClient(self.settings, backoff=self._backoff)
        wanted = [(self.client, topic_filter, handler) for topic_filter, handler in self.subscriptions()]
        clients = [self.client]
        if self.api is not None:
            self.api_client = MqttClient(dataclasses.replace(self.settings, client_id=self.api_client_id),
                                         backoff=self._backoff)
            clients.append(self.api_client)
            wanted += [(self.api_client, topic_filter, handler)
                       for topic_filter, handler in self.api_subscriptions()]
        # Handlers are registered before the connection: messages the broker kept for a session come right
        # after its CONNACK and must find them (a message without a handler would be dropped).
        # One message at a time per connection, acknowledged when its handler returns: every handler is
        # quick (a segment is stored, a fin or an API request is queued; the slow work is the queue's), so
        # the broker's in-flight window never fills behind one slow message, and nothing is held
        # unacknowledged in memory (review 10: the client's concurrent subscriptions held a station's
        # backlog unacknowledged, over their bound unhandled, and dropped copies on a resumed session).
        # QoS 1 only: stations always publish QoS 1, and nothing bounds QoS 0 deliveries.
        subscribing = [
            asyncio.create_task(client.subscribe(topic_filter, handler, timeout_s=_SUBSCRIBE_WAIT_S,
                                                 qos1_only=True),
                                name=f"mqtt-subscribe-{topic_filter}")
            for client, topic_filter, handler in wanted
        ]
        await asyncio.sleep(0)  # each subscribe() registers its handler before its first await
        connections = [asyncio.create_task(client.run(), name=f"mqtt-receiver-{client.settings.log_id}")
                       for client in clients]
        handling = asyncio.create_task(runner.run(), name=f"mqtt-receive-queue-{self.settings.log_id}")
        try:
            await asyncio.gather(*subscribing)
            self._subscribed.set()
            log.info("MQTT receiver %s subscribed (group %s, prefix %s)", self.settings.log_id,
                     self.shared_group, self.prefix)
            # A connection's run() ends only when its client was closed: then this run ends too; the
            # queue's task only when it failed.
            done, _ = await asyncio.wait([*connections, handling], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            self._subscribed.clear()
            for task in subscribing:
                task.cancel()
            # The queue stops first: a message being handled stays queued and is handled at the next
            # start (at least once), and nothing publishes on a client being closed.
            handling.cancel()
            await asyncio.gather(handling, return_exceptions=True)
            await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, *subscribing, return_exceptions=True)
            # Not cancelled: each ends once its PUBACK came or its client closed (MqttClosed), and a task
            # cancelled before its first step would leave its acknowledgement never awaited.
            await asyncio.gather(*self._result_tasks, return_exceptions=True)
            await asyncio.to_thread(queue.close)
            self.queue = None
            self._inline_executor.shutdown(wait=False)
            self._fin_executor.shutdown(wait=False)

    def _queue_message_expired(self, _message: QueuedMessage) -> None:
        self.counts.expired += 1

    async def _queue_row_damaged(self, station: str, detail: str) -> None:
        """A damaged row of the receive queue: an incident of the MQTT store (beside the log line), appended
        and fsync'd in a worker thread; awaited, so the incident is on disk before the queue goes on with the
        lane's next message."""
        await asyncio.to_thread(self.store.record_incident, station, "receive_queue_damaged", detail)

    # -- file transfer ----------------------------------------------------------------------------------

    async def _on_transfer(self, message: InboundMessage) -> None:
        """A file-transfer command: a segment, init or abort is carried out here (quick and durable);
        a fin (which verifies the whole file) is queued and answered when the queue handles it."""
        try:
            station, command = parse_scoped_topic(self.station_root, message.topic)
        except FileTransferError as exc:
            self.counts.dropped += 1
            log.warning("MQTT transfer message on %r refused and dropped (no command to answer): %s",
                        printable(message.topic)[:200], exc)
            return
        if isinstance(command, FinCommand) and self.queue is not None:
            admission = await self.queue.add(Lane.CONTENT, station, message.topic, message.payload, None,
                                             expiry_s=message.message_expiry_s)
            if admission is Admission.FULL:
                self.counts.busy += 1
                await self._answer_transfer(station, command, Outcome(
                    command, ReasonCode.QUOTA_EXCEEDED,
                    f"server_busy: {self._busy_detail(station)}; send fin again later"))
            elif admission is Admission.ADDED:
                self.counts.queued += 1
            return
        await self._carry_out(station, command, message.payload, self._inline_executor, await_broker=False)

    async def _handle_queued_transfer(self, queued: QueuedMessage) -> None:
        station, command = parse_scoped_topic(self.station_root, queued.topic)
        if station != queued.station:
            raise ValueError(f"queued message {queued.id}: its topic names station {station!r}, its row "
                             f"{queued.station!r}")
        await self._carry_out(station, command, queued.payload, self._fin_executor, await_broker=True)

    async def _carry_out(self, station: str, command: Command, payload: bytes, executor: Executor | None,
                         *, await_broker: bool) -> None:
        """Carry ``command`` out in the store (on ``executor``; None: the default one) and answer it
        (``await_broker``: see :meth:`_answer_transfer`)."""
        refusal = await self._station_check(station) if self._station_check is not None else None
        if refusal is not None:
            outcome = Outcome(command, ReasonCode.CANCEL, refusal)
        else:
            outcome = await asyncio.get_running_loop().run_in_executor(
                executor, self.store.carry_out, station, command, payload)
        self.counts.commands += 1
        if not outcome.ok:
            self.counts.refused_commands += 1
        await self._answer_transfer(station, command, outcome, await_broker=await_broker)

    async def _answer_transfer(self, station: str, command: Command, outcome: Outcome, *,
                               await_broker: bool = True) -> None:
        """Publish the result of ``command``. It is queued for the network thread before the message is
        acknowledged (or removed from the queue), so it goes out on the wire first. ``await_broker``: return
        once the broker acknowledged it; otherwise its acknowledgement is awaited in the background (at most
        _RESULTS_AWAITED at once): a connection lost before it went out keeps it in the session and sends
        it again, and the message, not acknowledged on that connection, comes again too."""
        response = outcome.response(0)
        assert response is not None  # an outcome of a parsed command always has one
        assert self.client is not None
        if not await_broker:
            await self._result_slots.acquire()  # waits only while _RESULTS_AWAITED results are awaited
        try:
            acknowledged = self.client.publish_started(response_topic(station), response.to_payload(), qos=1)
        except BaseException as exc:
            if not await_broker:
                self._result_slots.release()
            if isinstance(exc, MqttError) and not isinstance(exc, MqttClosed):
                self._result_not_published(station, command, exc)
                return
            raise
        if await_broker:
            await self._result_acknowledged(station, command, acknowledged)
            return
        task = asyncio.create_task(self._result_acknowledged(station, command, acknowledged, closing_ok=True))
        self._result_tasks.add(task)
        task.add_done_callback(self._result_task_done)

    def _result_task_done(self, task: asyncio.Task[None]) -> None:
        self._result_tasks.discard(task)
        self._result_slots.release()

    async def _result_acknowledged(self, station: str, command: Command, acknowledged: Awaitable[Any], *,
                                   closing_ok: bool = False) -> None:
        # A result the broker does not take (refused, or no PUBACK in time: it may still go out, paho keeps
        # it) is logged and the command done all the same: the store has answered it durably, and a station
        # that misses the result sends the command again (answered idempotently). Failing here would hold
        # one of the broker's in-flight slots of this connection until the next reconnection.
        try:
            await acknowledged
        except MqttClosed:
            if not closing_ok:
                raise
        except MqttError as exc:
            self._result_not_published(station, command, exc)

    @staticmethod
    def _result_not_published(station: str, command: Command, exc: MqttError) -> None:
        log.warning("station %s: the result of %s could not be published (%s); the command is "
                    "acknowledged, the station sends it again", station, command.topic, exc)

    def _busy_detail(self, station: str) -> str:
        assert self.queue is not None
        messages, size = self.queue.queue.waiting_of(station)
        return (f"the central's receive queue holds {messages} message(s), {size} bytes of this station "
                f"(at most {self.queue_settings.per_station}, {self.queue_settings.per_station_bytes} bytes)")

    # -- the API ------------------------------------------------------------------------------------------

    async def _on_request(self, message: InboundMessage) -> None:
        """An API request is queued (answered when the queue handles it), or answered 503 at once when its
        station's share of the queue is full; acknowledged either way."""
        assert self.api is not None and self.api_client is not None and self.queue is not None
        station = self.api.station_of(message.topic)
        if station is None:
            log.warning("MQTT API request on %r: no station level; dropped", printable(message.topic)[:200])
            self.counts.dropped += 1
            return
        admission = await self.queue.add(Lane.API, station, message.topic, message.payload,
                                         message.correlation_data, expiry_s=message.message_expiry_s)
        if admission is Admission.FULL:
            self.counts.busy += 1
            await self._send_answer(self.api.busy(station, message.payload, message.correlation_data,
                                                  self._busy_detail(station)))
        elif admission is Admission.ADDED:
            self.counts.queued += 1

    async def _handle_queued_request(self, queued: QueuedMessage) -> None:
        assert self.api is not None
        answer = await self.api.answer(queued.topic, queued.payload, queued.correlation_data)
        if answer is None:
            self.counts.dropped += 1
            return
        self.counts.requests += 1
        await self._send_answer(answer)

    async def _send_answer(self, answer: ApiAnswer) -> None:
        assert self.api is not None and self.api_client is not None
        try:
            await self.api_client.publish(answer.topic, answer.payload, qos=1,
                                          correlation_data=answer.correlation_data)
            return
        except MqttClosed:
            raise
        except PublishTimeout as exc:
            # Not acknowledged in time, but paho keeps it and sends it on (QoS 1): nothing to replace.
            log.warning("MQTT API reply to %s: %s; the request is done", answer.topic, exc)
            return
        except MqttError as exc:
            # A reply the broker will not take (over its packet size, or refused): a short one instead, so
            # that the station learns it and the request is done (not handled again).
            log.warning("MQTT API reply to %s (status %d, %d bytes) cannot be sent: %s; a short %s reply "
                        "goes instead", answer.topic, answer.status, len(answer.payload), exc,
                        413 if isinstance(exc, PacketTooLarge) else 500)
            stand_in = self.api.stand_in(answer,
                                         over_limit=exc.limit if isinstance(exc, PacketTooLarge) else None)
        try:
            await self.api_client.publish(stand_in.topic, stand_in.payload, qos=1,
                                          correlation_data=stand_in.correlation_data)
        except MqttClosed:
            raise
        except MqttError as exc:
            log.error("MQTT API: even the short reply to %s cannot be sent (%s); the request is "
                      "done unanswered (the station asks again)", answer.topic, exc)


def station_check_of(check: Callable[[str], Any], *, reads: StationReads) -> StationCheck:
    """A :data:`StationCheck` from a callable that raises :class:`Rejection` (``Authenticator``'s, which
    records the refusal itself), run by ``reads`` (``CentralParts.station_read``): every init, segment and
    fin is checked, and on PostgreSQL a read that waits must not stall the event loop (review 13)."""

    def checked(station: str) -> str | None:
        try:
            check(station)
        except Rejection as rejection:
            return f"{rejection.code}: {rejection.detail}"
        return None

    async def awaited(station: str) -> str | None:
        return await reads(checked, station)

    return awaited


class SupervisedReceiver:
    """The receiver under a :class:`Supervisor` (restarts with back-off and budget; liveness beaten by the
    MQTT client's network thread) beside the application: started with it (:meth:`context`, an aiohttp
    cleanup context) and stopped at its shutdown (:meth:`on_shutdown`), before the cleanup closes the
    index that the API answers from."""

    def __init__(self, receiver: MqttReceiver) -> None:
        self.receiver = receiver
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _supervise(self) -> None:
        supervisor = Supervisor(notify_ready=False, backoff_initial_s=1.0, backoff_max_s=60.0,
                                restart_budget=10, budget_window_s=600.0)
        keepalive_s = self.receiver.settings.keepalive_s
        supervisor.add(TaskSpec("mqtt-receiver", self.receiver.run,
                                liveness_timeout_s=max(60.0, 3.0 * keepalive_s), stop_timeout_s=20.0))
        try:
            await supervisor.run(self._stop)
        except SupervisorGaveUp as exc:
            log.critical("the MQTT receiver keeps failing and was given up (HTTP goes on): %s", exc)

    async def stop(self) -> None:
        """Stop the receiver (idempotent): its connection ends with a DISCONNECT, its session stays."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.receiver.close_unused_queue)

    async def on_shutdown(self, _app: object) -> None:
        await self.stop()

    async def context(self, _app: object) -> AsyncIterator[None]:
        self._task = asyncio.create_task(self._supervise(), name="mqtt-receiver-supervisor")
        try:
            yield
        finally:
            await self.stop()


def mqtt_purge_task(store: MqttIngestStore, interval_s: float) -> Callable[[object], AsyncIterator[None]]:
    """An aiohttp cleanup context that purges expired transfers at start and every ``interval_s``."""

    async def one_round() -> None:
        removed = await asyncio.to_thread(store.purge_expired)
        if removed:
            log.info("purged %d expired MQTT transfers from %s", removed, store.root)

    return periodic_task("mqtt-transfers-purge", one_round, interval_s,
                         f"purging expired MQTT transfers in {store.root} failed")


_WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


def queue_settings(mqtt: MqttSection) -> QueueSettings:
    """The receive queue's bounds from ``[mqtt]``."""
    return QueueSettings(per_station=mqtt.queue_per_station, per_station_bytes=mqtt.queue_per_station_bytes,
                         concurrency=mqtt.queue_concurrency)


def worker_mqtt_settings(config: CentralConfig, name: str) -> MqttSettings:
    """A worker's settings: the central's, under the client id ``<central's secret id>-w-<name>`` (as
    unguessable as the central's, and never the central's own)."""
    if not _WORKER_NAME.fullmatch(name):
        raise ValueError(f"--client-id {name!r}: expected a name of letters, digits, '.', '_' or '-' "
                         "(at most 32), stable and the worker's own")
    # Never create the secret: under the worker's sandbox identity/ is read-only (EROFS), and a secret the
    # worker made would not be the central's anyway if both started at once.
    settings = central_mqtt_settings(config, create_secret=False)
    return dataclasses.replace(settings, client_id=f"{settings.client_id}-w-{name}")


def run_mqtt_worker(config: CentralConfig, *, client_id: str) -> int:
    """``edge central mqtt-worker``: one more member of the receiver's shared group, for evidence content
    only, until SIGTERM/SIGINT; 0 on a clean stop.

    The central process (which holds the store's lock, the index and the log) answers the API; a worker
    only assembles transfers in the shared ``transfers_dir``, so several processes (and cores) share the
    hashing and fsyncs of many stations' segments. A worker does not read the index: it cannot refuse a
    revoked station's segments (the broker's certificate check and the store's quota still apply, and
    such a transfer is never registered). Raises :class:`IdentityError` for an unusable broker identity,
    :class:`CentralNotStarted` before the central has made its client-id secret,
    :class:`edge.central.receive_queue.QueueUnavailable` when its receive queue cannot be used now.
    """
    if config.mqtt is None:
        raise ValueError("the configuration has no [mqtt] section")
    settings = worker_mqtt_settings(config, client_id)
    mqtt = config.mqtt
    # Its own receive queue: the broker hands each message to one member of the group, and each member
    # handles what it acknowledged (the queue's lock refuses a second worker under the same name).
    receiver = MqttReceiver(settings, prefix=mqtt.topic_prefix,
                            shared_group=mqtt.shared_group, store=transfers_store(config), api=None,
                            queue_name=f"worker-{client_id}", queue_settings=queue_settings(mqtt))
    receiver.open_queue()  # QueueUnavailable: the start fails (exit 75), the file is left as it is
    return asyncio.run(_work(receiver))


async def _work(receiver: MqttReceiver) -> int:
    notifier = SystemdNotifier()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    supervisor = Supervisor(notifier=notifier, backoff_initial_s=1.0, backoff_max_s=60.0)
    supervisor.add(TaskSpec("mqtt-receiver", receiver.run,
                            liveness_timeout_s=max(60.0, 3.0 * receiver.settings.keepalive_s),
                            stop_timeout_s=20.0))

    async def announce() -> None:
        await receiver.wait_subscribed(None)
        name, group = receiver.settings.log_id, receiver.shared_group
        notifier.status(f"MQTT worker {name} subscribed (group {group})")
        log.info("MQTT worker %s subscribed (group %s)", name, group)

    announcing = asyncio.create_task(announce(), name="mqtt-worker-announce")
    try:
        await supervisor.run(stop)
    except SupervisorGaveUp as exc:
        log.critical("MQTT worker %s gave up: %s", receiver.settings.log_id, exc)
        return 1
    finally:
        announcing.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        notifier.close()
    return 0
