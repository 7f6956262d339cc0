"""The station API over MQTT, central side: requests on ``P/stations/S/api/request/{op}`` answered on
``P/stations/S/api/reply`` (contract section 3; the codec is :mod:`edge.mqtt.api`).

Each op runs exactly what its HTTP endpoint runs, for the station S of the request's topic: the broker's
ACL confines a station to its own topics, so the topic's station level is the publisher (the only thing
that names the station; the payload never does). S must be enrolled and active, checked the way
:class:`~edge.central.auth.Authenticator` checks a certificate's station (a revoked station is refused at
once). The Registrar's signature checks of manifests and checkpoints against S's enrolled key are the
central's own, independent check that S sent what it registers: a station publishing under another's
topics (a broker without the ACL) gets that station's refusals, and its reply goes to that station.

The reply's ``status`` and ``body`` are the HTTP endpoint's: refusals are ``{"error", "detail"}`` with the
status of :data:`edge.central.registration.HTTP_STATUS`, and ``"refusal"`` (signed) when final, as
:func:`edge.central.app.rejection_document` builds them for HTTP. A request that is not what the
contract says (too large, not canonical JSON, unknown members, wrong op) gets a 400-style reply naming
what was wrong, recorded like the HTTP path's refusals; whatever comes, the receiver keeps running and
answers nothing anywhere but the reply topic of the request's station. A refusal names at most a few of
what it found (and how many), and every detail is bounded (:func:`edge.central.registration.bounded_detail`):
a request within ``max_request_kb`` can never make a reply over the broker's packet size, nor megabytes in
the log and the index. A reply the broker does not take all the same is replaced by a short 413 (over its
packet size) or 500 (refused) (:meth:`MqttApi.stand_in`), so that every request is answered and acknowledged.

``transfer-state`` (our extension) answers from the MQTT ingest store what it holds of the station's
transfer ``file_id``: ``{"file_id", "known", "segments": [[offset, size], ...], "complete"}``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.central.app import CentralParts, rejection_document
from edge.central.equipment import EquipmentStore, station_fleet_report, station_officers
from edge.central.mqtt_ingest_store import MqttIngestStore, TransferState
from edge.central.record_rate import noting_skipped
from edge.central.registration import (
    HTTP_STATUS,
    Caller,
    RejectCode,
    Rejection,
    upload_source_key,
)
from edge.central.tus_store import UploadBusyError
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.receipt import TreeHead
from edge.custody.text import printable
from edge.mqtt.api import (
    API_VERSION,
    ApiCodecError,
    ApiOp,
    ApiReply,
    check_request_id,
    encode_reply,
    parse_request,
    parse_request_topic,
    reply_topic,
)
from edge.mqtt.filetransfer import FileTransferError, check_client_id, check_file_id, transfer_upload_id

__all__ = ["ApiAnswer", "MqttApi"]

log = logging.getLogger(__name__)

# What a refusal's "remote" says in the index: the request came through the broker.
MQTT_REMOTE = "mqtt"
_MAX_TREE_SIZE = 2**53 - 1
# How many of a body's unexpected member names a refusal shows, and how much of each.
_SHOWN_NAMES = 5
_SHOWN_NAME_CHARS = 40


@dataclass(frozen=True)
class ApiAnswer:
    """A reply to publish: its topic (the request's station's reply topic), payload and correlation."""

    topic: str
    payload: bytes
    correlation_data: bytes | None
    status: int
    request_id: str | None = None


def _bad(detail: str) -> Rejection:
    return Rejection(RejectCode.BAD_REQUEST, detail)


def _members_found(body: Mapping[str, Any]) -> str:
    """The members of a body as a refusal names them: the first few, each cut short, and how many in all
    (a body may have tens of thousands of hostile names: naming them all made a reply over the broker's
    packet size, and megabytes in the log and the index)."""
    if not body:
        return "none"
    shown = [printable(str(k))[:_SHOWN_NAME_CHARS] for k in itertools.islice(body, _SHOWN_NAMES)]
    more = len(body) - len(shown)
    return ", ".join(shown) + (f" and {more} more ({len(body)} members)" if more > 0 else "")


def _exact_members(body: Mapping[str, Any], names: tuple[str, ...], op: ApiOp) -> None:
    if set(body) != set(names):
        expected = ", ".join(names) if names else "no members ({})"
        raise _bad(f"{op.value} body: expected {expected}; found {_members_found(body)}")


def _integer(body: Mapping[str, Any], name: str, low: int, high: int, op: ApiOp) -> int:
    value = body[name]
    if type(value) is not int or not low <= value <= high:
        shown = printable(repr(value))[:60]
        raise _bad(f"{op.value} body: {name} must be an integer {low}-{high}, found {shown}")
    return value


class MqttApi:
    """Answers one API request at a time (the receiver's handler awaits :meth:`answer`)."""

    def __init__(
        self,
        parts: CentralParts,
        transfers: MqttIngestStore,
        *,
        prefix: str,
        max_request_bytes: int,
        observe_receipt: Callable[[float], object] | None = None,
        equipment: EquipmentStore | None = None,
    ) -> None:
        self.parts = parts
        self.equipment = equipment
        self.transfers = transfers
        self.prefix = prefix
        self.max_request_bytes = max_request_bytes
        self._observe_receipt = observe_receipt
        self._ops: dict[ApiOp, Callable[[Caller, dict[str, Any]], Awaitable[tuple[int, Any]]]] = {
            ApiOp.LEDGER_HEAD: self._ledger_head,
            ApiOp.LEDGER_PUSH: self._ledger_push,
            ApiOp.LEDGER_PAGE: self._ledger_page,
            ApiOp.REGISTER: self._register,
            ApiOp.ABANDON: self._abandon,
            ApiOp.TREE_HEAD: self._tree_head,
            ApiOp.CONSISTENCY: self._consistency,
            ApiOp.TRANSFER_STATE: self._transfer_state,
            ApiOp.OFFICERS: self._officers,
            ApiOp.FLEET_REPORT: self._fleet_report,
        }

    def __repr__(self) -> str:
        return f"MqttApi(prefix={self.prefix!r})"

    async def answer(self, topic: str, payload: bytes, correlation_data: bytes | None) -> ApiAnswer | None:
        """The reply to one request message; None when its topic names no station (nobody to answer)."""
        station = self._station_of(topic)
        if station is None:
            log.warning("MQTT API request on %r: no station level; dropped", printable(topic)[:200])
            return None
        request_id = _request_id_of(payload) if len(payload) <= self.max_request_bytes else None
        try:
            _, op = parse_request_topic(self.prefix, topic)
            request = parse_request(payload, op=op, max_bytes=self.max_request_bytes)
        except ApiCodecError as exc:
            status, body = await self.parts.write(self._malformed, station, str(exc),
                                                  too_large=len(payload) > self.max_request_bytes)
            return self._reply(station, request_id, status, body, correlation_data)
        status, body = await self._run(station, request.op, request.body)
        return self._reply(station, request.request_id, status, body, correlation_data)

    def busy(self, station: str, payload: bytes, correlation_data: bytes | None, detail: str) -> ApiAnswer:
        """The reply to a request the receiver could not queue (its station's share of the receive queue
        is full): 503 ``server_busy``, the central's own error document, which a station takes as "busy,
        send it again later" (``edge.uplink.central_calls.check_answer``), never as a refusal."""
        request_id = _request_id_of(payload) if len(payload) <= self.max_request_bytes else None
        rejection = Rejection(RejectCode.SERVER_BUSY, f"{detail}; send the request again later")
        return self._reply(station, request_id, rejection.status, rejection_document(rejection),
                           correlation_data)

    def station_of(self, topic: str) -> str | None:
        """The station level of a request topic, None when it names none (nobody to answer)."""
        return self._station_of(topic)

    # -- plumbing ---------------------------------------------------------------------------------------

    def _station_of(self, topic: str) -> str | None:
        head = f"{self.prefix}/stations/"
        if not topic.startswith(head):
            return None
        try:
            return check_client_id(topic[len(head):].partition("/")[0])
        except FileTransferError:
            return None

    def _reply(
        self, station: str, request_id: str | None, status: int, body: Any, correlation_data: bytes | None
    ) -> ApiAnswer:
        topic = reply_topic(self.prefix, station)
        if request_id is None:
            # The request id could not be read: the station still learns that (and why) it was refused.
            payload = canonical_json({"v": API_VERSION, "request_id": None, "status": status, "body": body})
        else:
            payload = encode_reply(ApiReply(request_id, status, body), max_bytes=1 << 62)
        correlation = request_id.encode("ascii") if request_id is not None else correlation_data
        if correlation is not None and len(correlation) > 64:
            correlation = None
        return ApiAnswer(topic, payload, correlation, status, request_id)

    def stand_in(self, answer: ApiAnswer, *, over_limit: int | None) -> ApiAnswer:
        """A short reply in place of ``answer``, which could not be published: over the broker's maximum
        packet size ``over_limit`` (413), or refused by the broker (``over_limit`` None: 500). The station
        learns that its request was handled and not answered, and the request is acknowledged instead of
        coming back on every reconnection."""
        if over_limit is not None:
            rejection = Rejection(RejectCode.TOO_LARGE,
                                  f"the reply ({len(answer.payload)} bytes) is over the broker's maximum "
                                  f"packet size ({over_limit} bytes)")
        else:
            rejection = Rejection(RejectCode.INTERNAL_ERROR, "the broker refused the reply; it was logged")
        station = answer.topic.removeprefix(f"{self.prefix}/stations/").partition("/")[0]
        return self._reply(station, answer.request_id, rejection.status, rejection_document(rejection),
                           answer.correlation_data)

    def _malformed(self, station: str, detail: str, *, too_large: bool) -> tuple[int, Any]:
        code = RejectCode.TOO_LARGE if too_large else RejectCode.BAD_REQUEST
        rejection = Rejection(code, f"MQTT API request: {detail}")
        if self.parts.index.station(station) is None:
            return rejection.status, rejection_document(rejection)  # an unknown station's noise: not written
        # Recorded like the HTTP path's refusals of a body, at the bounded rate of the broker's stations
        # (edge.central.record_rate): a station may publish thousands of these a second.
        skipped = self.parts.auth.refusal_rate.admit(station)
        if skipped is not None:
            rejection.detail = noting_skipped(rejection.detail, skipped)
            self.parts.registrar.reject(rejection, station=station, remote=MQTT_REMOTE)
        return rejection.status, rejection_document(rejection)

    async def _run(self, station: str, op: ApiOp, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            caller = await self.parts.station_read(self.parts.auth.enrolled_station, station,
                                                   remote=MQTT_REMOTE)
            return await self._ops[op](caller, body)
        except Rejection as rejection:
            return rejection.status, rejection_document(rejection)
        except Exception:
            log.exception("MQTT API %s of station %s failed", op.value, station)
            return HTTP_STATUS[RejectCode.INTERNAL_ERROR], {
                "error": str(RejectCode.INTERNAL_ERROR),
                "detail": "the central failed to handle this request; it was logged",
            }

    async def _recorded(self, rejection: Rejection, caller: Caller) -> Rejection:
        return await self.parts.registrar.rejected(rejection, station=caller.station_id, remote=caller.remote)

    # -- the ops: each what its HTTP endpoint does ------------------------------------------------------

    async def _ledger_head(self, caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            _exact_members(body, (), ApiOp.LEDGER_HEAD)
            return 200, await self.parts.registrar.ledger_head(caller, caller.station_id)
        except Rejection as rejection:
            raise await self._recorded(rejection, caller) from None

    async def _ledger_push(self, caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        await self.parts.registrar.accept_segment(caller, caller.station_id, body)  # records its refusals
        return 200, await self.parts.registrar.ledger_answer(caller)

    async def _ledger_page(self, caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        from edge.central.station_ledger_read import MAX_AFTER, MAX_LIMIT, StationLedgerRead

        try:
            allowed = ("after", "limit")
            if not set(body) <= set(allowed) or "after" not in body:
                raise _bad(f"ledger-page body: expected after and optionally limit; found "
                           f"{_members_found(body)}")
            after = _integer(body, "after", 0, MAX_AFTER, ApiOp.LEDGER_PAGE)
            limit = _integer(body, "limit", 1, MAX_LIMIT, ApiOp.LEDGER_PAGE) if "limit" in body else 500
        except Rejection as rejection:
            raise await self._recorded(rejection, caller) from None
        # Through the stations' reads, never a plain worker thread: on SQLite the one connection is the
        # loop's, and a worker would read (and the central sign as witnessed) a head of a transaction the
        # loop has not committed (review 13).
        page = await self.parts.station_read(StationLedgerRead(self.parts).page, caller.station_id, after,
                                             limit, None)
        return 200, page

    async def _register(self, caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        started = time.monotonic()
        try:
            registered = await self.parts.registrar.register_item(caller, caller.station_id, body)
        finally:
            if self._observe_receipt is not None:
                self._observe_receipt(time.monotonic() - started)
        return (200 if registered.replay else 201), {"receipt": registered.receipt.to_dict()}

    async def _abandon(self, caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        """The station gives an upload up: what the tus DELETE does (204, no body; 404 when it holds none)."""
        try:
            _exact_members(body, ("upload",), ApiOp.ABANDON)
            named = body["upload"]
            key = upload_source_key(caller.station_id, named) if isinstance(named, str) else None
            if key is None:
                raise _bad(f"abandon body: upload must be a tus upload id or mqtt:<file id>, found "
                           f"{printable(repr(named))[:80]}")
        except Rejection as rejection:
            raise await self._recorded(rejection, caller) from None
        uploads = self.parts.registrar.uploads
        facts = await asyncio.to_thread(uploads.get, key)
        if facts is None or facts.station != caller.station_id:
            # Another station's upload answers exactly like a missing one.
            raise Rejection(RejectCode.NOT_FOUND, f"no upload {named} of station {caller.station_id}")
        try:
            await asyncio.to_thread(uploads.remove, key)
        except UploadBusyError:
            # What the tus DELETE answers, and nothing of the exception (it names files of the central);
            # any other failure is the central's own (500, logged by _run).
            return 409, {"error": "upload_busy",
                         "detail": f"upload {named} is being written by another request; retry later"}
        log.info("upload %s abandoned by station %s over MQTT", named, caller.station_id)
        return 204, None

    def _equipment(self) -> EquipmentStore:
        if self.equipment is None:
            raise Rejection(RejectCode.NOT_FOUND, "this central keeps no officer list or fleet")
        return self.equipment

    async def _officers(self, caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            _exact_members(body, ("have",), ApiOp.OFFICERS)
            have = _integer(body, "have", 0, 2**53 - 1, ApiOp.OFFICERS)
            return 200, await self.parts.write(station_officers, self.parts, self._equipment(), caller,
                                               caller.station_id, have)
        except Rejection as rejection:
            raise await self._recorded(rejection, caller) from None

    async def _fleet_report(self, caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        # station_fleet_report records its own refusals.
        return 200, await self.parts.write(station_fleet_report, self.parts, self._equipment(), caller,
                                           caller.station_id, body)

    async def _tree_head(self, caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            _exact_members(body, (), ApiOp.TREE_HEAD)
        except Rejection as rejection:
            raise await self._recorded(rejection, caller) from None
        return 200, (await self.parts.write(self._tree_head_now)).to_dict()

    def _tree_head_now(self) -> TreeHead:
        """The log's signed tree head, signing one when the newest does not cover the log (the writer's)."""
        with self.parts.index.transaction():
            return self.parts.merkle.tree_head()

    async def _consistency(self, caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            _exact_members(body, ("first", "second"), ApiOp.CONSISTENCY)
            first = _integer(body, "first", 0, _MAX_TREE_SIZE, ApiOp.CONSISTENCY)
            second = _integer(body, "second", 0, _MAX_TREE_SIZE, ApiOp.CONSISTENCY)
        except Rejection as rejection:
            raise await self._recorded(rejection, caller) from None
        size = await self.parts.station_read(self.parts.merkle.size)
        if not first <= second <= size:
            raise _bad(f"expected 0 <= first <= second <= {size} (the log size), found first={first} "
                       f"second={second}")
        proof = await self.parts.station_read(self.parts.merkle.consistency_proof, first, second)
        return 200, {"first": first, "second": second, "proof": [h.hex() for h in proof]}

    async def _transfer_state(self, caller: Caller, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            _exact_members(body, ("file_id",), ApiOp.TRANSFER_STATE)
            try:
                file_id = check_file_id(body["file_id"])
            except FileTransferError as exc:
                raise _bad(f"transfer-state body: {exc}") from None
        except Rejection as rejection:
            raise await self._recorded(rejection, caller) from None
        found = await asyncio.to_thread(
            self.transfers.stored_runs, transfer_upload_id(caller.station_id, file_id)
        )
        if found is None or found[0].station != caller.station_id:
            return 200, {"file_id": file_id, "known": False, "segments": [], "complete": False}
        facts, runs = found
        return 200, {
            "file_id": file_id,
            "known": True,
            "segments": [[offset, size] for offset, size in runs],
            "complete": facts.state is TransferState.COMPLETE,
        }


def _request_id_of(payload: bytes) -> str | None:
    """The request id of a request whose envelope may be malformed, when it can be read at all (so that
    the station can match the 400 reply to what it sent); None otherwise."""
    try:
        doc = parse_json(payload)
    except (CanonicalJsonError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    try:
        return check_request_id(doc.get("request_id"))
    except ApiCodecError:
        return None

