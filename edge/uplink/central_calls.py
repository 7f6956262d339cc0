"""The central's registration and witnessing calls, whatever wire carries them (HTTPS or MQTT).

Both transports ask the same questions and get the same JSON answers: the HTTP API answers with a status
and a body, the MQTT API (`edge.mqtt.api`, contract section 3) carries exactly that status and body in its
reply. So everything after "a status and a JSON body came back" lives here, once:

* :func:`check_answer`: a status and a body → the body, :class:`CentralUnavailable` (transient: 408, 425,
  429, 5xx) or :class:`CentralRejected` (the body's ``error``, ``detail`` and signed ``refusal``);
* :class:`CentralCalls`: the calls (ledger head and push, ledger pages, registration, tree head,
  consistency), the shape checks of their answers, and what the central's ledger answers teach about it
  (does it take a segment's ``checkpoints``, does it take ledger format 2): a wire supplies only
  :meth:`CentralCalls.call`;
* :class:`ApiLinkCalls`: those calls on the uplink's terms (:mod:`edge.uplink.transport`: answers or
  :class:`NotDone`, outcomes), shared by the links of both transports;
* :func:`outcome_of_rejection`: a refusing answer as a :class:`Refused` or a :class:`RetryLater`;
* :func:`is_central_error_answer`: is an HTTP answer the central's own refusal (its error document and
  its ``X-Request-Id``), or a proxy's page?

Every answer is untrusted input: bodies are bounded by the wire, JSON is parsed strictly there, shapes are
checked here, and every signed document is verified by the core before anything relies on it.
"""

from __future__ import annotations

import contextlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Any

from edge.custody.canonical import parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.ledger import GENESIS_PREV, Checkpoint, LedgerEntry
from edge.uplink.transport import (
    Accepted,
    LedgerAnswer,
    LedgerPage,
    LedgerSegment,
    NotDone,
    Refused,
    RegisterOutcome,
    RetryLater,
)

__all__ = [
    "LEDGER_FORMAT_2",
    "SEGMENT_CHECKPOINTS",
    "TRANSIENT_STATUSES",
    "ApiLinkCalls",
    "CentralCalls",
    "CentralError",
    "CentralOp",
    "CentralRejected",
    "CentralUnavailable",
    "check_answer",
    "detail_of",
    "is_central_error_answer",
    "is_central_error_document",
    "json_object",
    "not_done",
    "outcome_of_rejection",
]

log = logging.getLogger(__name__)

# The capability a central's ledger answer lists in ``accepts`` when it takes a segment's ``checkpoints``
# (edge.central.registration.SEGMENT_CHECKPOINTS; the uplink does not import the central).
SEGMENT_CHECKPOINTS = "checkpoints"
# And that it recomputes ledger format 2 hashes (edge.central.registration.LEDGER_FORMAT_2): every entry this
# station writes is format 2, which an older central refuses as edited.
LEDGER_FORMAT_2 = "ledger_format_2"
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_STATION_LEVEL_STATUSES = frozenset({401, 403, 404})
_MAX_PROOF_HASHES = 128
# The central's error document (every refusal it writes: tus server, JSON API, console): a snake-case machine
# code (edge.central.registration.RejectCode, the tus codes), a sentence, and a registration's signed refusal.
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ERROR_DOCUMENT_KEYS = frozenset({"error", "detail", "refusal"})
# The central names every HTTP answer it writes with ``X-Request-Id``: 16 lowercase hex digits
# (``secrets.token_hex(8)``, edge/central/http_server.py). A reverse proxy answering for a central that
# is down has none of the central's; proxies that add a request id of their own use other forms (nginx
# ``$request_id``: 32 hex digits; Envoy, HAProxy, most load balancers: a UUID).
CENTRAL_REQUEST_ID_HEADER = "X-Request-Id"
_CENTRAL_REQUEST_ID = re.compile(r"[0-9a-f]{16}")
_MAX_ERROR_DETAIL_CHARS = 4000


class CentralOp(StrEnum):
    """The calls, named as the MQTT API names them (``edge.mqtt.api.ApiOp``); the HTTP API maps each to
    its endpoint."""

    LEDGER_HEAD = "ledger-head"
    LEDGER_PUSH = "ledger-push"
    LEDGER_PAGE = "ledger-page"
    REGISTER = "register"
    TREE_HEAD = "tree-head"
    CONSISTENCY = "consistency"
    OFFICERS = "officers"
    FLEET_REPORT = "fleet-report"


class CentralError(Exception):
    """The central could not be used for this request."""


class CentralUnavailable(CentralError):
    """Down, unreachable, overloaded or timing out: retry later (not before ``retry_after_s`` when the
    answer carried a ``Retry-After``)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, answered: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.answered = answered
        """The central answered (busy, Retry-After): see :attr:`edge.uplink.transport.RetryLater.answered`."""


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


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, or {} when it is none (a proxy's page, garbage, an empty body)."""
    try:
        doc = parse_json(raw) if raw else {}
    except (CanonicalJsonError, ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def detail_of(doc: Mapping[str, Any], raw: bytes) -> str:
    """What the answer says, bounded and printable (a proxy's HTML page must not forge log lines)."""
    detail = doc.get("detail")
    text = detail[:1000] if isinstance(detail, str) else raw[:200].decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def is_central_error_document(doc: object) -> bool:
    """True when ``doc`` (a body parsed strictly as JSON, read bounded) has exactly the shape of the
    central's refusals: an object with a snake-case ``error`` code, a string ``detail`` of bounded length,
    and at most a ``refusal`` object besides.

    Why: agencies put nginx or a load balancer in front of the central; with the central down behind it,
    the proxy answers 503 with ``Retry-After`` (a maintenance page) or 429 (``limit_req``) on every call.
    Only a busy answer in the central's own document is the central answering (``RetryLater.answered``,
    which failover does not count as silence); a proxy's page (HTML, text, no body, its own JSON) is not."""
    if not isinstance(doc, Mapping) or not set(doc) <= _ERROR_DOCUMENT_KEYS:
        return False
    code, detail = doc.get("error"), doc.get("detail")
    return (
        isinstance(code, str) and _ERROR_CODE.fullmatch(code) is not None
        and isinstance(detail, str) and len(detail) <= _MAX_ERROR_DETAIL_CHARS
        and ("refusal" not in doc or isinstance(doc["refusal"], dict))
    )


def is_central_error_answer(doc: object, request_id: str | None) -> bool:
    """True when an HTTP answer is the central's own refusal: its body is the central's error document
    (:func:`is_central_error_document`) *and* it carries the central's ``X-Request-Id`` (``request_id``:
    that header's value, None when absent). The shape alone is not enough: a gateway's or a maintenance
    page's JSON can have it by accident (``{"error": "server_busy", "detail": ...}`` is an obvious thing
    to write), while the central's request id in the central's form comes only from the central. Not a
    proof against forgery (nothing unsigned is): whoever forges it can only say "busy", which counts
    towards failover once it has lasted ``failover_after_busy_s`` (edge.uplink.failover)."""
    return (is_central_error_document(doc) and request_id is not None
            and _CENTRAL_REQUEST_ID.fullmatch(request_id) is not None)


def check_answer(
    status: int, doc: Mapping[str, Any], raw: bytes, *, what: str, retry_after_s: float | None = None,
    from_central: bool = False, request_id: str | None = None,
) -> dict[str, Any]:
    """The body of a successful answer; raises :class:`CentralUnavailable` for a transient status and
    :class:`CentralRejected` for any other refusal. ``doc`` is the body as a JSON object ({} when it was
    none), ``raw`` its bytes (shown when it was no JSON object), ``what`` names the request in messages,
    ``request_id`` the answer's ``X-Request-Id`` (None: none).
    A transient status is the central's answer (``answered``) when it asked for a delay (``Retry-After``,
    429) *and* it is the central's own refusal (:func:`is_central_error_answer`: its error document with
    its request id; a reverse proxy's 503 page with ``Retry-After``, its 429, or its JSON of the same
    shape is not the central speaking), or when ``from_central`` (an MQTT reply: only the central's API
    publishes one); a gateway's 502 or 504 is not."""
    if status in TRANSIENT_STATUSES or status >= 500:
        asked_for_later = retry_after_s is not None or status == 429
        answered = from_central or (asked_for_later and is_central_error_answer(doc, request_id))
        raise CentralUnavailable(f"{what}: HTTP {status} {detail_of(doc, raw)}", retry_after_s=retry_after_s,
                                 answered=answered)
    if status >= 300 or status < 200:
        code = doc.get("error") if isinstance(doc.get("error"), str) else f"http_{status}"
        refusal = doc.get("refusal")
        signed = refusal if isinstance(refusal, dict) else None
        raise CentralRejected(status, str(code)[:64], detail_of(doc, raw), refusal=signed)
    return dict(doc)


def outcome_of_rejection(
    exc: CentralRejected, upload: str | None, *, via: str = "HTTP"
) -> RetryLater | Refused:
    """What a refusing answer of the central's JSON API means on the uplink's terms."""
    if exc.status >= 500 or exc.code == "bad_response":
        return RetryLater(str(exc))
    return Refused(
        code=exc.code,
        detail=exc.detail,
        refusal=exc.refusal,
        upload=upload,
        station_level=exc.status in _STATION_LEVEL_STATUSES,
        via=f"{via} {exc.status}",
    )


@contextlib.contextmanager
def not_done(*wire_errors: type[BaseException], via: str = "HTTP") -> Iterator[None]:
    """The central API's failures (and a wire's own ``wire_errors``) as :class:`NotDone`."""
    unanswered: tuple[type[BaseException], ...] = (TimeoutError, *wire_errors)
    try:
        yield
    except CentralUnavailable as exc:
        raise NotDone(RetryLater(str(exc), exc.retry_after_s, answered=exc.answered)) from exc
    except CentralRejected as exc:
        raise NotDone(outcome_of_rejection(exc, None, via=via)) from exc
    except unanswered as exc:
        raise NotDone(RetryLater(f"{type(exc).__name__}: {exc}")) from exc


class CentralCalls(ABC):
    """The central's calls over some wire; a subclass supplies :meth:`call`."""

    def __init__(self, where: str) -> None:
        self.where = where
        """The central as logs name it (its URL, or the broker and topic prefix)."""
        # Does the central take a segment's other checkpoints? None until one of its ledger answers (or a
        # refusal of the member) says: a central not yet upgraded refuses the whole segment for it.
        self.takes_checkpoints: bool | None = None
        # Once the central has said (``accepts``) that it takes them, it is an upgraded central for the life
        # of this client: a later answer that contradicts it (an old instance behind a load balancer during
        # a rolling upgrade, or anyone answering in the central's name) never strips a segment's checkpoints
        # (the uplink sends each entry once, so checkpoints stripped once are lost for good).
        self.said_it_takes_checkpoints = False
        self.warned_old_format = False

    @abstractmethod
    async def call(self, op: CentralOp, body: Mapping[str, Any]) -> dict[str, Any]:
        """Ask ``op`` with ``body`` (for a read, its parameters: ``after``/``limit``, ``first``/``second``);
        the answer's JSON object, or :class:`CentralUnavailable` / :class:`CentralRejected`
        (:func:`check_answer`)."""

    async def ledger_head(self) -> tuple[int, str]:
        """The last ledger entry of this station the central accepted: (0, genesis) when none."""
        return (await self.ledger_state()).head

    async def ledger_state(self) -> LedgerAnswer:
        """The accepted head with the central's witnessed head and its log's tree head."""
        doc = await self.call(CentralOp.LEDGER_HEAD, {})
        return self._learn(_ledger_answer(doc, "ledger head"), doc)

    async def post_ledger(
        self, entries: Sequence[LedgerEntry], checkpoint: Checkpoint, signed: Sequence[Checkpoint] = ()
    ) -> LedgerAnswer:
        """Send a segment of our ledger (``signed``: the other checkpoints at its seqs); the answer is the
        head the central now holds."""
        doc = await self._with_checkpoints(
            signed, lambda sent: self.call(CentralOp.LEDGER_PUSH, _segment(entries, checkpoint, sent)))
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
                "is upgraded (README, upgrading: upgrade the central first)", self.where)
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
                    self.where, exc.detail[:200])
                raise
            self.takes_checkpoints = False
            log.error(
                "the central %s refuses ledger segments carrying checkpoints (%s): it is older than this "
                "station. Segments are sent without them, so disclosure packages of the entries sent now "
                "will verify NOT BOUND: upgrade the central first (README, upgrading)",
                self.where, exc.detail[:200])
            return await send(())

    async def ledger_page(self, after: int, limit: int) -> dict[str, Any]:
        """Entries of our ledger the central holds after seq ``after`` (at most ``limit``), with ``next``
        (the ``after`` of the next page, or None) and the central's witnessed head; shape checked here,
        content (hashes, chain, signature) by the caller."""
        doc = await self.call(CentralOp.LEDGER_PAGE, {"after": after, "limit": limit})
        entries, following = doc.get("entries"), doc.get("next")
        if not isinstance(entries, list) or len(entries) > limit or not (
            following is None or (isinstance(following, int) and not isinstance(following, bool))
        ):
            raise CentralRejected(200, "bad_response", f"ledger page is malformed: {str(doc)[:200]}")
        return doc

    async def tree_head(self) -> dict[str, Any]:
        """The central log's current signed tree head (unverified)."""
        return await self.call(CentralOp.TREE_HEAD, {})

    async def consistency(self, first: int, second: int) -> list[str]:
        """The log's consistency proof from ``first`` to ``second`` leaves (hex hashes, unverified)."""
        doc = await self.call(CentralOp.CONSISTENCY, {"first": first, "second": second})
        proof = doc.get("proof")
        if (doc.get("first"), doc.get("second")) != (first, second) or not isinstance(proof, list) or not all(
            _is_hex64(value) for value in proof
        ) or len(proof) > _MAX_PROOF_HASHES:
            raise CentralRejected(200, "bad_response", f"consistency answer is malformed: {str(doc)[:200]}")
        return [str(value) for value in proof]

    async def officers(self, have: int) -> dict[str, Any]:
        """The agency's officer list: ``{"version", "list"}``, the list (unverified) null when the central
        has no newer version than ``have``."""
        doc = await self.call(CentralOp.OFFICERS, {"have": have})
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or "list" not in doc:
            raise CentralRejected(200, "bad_response", f"officers answer is malformed: {str(doc)[:200]}")
        return doc

    async def fleet_report(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """Send the station's fleet report; the central's acknowledgement."""
        return await self.call(CentralOp.FLEET_REPORT, report)

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
            return self.call(CentralOp.REGISTER, body)

        doc = await self._with_checkpoints(signed if entries else (), request)
        receipt = doc.get("receipt")
        if not isinstance(receipt, dict):
            raise CentralRejected(200, "bad_response", "registration answer carries no receipt object")
        return receipt


class ApiLinkCalls:
    """The :class:`edge.uplink.transport.Link` calls that go to the central's JSON API (registration and
    witnessing), on the uplink's terms, over ``api``. A link of either transport inherits them; it adds
    its own content calls (``upload``, ``abandon``)."""

    # The wire's own errors that mean "not answered" (aiohttp.ClientError for HTTP).
    wire_errors: tuple[type[BaseException], ...] = ()
    via = "HTTP"

    @property
    def checks_content_on_send(self) -> bool:
        """See :attr:`edge.uplink.transport.Link.checks_content_on_send`: not unless a link says so."""
        return False

    def __init__(self, api: CentralCalls) -> None:
        self.api = api

    def upload_name(self, upload: str) -> str:
        """How registration and the central's refusals name the upload ``upload`` (a resume reference)."""
        return upload

    async def register(
        self, upload: str, manifest: Mapping[str, Any], segment: LedgerSegment | None
    ) -> RegisterOutcome:
        name = self.upload_name(upload)
        entries = segment.entries if segment is not None else []
        checkpoint = segment.checkpoint if segment is not None else None
        signed = segment.signed if segment is not None else ()
        unanswered: tuple[type[BaseException], ...] = (TimeoutError, *self.wire_errors)
        try:
            receipt = await self.api.register(name, manifest, entries, checkpoint, signed)
        except CentralUnavailable as exc:
            return RetryLater(str(exc), exc.retry_after_s, answered=exc.answered)
        except CentralRejected as exc:
            return outcome_of_rejection(exc, name, via=self.via)
        except unanswered as exc:
            return RetryLater(f"{type(exc).__name__}: {exc}")
        return Accepted(receipt)

    async def ledger_state(self) -> LedgerAnswer:
        with not_done(*self.wire_errors, via=self.via):
            return await self.api.ledger_state()

    async def push_ledger(self, segment: LedgerSegment) -> LedgerAnswer:
        with not_done(*self.wire_errors, via=self.via):
            return await self.api.post_ledger(segment.entries, segment.checkpoint, segment.signed)

    async def ledger_page(self, after: int, limit: int) -> LedgerPage:
        with not_done(*self.wire_errors, via=self.via):
            doc = await self.api.ledger_page(after, limit)  # its shape is checked there
        witnessed = doc.get("witnessed_head")
        return LedgerPage(doc["entries"], doc.get("next"), witnessed if isinstance(witnessed, dict) else None)

    async def tree_head(self) -> dict[str, Any]:
        with not_done(*self.wire_errors, via=self.via):
            return await self.api.tree_head()

    async def officers(self, have: int) -> dict[str, Any]:
        with not_done(*self.wire_errors, via=self.via):
            return await self.api.officers(have)

    async def fleet_report(self, report: Mapping[str, Any]) -> dict[str, Any]:
        with not_done(*self.wire_errors, via=self.via):
            return await self.api.fleet_report(report)

    async def consistency(self, first: int, second: int) -> list[str] | None:
        with not_done(*self.wire_errors, via=self.via):
            try:
                return await self.api.consistency(first, second)
            except CentralRejected as exc:
                if exc.status == 400 and exc.code == "bad_request":
                    return None  # the central says it cannot: it holds fewer leaves than asked
                raise


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


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
