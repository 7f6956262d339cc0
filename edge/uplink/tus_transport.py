"""The ``tus`` transport: content by tus 1.0 (`edge.uplink.tus_client`), registration and witnessing by the
central's JSON API (`edge.uplink.central_api`), over one HTTPS session with mutual TLS.

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
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import aiohttp

from edge.config.station import UplinkSection
from edge.uplink.central_api import CentralApi, CentralRejected, CentralUnavailable, central_session
from edge.uplink.policy import RateLimiter
from edge.uplink.transport import (
    UPLOAD_LOST,
    Accepted,
    ContentUnreadable,
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
from edge.uplink.tus_client import LocalFileError, ServerRejected, TusClient, UplinkError

__all__ = ["TusLink", "TusTransport", "outcome_of_rejection", "upload_id"]

log = logging.getLogger(__name__)

UPLOADS_PATH = "/v1/uploads"
_STATION_LEVEL_STATUSES = frozenset({401, 403, 404})
_MAX_FILENAME_CHARS = 200


def upload_id(url: str) -> str:
    """How the central names an upload (in registrations and signed refusals): the URL's last segment."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def outcome_of_rejection(exc: CentralRejected, upload: str | None) -> RetryLater | Refused:
    """What a refusing answer of the central's JSON API means on the uplink's terms."""
    if exc.status >= 500 or exc.code == "bad_response":
        return RetryLater(str(exc))
    return Refused(
        code=exc.code,
        detail=exc.detail,
        refusal=exc.refusal,
        upload=upload,
        station_level=exc.status in _STATION_LEVEL_STATUSES,
        via=f"HTTP {exc.status}",
    )


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
        async with central_session(
            self.uplink, self.station_id, connections=self.uplink.concurrency + 2
        ) as (session, headers):
            tus = TusClient(
                session,
                self.uplink.central_url.rstrip("/") + UPLOADS_PATH,
                chunk_size_bytes=self.uplink.chunk_mb << 20,
                limiter=self.limiter,
                request_timeout_s=self.uplink.request_timeout_s,
                headers=headers,
            )
            api = CentralApi(
                session,
                self.uplink.central_url,
                self.station_id,
                headers=headers,
                timeout_s=self.uplink.request_timeout_s,
            )
            yield TusLink(tus, api)


class TusLink:
    """One HTTPS session: a :class:`TusClient` for content and a :class:`CentralApi` for the rest."""

    def __init__(self, tus: TusClient, api: CentralApi) -> None:
        self.tus = tus
        self.api = api

    def __repr__(self) -> str:
        return f"TusLink({self.tus!r})"

    async def upload(self, parcel: Parcel, on_resume: Callable[[str], None]) -> UploadOutcome:
        metadata = {"item": parcel.item, "sha256": parcel.sha256,
                    "filename": parcel.original_name[:_MAX_FILENAME_CHARS]}
        try:
            # An upload the central forgot (expired) is created anew by the client itself; the new URL
            # goes to on_resume before any more content is sent.
            result = await self.tus.upload(parcel.resume, parcel.path, parcel.size, metadata,
                                           on_created=on_resume)
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
            return RetryLater(f"{type(exc).__name__}: {exc}", getattr(exc, "retry_after_s", None))
        except ValueError as exc:
            # A stored upload URL on another origin (central_url changed): start afresh.
            return Refused(code=UPLOAD_LOST, detail=str(exc))
        return Delivered(str(result.url), bytes_sent=result.bytes_sent, resumed_from=result.resumed_from)

    async def register(
        self, upload: str, manifest: Mapping[str, Any], segment: LedgerSegment | None
    ) -> RegisterOutcome:
        name = upload_id(upload)
        entries = segment.entries if segment is not None else []
        checkpoint = segment.checkpoint if segment is not None else None
        signed = segment.signed if segment is not None else ()
        try:
            receipt = await self.api.register(name, manifest, entries, checkpoint, signed)
        except CentralUnavailable as exc:
            return RetryLater(str(exc), exc.retry_after_s)
        except CentralRejected as exc:
            return outcome_of_rejection(exc, name)
        return Accepted(receipt)

    async def abandon(self, upload: str) -> None:
        """tus termination (DELETE), best effort."""
        with contextlib.suppress(Exception):
            await self.tus.terminate(upload)

    async def ledger_state(self) -> LedgerAnswer:
        with _not_done():
            return await self.api.ledger_state()

    async def push_ledger(self, segment: LedgerSegment) -> LedgerAnswer:
        with _not_done():
            return await self.api.post_ledger(segment.entries, segment.checkpoint, segment.signed)

    async def ledger_page(self, after: int, limit: int) -> LedgerPage:
        with _not_done():
            doc = await self.api.ledger_page(after, limit)  # its shape is checked there
        witnessed = doc.get("witnessed_head")
        return LedgerPage(doc["entries"], doc.get("next"), witnessed if isinstance(witnessed, dict) else None)

    async def tree_head(self) -> dict[str, Any]:
        with _not_done():
            return await self.api.tree_head()

    async def consistency(self, first: int, second: int) -> list[str] | None:
        with _not_done():
            try:
                return await self.api.consistency(first, second)
            except CentralRejected as exc:
                if exc.status == 400 and exc.code == "bad_request":
                    return None  # the central says it cannot: it holds fewer leaves than asked
                raise


@contextlib.contextmanager
def _not_done() -> Iterator[None]:
    """The central API's failures as :class:`NotDone`."""
    try:
        yield
    except CentralUnavailable as exc:
        raise NotDone(RetryLater(str(exc), exc.retry_after_s)) from exc
    except CentralRejected as exc:
        raise NotDone(outcome_of_rejection(exc, None)) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise NotDone(RetryLater(f"{type(exc).__name__}: {exc}")) from exc
