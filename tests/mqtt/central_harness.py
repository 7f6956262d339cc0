"""A real central with an [mqtt] section against the real Mosquitto of tests/mqtt/broker.py, and a test-side
station that speaks the MQTT contract on the wire (EMQX file-transfer commands under its own topics,
results on $file-response/S, API requests and replies) with the project's MqttClient and codecs.

The station's own MQTT transport is written elsewhere; this one drives the wire directly, so that a test
can also send what a real station never would (duplicates, wrong checksums, another station's topics).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.central.app import MQTT_RECEIVER
from edge.central.config import CentralConfig
from edge.central.identity import init_central
from edge.central.mqtt_receiver import MqttReceiver
from edge.central.service import RunningCentral, start_central
from edge.custody.canonical import canonical_json, parse_json, sha256_hex
from edge.custody.problems import Problem
from edge.custody.receipt import verify_receipt
from edge.mqtt.api import (
    ApiOp,
    ApiReply,
    ApiRequest,
    encode_request,
    new_request_id,
    parse_reply,
    reply_topic,
)
from edge.mqtt.client import InboundMessage, MqttClient
from edge.mqtt.filetransfer import (
    Command,
    FileMeta,
    FileResponse,
    FinCommand,
    InitCommand,
    Mode,
    SegmentCommand,
    parse_response_payload,
    response_topic,
    scoped_topic,
)
from edge.uplink.policy import Backoff
from tests.central.conftest import Acquired, FakeStation, free_port
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki

WAIT_S = 30.0
NULL_REQUEST_ID = "0" * 32
STATIONS = f"{TOPIC_PREFIX}/stations"


def central_mqtt_config(
    store_dir: Path, broker: MosquittoBroker, pki: TestPki, **mqtt: Any
) -> CentralConfig:
    """A central (id = the broker ACL's central user) on a free HTTPS port, receiving over `broker`."""
    return CentralConfig.model_validate({
        "central": {"id": CENTRAL_ID, "store_dir": str(store_dir)},
        "server": {"listen": "127.0.0.1", "port": free_port(), "names": ["localhost", "127.0.0.1"]},
        "mqtt": {
            "broker_url": f"mqtts://127.0.0.1:{broker.port}",
            "ca_file": str(pki.ca_file),
            "client_bundle_dir": str(pki.client(CENTRAL_ID)),
            "keepalive_s": 10,
            "connect_timeout_s": 5,
            "publish_timeout_s": 10,
            **mqtt,
        },
    })


@dataclass
class MqttCentral:
    config: CentralConfig
    running: RunningCentral

    @property
    def receiver(self) -> MqttReceiver:
        receiver = self.running.app[MQTT_RECEIVER]
        assert isinstance(receiver, MqttReceiver)
        return receiver

    def enroll(self, station: FakeStation) -> None:
        self.running.parts.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)


@asynccontextmanager
async def running_mqtt_central(
    store_dir: Path, broker: MosquittoBroker, pki: TestPki, **mqtt: Any
) -> AsyncIterator[MqttCentral]:
    config = central_mqtt_config(store_dir, broker, pki, **mqtt)
    init_central(config)
    running = await start_central(config)
    central = MqttCentral(config, running)
    try:
        await central.receiver.wait_subscribed(WAIT_S)
        yield central
    finally:
        await running.stop()


def file_id_for(item: str) -> str:
    """The contract's file id: "<item id>.<8 random hex>"."""
    return f"{item}.{secrets.token_hex(4)}"


def init_payload(data: bytes, name: str = "20240131080000_0001.MP4") -> bytes:
    return FileMeta(name=name, size=len(data), checksum=hashlib.sha256(data).hexdigest()).to_payload()


def segment_commands(file_id: str, data: bytes, size: int) -> list[tuple[SegmentCommand, bytes]]:
    return [
        (SegmentCommand(file_id, offset, hashlib.sha256(data[offset:offset + size]).hexdigest(), Mode.ASYNC),
         data[offset:offset + size])
        for offset in range(0, len(data), size)
    ]


@dataclass
class WireStation:
    """A station on the broker with its certificate (CN = station id), speaking the contract's wire."""

    fake: FakeStation
    client: MqttClient
    results: defaultdict[str, list[FileResponse]] = field(default_factory=lambda: defaultdict(list))
    replies: dict[str, ApiReply] = field(default_factory=dict)
    reply_messages: list[InboundMessage] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def station_id(self) -> str:
        return self.fake.station_id

    async def _on_result(self, message: InboundMessage) -> None:
        response = parse_response_payload(message.payload)
        self.results[response.topic].append(response)
        self._changed()

    async def _on_reply(self, message: InboundMessage) -> None:
        self.reply_messages.append(message)
        reply = parse_reply_lenient(message.payload)
        self.replies[reply.request_id] = reply
        self._changed()

    def _changed(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def wait_until(self, predicate: Any, timeout_s: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self.changed.wait()

    async def command(
        self, command: Command, payload: bytes = b"", *, as_station: str | None = None,
        timeout_s: float = WAIT_S,
    ) -> FileResponse:
        """Publish one command under our (or `as_station`'s) topics and return the receiver's result."""
        seen = len(self.results[command.topic])
        topic = scoped_topic(STATIONS, as_station or self.station_id, command.topic)
        await self.client.publish(topic, payload, qos=1)
        await self.wait_until(lambda: len(self.results[command.topic]) > seen, timeout_s)
        return self.results[command.topic][seen]

    async def command_until_answered(
        self, command: Command, payload: bytes = b"", *, attempt_s: float = 5.0, attempts: int = 12
    ) -> FileResponse:
        """A sender's resend: the same command again while no result comes (a receiver or broker away)."""
        for _ in range(attempts):
            try:
                return await self.command(command, payload, timeout_s=attempt_s)
            except TimeoutError:
                continue
        raise TimeoutError(f"no result for {command.topic} after {attempts} attempts")

    async def send_file(
        self, file_id: str, data: bytes, *, segment_bytes: int = 4096, order: Iterable[int] | None = None
    ) -> list[FileResponse]:
        """init, the segments (in `order` of their indices, duplicates allowed), fin; every result."""
        found = [await self.command(InitCommand(file_id, Mode.ASYNC), init_payload(data))]
        segments = segment_commands(file_id, data, segment_bytes)
        for index in (order if order is not None else range(len(segments))):
            command, chunk = segments[index]
            found.append(await self.command(command, chunk))
        found.append(await self.command(FinCommand(file_id, len(data), sha256_hex(data), Mode.ASYNC)))
        return found

    async def request(
        self, op: ApiOp | str, body: dict[str, Any] | None = None, *, as_station: str | None = None,
        raw: bytes | None = None, timeout_s: float = WAIT_S, response_topic: str | None = None,
    ) -> ApiReply:
        """An API request on our (or `as_station`'s) request topic; returns the reply with its id (the
        reply goes to the station of the topic: `as_station`'s reply never reaches us with an ACL)."""
        station = as_station or self.station_id
        request_id = new_request_id()
        payload = raw if raw is not None else encode_request(ApiRequest(request_id, ApiOp(op), body or {}))
        topic = f"{STATIONS}/{station}/api/request/{op}"
        await self.client.publish(topic, payload, qos=1,
                                  response_topic=response_topic or reply_topic(TOPIC_PREFIX, station),
                                  correlation_data=request_id.encode("ascii"))
        if as_station is not None:
            return ApiReply(request_id, 100, None)  # answered to `as_station`, not to us
        if raw is not None:
            count = len(self.reply_messages)
            await self.wait_until(lambda: len(self.reply_messages) > count, timeout_s)
            return parse_reply_lenient(self.reply_messages[count].payload)
        await self.wait_until(lambda: request_id in self.replies, timeout_s)
        return self.replies[request_id]

    def register_body(self, acquired: Acquired, file_id: str, *, after: int = 0) -> dict[str, Any]:
        ledger = self.fake.segment(after)
        return {"upload": f"mqtt:{file_id}", "manifest": acquired.manifest, "ledger": ledger}


def parse_reply_lenient(payload: bytes) -> ApiReply:
    """A reply by the codec; one whose request id is null (the request's could not be read) checked by
    hand to the same envelope, its id shown as 32 zeros."""
    doc = parse_json(payload)
    assert isinstance(doc, dict) and set(doc) == {"v", "request_id", "status", "body"}, doc
    if doc["request_id"] is not None:
        return parse_reply(payload)
    assert canonical_json(doc) == payload and doc["v"] == 1
    return ApiReply(NULL_REQUEST_ID, doc["status"], doc["body"])


@asynccontextmanager
async def wire_station(
    fake: FakeStation, broker: MosquittoBroker, pki: TestPki, *, subscribe_as: str | None = None,
    bundle: Path | None = None,
) -> AsyncIterator[WireStation]:
    """`fake` on the broker with its own certificate (the test PKI's, or `bundle`'s); `subscribe_as`
    listens on another station's result and reply topics (only a broker without the ACL lets it)."""
    settings = broker.client_settings(bundle or pki.client(fake.station_id), client_id=fake.station_id)
    client = MqttClient(settings, backoff=Backoff(base_s=0.05, max_s=0.5))
    station = WireStation(fake, client)
    station.task = asyncio.create_task(client.run(), name=f"wire-station-{fake.station_id}")
    listen = subscribe_as or fake.station_id
    try:
        await client.subscribe(response_topic(listen), station._on_result)
        await client.subscribe(reply_topic(TOPIC_PREFIX, listen), station._on_reply)
        yield station
    finally:
        await client.close()
        await asyncio.gather(station.task, return_exceptions=True)


def station_receipt_problems(receipt: dict[str, Any], central: MqttCentral, acquired: Acquired,
                             station_id: str) -> list[Problem]:
    """What the station's uplink checks before it relies on a receipt (edge.uplink.service
    `_receipt_holds`): signatures and proof, item, SHA-256 and station, and that the leaf names our
    manifest."""
    problems = verify_receipt(receipt, central.running.parts.signing_key.public_key(),
                              expected_item=acquired.item, expected_sha256=acquired.sha256,
                              expected_station=station_id)
    leaf = receipt.get("leaf")
    ours = sha256_hex(canonical_json(acquired.manifest))
    if not isinstance(leaf, dict) or leaf.get("manifest_sha256") != ours:
        problems.append(Problem("receipt leaf", "does not name the manifest the station sent"))
    return problems
