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

Space (review rev11e): a document is written twice on the store's disk (received, then its sealed copy),
and it can wait (attached after the session stops, or once space is freed), so it keeps free what the rooms
recording hold beyond the store's reserve, like a docking copy (edge.ingest.kept_space,
edge.rooms.space.rooms_kept_free). Before anything is written it books twice its size as the request says it
(Content-Length, at most the limit) in the store's one booking ledger, and before each chunk is written it
checks the free space against the bytes still to come (twice what is received so far, at the least):
refused with status 507 naming the rooms recording and the space needed, nothing left behind. Its sealed
copy is a copy that can wait too (the pipeline's check, made again as it writes).
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
from edge.durable.files import free_bytes, fsync_dir, make_dirs_durable
from edge.ingest.kept_space import Booking, KeptSpace, said_bookings
from edge.ingest.pipeline import IngestPipeline
from edge.rooms.sealing import seal_session_file
from edge.rooms.session import RoomSession, SessionError, check_text

log = logging.getLogger(__name__)

DOCUMENT_ROLE = "document"
MAX_DOCUMENT_BYTES = 64 << 20  # a scanned 笔录 of a long proceeding fits; a recording does not
MAX_SHOWN_NAME = 128
MAX_KIND = 32
DEFAULT_KIND = "笔录"
INSUFFICIENT_STORAGE = 507
# How a document's booking is counted in the store's booking ledger (edge.ingest.kept_space).
BOOKING_KIND = "document"
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


class DocumentSpace:
    """The room a document being received needs on the store's disk, booked and checked (see the module's
    note). `expected`: its size as the request said it (bounded by the caller), 0 when not said."""

    def __init__(self, pipeline: IngestPipeline, what: str, expected: int) -> None:
        self.kept_space: KeptSpace = pipeline.kept_space
        self.reserve = pipeline.settings.min_free_bytes
        self.expected = expected
        self.booking: Booking = self.kept_space.book(BOOKING_KIND, what, self.still_to_write(0, 0))

    def still_to_write(self, received: int, written: int) -> int:
        """What is to come once `received` bytes arrived and `written` of them are on the disk: the rest
        of them, the rest the request said, and the sealed copy of the whole."""
        size = max(self.expected, received)
        return (received - written) + (size - received) + size

    def check(self, path: Path, received: int, written: int) -> None:
        """DocumentRefused (507) when what is still to be written would take the disk into the store's
        reserve or what the rooms recording hold. In a worker thread (statvfs); the booking made first,
        the others' read before the free space (edge.ingest.kept_space)."""
        needed = self.still_to_write(received, written)
        self.kept_space.set_remaining(self.booking, needed)
        others = self.kept_space.booked_before(self.booking)
        kept = [k for k in self.kept_space.now() if k.bytes]
        kept_bytes = sum(k.bytes for k in kept)
        available = free_bytes(path)
        if available - KeptSpace.total(others) - needed >= self.reserve + kept_bytes:
            self.kept_space.admit(self.booking)  # passed: a download's receiver keeps its bytes free now
            return
        mib = 1 << 20
        held = "".join(f" and {k.bytes / mib:.1f} MiB for {k.what}" for k in kept)
        booked = f", of which {said_bookings(others)} will take" if others else ""
        later = ("attach it once they stop (a stopped session takes documents) or free space first" if kept
                 else "free space first")
        raise DocumentRefused(
            f"not enough free space for the document: it needs about {needed / mib:.1f} MiB more on the "
            f"store's disk (received, then sealed: twice its size), which has {available / mib:.1f} MiB free"
            f"{booked}, keeping {self.reserve / mib:.1f} MiB in reserve{held}: {later}", INSUFFICIENT_STORAGE)

    def release(self) -> None:
        self.kept_space.release(self.booking)


async def receive_document(chunks: AsyncIterable[bytes], work_dir: Path,
                           max_bytes: int = MAX_DOCUMENT_BYTES,
                           space: DocumentSpace | None = None) -> ReceivedDocument:
    """Write `chunks` to a new file of `work_dir` (removed again when refused): DocumentRefused when it is
    empty, larger than `max_bytes`, or not a PDF, JPEG or PNG by its content, or (with `space`) when the
    store's disk has no room for the bytes still to come (checked before each chunk is written)."""
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
                await asyncio.to_thread(_checked_write, fd, chunk, space, work_dir, size)
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


def _existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor (the file system a new directory would be on)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def attached_so_far(pipeline: IngestPipeline, session: RoomSession) -> tuple[int, int]:
    """(documents, their bytes together) attached to `session`, by its ``attached`` entries."""
    count = total = 0
    for entry in pipeline.store.ledger.entries_of_types([EntryType.ATTACHED], session.started_seq or 1):
        if entry.data.get("room_session") == session.session:
            size = entry.data.get("size")
            count += 1
            total += size if isinstance(size, int) and size > 0 else 0
    return count, total


def _checked_write(fd: int, chunk: bytes, space: DocumentSpace | None, work_dir: Path, received: int) -> None:
    """One chunk, once `space` found room for it and what is still to come (in one worker thread)."""
    if space is not None:
        space.check(work_dir, received, received - len(chunk))
    _write_all(fd, chunk)


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
    expected_bytes: int | None = None,
) -> dict[str, Any]:
    """Receive, check, seal and record one document of `session`: what the ``attached`` entry says.
    `max_count` and `max_total_bytes`: what the session may hold in all, this document included.
    `expected_bytes`: its size as the request says it (Content-Length), for the space it books."""
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
    # Said by the request, at most what it may be: a Content-Length beyond the limit books no more than it.
    expected = min(max(expected_bytes or 0, 0), limit)
    space = DocumentSpace(pipeline, f"session {session.session}", expected)
    try:
        # Before anything is written: a document that cannot fit is refused with nothing to remove.
        await asyncio.to_thread(space.check, _existing(work_dir), 0, 0)
        received = await receive_document(chunks, work_dir, limit, space)
    except DocumentRefused as exc:
        if exc.status == 413 and max_total_bytes is not None and limit < (max_bytes or MAX_DOCUMENT_BYTES):
            raise DocumentRefused(f"{exc} (the session's documents take {total} of its "
                                  f"{max_total_bytes} bytes already: [rooms] max_document_bytes_per_session)",
                                  413) from None
        raise
    finally:
        # Its sealed copy books itself as a copy that can wait (edge.ingest.pipeline).
        space.release()
    try:
        item = await seal_session_file(
            pipeline, received.path, session=session, role=DOCUMENT_ROLE, station_id=station_id,
            clock_synchronised=clock_synchronised,
            facts={"kind": kind_text, "name": shown, "type": received.media_type}, can_wait=True)
    finally:
        received.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the session's work directory, when nothing else is in it
            work_dir.rmdir()
    if item is None:
        kept = [k for k in pipeline.kept_space.now() if k.bytes]
        why = f": the space is kept for {'; '.join(k.what for k in kept)}" if kept else ""
        raise DocumentRefused(f"the document could not be sealed (the ledger says why){why}", 507)
    record = pipeline.repository.item(item)
    assert record is not None
    data = {"room_session": session.session, "room": session.room, "kind": kind_text, "name": shown,
            "type": received.media_type, "sha256": record.sha256, "size": record.size, "by": by}
    repository = pipeline.repository
    entry = await pipeline.commit(lambda: repository.entry(EntryType.ATTACHED, item, data))
    log.info("room session %s: %s attached as item %s by %s", session.session, kind_text, item, printable(by))
    return {**data, "item": item, "seq": entry.seq}
