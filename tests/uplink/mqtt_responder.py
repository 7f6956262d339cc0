"""A test-side receiver that plays the central's MQTT wire behaviour (contract sections 3 and 4) against a
real Mosquitto, with the central's broker identity: it takes file-transfer commands under
``evidence/stations/+/$file-async/...`` through a shared subscription, stores segments in memory (checking
each segment's SHA-256, and size and SHA-256 at fin), answers with EMQX result JSON on
``$file-response/<station>``, and answers API requests on ``evidence/stations/<station>/api/reply``.

It is as unkind as the field when asked (``faults``): results dropped, duplicated, held and released out of
order, garbled; replies for another request id; replies garbled; a fin refused; a transfer cancelled. The
station's transport code runs unchanged against it; only the central's registrar is missing (API requests
other than transfer-state are answered by ``api_answers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from edge.custody.canonical import canonical_json, parse_json
from edge.mqtt.api import (
    ApiOp,
    ApiReply,
    ApiRequest,
    encode_reply,
    parse_request,
    parse_request_topic,
    reply_topic,
)
from edge.mqtt.client import InboundMessage, MqttClient, MqttSettings
from edge.mqtt.filetransfer import (
    Command,
    FileResponse,
    FinCommand,
    InitCommand,
    ReasonCode,
    SegmentCommand,
    parse_init_payload,
    parse_scoped_topic,
    response_topic,
)
from edge.uplink.policy import Backoff
from tests.mqtt.broker import TOPIC_PREFIX

SHARE = "$share/edge-central"
TRANSFER_FILTER = f"{SHARE}/{TOPIC_PREFIX}/stations/+/$file-async/#"
API_FILTER = f"{SHARE}/{TOPIC_PREFIX}/stations/+/api/request/+"

# What a fault does to the result of one command: "drop" it, send it twice ("dup"), "hold" it until
# release_held() (which sends what is held in reverse order), answer with another reason "code".
Fault = Callable[[str, Command], "str | ReasonCode | None"]
ApiAnswer = Callable[[str, ApiRequest], "tuple[int, Any] | None"]


@dataclass
class Transfer:
    station: str
    file_id: str
    name: str = ""
    size: int | None = None
    checksum: str | None = None
    segments: dict[int, bytes] = field(default_factory=dict)
    complete: bool = False

    def assembled(self) -> bytes:
        out = bytearray()
        for offset in sorted(self.segments):
            if offset != len(out):
                raise AssertionError(f"gap at {len(out)} (next segment at {offset})")
            out += self.segments[offset]
        return bytes(out)


@dataclass
class Responder:
    settings: MqttSettings
    faults: list[Fault] = field(default_factory=list)
    lose: list[Callable[[str, Command], bool]] = field(default_factory=list)
    """Commands that never reach the receiver (lost on the way: not stored, not answered)."""
    api_answers: list[ApiAnswer] = field(default_factory=list)
    transfers: dict[tuple[str, str], Transfer] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter)
    """How often each command topic (bare, e.g. ``$file-async/<id>/<offset>/<sum>``) arrived."""
    order: list[str] = field(default_factory=list)
    """The bare command topics in the order they arrived."""
    requests: list[tuple[str, ApiRequest]] = field(default_factory=list)
    held: list[tuple[str, FileResponse]] = field(default_factory=list)
    answered: Counter[str] = field(default_factory=Counter)
    client: MqttClient | None = None
    relay_url: str | None = None
    merge_runs: bool = False
    """transfer-state answers contiguous segments as one [offset, size] run (the central's form)."""
    """A central in development mode (plain HTTP, station named by a header) to which API requests not
    answered otherwise are relayed: its status and body go back as the reply."""
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.arrived = asyncio.Condition()

    # -- wiring ---------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Responder]:
        client = MqttClient(self.settings, backoff=Backoff(0.05, 0.3, rng=random.Random(3)))
        self.client = client
        runner = asyncio.create_task(client.run())
        try:
            await client.wait_connected(20)
            await client.subscribe(TRANSFER_FILTER, self._on_transfer)
            await client.subscribe(API_FILTER, self._on_request)
            yield self
        finally:
            await client.close()
            await runner
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(predicate)

    async def _notify(self) -> None:
        async with self.arrived:
            self.arrived.notify_all()

    # -- results --------------------------------------------------------------------------------------

    async def publish_raw(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        await self.client.publish(topic, payload)

    async def _result(self, station: str, command: Command, code: ReasonCode) -> None:
        description = "success" if code is ReasonCode.SUCCESS else code.name.lower()
        response = FileResponse(command.topic, 0, code, description)
        verdict: str | ReasonCode | None = None
        for fault in self.faults:
            verdict = fault(station, command)
            if verdict is not None:
                break
        if isinstance(verdict, ReasonCode):
            response = FileResponse(command.topic, 0, verdict, verdict.name.lower())
            verdict = None
        if verdict == "drop":
            return
        if verdict == "hold":
            self.held.append((station, response))
            await self._notify()
            return
        await self.publish_raw(response_topic(station), response.to_payload())
        self.answered[command.topic] += 1
        if verdict == "dup":
            await self.publish_raw(response_topic(station), response.to_payload())

    async def release_held(self) -> None:
        """Send every held result, newest first (out of order)."""
        held, self.held = self.held, []
        for station, response in reversed(held):
            await self.publish_raw(response_topic(station), response.to_payload())
            self.answered[response.topic] += 1

    # -- file transfer --------------------------------------------------------------------------------

    async def _on_transfer(self, message: InboundMessage) -> None:
        station, command = parse_scoped_topic(f"{TOPIC_PREFIX}/stations", message.topic)
        if any(lost(station, command) for lost in self.lose):
            return
        self.seen[command.topic] += 1
        self.order.append(command.topic)
        key = (station, command.file_id)
        code = ReasonCode.SUCCESS
        if isinstance(command, InitCommand):
            meta = parse_init_payload(message.payload)
            transfer = self.transfers.setdefault(key, Transfer(station, command.file_id))
            transfer.name, transfer.size, transfer.checksum = meta.name, meta.size, meta.checksum
        elif isinstance(command, SegmentCommand):
            transfer = self.transfers.get(key)  # type: ignore[assignment]
            if transfer is None or hashlib.sha256(message.payload).hexdigest() != command.checksum:
                code = ReasonCode.RESEND
            else:
                transfer.segments[command.offset] = message.payload
        elif isinstance(command, FinCommand):
            transfer = self.transfers.get(key)  # type: ignore[assignment]
            try:
                data = transfer.assembled() if transfer is not None else None
            except AssertionError:
                data = None
            if transfer is None or data is None or len(data) != command.size or (
                hashlib.sha256(data).hexdigest() != (command.checksum or transfer.checksum)
            ):
                code = ReasonCode.RESEND
            else:
                transfer.complete = True
        self._spawn(self._result(station, command, code))
        await self._notify()

    # -- API ------------------------------------------------------------------------------------------

    async def _on_request(self, message: InboundMessage) -> None:
        station, op = parse_request_topic(TOPIC_PREFIX, message.topic)
        request = parse_request(message.payload, op=op)
        self.requests.append((station, request))
        answer: tuple[int, Any] | None = None
        for answering in self.api_answers:
            answer = answering(station, request)
            if answer is not None:
                break
        if answer is None and self.relay_url is not None and op is not ApiOp.TRANSFER_STATE:
            answer = await self._relay(station, request)
        if answer is None and op is ApiOp.TRANSFER_STATE:
            answer = (200, self.transfer_state(station, str(request.body.get("file_id"))))
        if answer is None:
            answer = (404, {"error": "not_found", "detail": f"no test answer for {op.value}"})
        status, body = answer
        if status != 0:  # 0: no answer at all
            payload = encode_reply(ApiReply(request.request_id, status, body))
            self._spawn(self.publish_raw(reply_topic(TOPIC_PREFIX, station), payload))
        await self._notify()

    async def _relay(self, station: str, request: ApiRequest) -> tuple[int, Any] | None:
        assert self.relay_url is not None
        base, body = self.relay_url.rstrip("/"), request.body
        routes: dict[ApiOp, tuple[str, str, bool]] = {
            ApiOp.LEDGER_HEAD: ("GET", f"{base}/v1/stations/{station}/ledger/head", False),
            ApiOp.LEDGER_PUSH: ("POST", f"{base}/v1/stations/{station}/ledger", True),
            ApiOp.LEDGER_PAGE: ("GET", f"{base}/v1/stations/{station}/ledger?after={body.get('after')}"
                                f"&limit={body.get('limit')}", False),
            ApiOp.REGISTER: ("POST", f"{base}/v1/stations/{station}/items", True),
            ApiOp.TREE_HEAD: ("GET", f"{base}/v1/log/tree-head", False),
            ApiOp.CONSISTENCY: ("GET", f"{base}/v1/log/consistency?first={body.get('first')}"
                                f"&second={body.get('second')}", False),
        }
        if request.op not in routes:
            return None
        method, url, with_body = routes[request.op]
        async with aiohttp.ClientSession() as session, session.request(
            method, url, data=canonical_json(body) if with_body else None,
            headers={"X-Edge-Station": station, "Content-Type": "application/json"},
        ) as response:
            raw = await response.read()
            return response.status, parse_json(raw) if raw else None

    def transfer_state(self, station: str, file_id: str) -> dict[str, Any]:
        transfer = self.transfers.get((station, file_id))
        if transfer is None:
            return {"file_id": file_id, "known": False, "segments": [], "complete": False}
        segments = [[offset, len(data)] for offset, data in sorted(transfer.segments.items())]
        if self.merge_runs:  # as the central answers: contiguous segments as one run
            runs: list[list[int]] = []
            for offset, size in segments:
                if runs and runs[-1][0] + runs[-1][1] == offset:
                    runs[-1][1] += size
                else:
                    runs.append([offset, size])
            segments = runs
        return {"file_id": file_id, "known": True, "segments": segments, "complete": transfer.complete}
