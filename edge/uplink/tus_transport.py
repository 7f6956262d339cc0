"""The ``tus`` transport: content by tus 1.0 (`edge.uplink.tus_client`), registration and witnessing by the
central's JSON API (`edge.uplink.central_api`), over one HTTPS session with mutual TLS; the chunks' bodies
go over blocking connections in worker threads with the session's own TLS context
(`edge.uplink.blocking_body`: 0.3 to 0.9 CPU s per GiB less than asyncio's TLS transport).

Everything HTTP stays here: offsets, HEAD/PATCH, ``Tus-Resumable``, status codes, ``Retry-After``
headers, proxy pages and garbled bodies. What leaves is the uplink's one shape of outcomes
(:mod:`edge.uplink.transport`):

* 5xx, 408, 425, 429, timeouts, connection failures, an interrupted or checksum-refused upload, a
  protocol violation, a malformed answer → :class:`RetryLater` (with ``Retry-After`` when given);
* any other refusal → :class:`Refused` with the body's ``error`` code (``http_<status>`` without one),
  its ``detail`` and the signed refusal it carried, unverified; 401, 403 and 404 are marked
  ``station_level`` (enrollment, revocation, a wrong path or a proxy: nothing about the item);
* a stored upload URL that is not on the configured central's origin (``central_url`` changed) →
  :class:`Refused` with :data:`UPLOAD_LOST`, so the core starts a new upload.

The resume reference is the upload URL; the central names an upload in its refusals by the URL's last
path segment.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp

from edge.config.station import UplinkSection
from edge.uplink.blocking_body import BlockingBodySender
from edge.uplink.central_api import CentralApi, central_session
from edge.uplink.central_calls import ApiLinkCalls, outcome_of_rejection
from edge.uplink.policy import RateLimiter
from edge.uplink.transport import (
    UPLOAD_LOST,
    ContentUnreadable,
    Delivered,
    Parcel,
    Refused,
    RetryLater,
    StoredCopyMismatch,
    UploadOutcome,
)
from edge.uplink.tus_client import (
    PREFIX_SHA256,
    ContentMismatch,
    LocalFileError,
    ServerRejected,
    TusClient,
    UplinkError,
)

__all__ = ["TusLink", "TusTransport", "found_at_refused_chunk", "outcome_of_rejection", "upload_id"]

log = logging.getLogger(__name__)

UPLOADS_PATH = "/v1/uploads"
_MAX_FILENAME_CHARS = 200


def found_at_refused_chunk(offset: int) -> str:
    """The ledger's ``found_by`` for a stored copy found changed because the central refused a chunk sent
    with its recorded prefix digest and the copy's re-read did not give that digest (nor its sealed hash)."""
    return (f"uplink after the central refused the chunk at offset {offset} (460): the stored copy's re-read "
            "differs from the digest recorded when the copy was verified")


def upload_id(url: str) -> str:
    """How the central names an upload (in registrations and signed refusals): the URL's last segment."""
    return url.rstrip("/").rsplit("/", 1)[-1]


class TusTransport:
    """tus over HTTPS to ``[uplink] central_url`` (mutual TLS with the enrollment bundle)."""

    name = "tus"

    def __init__(self, uplink: UplinkSection, station_id: str, *, limiter: RateLimiter | None = None) -> None:
        self.uplink = uplink
        self.station_id = station_id
        self.limiter = limiter

    def __repr__(self) -> str:
        return f"TusTransport(central={self.uplink.central_url!r}, station={self.station_id!r})"

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[TusLink]:
        async with (
            central_session(self.uplink, self.station_id, connections=self.uplink.concurrency + 2) as central,
            # Chunk bodies over blocking sockets in worker threads, with the session's own TLS context:
            # one connection per upload in flight, kept alive between its PATCHes.
            BlockingBodySender(ssl_context=central.tls, max_connections=self.uplink.concurrency) as bodies,
        ):
            session, headers = central.http, central.headers
            tus = TusClient(
                session,
                self.uplink.central_url.rstrip("/") + UPLOADS_PATH,
                chunk_size_bytes=self.uplink.chunk_mb << 20,
                # One SHA-256 pass: each chunk's digest covers the content up to its end, and the last
                # one is the sealed hash, checked before it goes (the stored-copy check, same pass).
                checksum=PREFIX_SHA256,
                limiter=self.limiter,
                request_timeout_s=self.uplink.request_timeout_s,
                headers=headers,
                bodies=bodies,
                # A chunk on the wire and one read ahead per upload in flight, all reused.
                spare_buffers=2 * self.uplink.concurrency,
            )
            api = CentralApi(
                session,
                self.uplink.central_url,
                self.station_id,
                headers=headers,
                timeout_s=self.uplink.request_timeout_s,
            )
            yield TusLink(tus, api)


class TusLink(ApiLinkCalls):
    """One HTTPS session: a :class:`TusClient` for content and a :class:`CentralApi` for the rest."""

    wire_errors = (aiohttp.ClientError,)
    via = "HTTP"

    def __init__(self, tus: TusClient, api: CentralApi) -> None:
        super().__init__(api)
        self.tus = tus

    def __repr__(self) -> str:
        return f"TusLink({self.tus!r})"

    @property
    def checks_content_on_send(self) -> bool:
        """While the central takes sha256-prefix (the client falls back to per-chunk sha256 for a central
        of an earlier release, and the core then checks the stored copy before sending)."""
        return self.tus.checksum == PREFIX_SHA256

    def upload_name(self, upload: str) -> str:
        return upload_id(upload)

    async def upload(self, parcel: Parcel, on_resume: Callable[[str], None]) -> UploadOutcome:
        metadata = {"item": parcel.item, "sha256": parcel.sha256,
                    "filename": parcel.original_name[:_MAX_FILENAME_CHARS]}
        try:
            # An upload the central forgot (expired) is created anew by the client itself; the new URL
            # goes to on_resume before any more content is sent.
            # With the prefix digests recorded when the copy was verified the chunks go without hashing
            # the copy again.
            result = await self.tus.upload(parcel.resume, parcel.path, parcel.size, metadata,
                                           on_created=on_resume, expected_sha256=parcel.sha256,
                                           recorded=parcel.prefix_digests,
                                           on_recorded_wrong=parcel.forget_prefix_digests)
        except ContentMismatch as exc:
            if exc.refused_at is None:  # hashed as it was sent: found before its last chunk went
                raise StoredCopyMismatch(str(exc), exc.found) from exc
            raise StoredCopyMismatch(str(exc), exc.found, found_by=found_at_refused_chunk(exc.refused_at),
                                     refused_at=exc.refused_at) from exc
        except LocalFileError as exc:
            raise ContentUnreadable(str(exc)) from exc
        except ServerRejected as exc:
            return Refused(
                code=exc.error or f"http_{exc.status}",
                detail=exc.detail or exc.body,
                refusal=exc.refusal,
                upload=None,  # a refused creation: no upload exists
                via=f"HTTP {exc.status}",
            )
        except (UplinkError, aiohttp.ClientError, TimeoutError) as exc:
            # Interrupted, a checksum refused every time, a protocol violation, the upload gone twice.
            retry_after_s = getattr(exc, "retry_after_s", None)
            # The central's own "busy" (503 with Retry-After, 429, with its JSON error document) is an
            # answer that failover does not count as silence; a proxy's page with the same status is not.
            asked_for_later = retry_after_s is not None or getattr(exc, "status", None) == 429
            answered = asked_for_later and getattr(exc, "central_document", False) is True
            return RetryLater(f"{type(exc).__name__}: {exc}", retry_after_s, answered=answered)
        except ValueError as exc:
            # A stored upload URL on another origin (central_url changed): start afresh.
            return Refused(code=UPLOAD_LOST, detail=str(exc))
        return Delivered(str(result.url), bytes_sent=result.bytes_sent, resumed_from=result.resumed_from)

    async def abandon(self, upload: str) -> None:
        """tus termination (DELETE), best effort."""
        with contextlib.suppress(Exception):
            await self.tus.terminate(upload)
