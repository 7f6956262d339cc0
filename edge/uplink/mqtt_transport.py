"""The ``mqtt`` transport: evidence, registration and witnessing through the agency's MQTT broker.

Content goes by EMQX "File Transfer over MQTT", asynchronous variant, under the station's own topics
(``P/stations/S/$file-async/{file_id}/...``: contract section 4, codec `edge.mqtt.filetransfer`, planning
`edge.mqtt.segments`); registration and witnessing go as requests of the central's API over MQTT (contract
section 3, codec `edge.mqtt.api`), whose replies carry exactly the HTTP status and JSON body the HTTP API
answers, so they are checked by the same code as HTTP answers (`edge.uplink.central_calls`).

Delivery is what the *receiver* says, never what the broker says. A PUBACK only means the broker took the
message (Mosquitto acknowledges even with no subscriber, with reason 0x10), so:

* a segment counts as stored only when the receiver's result for exactly that segment (its offset and its
  SHA-256 in the command topic) arrives on ``$file-response/S`` with success; ``fin`` likewise, and only
  then is the content :class:`Delivered` (``upload = "mqtt:<file_id>"``);
* a PUBACK 0x10 (no matching subscribers: no receiver listening) ends the attempt at once as
  :class:`RetryLater`; a broker refusal (0x80 and above) too;
* a result that does not come within ``mqtt_result_timeout_s`` after the broker took the segment is
  presumed lost: the segment is sent again (offsets make it idempotent), a few times, then the attempt
  ends as :class:`RetryLater` and the next one resumes;
* results arriving out of order, twice, for commands not awaited (a late answer to a segment already sent
  again) or for other transfers are matched by their whole command topic and otherwise ignored; a garbled
  result or reply is logged and ignored (the wait for the real one times out).

Memory is bounded whatever the file size: at most ``mqtt_segments_in_flight`` segments of the station are
read and not yet confirmed by the receiver (a window shared by every upload of the link), each at most
``mqtt_segment_kb`` and within the broker's packet limit ``mqtt_max_packet_kb``; progress is one bit per
segment (`edge.mqtt.segments.TransferProgress`). paho queues without limit, so the window is also what
bounds paho's queue: a segment is published only while the broker connection is up.

Expiry (MQTT 5). Every API request carries a Message Expiry Interval of ``request_timeout_s`` (the
station waits that long for its reply); every segment and init one of ``SENDS_PER_COMMAND`` times
``mqtt_result_timeout_s``, fin the same times ``request_timeout_s`` (how long the station waits for its
result over all its sends); the abort one of ``request_timeout_s``: the broker drops what it could
not deliver by then, so a central that was away does not work through requests the station gave up on
and segments it sent again meanwhile (the broker queues up to ``max_queued_messages`` for it).

Resuming. After a reconnect, whatever the receiver did not confirm is sent again (the wait for a result
times out, or paho re-sends an unacknowledged QoS 1 publish in the persistent session). After a restart of
the station, the spool's resume reference ``mqtt:<file_id>`` names the transfer; the receiver's
``transfer-state`` answer (our extension) says which segments it holds, and only the others are sent. A
central that cannot answer it (or forgot the transfer) gets the transfer again from ``init``.

Connection. The transport has its own broker connection, client id ``<mqtt client id>-uplink`` for the
agent's uplink (the station's secret id: edge.mqtt.client_ids), ``<station>-verify-<random>`` and
``<station>-witness-<random>`` (fresh each run) for `edge verify` and `edge witness clear`, presenting the
station's certificate. The broker's ACL confines a client by its certificate's CN
(``%u`` with ``use_identity_as_username``), not by its client id, so this connection has exactly the
station's rights (its own topics, and reading ``$file-response/S``); measured against the shipped
configuration in tests/uplink/test_mqtt_transport.py. A separate connection keeps evidence segments from
queueing in front of telemetry and commands on the agent's connection, and lets the command-line tools
ask the central while the agent runs (two clients with one id would take each other's session over). A
composition root may still hand in a running :class:`MqttClient` to share (``client=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from edge.config.station import StationConfig
from edge.custody.canonical import canonical_json
from edge.custody.ledger import Checkpoint
from edge.custody.text import printable
from edge.mqtt.api import (
    MAX_PAYLOAD_BYTES,
    ApiCodecError,
    ApiOp,
    ApiReply,
    ApiRequest,
    encode_request,
    new_request_id,
    parse_reply,
    reply_topic,
    request_topic,
)
from edge.mqtt.client import (
    ConnectionState,
    ConnectionStatus,
    InboundMessage,
    MqttClient,
    MqttError,
    MqttSettings,
    ProtocolVersion,
    PublishRefused,
    PublishTimeout,
)
from edge.mqtt.client_ids import fresh_client_id
from edge.mqtt.filetransfer import (
    AbortCommand,
    Command,
    FileMeta,
    FileResponse,
    FileTransferError,
    Mode,
    check_file_id,
    parse_response_payload,
    publish_packet_bytes,
    response_topic,
    scoped_topic,
)
from edge.mqtt.segments import (
    Action,
    PlanError,
    SegmentPlan,
    TransferProgress,
    action_for,
    plan_segments,
    read_segment,
)
from edge.uplink.central_calls import (
    ApiLinkCalls,
    CentralCalls,
    CentralOp,
    CentralRejected,
    CentralUnavailable,
    check_answer,
)
from edge.uplink.policy import Backoff, RateLimiter
from edge.uplink.transport import (
    UPLOAD_LOST,
    ContentUnreadable,
    Delivered,
    LedgerAnswer,
    LedgerSegment,
    NotDone,
    Parcel,
    Refused,
    RegisterOutcome,
    RetryLater,
    UploadOutcome,
)

__all__ = ["MQTT_UPLOAD_PREFIX", "MqttLink", "MqttTransport", "file_id_of"]

log = logging.getLogger(__name__)

# How registration and the spool name an upload that went over MQTT: "mqtt:<file_id>".
MQTT_UPLOAD_PREFIX = "mqtt:"
# A segment (or init, fin) sent this many times without the receiver's result ends the attempt.
SENDS_PER_COMMAND = 3
# Rounds of "every segment again" (a fin the receiver refused) within one attempt.
MAX_ROUNDS = 2
# Sessions of the command-line tools' connections: long enough to ride out a reconnect, short enough
# that the broker does not keep them for a week.
_TOOL_SESSION_EXPIRY_S = 600
# What a receiver's cancel may say about the station itself (its description starts "<code>: "): not
# enrolled, revoked. Only a wording: never final, the uplink retries as for any station-level refusal.
_STATION_REFUSALS = frozenset({"unknown_station", "station_revoked", "wrong_station", "unauthenticated",
                               "forbidden"})
# The broker's reason codes that say this station may not do this (the ACL): a station-level refusal.
_NOT_AUTHORISED = frozenset({0x87})
_NO_SUBSCRIBERS = 0x10
# A Message Expiry Interval property: its identifier byte and a four-byte integer.
_EXPIRY_PROPERTY_BYTES = 5
# Bound on the transfer-state answer's segment list (beyond the plan's count it is damage).
_STATE_SPARE = 16
_RANDOM_HEX = 8
# A request's topic, properties, envelope and remaining-length field: well within this.
_REQUEST_MARGIN_BYTES = 1024


def file_id_of(upload: str) -> str | None:
    """The file id of an ``mqtt:<file_id>`` upload reference; None for any other reference."""
    if not upload.startswith(MQTT_UPLOAD_PREFIX):
        return None
    try:
        return check_file_id(upload[len(MQTT_UPLOAD_PREFIX):])
    except FileTransferError:
        return None


class _Unanswered(Exception):
    """This attempt ends as an outcome (RetryLater, Refused) decided deep inside."""

    def __init__(self, outcome: RetryLater | Refused) -> None:
        super().__init__(str(outcome))
        self.outcome = outcome


class MqttTransport:
    """File transfer and the central's API through the ``[mqtt]`` broker, as station ``config.station.id``."""

    name = "mqtt"

    def __init__(
        self,
        config: StationConfig,
        *,
        limiter: RateLimiter | None = None,
        purpose: str = "uplink",
        client: MqttClient | None = None,
        settings: MqttSettings | None = None,
    ) -> None:
        """``client``: a running client to share (its owner runs and closes it); otherwise the transport
        connects itself with ``settings`` (default: the station's, client id ``<client id>-<purpose>``)."""
        if not config.mqtt.enabled:
            raise ValueError("uplink transport 'mqtt' needs [mqtt] broker_url")
        self.config = config
        self.station_id = config.station.id
        self.limiter = limiter
        self.purpose = purpose
        self._client = client
        self._settings = settings

    def __repr__(self) -> str:
        return f"MqttTransport(broker={self.config.mqtt.broker_url!r}, station={self.station_id!r})"

    def settings(self) -> MqttSettings:
        """The transport's own connection: the station's certificate, client id ``<id>-<purpose>``."""
        if self._settings is not None:
            return self._settings
        from edge.mqtt.station_settings import station_mqtt_settings

        uplink = self.purpose == "uplink"
        base = station_mqtt_settings(self.config, create_secret=uplink)
        expiry = base.session_expiry_s if uplink else min(base.session_expiry_s, _TOOL_SESSION_EXPIRY_S)
        # The agent's: under the station's secret id. A command-line tool's: a fresh random one per run,
        # so that no client can name (and take over) either session (edge.mqtt.client_ids).
        client_id = f"{base.client_id}-uplink" if uplink else fresh_client_id(self.station_id, self.purpose)
        self._settings = replace(base, client_id=client_id, session_expiry_s=expiry, will=None)
        return self._settings

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[MqttLink]:
        async with contextlib.AsyncExitStack() as stack:
            client = self._client
            if client is None:
                mqtt = self.config.mqtt
                client = MqttClient(self.settings(), backoff=Backoff(mqtt.backoff_base_s, mqtt.backoff_max_s))
                # A context of its own: the client's network thread beats the liveness of the supervised
                # task it runs in, and must not vouch for the uplink's loop.
                runner = asyncio.create_task(client.run(), name=f"mqtt-{self.purpose}-{self.station_id}",
                                             context=contextvars.Context())

                async def stop_client(client: MqttClient = client) -> None:
                    await client.close()
                    with contextlib.suppress(asyncio.CancelledError, MqttError):
                        await runner

                stack.push_async_callback(stop_client)
            link = MqttLink(client, self.config, limiter=self.limiter)
            link.start()
            stack.push_async_callback(link.stop)
            yield link


class _MqttCentral(CentralCalls):
    """The central's calls as requests over MQTT (:meth:`MqttLink.request`)."""

    def __init__(self, link: MqttLink) -> None:
        super().__init__(f"{link.prefix} via {link.client.settings.host}:{link.client.settings.port}")
        self.link = link

    async def call(self, op: CentralOp, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.link.call(ApiOp(op.value), body)


@dataclass
class _Transfer:
    """One file transfer in progress: its plan, what the receiver confirmed, the results awaited."""

    plan: SegmentPlan
    progress: TransferProgress
    waiting: dict[str, asyncio.Future[FileResponse]]
    bytes_sent: int = 0

    def expect(self, command: Command) -> asyncio.Future[FileResponse]:
        future = self.waiting.get(command.topic)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self.waiting[command.topic] = future
        return future

    def answered(self, response: FileResponse) -> bool:
        """The receiver's result: True when it was awaited (exactly its command, offset and checksum
        included)."""
        future = self.waiting.get(response.topic)
        if future is None or future.done():
            return False
        future.set_result(response)
        return True


class MqttLink(ApiLinkCalls):
    """One broker connection: file transfers and API requests of one station."""

    via = "MQTT"
    wire_errors = (MqttError,)

    def __init__(
        self, client: MqttClient, config: StationConfig, *, limiter: RateLimiter | None = None
    ) -> None:
        self.client = client
        self.station_id = config.station.id
        self.prefix = config.mqtt.topic_prefix
        # File-transfer commands go under P/stations/S/ (contract section 4): scoped_topic's scope.
        self.scope = f"{self.prefix}/stations"
        self.uplink = config.uplink
        self.limiter = limiter
        self.mqtt5 = client.settings.protocol is ProtocolVersion.V5
        self.max_packet_bytes = self.uplink.mqtt_max_packet_kb * 1024
        self.request_timeout_s = self.uplink.request_timeout_s
        self.result_timeout_s = self.uplink.mqtt_result_timeout_s
        self.reply_topic = reply_topic(self.prefix, self.station_id)
        self.response_topic = response_topic(self.station_id)
        self._pending: dict[str, asyncio.Future[ApiReply]] = {}
        self._transfers: dict[str, _Transfer] = {}
        self._window = asyncio.Semaphore(self.uplink.mqtt_segments_in_flight)
        self._subscribing: list[asyncio.Task[None]] = []
        self.garbled = 0
        """Replies and results that could not be parsed (each logged)."""
        super().__init__(_MqttCentral(self))

    def __repr__(self) -> str:
        return f"MqttLink({self.client!r}, station={self.station_id!r})"

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the replies and the transfer results; the subscriptions are confirmed (and made
        again after a reconnect without session) by the client, while requests wait for them."""
        for topic_filter, handler in ((self.reply_topic, self._on_reply),
                                      (self.response_topic, self._on_file_response)):
            self._subscribing.append(asyncio.create_task(
                self.client.subscribe(topic_filter, handler, timeout_s=self.request_timeout_s),
                name=f"mqtt-subscribe-{topic_filter}",
            ))

    async def stop(self) -> None:
        for task in self._subscribing:
            task.cancel()
        results = await asyncio.gather(*self._subscribing, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.debug("MQTT subscription ended: %s", result)
        for future in self._pending.values():
            future.cancel()

    async def _ready(self, what: str) -> None:
        """Until the connection is up and our subscriptions are in effect (a reply published before would
        be lost); raises :class:`_Unanswered` (RetryLater) after the request timeout."""
        for task in self._subscribing:
            if task.done() and not task.cancelled() and isinstance(task.exception(), MqttError):
                raise _Unanswered(RetryLater(f"MQTT {what}: {task.exception()}"))

        def usable(status: ConnectionStatus) -> bool:
            return status.state is ConnectionState.CONNECTED and status.unconfirmed_subscriptions == 0

        try:
            await self.client.wait_for(usable, self.request_timeout_s)
        except TimeoutError:
            status = self.client.status
            raise _Unanswered(RetryLater(
                f"MQTT {what}: the broker connection is {status.state.value}"
                f"{' (' + status.reason + ')' if status.reason else ''}"
                f"{'' if status.unconfirmed_subscriptions == 0 else ', subscriptions not in effect'}"
            )) from None

    # -- the central's API over MQTT ------------------------------------------------------------------

    async def call(self, op: ApiOp, body: Mapping[str, Any]) -> dict[str, Any]:
        """One API request and its reply, checked like an HTTP answer; raises CentralUnavailable or
        CentralRejected."""
        try:
            reply = await self.request(op, body)
        except _Unanswered as exc:
            outcome = exc.outcome
            if isinstance(outcome, Refused):  # the broker's refusal (403-like) or one too large for it
                status = 403 if outcome.station_level else 413
                raise CentralRejected(status, outcome.code, outcome.detail) from None
            raise CentralUnavailable(outcome.reason, retry_after_s=outcome.retry_after_s,
                                     answered=outcome.answered) from None
        doc = reply.body if isinstance(reply.body, dict) else {}
        raw = canonical_json(reply.body)
        # Only the central's API publishes on our reply topic: a busy status is its answer.
        return check_answer(reply.status, doc, raw, what=f"MQTT {op.value}", from_central=True)

    async def request(self, op: ApiOp, body: Mapping[str, Any]) -> ApiReply:
        """Publish a request and wait for the reply with its request id; raises :class:`_Unanswered`."""
        request_id = new_request_id()
        topic = request_topic(self.prefix, self.station_id, op)
        properties = ((1 + 2 + len(self.reply_topic.encode())) + (1 + 2 + len(request_id))
                      + _EXPIRY_PROPERTY_BYTES) if self.mqtt5 else 0
        # Room for the topic, the properties and a remaining-length field that grows with the payload.
        room = self.max_packet_bytes - publish_packet_bytes(topic, 0, properties_bytes=properties,
                                                            mqtt5=self.mqtt5) - 4
        try:
            payload = encode_request(ApiRequest(request_id, op, dict(body)), max_bytes=room)
        except ApiCodecError as exc:
            # Too large for the broker (a long ledger segment): nothing the wire can carry; said, and
            # retried later by the core like any refusal that is not final.
            raise _Unanswered(Refused(code="request_too_large", detail=str(exc)[:300], via="MQTT")) from None
        await self._ready(op.value)
        future: asyncio.Future[ApiReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(self.request_timeout_s):
                code = await self._publish(
                    topic, payload, what=f"request {op.value}",
                    response_topic=self.reply_topic if self.mqtt5 else None,
                    correlation_data=request_id.encode("ascii") if self.mqtt5 else None,
                    message_expiry_s=self._expiry_s(self.request_timeout_s),
                )
                if code == _NO_SUBSCRIBERS:
                    raise _Unanswered(RetryLater(
                        f"MQTT {op.value}: no central is listening (the broker's PUBACK said 0x10, no "
                        "matching subscribers)"
                    ))
                return await future
        except TimeoutError:
            raise _Unanswered(RetryLater(
                f"MQTT {op.value}: no reply from the central within {self.request_timeout_s:g} s"
            )) from None
        finally:
            self._pending.pop(request_id, None)

    def _expiry_s(self, waited_s: float) -> int | None:
        """The MQTT 5 Message Expiry of a message the station waits ``waited_s`` for (its reply, or its
        result over every send of it): after that the station has given up on it or sent it again, so the
        broker drops it rather than hand it to a central catching up after an outage. None under 3.1.1."""
        return max(1, math.ceil(waited_s)) if self.mqtt5 else None

    async def _publish(self, topic: str, payload: bytes, *, what: str, **properties: Any) -> int:
        """Publish at QoS 1; the broker's PUBACK reason code. A broker refusal (the ACL, a packet too
        large, a quota) or a lost connection ends the attempt."""
        try:
            ack = await self.client.publish(topic, payload, qos=1, **properties)
        except PublishRefused as exc:
            if exc.reason_code in _NOT_AUTHORISED:
                raise _Unanswered(Refused(
                    code="broker_not_authorised", detail=f"{what}: {exc}", station_level=True, via="MQTT"
                )) from None
            raise _Unanswered(RetryLater(f"MQTT {what}: {exc}")) from None
        except PublishTimeout as exc:
            raise _Unanswered(RetryLater(f"MQTT {what}: {exc}")) from None
        except MqttError as exc:
            raise _Unanswered(RetryLater(f"MQTT {what}: {type(exc).__name__}: {exc}")) from None
        return ack.reason_code

    @property
    def max_reply_bytes(self) -> int:
        """The largest API reply taken: the broker's Maximum Packet Size (its CONNACK), or the shipped
        broker's 2 MiB when it named none. Not ``mqtt_max_packet_kb``: that bounds what the station sends,
        while the central may answer (a ledger page, say) with anything the broker carries."""
        broker_limit = getattr(self.client, "_broker_max_packet", None)
        return broker_limit if isinstance(broker_limit, int) and broker_limit > 0 else MAX_PAYLOAD_BYTES

    async def _on_reply(self, message: InboundMessage) -> None:
        if message.topic != self.reply_topic:
            return
        try:
            reply = parse_reply(message.payload, max_bytes=self.max_reply_bytes)
        except ApiCodecError as exc:
            self.garbled += 1
            log.warning("station %s: an MQTT API reply is garbled and ignored: %s", self.station_id, exc)
            return
        future = self._pending.get(reply.request_id)
        if future is None or future.done():
            log.debug("station %s: an MQTT API reply for no request of ours (%s)", self.station_id,
                      reply.request_id)
            return
        future.set_result(reply)

    # -- ledger segments within the broker's packet limit --------------------------------------------

    async def push_ledger(self, segment: LedgerSegment) -> LedgerAnswer:
        """A segment too large for one packet goes as several, each ending at a seq the station signed a
        checkpoint at (the central takes each as any push)."""
        answer: LedgerAnswer | None = None
        for part in self._parts(segment, reserve_bytes=0):
            answer = await super().push_ledger(part)
        assert answer is not None
        return answer

    async def register(
        self, upload: str, manifest: Mapping[str, Any], segment: LedgerSegment | None
    ) -> RegisterOutcome:
        """A registration whose ledger segment does not fit in one packet with the manifest: the leading
        parts of the segment are pushed first, the registration carries the rest."""
        if segment is not None:
            parts = self._parts(segment, reserve_bytes=len(canonical_json(manifest)))
            try:
                for part in parts[:-1]:
                    await super().push_ledger(part)
            except NotDone as exc:
                return exc.outcome
            segment = parts[-1]
        return await super().register(upload, manifest, segment)

    def _parts(self, segment: LedgerSegment, *, reserve_bytes: int) -> list[LedgerSegment]:
        """``segment`` cut at signed checkpoints into parts whose JSON fits a request (with
        ``reserve_bytes`` of other body); one part when it fits or cannot be cut."""
        budget = self.max_packet_bytes - _REQUEST_MARGIN_BYTES - reserve_bytes
        entry_bytes = [len(canonical_json(entry.to_dict())) + 1 for entry in segment.entries]
        checkpoint_bytes = len(canonical_json(segment.checkpoint.to_dict()))
        signed_bytes = sum(len(canonical_json(cp.to_dict())) + 1 for cp in segment.signed)
        if sum(entry_bytes) + checkpoint_bytes + signed_bytes <= budget or not segment.entries:
            return [segment]
        by_seq: dict[int, list[Checkpoint]] = {}
        for checkpoint in segment.signed:
            by_seq.setdefault(checkpoint.seq, []).append(checkpoint)
        by_seq.setdefault(segment.checkpoint.seq, []).append(segment.checkpoint)
        parts: list[LedgerSegment] = []
        start = 0
        while start < len(segment.entries):
            size, cut = 0, None
            for index in range(start, len(segment.entries)):
                seq = segment.entries[index].seq
                size += entry_bytes[index] + sum(len(canonical_json(cp.to_dict())) + 1
                                                 for cp in by_seq.get(seq, ()))
                if size + checkpoint_bytes > budget and cut is not None:
                    break
                if seq in by_seq:
                    cut = index
            if cut is None:
                return [segment]  # no checkpoint to end a part at: as it is (the central refuses or not)
            entries = segment.entries[start:cut + 1]
            first, last = entries[0].seq, entries[-1].seq
            parts.append(LedgerSegment(
                entries, by_seq[last][-1], [cp for cp in segment.signed if first <= cp.seq <= last]
            ))
            start = cut + 1
        return parts

    # -- content: EMQX file transfer ------------------------------------------------------------------

    def upload_name(self, upload: str) -> str:
        if upload.startswith(MQTT_UPLOAD_PREFIX):
            return upload
        return upload.rstrip("/").rsplit("/", 1)[-1]  # a tus upload URL: the central names it so

    async def abandon(self, upload: str) -> None:
        """Best effort: the receiver may drop what it holds of the transfer (an abort, and the API's
        abandon)."""
        with contextlib.suppress(Exception):
            file_id = file_id_of(upload)
            if file_id is not None:
                abort = AbortCommand(file_id, Mode.ASYNC)
                topic = scoped_topic(self.scope, self.station_id, abort.topic)
                await self._publish(topic, b"", what="abort",
                                    message_expiry_s=self._expiry_s(self.request_timeout_s))
            await self.call(ApiOp.ABANDON, {"upload": self.upload_name(upload)})

    async def upload(self, parcel: Parcel, on_resume: Callable[[str], None]) -> UploadOutcome:
        file_id = file_id_of(parcel.resume or "")
        resuming = file_id is not None and file_id.startswith(f"{parcel.item}.")
        if not resuming or file_id is None:
            file_id = _new_file_id(parcel.item)
            # Durable before any byte goes out: a crash from here on resumes this transfer.
            on_resume(f"{MQTT_UPLOAD_PREFIX}{file_id}")
        if file_id in self._transfers:
            return RetryLater(f"item {parcel.item}: transfer {file_id} is already in progress on this link",
                              answered=True)
        try:
            # The plan measures the bare command topic; ours carries the station's scope before it (and
            # a longer topic may lengthen the remaining-length field by a byte).
            scope_bytes = len(scoped_topic(self.scope, self.station_id, "").encode("utf-8")) + 1
            plan = plan_segments(
                file_id, parcel.size, self.max_packet_bytes - scope_bytes, mode=Mode.ASYNC, mqtt5=self.mqtt5,
                properties_bytes=_EXPIRY_PROPERTY_BYTES if self.mqtt5 else 0,
                preferred_bytes=self.uplink.mqtt_segment_kb * 1024,
            )
        except PlanError as exc:
            return Refused(code="segment_plan", detail=str(exc), via="MQTT")
        transfer = _Transfer(plan, TransferProgress(plan), {})
        self._transfers[file_id] = transfer
        try:
            fd = os.open(parcel.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._transfers.pop(file_id, None)
            raise ContentUnreadable(f"item {parcel.item}: cannot open the stored copy: {exc}") from exc
        try:
            resumed_from = await self._transfer(parcel, transfer, fd, resuming)
        except _Unanswered as exc:
            return exc.outcome
        finally:
            os.close(fd)
            self._transfers.pop(file_id, None)
            for future in transfer.waiting.values():
                future.cancel()
        return Delivered(f"{MQTT_UPLOAD_PREFIX}{file_id}", bytes_sent=transfer.bytes_sent,
                         resumed_from=resumed_from)

    async def _transfer(self, parcel: Parcel, transfer: _Transfer, fd: int, resuming: bool) -> int:
        """init (unless the receiver holds the transfer), the segments it lacks, fin; returns the bytes the
        receiver held at the start."""
        plan = transfer.plan
        known = False
        if resuming:
            known = await self._restore(transfer)
        resumed_from = _acknowledged_bytes(transfer)
        if not known:
            meta = FileMeta(name=_init_name(parcel), size=plan.file_size, checksum=parcel.sha256,
                            user_data={"item": parcel.item})
            await self._command(transfer, plan.init_command(), meta.to_payload(), "init",
                                self.result_timeout_s)
        for _ in range(MAX_ROUNDS):
            if not transfer.progress.complete:
                await self._send_segments(transfer, fd)
            fin = plan.fin_command(parcel.sha256)
            action = await self._command(transfer, fin, b"", "fin", self.request_timeout_s)
            if action is Action.DONE:
                return resumed_from
            transfer.progress.reset()  # the receiver wants every segment again
        raise _Unanswered(RetryLater(
            f"item {parcel.item}: the receiver refused fin of {plan.file_id} after every segment was sent "
            "again", answered=True
        ))

    async def _restore(self, transfer: _Transfer) -> bool:
        """What the receiver holds of a transfer this station began before (a restart); True when it knows
        it. A central that cannot say is sent the transfer from init again."""
        plan = transfer.plan
        try:
            doc = await self.call(ApiOp.TRANSFER_STATE, {"file_id": plan.file_id})
        except CentralRejected as exc:
            log.warning("station %s: transfer %s: the central does not say what it holds (%s); sending it "
                        "again from init", self.station_id, plan.file_id, exc)
            return False
        except CentralUnavailable as exc:
            raise _Unanswered(RetryLater(str(exc), exc.retry_after_s, answered=exc.answered)) from None
        segments = doc.get("segments")
        if (doc.get("file_id") != plan.file_id or not isinstance(doc.get("known"), bool)
                or not isinstance(doc.get("complete"), bool) or not isinstance(segments, list)
                or len(segments) > plan.count + _STATE_SPARE):
            log.warning("station %s: transfer %s: the central's transfer state is malformed; sending it "
                        "again from init", self.station_id, plan.file_id)
            return False
        if not doc["known"]:
            return False
        for pair in segments:
            if not (isinstance(pair, list) and len(pair) == 2 and all(type(v) is int for v in pair)):
                continue
            start, size = pair
            if start < 0 or size <= 0 or start + size > plan.file_size:
                continue
            # A held range (one segment, or a run of them the receiver merged): every segment of this plan
            # wholly inside it counts; anything else is sent again.
            index = -(-start // plan.segment_bytes)
            while index < plan.count:
                offset, length = plan.bounds(index)
                if offset + length > start + size:
                    break
                transfer.progress.acknowledge(offset)
                index += 1
        return True

    async def _send_segments(self, transfer: _Transfer, fd: int) -> None:
        """Every segment not confirmed, at most the window's worth at a time; a failure of one ends the
        round (the others are cancelled) with its outcome."""
        tasks: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            self._window.release()
            if not task.cancelled() and task.exception() is not None and not failure:
                failure.append(task.exception())  # type: ignore[arg-type]

        try:
            for index in transfer.progress.missing():
                await self._window.acquire()
                if failure:
                    self._window.release()
                    break
                task = asyncio.create_task(self._send_segment(transfer, fd, index))
                tasks.add(task)
                task.add_done_callback(finished)
            while tasks and not failure:
                await asyncio.wait(set(tasks), return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        if failure:
            raise failure[0]

    async def _send_segment(self, transfer: _Transfer, fd: int, index: int) -> None:
        plan = transfer.plan
        for _ in range(SENDS_PER_COMMAND):
            try:
                segment = await asyncio.to_thread(read_segment, fd, plan, index)
            except (PlanError, OSError) as exc:
                raise ContentUnreadable(f"transfer {plan.file_id}: {exc}") from exc
            if self.limiter is not None:
                await self.limiter.acquire(len(segment.data))
            waiter = transfer.expect(segment.command)
            await self._ready(f"segment {segment.offset} of {plan.file_id}")
            expiry_s = self._expiry_s(self.result_timeout_s * SENDS_PER_COMMAND)
            code = await self._publish(scoped_topic(self.scope, self.station_id, segment.command.topic),
                                       segment.data, what=f"segment {segment.offset} of {plan.file_id}",
                                       message_expiry_s=expiry_s)
            transfer.bytes_sent += len(segment.data)
            command = segment.command
            del segment  # the broker has it: the window holds no bytes while the result is awaited
            if code == _NO_SUBSCRIBERS:
                raise _Unanswered(RetryLater(
                    f"transfer {plan.file_id}: no receiver is listening (the broker's PUBACK said 0x10, no "
                    "matching subscribers)"
                ))
            try:
                async with asyncio.timeout(self.result_timeout_s):
                    result = await waiter
            except TimeoutError:
                continue  # the result (or the segment) was lost: send it again
            action = action_for(command, result.reason_code)
            if action is Action.DONE:
                transfer.progress.acknowledge(command.offset)
                return
            self._act_on(action, plan, f"segment {command.offset}", result)
        raise _Unanswered(RetryLater(
            f"transfer {plan.file_id}: no success from the receiver for the segment at offset "
            f"{plan.bounds(index)[0]} after {SENDS_PER_COMMAND} sends"
        ))

    async def _command(
        self, transfer: _Transfer, command: Command, payload: bytes, what: str, timeout_s: float
    ) -> Action:
        """Send init or fin until the receiver answers it; DONE, or RESEND_ALL for a fin it refused."""
        plan = transfer.plan
        for _ in range(SENDS_PER_COMMAND):
            waiter = transfer.expect(command)
            await self._ready(f"{what} of {plan.file_id}")
            code = await self._publish(scoped_topic(self.scope, self.station_id, command.topic), payload,
                                       what=f"{what} of {plan.file_id}",
                                       message_expiry_s=self._expiry_s(SENDS_PER_COMMAND * timeout_s))
            if code == _NO_SUBSCRIBERS:
                raise _Unanswered(RetryLater(
                    f"transfer {plan.file_id}: no receiver is listening (the broker's PUBACK to {what} said "
                    "0x10, no matching subscribers)"
                ))
            try:
                async with asyncio.timeout(timeout_s):
                    result = await waiter
            except TimeoutError:
                continue
            action = action_for(command, result.reason_code)
            if action in (Action.DONE, Action.RESEND_ALL):
                return action
            self._act_on(action, plan, what, result)
        raise _Unanswered(RetryLater(
            f"transfer {plan.file_id}: no answer from the receiver to {what} after {SENDS_PER_COMMAND} sends"
        ))

    def _act_on(self, action: Action, plan: SegmentPlan, what: str, result: FileResponse) -> None:
        """A result other than success: cancel ends the transfer (a new one starts; a refusal of the station
        itself, as the receiver describes it, is station-level), a quota pauses the item, "resend" is the
        caller's next turn; "every segment again" ends the round."""
        said = printable(result.reason_description)[:300]
        if action is Action.CANCEL:
            word = result.reason_description.split(":", 1)[0].strip()
            if word in _STATION_REFUSALS:
                raise _Unanswered(Refused(code=word, detail=f"transfer {plan.file_id} ({what}): {said}",
                                          station_level=True, via="MQTT"))
            raise _Unanswered(Refused(
                code=UPLOAD_LOST, via="MQTT",
                detail=f"the receiver cancelled transfer {plan.file_id} (at {what}): {said}",
            ))
        if action is Action.PAUSE_AND_RESEND:
            raise _Unanswered(RetryLater(
                f"transfer {plan.file_id}: the receiver's quota is exceeded (at {what})", answered=True
            ))
        if action is Action.RESEND_ALL:
            raise _Unanswered(RetryLater(
                f"transfer {plan.file_id}: the receiver asked for every segment again (at {what})",
                answered=True,
            ))

    async def _on_file_response(self, message: InboundMessage) -> None:
        if message.topic != self.response_topic:
            return
        try:
            response = parse_response_payload(message.payload)
            command = response.command
        except FileTransferError as exc:
            self.garbled += 1
            log.warning("station %s: a file-transfer result is garbled and ignored: %s", self.station_id, exc)
            return
        transfer = self._transfers.get(command.file_id)
        if transfer is None or command.mode is not Mode.ASYNC:
            return  # another link's transfer, one already over, or not ours at all
        transfer.answered(response)


def _acknowledged_bytes(transfer: _Transfer) -> int:
    plan, progress = transfer.plan, transfer.progress
    if not progress.acknowledged:
        return 0
    return sum(plan.bounds(i)[1] for i in range(plan.count) if progress.is_acknowledged(i))


def _new_file_id(item: str) -> str:
    """``<item>.<8 random hex>``: a new id for every new transfer of the item (contract section 4)."""
    candidate = f"{item}.{secrets.token_hex(_RANDOM_HEX // 2)}"
    try:
        return check_file_id(candidate)
    except FileTransferError:
        # An item id outside the file-id grammar (never made by this station): its hash stands in.
        import hashlib

        return f"{hashlib.sha256(item.encode()).hexdigest()[:32]}.{secrets.token_hex(_RANDOM_HEX // 2)}"


def _init_name(parcel: Parcel) -> str:
    """The init ``name``: the original file name, cut to EMQX's 240 bytes of UTF-8 (metadata only; the
    receiver never uses it as a path); the item id when there is none."""
    name = parcel.original_name.replace("\x00", "")
    data = name.encode("utf-8", "replace")[:240]
    name = data.decode("utf-8", "ignore")
    return name or parcel.item
