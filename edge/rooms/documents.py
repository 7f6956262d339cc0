"""Documents produced in a session (the written record 笔录, a signed statement scanned back in) attached
to it as items of the session.

A document is taken as bytes, never as a path: :func:`receive_document` writes what comes (at most
:data:`MAX_DOCUMENT_BYTES`) to a new work file under ``<store>/rooms/products/<session>/`` with a name
the station makes; its type is told by its content (:func:`document_type`: PDF, JPEG or PNG by their
magic bytes), never by the name it came with, which is kept only as printable text (at most
:data:`MAX_SHOWN_NAME` characters) in the item's facts and the ``attached`` entry. The service seals it
through the ingest pipeline (role ``document``) and records ``attached``: session, kind, item, hash,
size, type and who attached it.

A session takes at most [rooms] max_documents_per_session documents of at most
max_document_bytes_per_session bytes together (counted from its ``attached`` entries): every document is
kept for good and goes on the disc, so an attach beyond either is refused (status 413, naming the limit
and what is attached already) before anything is written, or as soon as its bytes pass what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.custody.ledger import EntryType
from edge.custody.text import printable
from edge.durable.files import fsync_dir, make_dirs_durable
from edge.ingest.pipeline import IngestPipeline
from edge.rooms.sealing import seal_session_file
from edge.rooms.session import RoomSession, SessionError, check_text

log = logging.getLogger(__name__)

DOCUMENT_ROLE = "document"
MAX_DOCUMENT_BYTES = 64 << 20  # a scanned 笔录 of a long proceeding fits; a recording does not
MAX_SHOWN_NAME = 128
MAX_KIND = 32
DEFAULT_KIND = "笔录"
# (magic prefix, type, stored extension)
MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"%PDF-", "application/pdf", "pdf"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
)


class DocumentRefused(ValueError):
    """A document that cannot be attached; `status` is the HTTP status the API answers with."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class ReceivedDocument:
    path: Path
    size: int
    media_type: str


def document_type(head: bytes) -> tuple[str, str] | None:
    """(media type, extension) of a document by its first bytes, or None when it is none of those taken."""
    for magic, media_type, ext in MAGIC:
        if head.startswith(magic):
            return media_type, ext
    return None


async def receive_document(chunks: AsyncIterable[bytes], work_dir: Path,
                           max_bytes: int = MAX_DOCUMENT_BYTES) -> ReceivedDocument:
    """Write `chunks` to a new file of `work_dir` (removed again when refused): DocumentRefused when it is
    empty, larger than `max_bytes`, or not a PDF, JPEG or PNG by its content."""
    await asyncio.to_thread(make_dirs_durable, work_dir)
    token = uuid.uuid4().hex[:12]
    part = work_dir / f"document-{token}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    size = 0
    head = b""
    try:
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise DocumentRefused(f"the document is larger than {max_bytes} bytes", 413)
                if len(head) < 16:
                    head += chunk[: 16 - len(head)]
                await asyncio.to_thread(_write_all, fd, chunk)
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        if size == 0:
            raise DocumentRefused("the document is empty")
        found = document_type(head)
        if found is None:
            raise DocumentRefused(
                "the document is not a PDF, JPEG or PNG (told by its content, not its name)", 415)
        media_type, ext = found
        path = work_dir / f"document-{token}.{ext}"
        os.rename(part, path)
        fsync_dir(work_dir)
        return ReceivedDocument(path, size, media_type)
    except BaseException:
        part.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            work_dir.rmdir()
        raise


def attached_so_far(pipeline: IngestPipeline, session: RoomSession) -> tuple[int, int]:
    """(documents, their bytes together) attached to `session`, by its ``attached`` entries."""
    count = total = 0
    for entry in pipeline.store.ledger.entries_of_types([EntryType.ATTACHED], session.started_seq or 1):
        if entry.data.get("room_session") == session.session:
            size = entry.data.get("size")
            count += 1
            total += size if isinstance(size, int) and size > 0 else 0
    return count, total


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def attach_document(
    pipeline: IngestPipeline,
    session: RoomSession,
    chunks: AsyncIterable[bytes],
    *,
    kind: object,
    name: object,
    by: str,
    work_dir: Path,
    station_id: str,
    clock_synchronised: bool,
    max_bytes: int | None = None,
    max_count: int | None = None,
    max_total_bytes: int | None = None,
) -> dict[str, Any]:
    """Receive, check, seal and record one document of `session`: what the ``attached`` entry says.
    `max_count` and `max_total_bytes`: what the session may hold in all, this document included."""
    try:
        kind_text = check_text("kind", DEFAULT_KIND if kind is None else kind, MAX_KIND)
    except SessionError as exc:
        raise DocumentRefused(str(exc)) from None
    shown = printable("" if name is None else str(name))[:MAX_SHOWN_NAME]
    count, total = await asyncio.to_thread(attached_so_far, pipeline, session)
    if max_count is not None and count >= max_count:
        raise DocumentRefused(f"the session holds {count} documents already, the most it takes "
                              "([rooms] max_documents_per_session)", 413)
    limit = MAX_DOCUMENT_BYTES if max_bytes is None else max_bytes
    if max_total_bytes is not None:
        left = max_total_bytes - total
        if left <= 0:
            raise DocumentRefused(f"the session's documents take {total} bytes already, the most it takes "
                                  f"is {max_total_bytes} ([rooms] max_document_bytes_per_session)", 413)
        if left < limit:
            limit = left
    try:
        received = await receive_document(chunks, work_dir, limit)
    except DocumentRefused as exc:
        if exc.status == 413 and max_total_bytes is not None and limit < (max_bytes or MAX_DOCUMENT_BYTES):
            raise DocumentRefused(f"{exc} (the session's documents take {total} of its "
                                  f"{max_total_bytes} bytes already: [rooms] max_document_bytes_per_session)",
                                  413) from None
        raise
    try:
        item = await seal_session_file(
            pipeline, received.path, session=session, role=DOCUMENT_ROLE, station_id=station_id,
            clock_synchronised=clock_synchronised,
            facts={"kind": kind_text, "name": shown, "type": received.media_type})
    finally:
        received.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the session's work directory, when nothing else is in it
            work_dir.rmdir()
    if item is None:
        raise DocumentRefused("the document could not be sealed (the ledger says why)", 507)
    record = pipeline.repository.item(item)
    assert record is not None
    data = {"room_session": session.session, "room": session.room, "kind": kind_text, "name": shown,
            "type": received.media_type, "sha256": record.sha256, "size": record.size, "by": by}
    repository = pipeline.repository
    entry = await pipeline.commit(lambda: repository.entry(EntryType.ATTACHED, item, data))
    log.info("room session %s: %s attached as item %s by %s", session.session, kind_text, item, printable(by))
    return {**data, "item": item, "seq": entry.seq}
