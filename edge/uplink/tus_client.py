"""Resumable upload client for tus 1.0.0 (core, creation, creation-with-upload, checksum, termination).

The station side of the content upload. One :class:`TusClient` per central, shared by every concurrent
upload of the station (it keeps no per-upload state); the caller owns the ``aiohttp.ClientSession``
(and with it the mutual-TLS context and connection limits) and the retry policy.

How an upload goes (:meth:`TusClient.upload`):

1. A known upload URL is resumed: ``HEAD`` tells the offset the *server* holds. The client never
   continues from what it believes it sent, because a chunk in flight when the connection broke may
   or may not have been stored. An upload the server no longer knows (404/410: expired, purged) is
   created again.
2. A new upload is created with ``POST`` (``Upload-Length``, ``Upload-Metadata``); with
   creation-with-upload the first chunk rides in the same request, saving a round trip per file.
3. The rest goes in ``PATCH`` requests of ``chunk_size_bytes``, each carrying
   ``Upload-Checksum: <alg> <base64>`` of that chunk, so a corrupted chunk is refused (460) and
   discarded by the server, and re-sent (re-read from disk) a bounded number of times.
   ``409`` (offset mismatch) re-synchronises with ``HEAD``.

   With ``checksum="sha256-prefix"`` (the station's choice, a tus extension of this project's central:
   :mod:`edge.central.tus_store`) the digest is of the content from byte 0 through the end of the
   chunk: one SHA-256 pass over the file on each side instead of two (the central's whole-content
   hasher answers it). The client keeps the hasher state at each chunk's end, so a re-sent chunk is
   hashed from its start state; a resume at an offset it has no state for hashes the bytes before it
   once. The last chunk's digest is the file's SHA-256: given ``expected_sha256`` (the sealed hash),
   a stored copy that no longer gives it is found before the last chunk goes, and the upload is
   terminated and :class:`ContentMismatch` raised, so the central never holds a damaged copy whole.

   Given the digests recorded when the stored copy was verified at offload (``recorded``:
   :mod:`edge.ingest.prefix_digests`, every ``step`` bytes and at the end, the last one the sealed
   hash), the client hashes nothing: each chunk ends at a multiple of the chunk size (a multiple of the
   step) and carries the recorded digest, and the central checks it against its running hash of the
   bytes it received, so a copy changed since offload is refused at its first changed chunk and never
   completed. A refused chunk is judged by hashing the copy from byte 0 through its end, once: the
   recorded digest (damaged on the way: sent again), not it and not the sealed hash either (the copy
   changed: terminated, :class:`ContentMismatch`), or not it but the sealed hash (the recorded digest is
   wrong: hashed as it goes from then on).
   A chunk refused every time is then no transport accident but a central holding other bytes before
   it (a copy re-acquired since): the upload is terminated and started again, once per call. A central
   of an earlier release refuses the algorithm (400 naming ``Upload-Checksum``): the client falls back
   to per-chunk ``sha256`` for good and ends the call as an interruption, so the caller, which asks
   :attr:`TusClient.checksum` before each upload, checks the stored copy its own way next time.
4. Any connection failure, timeout or transient server error raises :class:`UploadInterrupted`
   carrying the upload URL; the caller retries later (backoff, circuit breaker) and step 1 resumes.

Memory and disk: each chunk is read from disk once into a buffer and hashed in a worker thread, then
streamed to the socket in pieces from that same buffer: the checksum header must precede the body, so
the chunk has to be hashed before it is sent, and holding it avoids reading every byte twice. The
chunk is read and hashed a piece (256 KiB) at a time, each piece hashed right after its read while it
is still in the CPU's cache (hashing a whole 8 MiB chunk after reading it costs about 15% more CPU:
measured). The buffers come from a small pool of the client's (:mod:`edge.uplink.chunk_buffers`) and
are reused: a chunk's buffer goes back only once nothing can read it any more (its request returned,
its read ended; never after a cancellation, and never while any view of it is alive, such as slices
the event loop's transport has not written yet), so a reused buffer is never overwritten under a send.
While one chunk is on the wire the next is read and hashed (one chunk of read-ahead), so disk, hashing
and network overlap. Memory per upload is therefore about two chunks (2 x 8 MiB by default) whatever
the file size, and the pool keeps at most ``spare_buffers`` more between chunks.

The wire: requests with a chunk's body go over ``bodies`` when given (:mod:`edge.uplink.blocking_body`:
a blocking socket in a worker thread with the session's own TLS context, 0.3 to 0.9 CPU s per GiB less
than asyncio's TLS transport), every other request over the ``aiohttp`` session; both give the checks below
the same :class:`~edge.uplink.tus_answer.TusAnswer`, and their failures map to the same errors.

Every value from the server is checked before use: status codes, ``Tus-Resumable``,
``Upload-Offset`` (decimal, bounded, never beyond the length or behind what the server already
confirmed in this call), ``Location`` (bounded, same origin as the configured base URL so station
headers and content never go to another host), error bodies (read up to a bound, truncated).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
from yarl import URL

from edge.custody.canonical import parse_json
from edge.ingest.prefix_digests import PrefixDigests
from edge.uplink.blocking_body import PIECE_BYTES, BlockingBodySender
from edge.uplink.central_calls import CENTRAL_REQUEST_ID_HEADER, is_central_error_answer
from edge.uplink.chunk_buffers import ChunkBuffers
from edge.uplink.policy import RateLimiter, parse_retry_after
from edge.uplink.tus_answer import TusAnswer, read_aiohttp_answer

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "DEFAULT_CHUNK_SIZE_BYTES",
    "PREFIX_SHA256",
    "TUS_VERSION",
    "ChecksumRejected",
    "ContentMismatch",
    "LocalFileError",
    "ProtocolViolation",
    "ServerRejected",
    "TusClient",
    "UplinkError",
    "UploadGone",
    "UploadInterrupted",
    "UploadResult",
    "encode_metadata",
]

log = logging.getLogger(__name__)

TUS_VERSION: Final = "1.0.0"
DEFAULT_CHUNK_SIZE_BYTES: Final = 8 * 1024 * 1024
OFFSET_CONTENT_TYPE: Final = "application/offset+octet-stream"
PREFIX_SHA256: Final = "sha256-prefix"
CHECKSUM_ALGORITHMS: Final = frozenset({"sha256", "sha1", "sha512", "md5", PREFIX_SHA256})

# Bytes handed to the transport at a time: small enough for a smooth rate limit and a meaningful
# stall timeout, large enough that per-piece overhead is nothing next to the copy.
_PIECE_BYTES: Final = PIECE_BYTES
_MAX_LOCATION_CHARS: Final = 2048
_MAX_DETAIL_CHARS: Final = 300
_MAX_SHOWN_HEADER_CHARS: Final = 80
_OFFSET_RE: Final = re.compile(r"[0-9]{1,19}")  # below 2**63: no 10**4000-digit integer parsing
_METADATA_KEY_RE: Final = re.compile(r"[!-+\--~]+")  # printable ASCII without space and comma
_TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
# What a broken, slow or garbled exchange raises, on either connection: an interruption.
_WIRE_ERRORS: Final = (aiohttp.ClientError, OSError, TimeoutError, http.client.HTTPException)
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------------
# Errors


class UplinkError(Exception):
    """Base of the uplink transport's errors. ``url`` is the upload URL when one exists, so the
    caller can resume it (persist it before retrying)."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class UploadInterrupted(UplinkError):
    """The transfer stopped for a reason that may pass: connection refused/reset, timeout, a
    transient server status (5xx, 408, 429). Retry later; the upload resumes from the server's offset.
    ``status`` is the HTTP status when the server answered; ``offset`` the last offset the server
    confirmed in this call (None if none); ``bytes_sent`` body bytes put on the wire in this call;
    ``retry_after_s`` what the answer's ``Retry-After`` asked for (None: nothing); ``central_document``
    whether the answer's body was the central's own error document (not a proxy's page)."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        offset: int | None = None,
        bytes_sent: int = 0,
        retry_after_s: float | None = None,
        central_document: bool = False,
    ) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.offset = offset
        self.bytes_sent = bytes_sent
        self.retry_after_s = retry_after_s
        self.central_document = central_document


class UploadGone(UplinkError):
    """The server does not know the upload (404/410: unknown, expired, terminated). Create a new one."""


class ChecksumRejected(UplinkError):
    """The server refused the same chunk's checksum (460) on every attempt."""

    def __init__(self, message: str, *, url: str | None, offset: int, attempts: int) -> None:
        super().__init__(message, url=url)
        self.offset = offset
        self.attempts = attempts


class ServerRejected(UplinkError):
    """The answer refused the request (a 4xx other than the ones handled). ``error`` and ``detail`` come
    from the JSON body when it has one; ``body`` is the (truncated, sanitised) text of the body;
    ``refusal`` the signed refusal the body carried (unverified). Whether it is final is the caller's
    decision: a proxy in front of the server can answer anything."""

    def __init__(
        self,
        status: int,
        body: str,
        *,
        url: str | None = None,
        request: str = "",
        error: str | None = None,
        detail: str | None = None,
        refusal: dict[str, Any] | None = None,
    ) -> None:
        said = detail or body or "(no body)"
        code = f" {error}" if error else ""
        super().__init__(f"{request or 'request'} refused with HTTP {status}{code}: {said}", url=url)
        self.status = status
        self.body = body
        self.error = error
        self.detail = detail
        self.refusal = refusal


class ProtocolViolation(UplinkError):
    """The server's answer breaks tus 1.0 (missing or malformed header, impossible offset, wrong
    ``Tus-Resumable``, a ``Location`` on another origin...). Retrying the same server will not help."""


class LocalFileError(UplinkError):
    """The file to upload cannot be read, or is shorter than the length to upload."""


class ContentMismatch(LocalFileError):
    """The file read for upload does not give the expected SHA-256 (``found``): the stored copy changed.
    Found before the server held the whole content: hashed as it was sent, before the last chunk went
    (``refused_at`` None); or sent with recorded digests, when the server refused the chunk at offset
    ``refused_at`` (460) and the copy's re-read through it gave neither the recorded digest nor, whole,
    the expected hash (that chunk may be the last). The upload was terminated (best effort)."""

    def __init__(self, message: str, *, url: str | None, found: str, refused_at: int | None = None) -> None:
        super().__init__(message, url=url)
        self.found = found
        self.refused_at = refused_at


# --------------------------------------------------------------------------------------------------
# Results and helpers


@dataclass(frozen=True, slots=True)
class UploadResult:
    url: str
    """The upload URL (absolute)."""
    bytes_sent: int
    """Body bytes put on the wire by this call, re-sent chunks included: a resumed upload that sent
    nothing twice has ``bytes_sent == length - resumed_from``."""
    resumed_from: int
    """The server's offset when this call started: 0 for a new upload."""
    length: int
    created: bool
    """This call created the upload (new, or the old one was gone)."""
    checksum_retries: int = 0
    """Chunks re-sent after a 460."""


@dataclass(frozen=True, slots=True)
class _Chunk:
    offset: int
    data: memoryview  # exactly the chunk's bytes, in a pooled buffer (edge.uplink.chunk_buffers)
    checksum_header: str | None
    # sha256-prefix: the hasher after this chunk (the next chunk's start), and its hex digest.
    prefix_after: Any = None
    prefix_sha256: str | None = None
    # sha256-prefix: the digest is the one recorded when the stored copy was verified (nothing hashed).
    recorded: bool = False


class _Sent:
    """Counts body bytes handed to the transport, and chunks refused (460), across the requests of one
    upload call."""

    __slots__ = ("bytes", "checksum_retries")

    def __init__(self) -> None:
        self.bytes = 0
        self.checksum_retries = 0


def encode_metadata(metadata: Mapping[str, str]) -> str:
    """``Upload-Metadata`` value: ``key base64(value)`` pairs joined by commas (tus 1.0 creation)."""
    pairs: list[str] = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not _METADATA_KEY_RE.fullmatch(key):
            raise ValueError(
                f"upload metadata key must be printable ASCII without spaces or commas, found {key!r}"
            )
        if not isinstance(value, str):
            raise ValueError(
                f"upload metadata value for {key!r} must be a string, found {type(value).__name__}"
            )
        encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
        pairs.append(f"{key} {encoded}" if encoded else key)
    return ",".join(pairs)


def _shown(value: str | None) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_HEADER_CHARS else text[: _MAX_SHOWN_HEADER_CHARS - 3] + "..."


def _sanitise(text: str, limit: int) -> str:
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[: limit + 1])
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _upload_id(url: str) -> str:
    """Short name of an upload for logs: the last path segment, bounded."""
    return URL(url).name[-40:] or url[-40:]


def _prefix_hasher() -> Any:
    """A new SHA-256 hasher for sha256-prefix digests: every byte this client hashes for them goes
    through one made here."""
    return hashlib.sha256()


def _read_chunk(
    path: Path,
    offset: int,
    size: int,
    algorithm: str | None,
    prefix_before: Any,
    into: memoryview,
    recorded_digest: bytes | None = None,
) -> _Chunk:
    """Read ``size`` bytes at ``offset`` into ``into`` (a view of exactly ``size`` bytes) and hash them
    (runs in a worker thread; hashlib and os.preadv release the GIL). Every byte of ``into`` is
    overwritten or the read fails: a reused buffer carries nothing of an earlier chunk. The file is
    opened per chunk so an abandoned read-ahead never races a close. ``prefix_before``: for
    sha256-prefix, the hasher over bytes 0..offset (None: hashed here first). ``recorded_digest``: for
    sha256-prefix, the digest of bytes 0..offset+size recorded when the copy was verified: then nothing
    is hashed and it is the chunk's checksum."""
    if len(into) != size:
        raise ValueError(f"a buffer of {len(into)} bytes for a chunk of {size}")
    view = into[:]  # released below: the chunk's own view stays usable
    hasher: Any = None
    got = 0
    recorded = algorithm == PREFIX_SHA256 and recorded_digest is not None
    try:
        with path.open("rb", buffering=0) as f:
            fd = f.fileno()
            if recorded:
                hasher = None  # the recorded digest is the checksum: nothing to hash
            elif algorithm == PREFIX_SHA256:
                if prefix_before is None:
                    prefix_before = _hash_before(path, fd, offset)
                # The start state stays as it was: a re-sent chunk starts from it.
                hasher = prefix_before.copy()
            elif algorithm is not None:
                hasher = hashlib.new(algorithm)
            while got < size:
                read = os.preadv(fd, [view[got : got + _PIECE_BYTES]], offset + got)
                if not read:
                    raise LocalFileError(
                        f"{path}: expected {size} bytes at offset {offset}, the file ends after {got}"
                    )
                if hasher is not None:
                    hasher.update(view[got : got + read])  # while the piece is in the CPU's cache
                got += read
    except OSError as exc:
        raise LocalFileError(f"{path}: cannot read {size} bytes at offset {offset}: {exc}") from exc
    finally:
        view.release()
    if recorded:
        assert recorded_digest is not None
        given = f"{algorithm} {base64.b64encode(recorded_digest).decode('ascii')}"
        return _Chunk(offset, into, given, prefix_sha256=recorded_digest.hex(), recorded=True)
    if algorithm == PREFIX_SHA256:
        prefix = hasher.digest()
        prefix_header = f"{algorithm} {base64.b64encode(prefix).decode('ascii')}"
        return _Chunk(offset, into, prefix_header, prefix_after=hasher, prefix_sha256=prefix.hex())
    header = None
    if hasher is not None:
        header = f"{algorithm} {base64.b64encode(hasher.digest()).decode('ascii')}"
    return _Chunk(offset=offset, data=into, checksum_header=header)


def _hash_before(path: Path, fd: int, offset: int) -> Any:
    """A SHA-256 hasher over the first ``offset`` bytes (a resume at an offset without a kept state)."""
    return _hash_on(path, fd, _prefix_hasher(), 0, offset)


def _hash_on(path: Path, fd: int, hasher: Any, start: int, end: int) -> Any:
    """``hasher`` (over bytes 0..start) updated with bytes start..end of the file."""
    done = start
    while done < end:
        part = os.pread(fd, min(_PIECE_BYTES * 16, end - done), done)
        if not part:
            raise LocalFileError(f"{path}: expected {end} bytes, the file ends after {done}")
        hasher.update(part)
        done += len(part)
    return hasher


@dataclass(frozen=True, slots=True)
class _RecordedCheck:
    """What the stored copy gives now, hashed after the central refused a recorded digest."""

    at_start: Any  # the hasher over bytes 0..the refused chunk's offset
    to_end: str  # hex digest of bytes 0..the refused chunk's end
    whole: str | None  # hex digest of the whole content, when ``to_end`` is not the recorded digest
    at_end: Any = None  # the hasher over bytes 0..the chunk's end, when that gave the recorded digest


def _check_recorded(
    path: Path, offset: int, end: int, recorded: bytes, length: int, known_at: int = 0, known: Any = None
) -> _RecordedCheck:
    """Hash the stored copy through ``end`` (the refused chunk's end) and, when that is not the
    ``recorded`` digest, on to ``length`` (runs in a worker thread). ``known``: a hasher over bytes
    0..``known_at`` (``known_at`` <= ``offset``; left as it is) to start from; None: from byte 0."""
    try:
        with path.open("rb", buffering=0) as f:
            fd = f.fileno()
            if known is None:
                at_start = _hash_before(path, fd, offset)
            else:
                at_start = _hash_on(path, fd, known.copy(), known_at, offset)
            hasher = _hash_on(path, fd, at_start.copy(), offset, end)
            to_end = hasher.digest()
            if to_end == recorded:
                return _RecordedCheck(at_start, to_end.hex(), None, at_end=hasher)
            whole = _hash_on(path, fd, hasher, end, length).hexdigest()
    except OSError as exc:
        raise LocalFileError(f"{path}: cannot read the stored copy to check it: {exc}") from exc
    return _RecordedCheck(at_start, to_end.hex(), whole)


# --------------------------------------------------------------------------------------------------
# Client


class TusClient:
    """tus 1.0.0 client bound to one creation endpoint (``base_url``, e.g.
    ``https://central:8443/v1/uploads``). Safe to use for several uploads at once.

    ``headers`` are sent with every request (e.g. the dev-mode station header); tus headers always
    win over them. ``request_timeout_s`` bounds connecting, waiting for an answer, and any stall of
    the request body (no byte accepted by the socket for that long), but not the total duration of a
    rate-limited chunk. ``checksum=None`` sends no ``Upload-Checksum`` (for servers without the
    extension). ``limiter`` is the station-wide :class:`RateLimiter`, shared by every upload.
    ``bodies``: requests carrying a chunk (PATCH, creation-with-upload POST) go over its blocking
    connections in worker threads (:mod:`edge.uplink.blocking_body`: the same TLS context as the
    session, a third of the CPU per byte); without it, and for every other request, the session.
    ``spare_buffers``: chunk buffers kept for reuse between chunks (:mod:`edge.uplink.chunk_buffers`;
    two per upload in flight reuse them all).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES,
        checksum: str | None = "sha256",
        limiter: RateLimiter | None = None,
        request_timeout_s: float = 60.0,
        headers: Mapping[str, str] | None = None,
        creation_with_upload: bool = True,
        checksum_attempts: int = 3,
        max_conflicts: int = 3,
        bodies: BlockingBodySender | None = None,
        spare_buffers: int = 2,
    ) -> None:
        base = URL(base_url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"tus base_url must be an absolute http(s) URL, found {base_url!r}")
        if base.user is not None or base.password is not None or base.fragment:
            raise ValueError("tus base_url must not carry credentials or a fragment")
        if chunk_size_bytes < 1:
            raise ValueError(f"chunk_size_bytes must be >= 1, got {chunk_size_bytes!r}")
        if checksum is not None and checksum not in CHECKSUM_ALGORITHMS:
            raise ValueError(
                f"checksum must be one of {sorted(CHECKSUM_ALGORITHMS)} or None, found {checksum!r}"
            )
        if not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s!r}")
        if checksum_attempts < 1 or max_conflicts < 1:
            raise ValueError("checksum_attempts and max_conflicts must be >= 1")
        self._session = session
        self._bodies = bodies
        self._base = base
        self.base_url = str(base)
        self.chunk_size_bytes = chunk_size_bytes
        # Chunk buffers reused by every upload of this client: no zero-filled 8 MiB allocation per chunk.
        self.buffers = ChunkBuffers(chunk_size_bytes, max_idle=spare_buffers)
        self.checksum = checksum
        self._limiter = limiter
        self._timeout_s = float(request_timeout_s)
        self._extra_headers = dict(headers or {})
        self.creation_with_upload = creation_with_upload
        self.checksum_attempts = checksum_attempts
        self.max_conflicts = max_conflicts
        # aiohttp's read timeout starts once the body is written (so a slow, rate-limited body does not
        # count); the body itself is guarded by the stall deadline in _body.
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout_s, sock_read=self._timeout_s
        )

    def __repr__(self) -> str:
        # Headers may carry credentials: never shown.
        return (
            f"TusClient({self.base_url!r}, chunk_size_bytes={self.chunk_size_bytes}, "
            f"checksum={self.checksum!r})"
        )

    # ---------------------------------------------------------------------------------------- public

    async def create(self, length: int, metadata: Mapping[str, str]) -> str:
        """``POST`` a new upload of ``length`` bytes; returns its absolute URL."""
        url, _ = await self._create(length, encode_metadata(metadata), None, _Sent())
        return url

    async def offset(self, url: str) -> int:
        """``HEAD``: the offset the server holds. Raises :class:`UploadGone` for 404/410."""
        offset, _ = await self._head(self._own_url(url), None)
        return offset

    async def terminate(self, url: str) -> None:
        """``DELETE`` the upload (termination extension). An upload already gone counts as done."""
        target = self._own_url(url)
        try:
            resp = await self._exchange("DELETE", target, self._headers({}), None, _Sent())
        except _WIRE_ERRORS as exc:
            raise self._interrupted("DELETE", url, exc, None, 0) from exc
        if resp.status in (404, 410):
            return
        if resp.status not in (200, 204):
            self._raise_for_status(resp, "DELETE", url, None, 0)
        self._check_tus_resumable(resp, "DELETE", url)
        log.info("upload %s terminated", _upload_id(url))

    async def upload(
        self,
        url: str | None,
        path: Path,
        length: int,
        metadata: Mapping[str, str],
        *,
        progress: Callable[[int], None] | None = None,
        on_created: Callable[[str], None] | None = None,
        expected_sha256: str | None = None,
        recorded: PrefixDigests | None = None,
        on_recorded_wrong: Callable[[], None] | None = None,
    ) -> UploadResult:
        """Upload the first ``length`` bytes of ``path``, resuming ``url`` when given.

        ``progress(offset)`` is called with each offset the server confirms. ``on_created(url)`` is
        called as soon as this call creates an upload, before any more content is sent, so the
        caller can persist the URL and resume it after a crash. ``expected_sha256`` (hex; with the
        sha256-prefix checksum): the content's SHA-256, checked before the last chunk is sent
        (:class:`ContentMismatch`). ``recorded`` (with sha256-prefix): the content's prefix digests
        recorded when the stored copy was verified; when they serve this chunk size and end at
        ``expected_sha256`` (required for them), chunks go with them and are not hashed (see :meth:`_upload`);
        ``on_recorded_wrong()`` is called when one proved wrong. Raises an :class:`UplinkError`; every
        one carries ``.url`` when an upload exists. Chunk buffers are kept for reuse while uploads run,
        let go once none does.
        """
        with self.buffers.in_use():
            return await self._upload(url, path, length, metadata, progress=progress, on_created=on_created,
                                      expected_sha256=expected_sha256,
                                      recorded=self._usable(recorded, path, length, expected_sha256),
                                      on_recorded_wrong=on_recorded_wrong)

    def _usable(
        self, recorded: PrefixDigests | None, path: Path, length: int, expected_sha256: str | None
    ) -> PrefixDigests | None:
        """``recorded`` when this upload can send them: sha256-prefix, digests for this length at a step
        that divides the chunk size, the last one the expected hash; else None (hashed as it goes)."""
        if recorded is None or self.checksum != PREFIX_SHA256:
            return None
        why = None
        if expected_sha256 is None:
            why = "no sealed hash given to judge them by"
        elif recorded.size != length:
            why = f"recorded for {recorded.size} bytes, {length} to send"
        elif recorded.whole.hex() != expected_sha256:
            why = f"they end at {recorded.whole.hex()}, not at the sealed hash {expected_sha256}"
        elif not recorded.serves(self.chunk_size_bytes):
            why = (f"recorded every {recorded.step_bytes} bytes, chunks of {self.chunk_size_bytes} are not "
                   "a multiple (chunk_mb changed since the offload)")
        if why is not None:
            log.info("%s: its recorded prefix digests are not used (%s): hashed as it is sent",
                     path.name, why)
            return None
        return recorded

    async def _upload(
        self,
        url: str | None,
        path: Path,
        length: int,
        metadata: Mapping[str, str],
        *,
        progress: Callable[[int], None] | None,
        on_created: Callable[[str], None] | None,
        expected_sha256: str | None,
        recorded: PrefixDigests | None,
        on_recorded_wrong: Callable[[], None] | None,
    ) -> UploadResult:
        """:meth:`upload`, with its buffers' pool in use.

        With ``recorded`` digests (sha256-prefix) nothing is hashed: each chunk ends at a multiple of the
        chunk size (a resume at another offset sends a shorter chunk up to the next one) and carries the
        digest recorded there; the central checks it against its own running hash of the bytes it
        received. A chunk it refuses (460) is checked here, once per chunk: the stored copy is hashed
        through the chunk's end, from the furthest hasher state an earlier check kept (byte 0 for the
        first), so all the checks of one upload hash each byte at most once. If that is the recorded
        digest, the bytes were damaged on the way and the chunk is sent again. If not and the whole copy
        no longer gives its sealed hash either, the copy changed since it was verified:
        :class:`ContentMismatch` (the upload terminated). If not but the whole copy gives its sealed hash,
        the recorded digest is wrong: the rest of the upload is
        hashed as it goes (``on_recorded_wrong()``)."""
        if length < 0:
            raise ValueError(f"upload length must be >= 0, got {length!r}")
        encoded_metadata = encode_metadata(metadata)
        path = Path(path)
        try:
            file_size = path.stat().st_size
        except OSError as exc:
            raise LocalFileError(f"{path}: cannot read the file to upload: {exc}", url=url) from exc
        if file_size < length:
            raise LocalFileError(
                f"{path}: expected at least {length} bytes, the file has {file_size}", url=url
            )

        sent = _Sent()
        loop = asyncio.get_running_loop()
        # One chunk of read-ahead: (offset, size, future) of the chunk after the one on the wire.
        read_ahead: tuple[int, int, asyncio.Future[_Chunk]] | None = None
        # sha256-prefix: the hasher over bytes 0..offset, by offset (each chunk's start and end); while
        # the recorded digests serve, only the states of checks that found the copy intact (one per
        # refused chunk: the next check starts from them; a new one is made where none is kept).
        prefix_at: dict[int, Any] = {}
        if self.checksum == PREFIX_SHA256 and recorded is None:
            prefix_at[0] = _prefix_hasher()
        vouched: set[int] = set()  # ends of chunks whose recorded digest the copy was found to give

        def size_at(offset: int) -> int:
            if recorded is not None:  # up to the next multiple of the chunk size: a recorded boundary
                return min(self.chunk_size_bytes - offset % self.chunk_size_bytes, length - offset)
            return min(self.chunk_size_bytes, length - offset)

        def read(offset: int) -> asyncio.Future[_Chunk]:
            size = size_at(offset)
            into = self.buffers.take(size)
            digest = recorded.at(offset + size) if recorded is not None else None
            future = loop.run_in_executor(
                None, _read_chunk, path, offset, size, self.checksum, prefix_at.get(offset), into, digest
            )
            future.add_done_callback(lambda done: _read_ended(self.buffers, into, done))
            return future

        async def take(offset: int) -> _Chunk:
            nonlocal read_ahead
            future: asyncio.Future[_Chunk] | None = None
            if read_ahead is not None:
                ahead_offset, ahead_size, ahead = read_ahead
                if ahead_offset == offset and ahead_size == size_at(offset):
                    future, read_ahead = ahead, None
                elif ahead_offset != offset + size_at(offset):
                    # The server's offset moved elsewhere (partial PATCH, 409, new upload): stale.
                    read_ahead = None
                    ahead.add_done_callback(lambda done: _abandoned(self.buffers, done))
            try:
                chunk = await (future if future is not None else read(offset))
            except LocalFileError as exc:
                exc.url = url
                raise
            end = chunk.offset + len(chunk.data)
            if chunk.prefix_after is not None:
                prefix_at[end] = chunk.prefix_after
                for kept in [k for k in prefix_at if 0 < k < chunk.offset]:
                    del prefix_at[kept]  # behind this chunk: only 0 (a new upload) may be needed again
            found = chunk.prefix_sha256
            if end == length and expected_sha256 is not None and found not in (None, expected_sha256):
                assert found is not None
                self.buffers.give_back(chunk.data)
                raise ContentMismatch(
                    f"{path.name}: the stored copy gives SHA-256 {found}, expected {expected_sha256}; "
                    "its last chunk was not sent",
                    url=url,
                    found=found,
                )
            return chunk

        async def judge_refused(url: str, start: int, end: int) -> bool:
            """The central refused the chunk ``start..end`` sent with its recorded digest: hash the copy
            through ``end`` to see whose fault it is (once per chunk, from the furthest state kept).
            Returns True when the recorded digest was wrong (hashed from now on); raises ContentMismatch
            when the copy changed."""
            nonlocal recorded, read_ahead
            digest = recorded.at(end) if recorded is not None else None
            if digest is None or end in vouched:
                return False
            assert recorded is not None
            # From the furthest hasher state kept at or before the chunk (a check that found the copy
            # intact keeps its own): the checks of one upload hash each byte once, not from byte 0 each.
            known_at = max((k for k in prefix_at if k <= start), default=0)
            check = await loop.run_in_executor(None, _check_recorded, path, start, end, digest, length,
                                               known_at, prefix_at.get(known_at))
            sealed = expected_sha256
            if check.whole is None:
                vouched.add(end)  # our bytes give it: damaged on the way, sent again
                prefix_at[end] = check.at_end
                return False
            if check.whole != sealed:
                raise ContentMismatch(
                    f"{path.name}: the stored copy changed since it was verified: the central refused the "
                    f"chunk at {start}, its bytes 0..{end} give SHA-256 {check.to_end}, {digest.hex()} when "
                    f"verified, and the whole copy gives {check.whole}, expected {sealed}",
                    url=url,
                    found=check.whole,
                    refused_at=start,
                )
            # The copy is whole: the recorded digest is what is wrong. Hashing decides.
            log.warning(
                "upload %s: %s: the prefix digest recorded for bytes 0..%d is wrong (the copy gives %s and "
                "its sealed hash): hashed as it is sent from now on", _upload_id(url), path.name, end,
                check.to_end,
            )
            recorded = None
            prefix_at[start] = check.at_start
            if read_ahead is not None:  # read with a recorded digest: read again
                stale = read_ahead[2]
                stale.add_done_callback(lambda done: _abandoned(self.buffers, done))
                read_ahead = None
            if on_recorded_wrong is not None:
                try:
                    on_recorded_wrong()
                except Exception:  # whatever the cache fails with (sqlite3): the upload goes on, hashing
                    log.exception("upload %s: %s: dropping its wrong prefix digests failed; hashed as it is "
                                  "sent all the same", _upload_id(url), path.name)
            return True

        async def create() -> tuple[str, int]:
            """A new upload; a first chunk refused with its recorded digest is judged at once."""
            refused_before = sent.checksum_retries
            first_end = size_at(0)
            made, at = await self._create_for(path, length, encoded_metadata, sent, take)
            if sent.checksum_retries > refused_before and recorded is not None and length > 0:
                try:
                    await judge_refused(made, 0, first_end)
                except ContentMismatch:
                    await self._terminate_quietly(made)
                    raise
            return made, at

        def read_next(after: _Chunk) -> None:
            nonlocal read_ahead
            following = after.offset + len(after.data)
            if following < length and read_ahead is None:
                read_ahead = (following, size_at(following), read(following))

        created = False
        resumed_from = 0
        offset = 0
        known_offset: int | None = None  # the last offset the server stated in this call
        try:
            if url is not None:
                url = self._own_url(url)
                try:
                    offset, _ = await self._head(url, length)
                    resumed_from = known_offset = offset
                    log.info("upload %s: resuming at %d of %d bytes", _upload_id(url), offset, length)
                except UploadGone:
                    log.info("upload %s is gone on the server: starting a new upload", _upload_id(url))
                    url = None
            if url is None:
                url, offset = await create()
                known_offset = offset
                created = True
                if on_created is not None:
                    on_created(url)
            if progress is not None:
                progress(offset)

            confirmed = offset  # the highest offset the server confirmed during this call
            failures_here = 0
            conflicts = 0
            recreated = False
            while offset < length:
                chunk = await take(offset)
                end = chunk.offset + len(chunk.data)  # its buffer goes back once sent
                read_next(chunk)
                status, new_offset = await self._sending(chunk, self._patch(url, chunk, length, sent))
                if status == 204:
                    assert new_offset is not None
                    offset = confirmed = known_offset = new_offset
                    failures_here = conflicts = 0
                    if progress is not None:
                        progress(offset)
                    continue
                if status == 460:
                    failures_here += 1
                    sent.checksum_retries += 1
                    log.warning(
                        "upload %s: checksum of the chunk at %d refused (%d of %d)",
                        _upload_id(url),
                        offset,
                        failures_here,
                        self.checksum_attempts,
                    )
                    if chunk.recorded and await judge_refused(url, chunk.offset, end):
                        failures_here -= 1  # the recorded digest's fault, not the bytes'
                    refused_for_good = failures_here >= self.checksum_attempts
                    if refused_for_good and self.checksum == PREFIX_SHA256 and not recreated:
                        # Every byte before this chunk verified when it was committed, so a chunk refused
                        # every time means the central holds other bytes before it than our copy gives
                        # now (a copy re-acquired since): that upload cannot be finished. Start again.
                        log.warning(
                            "upload %s: the central's content before offset %d differs from the stored "
                            "copy; starting a new upload", _upload_id(url), offset,
                        )
                        await self._terminate_quietly(url)
                        recreated = True
                        url, offset = await create()
                        confirmed = known_offset = offset
                        failures_here = 0
                        created = True
                        if on_created is not None:
                            on_created(url)
                        if progress is not None:
                            progress(offset)
                        continue
                    if failures_here >= self.checksum_attempts:
                        raise ChecksumRejected(
                            f"upload {_upload_id(url)}: the server refused the checksum of the chunk at "
                            f"offset {offset} {failures_here} times",
                            url=url,
                            offset=offset,
                            attempts=failures_here,
                        )
                    continue  # re-read from disk: a flipped bit in our own memory is not re-sent
                if status == 409:
                    # Either the offsets disagree (HEAD tells where to go on) or the upload is busy (an
                    # earlier request of ours still holds it on the server): both pass, so after a few
                    # tries in a row this is an interruption for the caller's backoff, not a violation.
                    conflicts += 1
                    if conflicts > self.max_conflicts:
                        raise UploadInterrupted(
                            f"upload {_upload_id(url)}: the server answered 409 (conflict) {conflicts} times "
                            f"in a row at offset {offset}",
                            url=url,
                            status=409,
                        )
                    offset, _ = await self._head(url, length)
                    known_offset = offset
                    if offset < confirmed:
                        raise ProtocolViolation(
                            f"upload {_upload_id(url)}: the server's offset went back from {confirmed} "
                            f"(confirmed) to {offset}",
                            url=url,
                        )
                    log.info("upload %s: conflict, the server is at %d", _upload_id(url), offset)
                    continue
                # 404/410 in the middle: the upload expired or was purged under us. Start over once.
                if recreated:
                    raise UploadGone(f"upload {_upload_id(url)} disappeared twice during one call", url=url)
                log.warning(
                    "upload %s disappeared at offset %d: creating a new upload", _upload_id(url), offset
                )
                recreated = True
                url, offset = await create()
                confirmed = known_offset = offset
                created = True
                if on_created is not None:
                    on_created(url)
                if progress is not None:
                    progress(offset)
        except UplinkError as exc:
            # Whatever failed, the caller learns the upload URL, and for an interruption what this call
            # sent and the last offset the server confirmed.
            if exc.url is None:
                exc.url = url
            if isinstance(exc, ServerRejected) and self._refuses_prefix(exc):
                self.checksum = "sha256"
                log.warning(
                    "the central does not take sha256-prefix checksums (an earlier release): per-chunk "
                    "sha256 from now on"
                )
                raise UploadInterrupted(
                    f"the central refused the sha256-prefix checksum ({exc}); sending with per-chunk sha256 "
                    "from the next attempt",
                    url=url,
                ) from exc
            if isinstance(exc, ContentMismatch) and url is not None:
                # The central must never finish this upload from a copy that may be repaired later.
                await self._terminate_quietly(url)
            if isinstance(exc, UploadInterrupted):
                exc.bytes_sent = sent.bytes
                exc.offset = known_offset
            raise
        finally:
            if read_ahead is not None:
                read_ahead[2].add_done_callback(lambda done: _abandoned(self.buffers, done))

        log.info(
            "upload %s complete: %d bytes (%d sent by this call, resumed from %d)",
            _upload_id(url),
            length,
            sent.bytes,
            resumed_from,
        )
        return UploadResult(
            url=url,
            bytes_sent=sent.bytes,
            resumed_from=resumed_from,
            length=length,
            created=created,
            checksum_retries=sent.checksum_retries,
        )

    def _refuses_prefix(self, exc: ServerRejected) -> bool:
        """A 400 about ``Upload-Checksum`` while this client sends sha256-prefix: a central that does not
        know the algorithm (any other refusal of the header would name what else is wrong with it)."""
        said = f"{exc.detail or ''} {exc.body}"
        return self.checksum == PREFIX_SHA256 and exc.status == 400 and "Upload-Checksum" in said

    async def _sending(self, chunk: _Chunk, request: Awaitable[_T]) -> _T:
        """Await the request that sends ``chunk``, then give its buffer back for the next chunk: the
        request has returned or failed, so its worker thread is done with it (blocking_body waits for
        it). Not after a cancellation: a second one does not wait for the thread, which may still be
        sending from the buffer; it is then left to the garbage collector."""
        try:
            outcome = await request
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.buffers.give_back(chunk.data)
            raise
        self.buffers.give_back(chunk.data)
        return outcome

    async def _terminate_quietly(self, url: str) -> None:
        with contextlib.suppress(UplinkError):
            await self.terminate(url)

    # ---------------------------------------------------------------------------------------- requests

    def _headers(self, tus: Mapping[str, str]) -> dict[str, str]:
        headers = dict(self._extra_headers)
        headers["Tus-Resumable"] = TUS_VERSION
        headers.update(tus)
        return headers

    def _own_url(self, url: str) -> str:
        """A URL the caller gives must be on the configured origin: station headers go nowhere else."""
        parsed = URL(url)
        if not self._same_origin(parsed):
            raise ValueError(f"upload URL {url!r} is not on the central's origin {self._base.origin()}")
        return str(parsed)

    def _same_origin(self, url: URL) -> bool:
        return (
            url.scheme == self._base.scheme
            and url.host is not None
            and self._base.host is not None
            and url.host.lower() == self._base.host.lower()
            and url.port == self._base.port
            and url.user is None
            and url.password is None
        )

    def _location(self, resp: TusAnswer) -> str:
        values = resp.headers.getall("Location", [])
        if len(values) != 1:
            raise ProtocolViolation(
                f"POST: expected one Location header in the 201 answer, found {len(values)}"
            )
        raw = values[0]
        if len(raw) > _MAX_LOCATION_CHARS or not raw.isascii() or not raw.isprintable() or " " in raw:
            raise ProtocolViolation(f"POST: expected a URL in Location, found {_shown(raw)}")
        try:
            target = self._base.join(URL(raw))
        except ValueError as exc:
            raise ProtocolViolation(f"POST: expected a URL in Location, found {_shown(raw)}") from exc
        if not self._same_origin(target) or target.fragment:
            raise ProtocolViolation(
                f"POST: expected a Location on the central's origin {self._base.origin()}, "
                f"found {_shown(raw)}"
            )
        if target.path.rstrip("/") == self._base.path.rstrip("/"):
            raise ProtocolViolation(f"POST: Location names the creation endpoint itself: {_shown(raw)}")
        return str(target)

    def _check_tus_resumable(self, resp: TusAnswer, request: str, url: str | None) -> None:
        value = resp.headers.get("Tus-Resumable")
        if value != TUS_VERSION:
            raise ProtocolViolation(
                f"{request}: expected Tus-Resumable: {TUS_VERSION} in the answer, found {_shown(value)}",
                url=url,
            )

    @staticmethod
    def _parse_offset(resp: TusAnswer, request: str, url: str | None, low: int, high: int | None) -> int:
        values = resp.headers.getall("Upload-Offset", [])
        if len(values) != 1:
            raise ProtocolViolation(
                f"{request}: expected one Upload-Offset header, found {len(values)}"
                + (f": {_shown(','.join(values))}" if values else ""),
                url=url,
            )
        raw = values[0]
        if not _OFFSET_RE.fullmatch(raw):
            raise ProtocolViolation(
                f"{request}: expected Upload-Offset as a decimal byte count, found {_shown(raw)}", url=url
            )
        offset = int(raw)
        if offset < low or (high is not None and offset > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ProtocolViolation(
                f"{request}: expected Upload-Offset within {bound}, found {offset}", url=url
            )
        return offset

    async def _head(self, url: str, length: int | None) -> tuple[int, int | None]:
        """HEAD → (offset, Upload-Length or None); checks both against ``length`` when given."""
        try:
            resp = await self._exchange("HEAD", url, self._headers({}), None, _Sent())
        except _WIRE_ERRORS as exc:
            raise self._interrupted("HEAD", url, exc, None, 0) from exc
        if resp.status not in (200, 204):
            self._raise_for_status(resp, "HEAD", url, None, 0)
        self._check_tus_resumable(resp, "HEAD", url)
        server_length: int | None = None
        raw_length = resp.headers.get("Upload-Length")
        if raw_length is not None:
            if not _OFFSET_RE.fullmatch(raw_length):
                raise ProtocolViolation(
                    f"HEAD: expected Upload-Length as a decimal byte count, found {_shown(raw_length)}",
                    url=url,
                )
            server_length = int(raw_length)
            if length is not None and server_length != length:
                raise ProtocolViolation(
                    f"HEAD: the upload at {_upload_id(url)} has Upload-Length {server_length}, "
                    f"expected {length}",
                    url=url,
                )
        high = length if length is not None else server_length
        offset = self._parse_offset(resp, "HEAD", url, 0, high)
        return offset, server_length

    async def _create_for(
        self,
        path: Path,
        length: int,
        encoded_metadata: str,
        sent: _Sent,
        take: Callable[[int], Awaitable[_Chunk]],
    ) -> tuple[str, int]:
        """Create an upload for :meth:`upload`; with creation-with-upload the first chunk goes along."""
        first = None
        if self.creation_with_upload and length > 0:
            first = await take(0)
        creating = self._create(length, encoded_metadata, first, sent)
        url, offset = await (self._sending(first, creating) if first is not None else creating)
        log.info(
            "upload %s created for %s: %d bytes, server at %d", _upload_id(url), path.name, length, offset
        )
        return url, offset

    async def _create(
        self, length: int, encoded_metadata: str, first: _Chunk | None, sent: _Sent
    ) -> tuple[str, int]:
        if length < 0:
            raise ValueError(f"upload length must be >= 0, got {length!r}")
        tus = {"Upload-Length": str(length)}
        if encoded_metadata:
            tus["Upload-Metadata"] = encoded_metadata
        if first is not None:
            tus["Content-Type"] = OFFSET_CONTENT_TYPE
            tus["Content-Length"] = str(len(first.data))
            if first.checksum_header is not None:
                tus["Upload-Checksum"] = first.checksum_header
        else:
            tus["Content-Length"] = "0"
        target = str(self._base)
        refused_first = False
        url = ""
        offset = 0
        body = first.data if first is not None else None
        try:
            resp = await self._exchange("POST", target, self._headers(tus), body, sent)
        except _WIRE_ERRORS as exc:
            raise self._interrupted("POST", None, exc, None, sent.bytes) from exc
        if resp.status == 460 and first is not None:
            refused_first = True
            sent.checksum_retries += 1
        elif resp.status != 201:
            self._raise_for_status(resp, "POST", None, None, sent.bytes)
        if not refused_first:
            self._check_tus_resumable(resp, "POST", None)
            url = self._location(resp)
            if first is not None:
                if "Upload-Offset" in resp.headers:
                    offset = self._parse_offset(resp, "POST", url, 0, len(first.data))
                else:
                    offset = -1  # not said: ask
        elif "Location" in resp.headers:
            # The upload was created and only the chunk discarded: continue with it (HEAD).
            url = self._location(resp)
            offset = -1
        if refused_first and not url:
            # Refused without saying whether an upload exists: create a plain one (an orphan would expire).
            log.warning("POST: checksum of the first chunk refused; creating the upload without it")
            return await self._create(length, encoded_metadata, None, sent)
        if refused_first:
            log.warning("POST: checksum of the first chunk refused; upload %s continues", _upload_id(url))
        if offset < 0:
            offset, _ = await self._head(url, length)
        return url, offset

    async def _patch(self, url: str, chunk: _Chunk, length: int, sent: _Sent) -> tuple[int, int | None]:
        """PATCH one chunk → (204, new offset) | (409, None) | (460, None) | (404/410, None)."""
        tus = {
            "Upload-Offset": str(chunk.offset),
            "Content-Type": OFFSET_CONTENT_TYPE,
            "Content-Length": str(len(chunk.data)),
        }
        if chunk.checksum_header is not None:
            tus["Upload-Checksum"] = chunk.checksum_header
        try:
            resp = await self._exchange("PATCH", url, self._headers(tus), chunk.data, sent)
        except _WIRE_ERRORS as exc:
            raise self._interrupted("PATCH", url, exc, chunk.offset, sent.bytes) from exc
        if resp.status in (409, 460, 404, 410):
            return resp.status, None
        if resp.status not in (200, 204):
            self._raise_for_status(resp, "PATCH", url, chunk.offset, sent.bytes)
        self._check_tus_resumable(resp, "PATCH", url)
        end = chunk.offset + len(chunk.data)
        # A server may keep less than the whole body (tus: "store as much as possible"), never more, and
        # never go back.
        new_offset = self._parse_offset(resp, "PATCH", url, chunk.offset, min(end, length))
        if new_offset == chunk.offset and len(chunk.data) > 0:
            raise ProtocolViolation(
                f"PATCH: the server confirmed none of the {len(chunk.data)} bytes at offset "
                f"{chunk.offset} and still answered {resp.status}",
                url=url,
            )
        return 204, new_offset

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: bytes | bytearray | memoryview | None,
        sent: _Sent,
    ) -> TusAnswer:
        """One request and its answer (status, headers, a bounded prefix of the body). A body goes over
        the blocking connections when there are some, else through the session in rate-limited pieces.
        Wire failures propagate as raised (``_WIRE_ERRORS``) for the caller to name the request."""
        if data is not None and self._bodies is not None:
            pace = None
            if self._limiter is not None and not self._limiter.unlimited:
                pace = self._limiter.acquire  # on the loop, between the thread's pieces

            def count_sent(n: int) -> None:
                sent.bytes += n

            return await self._bodies.send(
                method, url, headers, data, timeout_s=self._timeout_s, pace=pace, count_sent=count_sent
            )
        async with asyncio.timeout(self._timeout_s) as deadline:
            async with self._session.request(
                method,
                url,
                headers=headers,
                data=self._body(data, sent, deadline) if data is not None else None,
                allow_redirects=False,
                timeout=self._client_timeout,
            ) as resp:
                return await read_aiohttp_answer(resp)

    async def _body(
        self, data: bytes | bytearray | memoryview, sent: _Sent, deadline: asyncio.Timeout
    ) -> AsyncIterator[memoryview]:
        """Stream ``data`` in pieces: rate-limited, and with a stall deadline moved on after each piece
        the transport accepted (aiohttp drains between pieces), so a body that stops moving fails."""
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        for start in range(0, len(view), _PIECE_BYTES):
            piece = view[start : start + _PIECE_BYTES]
            if self._limiter is not None and not self._limiter.unlimited:
                deadline.reschedule(None)  # waiting for our share of the bandwidth is not a stall
                await self._limiter.acquire(len(piece))
            deadline.reschedule(loop.time() + self._timeout_s)
            sent.bytes += len(piece)
            yield piece
        deadline.reschedule(loop.time() + self._timeout_s)

    # ---------------------------------------------------------------------------------------- errors

    def _interrupted(
        self, request: str, url: str | None, exc: BaseException, offset: int | None, bytes_sent: int
    ) -> UploadInterrupted:
        # The reason may quote what the server sent (http.client's BadStatusLine carries the status line
        # as received): sanitised before it goes anywhere, the log included.
        raw = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        reason = _sanitise(raw, _MAX_DETAIL_CHARS)
        where = f" upload {_upload_id(url)}" if url else ""
        # DEBUG: the uplink retries and summarises its failures (edge.runtime.retrylog), with this reason.
        log.debug("%s%s interrupted: %s", request, where, reason)
        return UploadInterrupted(
            f"{request}{where} interrupted: {reason}",
            url=url,
            offset=offset,
            bytes_sent=bytes_sent,
        )

    def _raise_for_status(
        self, resp: TusAnswer, request: str, url: str | None, offset: int | None, bytes_sent: int
    ) -> None:
        status = resp.status
        if status in (404, 410):
            raise UploadGone(
                f"{request}: the server does not know upload {_upload_id(url or '')} ({status})", url=url
            )
        body_text, error, detail, refusal, from_central = self._error_body(resp)
        if status >= 500 or status in _TRANSIENT_STATUSES:
            raise UploadInterrupted(
                f"{request}: the server answered {status}: {detail or body_text or '(no body)'}",
                url=url,
                status=status,
                offset=offset,
                bytes_sent=bytes_sent,
                retry_after_s=parse_retry_after(resp.headers.get("Retry-After"), time.time()),
                central_document=from_central,
            )
        log.warning("%s refused with %d: %s %s", request, status, error or "", detail or body_text)
        raise ServerRejected(
            status, body_text, url=url, request=request, error=error, detail=detail, refusal=refusal
        )

    @staticmethod
    def _error_body(resp: TusAnswer) -> tuple[str, str | None, str | None, dict[str, Any] | None, bool]:
        """(sanitised body text, JSON ``error``, JSON ``detail``, JSON ``refusal`` object, whether the body
        is the central's own refusal (:func:`~edge.uplink.central_calls.is_central_error_answer`: its error
        document with its ``X-Request-Id``, not a proxy's page)), from the answer's bounded body."""
        raw = resp.body
        text = raw.decode("utf-8", errors="replace")
        error: str | None = None
        detail: str | None = None
        refusal: dict[str, Any] | None = None
        try:
            doc = parse_json(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            if isinstance(doc.get("error"), str):
                error = _sanitise(doc["error"], 64)
            if isinstance(doc.get("detail"), str):
                detail = _sanitise(doc["detail"], _MAX_DETAIL_CHARS)
            if isinstance(doc.get("refusal"), dict):
                refusal = doc["refusal"]
        from_central = is_central_error_answer(doc, resp.headers.get(CENTRAL_REQUEST_ID_HEADER))
        return _sanitise(text, _MAX_DETAIL_CHARS), error, detail, refusal, from_central


def _read_ended(buffers: ChunkBuffers, into: memoryview, read: asyncio.Future[_Chunk]) -> None:
    """A chunk's read is over. A failed read's buffer goes back (its worker thread returned); a
    cancelled one's does not (the thread may still be writing into it); a chunk read whole owns its
    buffer until it is sent or abandoned."""
    if not read.cancelled() and read.exception() is not None:
        buffers.give_back(into)


def _abandoned(buffers: ChunkBuffers, read: asyncio.Future[_Chunk]) -> None:
    """A read-ahead nobody will send: its outcome consumed (nothing reported as never retrieved) and,
    once read, its buffer given back."""
    if not read.cancelled() and read.exception() is None:
        buffers.give_back(read.result().data)
