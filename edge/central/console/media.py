"""An item's content for the console's player: checked against its name before its first byte is served,
then exactly the range the access log recorded, from whichever object store holds it.

* **Local folder** (:class:`~edge.central.objects.FileObjectStore`): the object's file, hashed once per
  process and again whenever its inode, size or modification time changes; served by aiohttp's
  ``FileResponse`` (sendfile).
* **S3 bucket** (:class:`~edge.central.s3_objects.S3ObjectStore`): the object's current version, hashed
  once per process and version (a PUT around the central makes a new version, which is hashed before it
  is served); each range is read from that version by an HTTP Range request and streamed as it arrives,
  so a player that stops reading stops the reads from the bucket too.

Either way the response carries what a file server's would (206 with ``Content-Range``, 200 for the
whole content, 416 with ``Content-Range: bytes */SIZE`` for a range it cannot serve, ``Accept-Ranges``),
as one reading of the ``Range`` header decides for both (:mod:`edge.central.console.byte_ranges`), and
never what a conditional header would turn it into: the access log says what went out.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from aiohttp import web

from edge.central.console.byte_ranges import ContentRange, content_range_of
from edge.central.index import ItemRecord
from edge.central.objects import FileObjectStore, ObjectStore, ObjectStoreError, ObjectStoreUnavailable
from edge.central.registration import RejectCode, Rejection
from edge.runtime.logs import event_fields

if TYPE_CHECKING:
    from edge.central.s3_objects import S3ObjectStore

__all__ = ["VerifiedContent", "VerifiedObject", "content_range"]

log = logging.getLogger(__name__)

_SEND_CHUNK_BYTES = 1 << 20  # one ranged GET from the bucket, one write to the player


def content_range(request: web.Request, size: int) -> ContentRange:
    """What the request gets of content of ``size`` bytes (:mod:`edge.central.console.byte_ranges`)."""
    return content_range_of(request.headers.getall("Range", []), size)


@dataclass(frozen=True)
class _SeenFile:
    inode: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class VerifiedObject:
    """An item's content as it was checked against its name: the local ``path``, or the bucket
    ``version``."""

    record: ItemRecord
    objects: ObjectStore
    path: Path | None = None
    version: str | None = None

    async def respond(
        self, request: web.Request, wanted: ContentRange, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Serve ``wanted`` (already on the access log), or refuse it (416) for either store alike."""
        from edge.central.s3_objects import S3ObjectStore

        if not wanted.satisfiable:
            return await _refuse_range(request, self.record, wanted, headers)
        if self.path is not None:
            return await _respond_from_file(request, self.path, wanted, headers)
        assert isinstance(self.objects, S3ObjectStore) and self.version is not None
        return await _respond_from_bucket(request, self.objects, self.record, self.version, wanted, headers)


class VerifiedContent:
    """Objects checked against their names before the console serves them, remembered while unchanged."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self._files: dict[str, _SeenFile] = {}
        self._versions: dict[str, str] = {}

    async def verified(self, record: ItemRecord) -> VerifiedObject:
        """The content, checked; 500 ``store_damaged`` (logged) when it is missing or does not hash to
        its name, 503 ``store_unavailable`` when the store cannot be asked now."""
        # Imported here: boto3 is loaded only by a central configured for S3.
        from edge.central.s3_objects import S3ObjectStore

        objects = self.objects
        if isinstance(objects, FileObjectStore):
            return VerifiedObject(record, objects, path=await self._file_path(objects, record))
        if isinstance(objects, S3ObjectStore):
            return VerifiedObject(record, objects, version=await self._bucket_version(objects, record))
        raise Rejection(RejectCode.STORE_UNAVAILABLE,
                        f"playback from this object store ({objects!r}) is not supported")

    async def _file_path(self, objects: FileObjectStore, record: ItemRecord) -> Path:
        path = objects.path_of(record.sha256)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise _missing(record) from None
        seen = _SeenFile(stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._files.get(record.sha256) != seen:
            problem = await asyncio.to_thread(objects.verify, record.sha256)
            if problem is not None or stat.st_size != record.size:
                raise _damaged(record, problem or f"{stat.st_size} bytes, not {record.size}")
            self._files[record.sha256] = seen
        return path

    async def _bucket_version(self, objects: S3ObjectStore, record: ItemRecord) -> str:
        """The current version, hashed once per version: a PUT around the central makes a new current
        version, hashed (and refused) before it is served."""
        try:
            current = await asyncio.to_thread(objects.current_version, record.sha256)
            if current is None:
                raise _missing(record)
            version, size = current
            if self._versions.get(record.sha256) != version:
                problem = await asyncio.to_thread(objects.verify_version, record.sha256, version)
                if problem is not None or size != record.size:
                    raise _damaged(record, problem or f"{size} bytes, not {record.size}")
                self._versions[record.sha256] = version
        except ObjectStoreUnavailable as exc:
            raise _unavailable(record, exc) from None
        except ObjectStoreError as exc:  # refused by the bucket: not servable, an operator must look
            raise _damaged(record, str(exc)) from None
        return version


async def _refuse_range(request: web.Request, record: ItemRecord, wanted: ContentRange,
                       headers: dict[str, str]) -> web.StreamResponse:
    log.info("item %s: media range refused (416): %s", record.item, wanted.refused,
             extra=event_fields(event="console_media_range_refused", item=record.item))
    refusal = f"range not satisfiable: {wanted.refused} (the content is {wanted.size} bytes)\n".encode()
    response = web.StreamResponse(status=416, headers={
        **headers, "Content-Type": "text/plain; charset=utf-8", "Accept-Ranges": "bytes"})
    response.headers["Content-Range"] = f"bytes */{wanted.size}"
    response.content_length = len(refusal)
    await response.prepare(request)
    if request.method != "HEAD":
        await response.write(refusal)
    return response


async def _respond_from_file(request: web.Request, path: Path, wanted: ContentRange,
                             headers: dict[str, str]) -> web.StreamResponse:
    response = web.FileResponse(path, headers=headers)
    # FileResponse decides what it sends from the request's own headers: its Range parser (aiohttp's
    # http_range) reads some ranges otherwise than ours, and a stale If-Range turns "bytes=0-0" into the
    # whole file (200), If-None-Match into nothing (304). The access log must say what went out, so the
    # response is prepared for the request as we read it: no conditional header, and either exactly the
    # range logged, in the one form every parser reads alike, or no Range (the whole content).
    as_read = request.headers.copy()
    for name in (*_CONDITIONAL_HEADERS, "Range"):
        as_read.popall(name, None)
    if wanted.partial:
        as_read["Range"] = f"bytes={wanted.first}-{wanted.stop - 1}"
    await response.prepare(request.clone(headers=as_read))
    return response


_CONDITIONAL_HEADERS = ("If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since")


async def _respond_from_bucket(
    request: web.Request, objects: S3ObjectStore, record: ItemRecord, version: str, wanted: ContentRange,
    headers: dict[str, str],
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, "Accept-Ranges": "bytes"})
    if wanted.content_range is not None:
        response.set_status(206)
        response.headers["Content-Range"] = wanted.content_range
    response.content_length = wanted.count
    await response.prepare(request)
    if wanted.count == 0 or request.method == "HEAD":
        return response
    stream = objects.open_version(record.sha256, version, wanted.size)
    try:
        stream.seek(wanted.first)
        left = wanted.count
        while left > 0:
            chunk = await asyncio.to_thread(_read_some, stream, min(left, _SEND_CHUNK_BYTES))
            if not chunk:
                raise OSError(f"the bucket gave {wanted.count - left} of {wanted.count} bytes")
            await response.write(chunk)
            left -= len(chunk)
    except OSError as exc:  # the headers are out: the player sees a cut connection and asks again
        log.error("item %s: reading object %s from the bucket failed after the response began: %s; the "
                  "connection is cut", record.item, record.sha256, exc)
        raise
    finally:
        stream.close()
    return response


def _read_some(stream: BinaryIO, size: int) -> bytes:
    return stream.read(size)


def _missing(record: ItemRecord) -> Rejection:
    log.error("item %s: object %s is missing from the object store", record.item, record.sha256)
    return Rejection(RejectCode.STORE_DAMAGED,
                     f"the content of item {record.item} is missing from the object store; run `edge verify`")


def _damaged(record: ItemRecord, problem: str) -> Rejection:
    log.error("item %s: object %s is damaged (%s); not served", record.item, record.sha256, problem)
    return Rejection(RejectCode.STORE_DAMAGED, f"the content of item {record.item} does not hash to its "
                     "SHA-256; it is not served; run `edge verify`")


def _unavailable(record: ItemRecord, exc: ObjectStoreError) -> Rejection:
    log.warning("item %s: the object store cannot be reached for playback: %s", record.item, exc)
    return Rejection(RejectCode.STORE_UNAVAILABLE,
                     f"the content of item {record.item} cannot be read from the object store now; try again")
