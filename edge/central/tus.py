"""tus 1.0.0 server on aiohttp: core, creation, creation-with-upload, expiration, checksum, termination.

Mounted by the central application with :func:`add_tus_routes`; the uploads live in a
:class:`~edge.central.tus_contract.TusStore`: local files (:class:`~edge.central.tus_store.TusUploadStore`,
one receiver) or PostgreSQL and the bucket
(:class:`~edge.central.postgres.tus_shared_store.SharedTusStore`, several receivers); see there for
durability and the commit rule. Storage that cannot be reached now answers
``503 storage_unavailable`` with ``Retry-After`` (the station keeps its copy and resumes later).

Who may touch an upload: ``identify(request)`` (supplied by the application: the mTLS certificate's
station, or a header in development mode) names the caller; an upload belongs to the station that created
it, and any other station gets the same 404 as for an upload that never existed.

Every refusal is a JSON body ``{"error": code, "detail": sentence}`` naming the header and what was wrong,
with ``Tus-Resumable`` (tus requires it on every response). The one refusal of this layer that is final
for an item, a creation longer than the maximum upload size (413 ``too_large``), also carries
``"refusal"``: the central's signed refusal (``sign_refusal``, :mod:`edge.custody.refusal`), by which the
station tells it from a proxy's 413. Numbers in headers are ASCII digits only
(:mod:`edge.central.numbers`). Request bodies stream to disk in blocks of about ``_WRITE_BLOCK_BYTES``
whatever their size, each hashed and written in a worker thread while the loop reads the next (one such
call per upload at a time: see ``_receive``); a body that sends nothing for ``chunk_timeout_s`` ends the
request (408, connection closed), keeping the bytes that arrived unless the request declared a checksum
(a partial chunk cannot be verified). A client that disconnects (or a handler cancelled by the server)
is treated the same way, and logged as an ordinary event (INFO), not as a failure. A
``Transfer-Encoding`` other than ``chunked`` is refused with 501 before any byte is read: the offsets
count content bytes, and nothing is decoded.

Bounds: a creation that would take the station's uploads not yet registered beyond its quota gets
``507 quota_exceeded`` with ``Retry-After``. 507 and not 413, because it passes (as uploads complete and
register, or expire) and tus clients retry a 5xx but treat a 413 as final. When the application's request
limiter is saturated, ``Expect: 100-continue`` requests get their 503 before they send a body. Upload
writes (a PATCH, a creation with a body) take a slot of the application's
:class:`~edge.central.limits.UploadWriteSlots` right after the caller is identified, before the store
is asked anything: a station with its share in progress gets ``429 too_many_writes``, a receiver at its
maximum ``503 uploads_busy``, both with ``Retry-After`` (and before the body under ``Expect``).

Choices the protocol leaves open:

- ``Upload-Expires`` counts from the last accepted bytes, so a slow but live upload never expires under
  its client; complete uploads do not expire (registration removes them).
- ``Expect: 100-continue`` is answered from the headers alone: a request that would be refused (version,
  identity, owner, offset, type, size) gets its final status before the client sends any body.
- A creation request whose body fails (460, 408, 413) still created the upload: the refusal carries
  ``Location`` and ``Upload-Offset`` so the client resumes instead of starting over.
- ``X-HTTP-Method-Override: PATCH|DELETE|HEAD`` on a POST to an upload URL.
- Termination (``DELETE``) of a complete upload that a registration claimed (on any receiver) is refused
  with ``423 upload_registering`` while the registration's lease runs (the store's ``terminate``): the
  content is never pulled from under the registration moving it into the object store; registration
  removes the upload itself once it is registered.
- A finished upload's file is never opened for writing again (registration may have linked it into the
  object store).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import errno
import functools
import json
import logging
import re
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from edge.central.background import periodic_task
from edge.central.http_server import CLIENT_GONE
from edge.central.limits import RequestLimiter, UploadWriteSlots, WritesFull
from edge.central.numbers import AsciiNumberError, parse_ascii_uint
from edge.central.tus_contract import TusStore, UploadAppend, UploadStoreUnavailableError
from edge.central.tus_store import (
    CHECKSUM_ALGORITHMS,
    PREFIX_SHA256,
    ChecksumMismatchError,
    ChunkChecksum,
    InsufficientStorageError,
    OffsetMismatchError,
    QuotaExceededError,
    TusStoreError,
    UploadBusyError,
    UploadExpiredError,
    UploadInfo,
    UploadLeasedError,
    UploadNotFoundError,
    UploadTooLargeError,
    is_upload_id,
)

__all__ = [
    "METADATA_MAX_CHARS",
    "OFFSET_OCTET_STREAM",
    "TUS_EXTENSIONS",
    "TUS_VERSION",
    "Identify",
    "OnComplete",
    "TusHeaderError",
    "TusRequestError",
    "add_tus_routes",
    "encode_upload_metadata",
    "http_date",
    "parse_decimal",
    "parse_upload_checksum",
    "parse_upload_metadata",
    "tus_purge_task",
]

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = ("creation", "creation-with-upload", "expiration", "checksum", "termination")
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
# Whole Upload-Metadata header; the station sends three short pairs.
METADATA_MAX_CHARS = 4096
METADATA_MAX_PAIRS = 32
METADATA_KEY_MAX_CHARS = 64
_METADATA_KEY_RE = re.compile(r"[!-+\--~]+")  # printable ASCII without space and comma
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
_ITEM_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_WRITE_BLOCK_BYTES = 1024 * 1024
# Body pieces smaller than this are joined before a block is written (see _Block).
_SMALL_PIECE_BYTES = 64 * 1024
_ADVERTISED_CHECKSUMS = (*CHECKSUM_ALGORITHMS, PREFIX_SHA256)
_REASONS = {460: "Checksum Mismatch"}
# Retry-After of 503/507 refusals when the application gives no limiter to take it from.
_DEFAULT_RETRY_AFTER_S = 10

Identify = Callable[[web.Request], Awaitable[str]]
SignRefusal = Callable[[str, str | None, str | None, str, str], dict[str, Any] | None]
"""``sign(station, item, upload, code, detail)``: the central's signed final refusal (None: unsigned)."""
OnComplete = Callable[[UploadInfo], Awaitable[None]]
_T = TypeVar("_T")


class TusHeaderError(ValueError):
    """A tus request header is malformed; ``header`` names it."""

    def __init__(self, header: str, problem: str) -> None:
        super().__init__(f"{header}: {problem}")
        self.header = header
        self.problem = problem


class TusRequestError(Exception):
    """A refusal the server answers with ``status`` and a JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
        refusal: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        self.close = close
        self.refusal = refusal


# -- pure header codecs --------------------------------------------------------------------------------


def parse_decimal(header: str, value: str) -> int:
    """A non-negative decimal byte count as tus sends it (see :mod:`edge.central.numbers`: ASCII digits
    only, no sign, no spaces, at most 19 digits)."""
    try:
        return parse_ascii_uint(value)
    except AsciiNumberError as exc:
        raise TusHeaderError(header, str(exc)) from None


def _has_control(text: str) -> bool:
    # Format characters (bidi overrides, zero-width) can make a displayed name lie about itself.
    return any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def parse_upload_metadata(value: str) -> dict[str, str]:
    """Decode ``Upload-Metadata``: comma-separated ``key base64value`` pairs (value optional).

    Keys are unique printable ASCII without spaces or commas; values must decode to UTF-8 text without
    control or format characters (metadata is displayed and logged, never used as a path). Known keys
    are checked: ``sha256`` is 64 lowercase hex, ``item`` is an item id.
    """
    header = "Upload-Metadata"
    if len(value) > METADATA_MAX_CHARS:
        raise TusHeaderError(header, f"expected at most {METADATA_MAX_CHARS} characters, got {len(value)}")
    if not value.strip():
        return {}
    pairs = value.split(",")
    if len(pairs) > METADATA_MAX_PAIRS:
        raise TusHeaderError(header, f"expected at most {METADATA_MAX_PAIRS} pairs, got {len(pairs)}")
    metadata: dict[str, str] = {}
    for index, pair in enumerate(pairs):
        parts = pair.strip(" ").split(" ")
        key = parts[0]
        if not key:
            raise TusHeaderError(header, f"pair {index + 1} has no key")
        if len(parts) > 2:
            raise TusHeaderError(
                header, f"pair {index + 1} ({key[:40]!r}): expected 'key value', got more spaces"
            )
        if len(key) > METADATA_KEY_MAX_CHARS or _METADATA_KEY_RE.fullmatch(key) is None:
            raise TusHeaderError(
                header,
                f"pair {index + 1}: key {key[:40]!r} must be 1-{METADATA_KEY_MAX_CHARS} printable ASCII "
                "characters without spaces or commas",
            )
        if key in metadata:
            raise TusHeaderError(header, f"key {key!r} appears twice")
        encoded = parts[1] if len(parts) == 2 else ""
        try:
            raw = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise TusHeaderError(header, f"key {key!r}: value is not valid base64") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TusHeaderError(header, f"key {key!r}: value is not UTF-8 text") from None
        if _has_control(text):
            raise TusHeaderError(header, f"key {key!r}: value contains control or format characters")
        metadata[key] = text
    if "sha256" in metadata and _SHA256_HEX_RE.fullmatch(metadata["sha256"]) is None:
        raise TusHeaderError(
            header, f"key 'sha256': expected 64 lowercase hex, got {metadata['sha256'][:80]!r}"
        )
    if "item" in metadata and _ITEM_RE.fullmatch(metadata["item"]) is None:
        raise TusHeaderError(
            header, f"key 'item': expected 1-128 of [A-Za-z0-9._:-], got {metadata['item'][:80]!r}"
        )
    return metadata


def encode_upload_metadata(metadata: Mapping[str, str]) -> str:
    """The ``Upload-Metadata`` form of ``metadata`` (inverse of :func:`parse_upload_metadata`)."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode('utf-8')).decode('ascii')}" if value else key
        for key, value in metadata.items()
    )


def parse_upload_checksum(value: str) -> ChunkChecksum:
    """``Upload-Checksum: <algorithm> <base64 digest>`` for the request body (``sha256-prefix``: for the
    upload's content from byte 0 through the end of the body, see :mod:`edge.central.tus_store`)."""
    header = "Upload-Checksum"
    parts = value.split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise TusHeaderError(header, f"expected '<algorithm> <base64 digest>', got {value[:80]!r}")
    algorithm, encoded = parts
    if algorithm not in CHECKSUM_ALGORITHMS and algorithm != PREFIX_SHA256:
        supported = ",".join(_ADVERTISED_CHECKSUMS)
        raise TusHeaderError(header, f"unsupported algorithm {algorithm[:40]!r}; supported: {supported}")
    try:
        digest = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise TusHeaderError(header, f"{algorithm} digest is not valid base64: {encoded[:80]!r}") from None
    size = len(CHECKSUM_ALGORITHMS["sha256" if algorithm == PREFIX_SHA256 else algorithm]().digest())
    if len(digest) != size:
        raise TusHeaderError(header, f"a {algorithm} digest has {size} bytes, got {len(digest)}")
    return ChunkChecksum(algorithm, digest)


def http_date(moment: datetime) -> str:
    """RFC 7231 IMF-fixdate of an aware time, as ``Upload-Expires`` requires."""
    if moment.tzinfo is None:
        raise ValueError("http_date needs a timezone-aware datetime")
    return email.utils.formatdate(moment.timestamp(), usegmt=True)


# -- helpers -------------------------------------------------------------------------------------------


async def _blocking(fn: Callable[..., _T], *args: object) -> _T:
    """Run ``fn`` in a worker thread; a cancelled caller still waits for it (two threads must never
    touch one upload file at once), then re-raises the cancellation."""
    return await _outcome(asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args)))


async def _outcome(future: asyncio.Future[_T]) -> _T:
    """The result of a worker thread's call; a cancelled caller still waits for the call to end."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not log it as lost
        raise


class _WriteBehind:
    """Every call one request makes on its upload (blocks of its body, then its end: finish, keep,
    discard, close), each in a worker thread while the loop reads on, one at a time: at most one call in
    flight, so one thread at a time touches the upload. A cancelled caller still waits for the call in
    flight to end.

    The first call that fails is remembered whatever became of the caller waiting for it (a handler
    cancelled by a shutdown while it waits still records the block's EIO): from then on :meth:`submit`,
    :meth:`call` and :meth:`wait` raise that failure and nothing more is written for the request; only
    :meth:`undo` (discard, close) still runs. So a block read after a failed one never takes its place
    in the file, and a failed fsync is never followed by a commit."""

    def __init__(self) -> None:
        self._running: asyncio.Future[Any] | None = None
        self.failure: BaseException | None = None

    async def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Start ``fn(*args)`` once the call before it ended well (raising its failure, or an earlier one)."""
        await self.wait()
        self._running = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))

    async def call(self, fn: Callable[..., _T], *args: object) -> _T:
        """:meth:`submit`, then ``fn``'s result (raising its failure)."""
        await self.wait()
        future: asyncio.Future[_T] = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(fn, *args)
        )
        self._running = future
        await self.wait()
        return future.result()

    async def wait(self) -> None:
        """Wait for the call in flight; raise the request's failure (this call's or an earlier one's)."""
        await self._settled()
        if self.failure is not None:
            raise self.failure

    async def settle(self) -> bool:
        """Wait for the call in flight, its failure not raised (the caller is already failing or
        cancelled); False when any call of the request failed."""
        await self._settled()
        return self.failure is None

    async def undo(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` (a discard, a close: nothing new written) after the call in flight ended, whatever
        failed before."""
        await self._settled()
        return await _blocking(fn, *args)

    async def _settled(self) -> None:
        running = self._running
        if running is None:
            return
        try:
            await _outcome(running)  # a cancelled caller still waits for the call to end
        except Exception:
            pass  # recorded below
        finally:
            self._running = None
            self._record(running)

    def _record(self, running: asyncio.Future[Any]) -> None:
        if self.failure is not None:
            return
        if running.cancelled():
            # Never ran (its executor went away): the next block would land in its place.
            self.failure = TusStoreError("a write of this request was cancelled before it ran")
        elif running.done():
            self.failure = running.exception()


def _write_then(
    write: UploadAppend, pieces: list[bytes | bytearray], end: Callable[[], UploadInfo]
) -> UploadInfo:
    """The body's last pieces and its end (finish, keep) in one worker-thread call."""
    if pieces:
        write.write_pieces(pieces)
    return end()


def _body_failure(exc: Exception) -> TusRequestError:
    """The refusal of a body whose read raised ``exc``: the client's, never the storage's."""
    if isinstance(exc, ConnectionError):
        return TusRequestError(400, "client_gone", f"the connection ended during the body: {exc}", close=True)
    # aiohttp's parser names what was wrong; anything else (ssl.SSLError) is named by its class too.
    reason = str(exc) if isinstance(exc, HttpProcessingError) else f"{type(exc).__name__}: {exc}"
    detail = f"the request body ended early: {reason[:200]}"
    return TusRequestError(400, "body_interrupted", detail, close=True)


class _Block:
    """The pieces of a body collected for one write: large ones kept as they arrived (no copy), small
    ones joined into buffers of up to ``_SMALL_PIECE_BYTES``, so a body trickling in tiny pieces costs
    a few list entries a block, not one Python object (and one iovec) per piece."""

    def __init__(self) -> None:
        self.pieces: list[bytes | bytearray] = []
        self.size = 0
        self._small: bytearray | None = None  # the open buffer of small pieces, the list's last entry

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if len(data) >= _SMALL_PIECE_BYTES:
            self.pieces.append(data)
            self._small = None
            return
        if self._small is None or len(self._small) >= _SMALL_PIECE_BYTES:
            self._small = bytearray()
            self.pieces.append(self._small)
        self._small += data


def _single_header(request: web.Request, name: str) -> str | None:
    values = request.headers.getall(name, [])
    if len(values) > 1:
        raise TusRequestError(400, "bad_header", f"{name}: expected one header, got {len(values)}")
    return values[0] if values else None


def _bad_header(exc: TusHeaderError) -> TusRequestError:
    code = "bad_metadata" if exc.header == "Upload-Metadata" else "bad_header"
    return TusRequestError(400, code, str(exc))


def _base_headers() -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}


def _error_response(request: web.Request, err: TusRequestError) -> web.Response:
    headers = _base_headers()
    headers.update(err.headers)
    doc: dict[str, Any] = {"error": err.code, "detail": err.detail}
    if err.refusal is not None:
        doc["refusal"] = err.refusal  # final, and signed: see edge.custody.refusal
    body = json.dumps(doc).encode("utf-8")
    response = web.Response(
        status=err.status,
        reason=_REASONS.get(err.status),
        body=body,
        content_type="application/json",
        headers=headers,
    )
    # No keep-alive after a refused body: the server drains it for a bounded time, then closes.
    if err.close or (request.body_exists and not request.content.is_eof()):
        response.force_close()
    return response


@dataclass(frozen=True)
class _Creation:
    station: str
    length: int
    metadata: dict[str, str]
    checksum: ChunkChecksum | None


class _TusEndpoints:
    def __init__(
        self,
        store: TusStore,
        identify: Identify,
        chunk_timeout_s: float,
        on_complete: OnComplete | None,
        limiter: RequestLimiter | None,
        sign_refusal: SignRefusal | None = None,
        writes: UploadWriteSlots | None = None,
    ) -> None:
        self._store = store
        self._writes = writes
        self._sign_refusal = sign_refusal
        self._identify = identify
        self._chunk_timeout_s = chunk_timeout_s
        self._on_complete = on_complete
        self._limiter = limiter
        self._retry_after_s = limiter.retry_after_s if limiter is not None else _DEFAULT_RETRY_AFTER_S

    # -- request plumbing ----------------------------------------------------------------------------

    def guarded(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                try:
                    return await handler(request)
                except UploadStoreUnavailableError as exc:
                    log.error("tus %s %r: the upload store is unavailable: %s", request.method,
                              request.path, exc)
                    raise TusRequestError(
                        503, "storage_unavailable", f"the central cannot reach its upload storage now; retry "
                        f"after {self._retry_after_s} s from the offset HEAD reports",
                        headers={"Retry-After": str(self._retry_after_s)}) from None
            except TusRequestError as err:
                if err.code == "client_gone":
                    # An ordinary event: the station resumes from the offset its next HEAD reports.
                    request[CLIENT_GONE] = True
                    log.info("tus %s %r: the client disconnected during the body; upload offset now %s",
                             request.method, request.path, err.headers.get("Upload-Offset", "unchanged"))
                    return _error_response(request, err)  # never sent: the connection is gone
                level = logging.INFO if err.status in (404, 409, 410) else logging.WARNING
                log.log(
                    level,
                    "tus %s %r refused: %d %s: %s",
                    request.method,
                    request.path,
                    err.status,
                    err.code,
                    err.detail,
                )
                response = _error_response(request, err)
                if err.close:
                    # A stalled client: answer, then drop the connection at once rather than let the
                    # server linger on a body that is not coming.
                    try:
                        await response.prepare(request)
                        await response.write_eof()
                    except ConnectionError:
                        request[CLIENT_GONE] = True
                    if request.transport is not None:
                        request.transport.close()
                return response

        return wrapped

    def _writes_full(self, station: str, full: WritesFull) -> TusRequestError:
        assert self._writes is not None
        retry = {"Retry-After": str(self._retry_after_s)}
        if full is WritesFull.STATION:
            # 429: this station's share, not the receiver, is used up; the station's client retries it.
            return TusRequestError(
                429, "too_many_writes",
                f"station {station} has {self._writes.of_station(station)} uploads being written on this "
                f"receiver, its maximum ([uploads] station_max_writes); retry after {self._retry_after_s} s",
                headers=retry)
        return TusRequestError(
            503, "uploads_busy",
            f"the central is writing {self._writes.in_progress} uploads at once, its configured maximum "
            f"([uploads] max_upload_connections); retry after {self._retry_after_s} s", headers=retry)

    def _refuse_if_writes_full(self, station: str) -> None:
        """Before ``100 Continue``: refuse a write that would not get a slot (nothing counted)."""
        full = None if self._writes is None else self._writes.full_for(station)
        if full is not None:
            raise self._writes_full(station, full)

    @contextlib.contextmanager
    def _write_slot(self, station: str) -> Iterator[None]:
        """One of the receiver's upload-write slots for ``station``'s request, taken before the request
        touches the store and held until its write is closed; refused (429 or 503 with Retry-After) when
        the station or the receiver has its maximum in progress."""
        if self._writes is None:
            yield
            return
        full = self._writes.try_enter(station)
        if full is not None:
            raise self._writes_full(station, full)
        try:
            yield
        finally:
            self._writes.leave(station)

    @staticmethod
    def _check_version(request: web.Request) -> None:
        values = request.headers.getall("Tus-Resumable", [])
        if values != [TUS_VERSION]:
            got = "no Tus-Resumable header" if not values else f"Tus-Resumable {', '.join(values)[:40]!r}"
            raise TusRequestError(
                412,
                "tus_version",
                f"Tus-Resumable: this server speaks tus {TUS_VERSION}, the request sent {got}",
                headers={"Tus-Version": TUS_VERSION},
            )

    async def _caller(self, request: web.Request) -> str:
        try:
            station = await self._identify(request)
        except web.HTTPException as exc:
            # An identify callback that speaks aiohttp: the refusal still goes out as tus JSON.
            raise TusRequestError(exc.status, f"http_{exc.status}", exc.text or exc.reason) from None
        if not isinstance(station, str) or not station:
            raise TusRequestError(403, "no_identity", "the request carries no station identity")
        return station

    async def _owned(self, request: web.Request, station: str, *, allow_expired: bool = False) -> UploadInfo:
        upload_id = request.match_info.get("upload_id", "")
        if not is_upload_id(upload_id):
            raise TusRequestError(
                404, "not_found", f"no upload {upload_id[:80]!r}: ids are 32 lowercase hex characters"
            )
        info = await _blocking(self._store.get, upload_id)
        if info is None or info.station != station:
            if info is not None:
                log.warning("station %s asked for upload %s of station %s", station, upload_id, info.station)
            raise TusRequestError(404, "not_found", f"no upload {upload_id}")
        if not allow_expired and self._store.is_expired(info):
            raise TusRequestError(410, "expired", f"upload {upload_id} expired at {http_date(info.expires)}")
        return info

    @staticmethod
    def _check_body_type(request: web.Request) -> None:
        if request.content_type != OFFSET_OCTET_STREAM:
            got = request.headers.get("Content-Type", "")
            raise TusRequestError(
                415,
                "unsupported_media_type",
                f"Content-Type: expected {OFFSET_OCTET_STREAM}, got {got[:80]!r}",
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            # aiohttp would decompress it, and the offsets would no longer count the bytes sent.
            raise TusRequestError(
                415, "unsupported_media_type", f"Content-Encoding: expected identity, got {encoding[:40]!r}"
            )
        codings = [value.strip().lower() for value in request.headers.getall("Transfer-Encoding", [])]
        if codings and codings != ["chunked"]:
            # aiohttp removes the chunked framing and nothing else: a gzip coding would be stored as is.
            raise TusRequestError(
                501,
                "unsupported_transfer_coding",
                f"Transfer-Encoding: only chunked is accepted, got {', '.join(codings)[:80]!r}",
                close=True,
            )

    @staticmethod
    def _checksum(request: web.Request) -> ChunkChecksum | None:
        value = _single_header(request, "Upload-Checksum")
        if value is None:
            return None
        try:
            return parse_upload_checksum(value)
        except TusHeaderError as exc:
            raise _bad_header(exc) from None

    @staticmethod
    def _check_fits(request: web.Request, offset: int, length: int) -> None:
        declared = request.content_length
        if declared is not None and offset + declared > length:
            raise TusRequestError(
                413,
                "too_large",
                f"Content-Length: {declared} bytes at offset {offset} would exceed Upload-Length {length}",
            )

    def _progress_headers(self, info: UploadInfo) -> dict[str, str]:
        headers = {"Upload-Offset": str(info.offset)}
        if not info.complete:
            headers["Upload-Expires"] = http_date(info.expires)
        return headers

    async def _receive(
        self, request: web.Request, write: UploadAppend
    ) -> tuple[UploadInfo, TusRequestError | None]:
        """Stream the body into ``write``; the committed state and the refusal to answer, if any.

        The bytes objects the body arrives in are collected as they are (no joined copy; small ones are
        joined, see :class:`_Block`) and handed to a worker thread every ``_WRITE_BLOCK_BYTES``, which
        hashes and writes them (one ``pwritev``) while the loop reads the next block: the socket keeps
        being read, and the block's hash (hashlib lets go of the GIL) runs beside the loop's TLS. At most
        two blocks of a request are in memory."""
        block = _Block()
        end = write.offset  # of the bytes received; write.offset moves in the worker
        # Every write.* call goes through it: after the call in flight, and nothing more written after a
        # failure (see _WriteBehind).
        behind = _WriteBehind()
        failure: TusRequestError | None = None
        too_long = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self._chunk_timeout_s):
                        data = await request.content.readany()
                except TimeoutError:
                    failure = TusRequestError(
                        408,
                        "body_timeout",
                        f"no body bytes arrived for {self._chunk_timeout_s:g} s; resume from Upload-Offset",
                        close=True,
                    )
                    break
                except Exception as exc:
                    # Whatever reading the body raises is the client's doing (a disconnect, broken chunked
                    # framing, a corrupt TLS record: ssl.SSLError is an OSError but no ConnectionError),
                    # never a storage failure.
                    failure = _body_failure(exc)
                    break
                if not data:
                    break
                if end + len(data) > write.length:
                    too_long = True
                    block = _Block()  # decided: nothing of this request is written or kept from now on
                    failure = TusRequestError(
                        413,
                        "too_large",
                        f"the body runs past Upload-Length {write.length}; the request was discarded",
                    )
                    break
                end += len(data)
                block.add(data)
                if block.size >= _WRITE_BLOCK_BYTES:
                    # Cancelled while the block before is still in flight: this one stays for keep().
                    await behind.submit(write.write_pieces, block.pieces)
                    block = _Block()  # the pieces handed over are never touched here again
            await behind.wait()
            if too_long:
                return await behind.undo(write.discard), failure
            # Taken out first: cancelled during the call below, the cancellation must not write them again.
            last, block = block.pieces, _Block()
            if failure is not None:
                return await behind.call(_write_then, write, last, write.keep), failure
            try:
                return await behind.call(_write_then, write, last, write.finish), None
            except ChecksumMismatchError as exc:
                return write.info, TusRequestError(
                    460, "checksum_mismatch", f"{exc}; the chunk was discarded"
                )
        except asyncio.CancelledError:
            # Server shutdown (or handler cancellation): like a disconnect, keep what arrived, unless a
            # call failed (the pieces must not take a failed block's place, nor a commit follow a failed
            # fsync) or the body was too long: then roll back to the last commit.
            with contextlib.suppress(Exception):
                if await behind.settle() and not too_long:
                    await behind.call(_write_then, write, block.pieces, write.keep)
                else:
                    await behind.undo(write.discard)
            raise
        except OSError as exc:
            # Only a worker's call raises here (the body's reads are caught above), and it has ended.
            log.error("upload %s: storage failed: %s", write.upload_id, exc)
            with contextlib.suppress(OSError):
                await behind.undo(write.discard)
            status = 507 if exc.errno == errno.ENOSPC else 500
            return write.info, TusRequestError(
                status, "storage_failed", f"the server could not store the chunk: {exc.strerror or exc}"
            )
        finally:
            await behind.undo(write.close)

    async def _begin(self, upload_id: str, offset: int, checksum: ChunkChecksum | None) -> UploadAppend:
        try:
            begin = functools.partial(self._store.begin_write, upload_id, offset=offset, checksum=checksum)
            return await _blocking(begin)
        except UploadNotFoundError:
            raise TusRequestError(404, "not_found", f"no upload {upload_id}") from None
        except UploadExpiredError as exc:
            raise TusRequestError(410, "expired", str(exc)) from None
        except UploadBusyError:
            raise TusRequestError(
                409, "upload_busy", f"upload {upload_id} is being written by another request; retry later"
            ) from None
        except OSError as exc:
            log.error("upload %s: cannot open its content file: %s", upload_id, exc)
            raise TusRequestError(
                500, "storage_failed", f"the server cannot open upload {upload_id}: {exc.strerror or exc}"
            ) from None
        except OffsetMismatchError as exc:
            raise TusRequestError(
                409,
                "offset_mismatch",
                f"Upload-Offset: the upload is at {exc.expected}, the request sent {exc.got}",
            ) from None

    async def _completed(self, info: UploadInfo, before: int) -> None:
        if before == info.length or not info.complete:
            return
        log.info(
            "upload %s of station %s complete: %d bytes, sha256 %s",
            info.upload_id,
            info.station,
            info.length,
            info.sha256,
        )
        if self._on_complete is None:
            return
        try:
            await self._on_complete(info)
        except Exception:
            # The content is durable and the client's request succeeded; the hook's failure is the
            # application's to handle (registration re-checks the upload anyway).
            log.exception("upload %s: on_complete hook failed", info.upload_id)

    # -- handlers ------------------------------------------------------------------------------------

    async def options(self, request: web.Request) -> web.StreamResponse:
        headers = _base_headers()
        headers.update(
            {
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": ",".join(TUS_EXTENSIONS),
                "Tus-Max-Size": str(self._store.max_size_bytes),
                "Tus-Checksum-Algorithm": ",".join(_ADVERTISED_CHECKSUMS),
            }
        )
        return web.Response(status=204, headers=headers)

    async def _create_caller(self, request: web.Request) -> str:
        """The station of a creation request (its version and method checked first)."""
        self._check_version(request)
        override = _single_header(request, "X-HTTP-Method-Override")
        if override is not None and override.upper() != "POST":
            raise TusRequestError(
                400,
                "bad_header",
                f"X-HTTP-Method-Override: the creation URL takes POST, got {override[:20]!r}",
            )
        return await self._caller(request)

    async def _check_create(self, request: web.Request, station: str) -> _Creation:
        """Everything else about ``station``'s creation request that the headers alone decide."""
        for unsupported in ("Upload-Defer-Length", "Upload-Concat"):
            if unsupported in request.headers:
                raise TusRequestError(
                    400, "bad_header", f"{unsupported}: not supported by this server; send Upload-Length"
                )
        raw_length = _single_header(request, "Upload-Length")
        if raw_length is None:
            raise TusRequestError(400, "bad_header", "Upload-Length: required to create an upload, missing")
        raw_metadata = _single_header(request, "Upload-Metadata")
        try:
            length = parse_decimal("Upload-Length", raw_length)
            metadata = parse_upload_metadata(raw_metadata or "")
        except TusHeaderError as exc:
            raise _bad_header(exc) from None
        if length > self._store.max_size_bytes:
            raise self._too_large(
                station, metadata.get("item"),
                f"Upload-Length: {length} bytes exceeds the maximum upload size {self._store.max_size_bytes}",
            )
        quota = self._store.station_quota_bytes
        if quota is not None:
            # Decided again, atomically, by the store's create; checked here so that a refusal can come
            # before the body of an Expect: 100-continue request.
            outstanding = await _blocking(self._store.outstanding_bytes, station)
            if outstanding + length > quota:
                raise self._over_quota(QuotaExceededError(station, outstanding, length, quota))
        checksum: ChunkChecksum | None = None
        if request.body_exists:
            self._check_body_type(request)
            checksum = self._checksum(request)
            self._check_fits(request, 0, length)
        return _Creation(station, length, metadata, checksum)

    def _too_large(self, station: str, item: str | None, detail: str) -> TusRequestError:
        """The item is larger than this central takes: final for it, so signed (the station tells it from a
        proxy's 413 by the signature)."""
        refusal = None if self._sign_refusal is None else self._sign_refusal(
            station, item, None, "too_large", detail
        )
        headers = {"Tus-Max-Size": str(self._store.max_size_bytes)}
        return TusRequestError(413, "too_large", detail, headers=headers, refusal=refusal)

    def _over_quota(self, exc: QuotaExceededError) -> TusRequestError:
        log.warning("station %s: upload creation refused: %s", exc.station, exc)
        return TusRequestError(
            507,
            "quota_exceeded",
            f"Upload-Length: {exc}; finish or register those uploads, or retry after {self._retry_after_s} s",
            headers={"Retry-After": str(self._retry_after_s)},
        )

    async def create(self, request: web.Request) -> web.StreamResponse:
        station = await self._create_caller(request)
        # A creation with a body writes (a slot); one without only adds a record.
        with self._write_slot(station) if request.body_exists else contextlib.nullcontext():
            return await self._create(request, await self._check_create(request, station))

    async def _create(self, request: web.Request, creation: _Creation) -> web.StreamResponse:
        try:
            info = await _blocking(self._store.create, creation.station, creation.length, creation.metadata)
        except UploadTooLargeError as exc:
            raise self._too_large(creation.station, creation.metadata.get("item"), str(exc)) from None
        except QuotaExceededError as exc:
            raise self._over_quota(exc) from None
        except InsufficientStorageError as exc:
            log.error("cannot create an upload for station %s: %s", creation.station, exc)
            raise TusRequestError(
                507,
                "insufficient_storage",
                f"Upload-Length: the central has no room for {creation.length} bytes now; retry later",
            ) from None
        headers = _base_headers()
        headers["Location"] = f"{request.path.rstrip('/')}/{info.upload_id}"
        failure: TusRequestError | None = None
        if request.body_exists:
            write = await self._begin(info.upload_id, 0, creation.checksum)
            info, failure = await self._receive(request, write)
        headers.update(self._progress_headers(info))
        if failure is not None:
            # The upload exists: tell the client where, and how much of the body it kept.
            failure.headers.update(headers)
            raise failure
        await self._completed(info, -1)
        return web.Response(status=201, headers=headers)

    async def head(self, request: web.Request) -> web.StreamResponse:
        self._check_version(request)
        station = await self._caller(request)
        info = await self._owned(request, station)
        headers = _base_headers()
        headers.update(self._progress_headers(info))
        headers["Upload-Length"] = str(info.length)
        if info.metadata:
            headers["Upload-Metadata"] = encode_upload_metadata(info.metadata)
        return web.Response(status=200, headers=headers)

    async def _patch_caller(self, request: web.Request) -> str:
        """The station of an append (its version checked first)."""
        self._check_version(request)
        return await self._caller(request)

    async def _check_patch(
        self, request: web.Request, station: str
    ) -> tuple[UploadInfo, ChunkChecksum | None]:
        """Everything else about ``station``'s append that the headers alone decide."""
        info = await self._owned(request, station)
        self._check_body_type(request)
        raw_offset = _single_header(request, "Upload-Offset")
        if raw_offset is None:
            raise TusRequestError(400, "bad_header", "Upload-Offset: required on PATCH, missing")
        try:
            offset = parse_decimal("Upload-Offset", raw_offset)
        except TusHeaderError as exc:
            raise _bad_header(exc) from None
        checksum = self._checksum(request)
        if offset != info.offset:
            raise TusRequestError(
                409,
                "offset_mismatch",
                f"Upload-Offset: the upload is at {info.offset}, the request sent {offset}",
            )
        self._check_fits(request, offset, info.length)
        return info, checksum

    async def patch(self, request: web.Request) -> web.StreamResponse:
        station = await self._patch_caller(request)
        # Taken before the store is asked anything: a station over its share, or a receiver at its
        # maximum, is answered at once without a database connection.
        with self._write_slot(station):
            return await self._patch(request, station)

    async def _patch(self, request: web.Request, station: str) -> web.StreamResponse:
        info, checksum = await self._check_patch(request, station)
        if info.complete:
            # Never open a finished upload's file again: registration may have linked it into the
            # object store, and it is evidence from then on.
            if request.body_exists:
                raise TusRequestError(413, "too_large", f"upload {info.upload_id} is already complete")
            headers = _base_headers()
            headers.update(self._progress_headers(info))
            return web.Response(status=204, headers=headers)
        write = await self._begin(info.upload_id, info.offset, checksum)
        before = info.offset
        info, failure = await self._receive(request, write)
        headers = _base_headers()
        headers.update(self._progress_headers(info))
        if failure is not None:
            failure.headers.update(headers)
            raise failure
        await self._completed(info, before)
        return web.Response(status=204, headers=headers)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse from the headers alone, before the client sends a body."""
        expect = request.headers.get("Expect", "")
        if request.version != HttpVersion11 or expect.lower() != "100-continue":
            return _error_response(request, TusRequestError(
                417, "expectation_failed", f"Expect: only 100-continue is understood, got {expect[:40]!r}"
            ))
        try:
            if self._limiter is not None and self._limiter.refuse_if_saturated():
                raise TusRequestError(
                    503,
                    "server_busy",
                    f"the central is handling {self._limiter.max_requests} requests, its configured maximum; "
                    f"retry after {self._retry_after_s} s",
                    headers={"Retry-After": str(self._retry_after_s)},
                )
            if "upload_id" not in request.match_info:
                station = await self._create_caller(request)
                self._refuse_if_writes_full(station)
                await self._check_create(request, station)
            elif request.method == "PATCH" or (
                request.headers.get("X-HTTP-Method-Override", "").strip().upper() == "PATCH"
            ):
                station = await self._patch_caller(request)
                self._refuse_if_writes_full(station)
                await self._check_patch(request, station)
        except TusRequestError as err:
            log.info(
                "tus %s %r refused before its body: %d %s: %s",
                request.method,
                request.path,
                err.status,
                err.code,
                err.detail,
            )
            return _error_response(request, err)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    async def delete(self, request: web.Request) -> web.StreamResponse:
        self._check_version(request)
        station = await self._caller(request)
        info = await self._owned(request, station, allow_expired=True)
        try:
            await _blocking(self._store.terminate, info.upload_id)
        except UploadBusyError:
            raise TusRequestError(
                409,
                "upload_busy",
                f"upload {info.upload_id} is being written by another request; retry later",
            ) from None
        except UploadLeasedError as exc:
            # A registration is moving the content into the object store: not pulled from under it.
            log.info("termination of upload %s by station %s refused: %s", info.upload_id, station, exc)
            raise TusRequestError(423, "upload_registering", str(exc)) from None
        log.info("upload %s terminated by station %s", info.upload_id, station)
        return web.Response(status=204, headers=_base_headers())

    async def override(self, request: web.Request) -> web.StreamResponse:
        """POST with ``X-HTTP-Method-Override`` for clients that cannot send PATCH or DELETE."""
        method = _single_header(request, "X-HTTP-Method-Override")
        if method is None:
            raise TusRequestError(
                405,
                "method_not_allowed",
                "POST to an upload URL needs X-HTTP-Method-Override: PATCH or DELETE",
                headers={"Allow": "OPTIONS, HEAD, PATCH, DELETE"},
            )
        handlers = {"PATCH": self.patch, "DELETE": self.delete, "HEAD": self.head}
        handler = handlers.get(method.strip().upper())
        if handler is None:
            raise TusRequestError(
                400,
                "bad_header",
                f"X-HTTP-Method-Override: expected PATCH, DELETE or HEAD, got {method[:20]!r}",
            )
        return await handler(request)


def add_tus_routes(
    app: web.Application,
    store: TusStore,
    *,
    base_path: str = "/v1/uploads",
    identify: Identify,
    chunk_timeout_s: float,
    on_complete: OnComplete | None = None,
    limiter: RequestLimiter | None = None,
    sign_refusal: SignRefusal | None = None,
    writes: UploadWriteSlots | None = None,
) -> None:
    """Mount the tus endpoints: ``base_path`` (OPTIONS, POST) and ``base_path/{upload_id}`` (OPTIONS,
    HEAD, PATCH, DELETE, POST with X-HTTP-Method-Override). ``limiter``: the application's request
    limiter, consulted before ``100 Continue`` (it is applied by the application's middleware).
    ``sign_refusal``: signs the one final refusal of this layer, an upload longer than the maximum.
    ``writes``: the receiver's upload-write slots (per station, and in all), None: unbounded."""
    if chunk_timeout_s <= 0:
        raise ValueError(f"chunk_timeout_s must be > 0, got {chunk_timeout_s}")
    base = "/" + base_path.strip("/")
    endpoints = _TusEndpoints(store, identify, chunk_timeout_s, on_complete, limiter, sign_refusal, writes)
    guard = endpoints.guarded
    item = base + "/{upload_id}"
    expect = endpoints.expect
    app.router.add_route("OPTIONS", base, guard(endpoints.options))
    app.router.add_route("POST", base, guard(endpoints.create), expect_handler=expect)
    app.router.add_route("OPTIONS", item, guard(endpoints.options))
    app.router.add_route("HEAD", item, guard(endpoints.head))
    app.router.add_route("PATCH", item, guard(endpoints.patch), expect_handler=expect)
    app.router.add_route("DELETE", item, guard(endpoints.delete))
    app.router.add_route("POST", item, guard(endpoints.override), expect_handler=expect)


def tus_purge_task(
    store: TusStore, interval_s: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An ``app.cleanup_ctx`` entry that purges expired uploads (incomplete ones, and complete ones no
    registration took) at start and every ``interval_s`` seconds until the application stops."""
    async def one_round() -> None:
        removed = await _blocking(store.purge_expired)
        if removed:
            log.info("purged %d expired uploads from %r", removed, store)

    return periodic_task("tus-purge", one_round, interval_s, f"purging expired uploads in {store!r} failed")
