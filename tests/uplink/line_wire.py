"""A second uplink transport, for tests only: framed JSON over plain TCP, one connection per request.

It exists to prove that the uplink's core (spool, backoff, breaker, receipts, witness checks, signed
refusals, Retry-After) does not depend on tus or HTTP: :class:`LineTransport` satisfies
:class:`edge.uplink.transport.Transport` without importing anything of the tus transport, and
:class:`LineReceiver` is a real receiver on a real socket built from the real central's parts (its
index, object store and Merkle log, with a :class:`~edge.central.registration.Registrar` of its own over
an upload store of its own), the way an MQTT receiver will be. Its shape follows MQTT file transfer
rather than tus: ``init`` names the file and gets an id, each ``segment`` carries its offset and SHA-256
and is acknowledged with the offset held, and a resumed transfer asks for that offset.

A frame is ``u32 header length | canonical JSON header | u64 body length | body``; every answer is
``{"ok": {...}}``, ``{"retry": reason, "retry_after_s": s}`` or ``{"refused": {code, detail, refusal}}``.
Faults are scripted per operation (:class:`Fault`): drop the connection, answer retry or refused, flip a
stored byte. No authentication: a test receiver on loopback for one enrolled station.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.central.app import CentralParts
from edge.central.equipment import EquipmentStore, station_fleet_report, station_officers
from edge.central.objects import ReceivedContent
from edge.central.registration import Caller, Registrar, RejectCode, Rejection
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.ledger import GENESIS_PREV
from edge.uplink.transport import (
    Accepted,
    Delivered,
    LedgerAnswer,
    LedgerPage,
    LedgerSegment,
    NotDone,
    Parcel,
    Refused,
    RegisterOutcome,
    RetryLater,
    UploadOutcome,
)

MAX_HEADER_BYTES = 8 << 20  # a ledger segment of 2000 entries fits
MAX_SEGMENT_BYTES = 1 << 20
_HEADER = struct.Struct(">I")
_BODY = struct.Struct(">Q")


async def write_frame(writer: asyncio.StreamWriter, header: Mapping[str, Any], body: bytes = b"") -> None:
    raw = canonical_json(header)
    writer.write(_HEADER.pack(len(raw)) + raw + _BODY.pack(len(body)) + body)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader, max_body: int) -> tuple[dict[str, Any], bytes]:
    """One frame; ValueError for anything that is not one within the bounds."""
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"header of {length} bytes, at most {MAX_HEADER_BYTES}")
    header = parse_json(await reader.readexactly(length))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    (body_length,) = _BODY.unpack(await reader.readexactly(_BODY.size))
    if body_length > max_body:
        raise ValueError(f"body of {body_length} bytes, at most {max_body}")
    return header, await reader.readexactly(body_length)


# -- the station side ---------------------------------------------------------------------------------


class LineTransport:
    name = "line"

    def __init__(self, host: str, port: int, station: str, *, segment_bytes: int = 64 << 10,
                 timeout_s: float = 10.0) -> None:
        self.host, self.port, self.station = host, port, station
        self.segment_bytes = segment_bytes
        self.timeout_s = timeout_s

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[LineLink]:
        yield LineLink(self)


class LineLink:
    checks_content_on_send = False

    def __init__(self, transport: LineTransport) -> None:
        self.t = transport

    async def _call(self, op: str, fields: Mapping[str, Any], body: bytes = b"") -> dict[str, Any]:
        """The ``ok`` document of the answer; :class:`NotDone` for everything else, wire failures included."""
        try:
            async with asyncio.timeout(self.t.timeout_s):
                reader, writer = await asyncio.open_connection(self.t.host, self.t.port)
                try:
                    await write_frame(writer, {"op": op, "station": self.t.station, **fields}, body)
                    answer, _ = await read_frame(reader, 0)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            raise NotDone(RetryLater(f"{op}: {type(exc).__name__}: {exc}")) from exc
        if isinstance(answer.get("ok"), dict):
            return answer["ok"]  # type: ignore[no-any-return]
        if isinstance(answer.get("retry"), str):
            after = answer.get("retry_after_s")
            raise NotDone(RetryLater(answer["retry"], after if isinstance(after, int | float) else None))
        refused = answer.get("refused")
        if isinstance(refused, dict) and isinstance(refused.get("code"), str):
            refusal = refused.get("refusal")
            raise NotDone(Refused(
                code=refused["code"][:64], detail=str(refused.get("detail", ""))[:300],
                refusal=refusal if isinstance(refusal, dict) else None,
                upload=fields.get("upload") if isinstance(fields.get("upload"), str) else None,
            ))
        raise NotDone(RetryLater(f"{op}: an answer in no known shape"))

    async def upload(self, parcel: Parcel, on_resume: Callable[[str], None]) -> UploadOutcome:
        sent = 0
        try:
            upload, offset = parcel.resume, 0
            if upload is not None:
                try:
                    offset = _int_within((await self._call("offset", {"upload": upload})).get("offset"),
                                         0, parcel.size, "offset")
                except NotDone as exc:
                    if not (isinstance(exc.outcome, Refused) and exc.outcome.code == "upload_not_found"):
                        raise
                    upload, offset = None, 0
            resumed_from = offset
            if upload is None:
                doc = await self._call("init", {"item": parcel.item, "size": parcel.size,
                                                "sha256": parcel.sha256, "name": parcel.original_name})
                upload = doc.get("upload")
                if not isinstance(upload, str) or len(upload) != 32:
                    return RetryLater("init: no upload id in the answer")
                on_resume(upload)
            while offset < parcel.size:
                data = await asyncio.to_thread(parcel.read_at, offset, min(self.t.segment_bytes,
                                                                           parcel.size - offset))
                doc = await self._call("segment", {"upload": upload, "offset": offset,
                                                   "sha256": hashlib.sha256(data).hexdigest()}, data)
                sent += len(data)
                offset = _int_within(doc.get("offset"), offset, parcel.size, "acknowledged offset")
            return Delivered(upload, bytes_sent=sent, resumed_from=resumed_from)
        except NotDone as exc:
            return exc.outcome

    async def register(self, upload: str, manifest: Mapping[str, Any],
                       segment: LedgerSegment | None) -> RegisterOutcome:
        try:
            doc = await self._call("register", {"upload": upload, "manifest": dict(manifest),
                                                "ledger": _segment(segment) if segment else None})
        except NotDone as exc:
            return exc.outcome
        receipt = doc.get("receipt")
        return Accepted(receipt) if isinstance(receipt, dict) else RetryLater("register: no receipt")

    async def abandon(self, upload: str) -> None:
        with contextlib.suppress(NotDone):
            await self._call("abort", {"upload": upload})

    async def ledger_state(self) -> LedgerAnswer:
        return _ledger_answer(await self._call("ledger_state", {}))

    async def push_ledger(self, segment: LedgerSegment) -> LedgerAnswer:
        return _ledger_answer(await self._call("push_ledger", {"segment": _segment(segment)}))

    async def ledger_page(self, after: int, limit: int) -> LedgerPage:
        doc = await self._call("ledger_page", {"after": after, "limit": limit})
        entries, following, witnessed = doc.get("entries"), doc.get("next"), doc.get("witnessed_head")
        if not isinstance(entries, list) or not (following is None or isinstance(following, int)):
            raise NotDone(RetryLater(f"ledger page is malformed: {str(doc)[:200]}"))
        return LedgerPage(entries, following, witnessed if isinstance(witnessed, dict) else None)

    async def tree_head(self) -> dict[str, Any]:
        return await self._call("tree_head", {})

    async def officers(self, have: int) -> dict[str, Any]:
        return await self._call("officers", {"have": have})

    async def fleet_report(self, report: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("fleet-report", {"report": dict(report)})

    async def consistency(self, first: int, second: int) -> list[str] | None:
        try:
            doc = await self._call("consistency", {"first": first, "second": second})
        except NotDone as exc:
            if isinstance(exc.outcome, Refused) and exc.outcome.code == "bad_request":
                return None
            raise
        proof = doc.get("proof")
        if not isinstance(proof, list) or not all(isinstance(h, str) for h in proof):
            raise NotDone(RetryLater("consistency: no proof in the answer"))
        return proof


def _int_within(value: object, low: int, high: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise NotDone(RetryLater(f"expected {what} within {low}..{high}, found {str(value)[:40]}"))
    return value


def _segment(segment: LedgerSegment) -> dict[str, Any]:
    return {"entries": [e.to_dict() for e in segment.entries], "checkpoint": segment.checkpoint.to_dict()}


def _ledger_answer(doc: Mapping[str, Any]) -> LedgerAnswer:
    seq, hash_hex = doc.get("seq"), doc.get("hash")
    if not isinstance(seq, int) or seq < 0 or not isinstance(hash_hex, str) or len(hash_hex) != 64:
        raise NotDone(RetryLater(f"ledger answer is malformed: {str(doc)[:200]}"))
    witnessed, tree_head = doc.get("witnessed_head"), doc.get("tree_head")
    return LedgerAnswer(seq, hash_hex if seq else GENESIS_PREV,
                        witnessed if isinstance(witnessed, dict) else None,
                        tree_head if isinstance(tree_head, dict) else None)


# -- the receiver -------------------------------------------------------------------------------------


@dataclass
class Fault:
    """What the receiver does with one request: serve it (``pass``), serve it without answering (``drop``),
    answer instead of serving (``retry``, ``refuse``), or serve it storing a flipped bit (``flip``)."""

    kind: str
    reason: str = "scripted"
    retry_after_s: float | None = None
    code: str = ""
    signed: bool = False


@dataclass
class _Upload:
    station: str
    length: int
    path: Path
    offset: int = 0
    sha256: str | None = None


class LineUploads:
    """The receiver's upload store (`edge.central.registration.UploadSource`): one file per upload."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.uploads: dict[str, _Upload] = {}

    def get(self, upload_id: str) -> _Upload | None:
        return self.uploads.get(upload_id)

    def staged(self, upload_id: str) -> None:
        return None  # the content is a local file

    def complete_path(self, upload_id: str) -> Path:
        return self.uploads[upload_id].path

    def received(self, upload_id: str) -> ReceivedContent | None:
        return None  # nothing hashed on receipt here: the object store hashes the file

    def remove(self, upload_id: str) -> bool:
        upload = self.uploads.pop(upload_id, None)
        if upload is not None:
            upload.path.unlink(missing_ok=True)
        return upload is not None

    def remove_unleased(self, upload_id: str) -> bool:
        return self.remove(upload_id)  # no leases: one registration at a time on this line

    def release_lease(self, upload_id: str) -> None:
        return None


@dataclass
class LineReceiver:
    parts: CentralParts
    station: str
    workdir: Path
    faults: defaultdict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    requests: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, op) of every request read, in order."""
    answers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(op, answer) of every request served, the dropped ones included."""
    on_request: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.uploads = LineUploads(self.workdir / "uploads")
        self.registrar = Registrar(
            self.parts.index, self.parts.objects, self.parts.merkle, self.uploads,
            signing_key=self.parts.signing_key, central_id=self.parts.config.central.id,
        )
        self._server: asyncio.Server | None = None

    async def start(self, port: int) -> LineReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def count(self, op: str) -> int:
        return sum(1 for _, seen in self.requests if seen == op)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header, body = await read_frame(reader, MAX_SEGMENT_BYTES)
            op = str(header.get("op"))
            self.requests.append((time.monotonic(), op))
            if self.on_request is not None:
                self.on_request(op)
            fault = self.faults[op].popleft() if self.faults[op] else Fault("pass")
            if fault.kind in ("retry", "refuse"):
                answer = self._scripted(fault, header)
            else:
                answer = await self._answer(op, header, body, flip=fault.kind == "flip")
            self.answers.append((op, answer))
            if fault.kind == "drop":
                return  # done, but the connection ends without the answer (a lost acknowledgement)
            await write_frame(writer, answer)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _scripted(self, fault: Fault, header: Mapping[str, Any]) -> dict[str, Any]:
        if fault.kind == "retry":
            return {"retry": fault.reason, "retry_after_s": fault.retry_after_s}
        refusal = None
        if fault.signed:
            item = header.get("manifest", {}).get("item")
            refusal = self.registrar.sign_refusal(self.station, item, header.get("upload"), fault.code,
                                                  fault.reason)
        return {"refused": {"code": fault.code, "detail": fault.reason, "refusal": refusal}}

    async def _answer(self, op: str, header: Mapping[str, Any], body: bytes, *, flip: bool) -> dict[str, Any]:
        record = self.parts.index.station(str(header.get("station")))
        if record is None or not record.active:
            return {"refused": {"code": "unknown_station", "detail": "not an enrolled, active station"}}
        caller = Caller(record, "line")
        try:
            return {"ok": await self._do(op, caller, header, body, flip=flip)}
        except Rejection as rejection:
            if rejection.status >= 500:
                return {"retry": f"{rejection.code}: {rejection.detail}"}
            return {"refused": {"code": str(rejection.code), "detail": rejection.detail,
                                "refusal": rejection.refusal}}

    async def _do(self, op: str, caller: Caller, header: Mapping[str, Any], body: bytes,
                  *, flip: bool) -> dict[str, Any]:
        if op == "init":
            upload_id = uuid.uuid4().hex
            self.uploads.uploads[upload_id] = _Upload(caller.station_id, int(header["size"]),
                                                      self.uploads.root / f"{upload_id}.bin")
            self.uploads.uploads[upload_id].path.write_bytes(b"")
            return {"upload": upload_id}
        if op in ("offset", "segment", "abort"):
            upload = self.uploads.get(str(header.get("upload")))
            if upload is None or upload.station != caller.station_id:
                raise Rejection(RejectCode.UPLOAD_NOT_FOUND, f"no upload {str(header.get('upload'))[:40]}")
            if op == "abort":
                self.uploads.remove(str(header["upload"]))
                return {}
            if op == "segment" and header.get("offset") == upload.offset:
                if hashlib.sha256(body).hexdigest() != header.get("sha256"):
                    return {"offset": upload.offset}  # dropped: the station sends it again
                data = bytes([body[0] ^ 0x01]) + body[1:] if flip and body else body
                with upload.path.open("ab") as f:
                    f.write(data)
                upload.offset += len(body)
                if upload.offset == upload.length:
                    upload.sha256 = hashlib.sha256(upload.path.read_bytes()).hexdigest()
            return {"offset": upload.offset}
        if op == "register":
            doc = {"upload": header.get("upload"), "manifest": header.get("manifest"),
                   "ledger": header.get("ledger")}
            registered = await self.registrar.register_item(caller, caller.station_id, doc)
            return {"receipt": registered.receipt.to_dict()}
        if op == "ledger_state":
            return await self.registrar.ledger_head(caller, caller.station_id)
        if op == "push_ledger":
            await self.registrar.accept_segment(caller, caller.station_id, header.get("segment"))
            return await self.registrar.ledger_answer(caller)
        if op == "ledger_page":
            return self._ledger_page(caller, int(header["after"]), int(header["limit"]))
        if op == "tree_head":
            with self.parts.index.transaction():
                return self.parts.merkle.tree_head().to_dict()
        if op == "consistency":
            first, second, size = int(header["first"]), int(header["second"]), self.parts.merkle.size()
            if not 0 <= first <= second <= size:
                raise Rejection(RejectCode.BAD_REQUEST, f"expected first <= second <= {size}")
            return {"proof": [h.hex() for h in self.parts.merkle.consistency_proof(first, second)]}
        if op in ("officers", "fleet-report"):
            # The central's own handlers, as its HTTP and MQTT endpoints call them.
            store = EquipmentStore(self.parts.equipment)
            if op == "officers":
                return station_officers(self.parts, store, caller, caller.station_id, int(header["have"]))
            return station_fleet_report(self.parts, store, caller, caller.station_id, header["report"])
        raise Rejection(RejectCode.BAD_REQUEST, f"unknown op {op[:40]!r}")

    def _ledger_page(self, caller: Caller, after: int, limit: int) -> dict[str, Any]:
        """The station's ledger entries the central holds after ``after``, as the HTTP central's
        ``GET /v1/stations/{station}/ledger`` gives them (edge.central.station_ledger_read)."""
        head_seq, head_hash = self.parts.index.ledger_head(caller.station_id)
        entries = [] if after >= head_seq else [
            e.to_dict() for e in self.parts.index.ledger_entries(
                caller.station_id, after + 1, end_seq=min(head_seq, after + limit))
        ]
        last = entries[-1]["seq"] if entries else after
        witnessed = self.registrar.witnessed_head(caller.station, (head_seq, head_hash))
        return {"entries": entries, "next": last if entries and last < head_seq else None,
                "witnessed_head": None if witnessed is None else witnessed.to_dict()}
