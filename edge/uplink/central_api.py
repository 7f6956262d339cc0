"""The central receiver's registration and ledger endpoints over HTTPS, as the station calls them.

Part of the tus transport (`edge.uplink.tus_transport`), and used by `edge verify` to fetch proofs.
Content goes through tus (`edge.uplink.tus_client`); this module sends what makes content evidence at
the central: the signed manifest and the station's ledger segments, and brings back the receipt, the
central's witnessed head of our ledger and its log's tree heads and consistency proofs. Every answer
from the central is untrusted input: bodies are bounded, JSON is parsed strictly and every signed
document is verified by the caller before anything relies on it.

A refusal here is only what an answer *says*: a proxy in front of the central, or a broken link, can
answer with any status and any body. So :class:`CentralRejected` carries the body's code and the signed
refusal it came with, if any (unverified); the service decides, and takes nothing as final for an item
unless that refusal verifies with the pinned central key (:mod:`edge.custody.refusal`). ``Retry-After``
on a transient answer is passed on as ``retry_after_s``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from edge.config.station import UplinkSection
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.ledger import GENESIS_PREV, Checkpoint, LedgerEntry
from edge.uplink.policy import parse_retry_after
from edge.uplink.transport import LedgerAnswer

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 4 << 20
# The capability a central's ledger answer lists in ``accepts`` when it takes a segment's ``checkpoints``
# (edge.central.registration.SEGMENT_CHECKPOINTS; the uplink does not import the central).
SEGMENT_CHECKPOINTS = "checkpoints"
# And that it recomputes ledger format 2 hashes (edge.central.registration.LEDGER_FORMAT_2): every entry this
# station writes is format 2, which an older central refuses as edited.
LEDGER_FORMAT_2 = "ledger_format_2"
_TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class CentralError(Exception):
    """The central could not be used for this request."""


class CentralUnavailable(CentralError):
    """Down, unreachable, overloaded or timing out: retry later (not before ``retry_after_s`` when the
    answer carried a ``Retry-After``)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CentralRejected(CentralError):
    """The answer refused the request and said why (`code`, `detail`), perhaps in the central's name:
    ``refusal`` is the signed refusal the body carried (unverified), None when it carried none."""

    def __init__(
        self, status: int, code: str, detail: str, *, refusal: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.refusal = refusal


class CentralApi:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        station_id: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.station_id = station_id
        self.headers = dict(headers or {})
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Does the central take a segment's other checkpoints? None until one of its ledger answers (or a
        # refusal of the member) says: a central not yet upgraded refuses the whole segment for it.
        self.takes_checkpoints: bool | None = None
        # Once the central has said (``accepts``) that it takes them, it is an upgraded central for the life
        # of this client: a later answer that contradicts it (an old instance behind a load balancer during
        # a rolling upgrade, or anyone answering in the central's name) never strips a segment's checkpoints
        # (the uplink sends each entry once, so checkpoints stripped once are lost for good).
        self.said_it_takes_checkpoints = False
        self.warned_old_format = False

    def _station_url(self, tail: str) -> str:
        return f"{self.base_url}/v1/stations/{quote(self.station_id, safe='')}/{tail}"

    async def ledger_head(self) -> tuple[int, str]:
        """The last ledger entry of this station the central accepted: (0, genesis) when none."""
        return (await self.ledger_state()).head

    async def ledger_state(self) -> LedgerAnswer:
        """The accepted head with the central's witnessed head and its log's tree head."""
        doc = await self._request("GET", self._station_url("ledger/head"), None)
        return self._learn(_ledger_answer(doc, "ledger head"), doc)

    async def post_ledger(
        self, entries: Sequence[LedgerEntry], checkpoint: Checkpoint, signed: Sequence[Checkpoint] = ()
    ) -> LedgerAnswer:
        """Send a segment of our ledger (``signed``: the other checkpoints at its seqs); the answer is the
        head the central now holds."""
        doc = await self._with_checkpoints(
            signed, lambda sent: self._request("POST", self._station_url("ledger"),
                                               _segment(entries, checkpoint, sent)))
        return self._learn(_ledger_answer(doc, "ledger answer"), doc)

    def _learn(self, answer: LedgerAnswer, doc: Mapping[str, Any]) -> LedgerAnswer:
        accepts = doc.get("accepts")
        self.takes_checkpoints = isinstance(accepts, list) and SEGMENT_CHECKPOINTS in accepts
        self.said_it_takes_checkpoints |= self.takes_checkpoints
        if not (isinstance(accepts, list) and LEDGER_FORMAT_2 in accepts) and not self.warned_old_format:
            self.warned_old_format = True
            log.error(
                "the central %s does not say it takes ledger format 2: a central from before that format "
                "refuses this station's ledger entries as edited, and evidence stays spooled here until it "
                "is upgraded (README, upgrading: upgrade the central first)", self.base_url)
        return answer

    async def _with_checkpoints(
        self, signed: Sequence[Checkpoint],
        send: Callable[[Sequence[Checkpoint]], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Send a request carrying a ledger segment, with its checkpoints unless the central does not take
        them; a central that refuses the member (not yet upgraded) gets the segment again without them,
        and the station says loudly why its packages will verify NOT BOUND. A central that has said it
        takes them is never sent a segment without them: a refusal of the member then stands (the uplink
        retries the segment later, checkpoints and all, as any refused push) and is logged as the
        contradiction it is."""
        if not signed or (self.takes_checkpoints is False and not self.said_it_takes_checkpoints):
            return await send(())
        try:
            return await send(signed)
        except CentralRejected as exc:
            # The previous release's words: "ledger segment has unknown members ['checkpoints']; ...".
            older = "unknown members" in exc.detail and repr(SEGMENT_CHECKPOINTS) in exc.detail
            if exc.status != 400 or exc.code != "bad_request" or not older:
                raise
            if self.said_it_takes_checkpoints:
                log.error(
                    "the central %s refused a ledger segment for its checkpoints (%s) after it said it takes "
                    "them: an answer from an instance not upgraded, or not from the central. The refusal "
                    "stands; the segment is sent again later with its checkpoints",
                    self.base_url, exc.detail[:200])
                raise
            self.takes_checkpoints = False
            log.error(
                "the central %s refuses ledger segments carrying checkpoints (%s): it is older than this "
                "station. Segments are sent without them, so disclosure packages of the entries sent now "
                "will verify NOT BOUND: upgrade the central first (README, upgrading)",
                self.base_url, exc.detail[:200])
            return await send(())

    async def ledger_page(self, after: int, limit: int) -> dict[str, Any]:
        """Entries of our ledger the central holds after seq ``after`` (at most ``limit``), with ``next``
        (the ``after`` of the next page, or None) and the central's witnessed head; shape checked here,
        content (hashes, chain, signature) by the caller."""
        doc = await self._request("GET", self._station_url(f"ledger?after={after}&limit={limit}"), None)
        entries, following = doc.get("entries"), doc.get("next")
        if not isinstance(entries, list) or len(entries) > limit or not (
            following is None or (isinstance(following, int) and not isinstance(following, bool))
        ):
            raise CentralRejected(200, "bad_response", f"ledger page is malformed: {str(doc)[:200]}")
        return doc

    async def tree_head(self) -> dict[str, Any]:
        """The central log's current signed tree head (unverified)."""
        return await self._request("GET", f"{self.base_url}/v1/log/tree-head", None)

    async def consistency(self, first: int, second: int) -> list[str]:
        """The log's consistency proof from ``first`` to ``second`` leaves (hex hashes, unverified)."""
        doc = await self._request("GET", f"{self.base_url}/v1/log/consistency?first={first}&second={second}",
                                  None)
        proof = doc.get("proof")
        if (doc.get("first"), doc.get("second")) != (first, second) or not isinstance(proof, list) or not all(
            _is_hex64(value) for value in proof
        ) or len(proof) > 128:
            raise CentralRejected(200, "bad_response", f"consistency answer is malformed: {str(doc)[:200]}")
        return [str(value) for value in proof]

    async def register(
        self,
        upload_id: str,
        manifest: Mapping[str, Any],
        entries: Sequence[LedgerEntry],
        checkpoint: Checkpoint | None,
        signed: Sequence[Checkpoint] = (),
    ) -> dict[str, Any]:
        """Register an uploaded item; returns the receipt document (unverified)."""
        def request(sent: Sequence[Checkpoint]) -> Awaitable[dict[str, Any]]:
            body: dict[str, Any] = {"upload": upload_id, "manifest": dict(manifest), "ledger": None}
            if entries:
                assert checkpoint is not None
                body["ledger"] = _segment(entries, checkpoint, sent)
            return self._request("POST", self._station_url("items"), body)

        doc = await self._with_checkpoints(signed if entries else (), request)
        receipt = doc.get("receipt")
        if not isinstance(receipt, dict):
            raise CentralRejected(200, "bad_response", "registration answer carries no receipt object")
        return receipt

    async def _request(self, method: str, url: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else canonical_json(body)
        headers = {**self.headers, "Content-Type": "application/json"} if data is not None else self.headers
        try:
            async with self.session.request(
                method, url, data=data, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as response:
                received = bytearray()
                while len(received) <= MAX_RESPONSE_BYTES:  # read(n) returns what is buffered: loop
                    piece = await response.content.read(64 * 1024)
                    if not piece:
                        break
                    received += piece
                raw = bytes(received)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CentralUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if len(raw) > MAX_RESPONSE_BYTES:
            raise CentralRejected(status, "bad_response", f"response larger than {MAX_RESPONSE_BYTES} bytes")
        doc = _json_object(raw)
        if status in _TRANSIENT_STATUSES or status >= 500:
            raise CentralUnavailable(
                f"{method} {url}: HTTP {status} {_detail(doc, raw)}",
                retry_after_s=parse_retry_after(retry_after, time.time()),
            )
        if status >= 300:
            code = doc.get("error") if isinstance(doc.get("error"), str) else f"http_{status}"
            refusal = doc.get("refusal")
            signed = refusal if isinstance(refusal, dict) else None
            raise CentralRejected(status, str(code)[:64], _detail(doc, raw), refusal=signed)
        return doc


@contextlib.asynccontextmanager
async def central_session(
    uplink: UplinkSection, station_id: str, *, connections: int = 4
) -> AsyncIterator[tuple[aiohttp.ClientSession, dict[str, str]]]:
    """An HTTP session to the central as ``uplink`` configures it (mutual TLS with the enrollment bundle,
    or the development mode's plain HTTP), and the headers every request carries."""
    context: ssl.SSLContext | bool = False
    headers: dict[str, str] = {}
    if uplink.insecure_plain_http:
        log.warning("uplink uses PLAIN HTTP (insecure_plain_http): development only, not for evidence")
        headers = {"X-Edge-Station": station_id}
    else:
        from edge.pki.tls import client_ssl_context  # the enrollment bundle's format

        assert uplink.identity_dir is not None  # config validation guarantees it
        context = client_ssl_context(uplink.identity_dir)
    connector = aiohttp.TCPConnector(ssl=context, limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session, headers


def _ledger_answer(doc: Mapping[str, Any], what: str) -> LedgerAnswer:
    seq, hash_hex = doc.get("seq"), doc.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not _is_hex64(hash_hex):
        raise CentralRejected(200, "bad_response", f"{what} is malformed: {str(doc)[:200]}")
    assert isinstance(hash_hex, str)
    witnessed, tree_head = doc.get("witnessed_head"), doc.get("tree_head")
    return LedgerAnswer(
        seq,
        hash_hex if seq else GENESIS_PREV,
        witnessed if isinstance(witnessed, dict) else None,
        tree_head if isinstance(tree_head, dict) else None,
    )


def _segment(
    entries: Sequence[LedgerEntry], checkpoint: Checkpoint, signed: Sequence[Checkpoint]
) -> dict[str, Any]:
    doc = {"entries": [e.to_dict() for e in entries], "checkpoint": checkpoint.to_dict()}
    others = [cp.to_dict() for cp in signed if cp != checkpoint]
    if others:
        doc["checkpoints"] = others
    return doc


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = parse_json(raw) if raw else {}
    except (CanonicalJsonError, ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _detail(doc: Mapping[str, Any], raw: bytes) -> str:
    """What the answer says, bounded and printable (a proxy's HTML page must not forge log lines)."""
    detail = doc.get("detail")
    text = detail[:1000] if isinstance(detail, str) else raw[:200].decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
