"""A stopped session written to a disc image (ISO 9660 with Rock Ridge and Joliet, by xorriso), ready to
burn: its joined recordings, the session manifest, the statement (相关说明), the attached documents,
each item's signed manifest, the session's ledger entries, the station's public key, a SHA256SUMS file,
and a plain-language page on how to check them (:func:`how_to_verify`).

What goes on the disc is read from the ledger, never from the session file: exactly the session's newest
products (edge.rooms.product_sets: the ``room_products`` made from its newest sealed manifest) name the
manifest, the joined files and the statement (with their hashes), ``joined`` and ``attached`` entries
the rest; superseded sets never reach a disc, and `edge verify` checks each ``exported`` entry by the
same rule (edge.verify.room_products). Each file is copied from its sealed copy (its original bytes: the first
`size` bytes, the station's evidence box left off) and hashed in the same pass; a hash that is not the
ledger's refuses the export (nothing altered after sealing reaches a disc) and names the item. The image
itself is hashed, and the export is an ``exported`` entry (who, the image's hash, every file with its
item and hash).

The image is built in ``<store>/rooms/products/<session>/`` and handed to the caller (the local API
streams it to the operator's `edge room export`, then removes it). The command lines are pure functions
(:func:`disc_argv`, :func:`extract_argv`).

Space: the export stages a copy of every file and then writes the image beside it, about twice the
session's size on the store's file system, and the operator's output file takes the image once more. Before
anything is copied, :func:`space_needed` estimates both (the files as the ledger sizes them, the image as
those plus :data:`IMAGE_OVERHEAD_SHARE` and :data:`IMAGE_SLACK_BYTES`), and an export that would not fit,
on the staging file system above the store's reserve or in the free bytes the caller reports for its
output, is refused (status 507) with the figures, a ``refused`` entry. Its estimate is booked in the store's
one booking ledger (edge.ingest.kept_space, the pipeline's `kept_space`), from before its check to its end,
lowered by every byte it stages and given up once the image is written (what is on the disk is in the free
figure: never counted twice, review rev11f): exports, docking copies and attached documents running at once
each count what the others will still take, and a room's start counts it (reviews 27 and 29, rev11e): two
never both pass on the same free figure.
A disk that fills anyway (another writer meanwhile) ends the export the same way; staging and image are
removed on every failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from edge.custody.canonical import canonical_json
from edge.custody.ledger import EntryType, LedgerEntry
from edge.custody.text import printable
from edge.durable.files import free_bytes, make_dirs_durable
from edge.ingest.kept_space import Booking
from edge.ingest.pipeline import IngestPipeline
from edge.rooms.product_sets import SET_TYPES, SessionProducts, product_sets

log = logging.getLogger(__name__)

XORRISO = "xorriso"
CHUNK_BYTES = 1 << 20
SUMS_NAME = "SHA256SUMS"
VERIFY_PAGE = "HOW-TO-VERIFY-如何核验.txt"
STDERR_LINES_KEPT = 20
# The image over the files it holds: ISO 9660 directory records, Rock Ridge and Joliet trees, padding to
# 2 KiB sectors, and the supporting files (manifests, ledger lines, the page) not counted in the sizes.
IMAGE_OVERHEAD_SHARE = 0.05
IMAGE_SLACK_BYTES = 8 << 20
INSUFFICIENT_STORAGE = 507
# How an export's booking is counted in the store's booking ledger (edge.ingest.kept_space).
BOOKING_KIND = "disc export"


class ExportRefused(Exception):
    """The session cannot be exported; `status` is the HTTP status the API answers with."""

    def __init__(self, reason: str, status: int = 409) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class DiscFile:
    """One file of the disc: its path on the disc, the item it is, and the hash the ledger gives it."""

    path: str
    item: str | None
    sha256: str
    what: str


@dataclass
class ExportedDisc:
    path: Path
    sha256: str
    size: int
    volume_id: str
    files: list[DiscFile] = field(default_factory=list)
    seq: int | None = None  # its `exported` entry


def volume_id(session: str) -> str:
    """An ISO 9660 volume id (d-characters, at most 32) naming the session."""
    return "EDGE_" + session.replace("-", "")[:16].upper()


def disc_argv(xorriso: str, staging: Path, image: Path, volume: str) -> list[str]:
    """xorriso in mkisofs mode: ISO level 3 (files over 4 GiB), Rock Ridge and Joliet with long names (the
    Chinese file name of the page shows on Windows too), the staging directory as the disc's root."""
    return [xorriso, "-abort_on", "FAILURE", "-as", "mkisofs", "-quiet", "-iso-level", "3", "-r", "-J",
            "-joliet-long", "-V", volume, "-o", str(image), str(staging)]


def extract_argv(xorriso: str, image: Path, into: Path) -> list[str]:
    """xorriso reading an image back into a directory (for checks: what a court's PC does by mounting)."""
    return [xorriso, "-abort_on", "FAILURE", "-osirrox", "on", "-indev", str(image), "-extract", "/",
            str(into)]


def sums_file(files: Iterable[DiscFile]) -> str:
    """A SHA256SUMS file as sha256sum(1) writes it (``-c`` checks it)."""
    return "".join(f"{f.sha256}  {f.path}\n" for f in files)


def how_to_verify(case_number: str, session: str, station: str, key_id: str, public_key_b64: str,
                  files: Iterable[DiscFile]) -> str:
    """The plain-language page of the disc: what is on it and how anyone checks it."""
    listed = "\n".join(f"  {f.path}\n      {f.what}; SHA-256 {f.sha256}" for f in files)
    return f"""如何核验本光盘 / How to verify this disc
========================================

案件编号 Case number: {printable(case_number)}
会话 Session: {session}
采集站 Station: {printable(station)}

本光盘上的每个文件都与采集站账本中记录的 SHA-256 值一致,刻录前已逐一核对。
Every file on this disc was checked against the SHA-256 the station's ledger recorded for it before the
disc was written.

一、核对文件哈希 (Check the files)
  Linux / macOS:  在光盘根目录执行 (in the disc's root)   sha256sum -c SHA256SUMS
  Windows:        certutil -hashfile recordings\\<文件名>.mp4 SHA256
                  再与 SHA256SUMS 中同名文件的值比较 (and compare with its line in SHA256SUMS)
  每一行都应显示 OK。任何一个字节被改动,哈希值都会不同。
  Every line must say OK. A change of a single byte gives another hash.

二、核对签名 (Check the signatures)
  manifests/ 下每个 .manifest.json 是该文件的签名清单:其中 sha256 即该文件的哈希,
  signature 是采集站密钥(Ed25519)对清单其余部分(RFC 8785 规范 JSON)的签名。
  Each file in manifests/ is the signed manifest of one item: its "sha256" is the file's hash, and its
  "signature" is the station key's Ed25519 signature over the rest of the manifest as canonical JSON
  (RFC 8785: sorted keys, no white space). The station's public key:
      key id  {key_id}
      Ed25519 {public_key_b64}   (base64 of the 32-byte raw key; also in station-key.txt)
  本会话的中心回执与账本见 ledger.jsonl(每行一条账本记录,含前一条的哈希)。
  ledger.jsonl holds the session's ledger entries; each names the hash of the one before it, and the
  central system's receipts for these items prove it received exactly these hashes.

三、文件清单 (What is on the disc)
{listed}

合并录像由分段录像首尾相接而成,未重新编码;中断(如有)在相关说明中逐条列明,合并文件不作填补。
The joined recordings are the sealed segments put end to end without re-encoding; every interruption is
listed in the statement, and none is padded over.
"""


def _copy_hashed(source: Path, size: int, target: Path) -> tuple[str, int]:
    """Copy the first `size` bytes of `source` to the new file `target`, hashing them in the same pass."""
    digest = hashlib.sha256()
    copied = 0
    with open(source, "rb") as reader, open(target, "xb") as writer:
        while copied < size:
            chunk = reader.read(min(CHUNK_BYTES, size - copied))
            if not chunk:
                break
            digest.update(chunk)
            writer.write(chunk)
            copied += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest(), copied


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as reader:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@dataclass(frozen=True)
class _Wanted:
    path: str
    item: str
    sha256: str | None
    what: str


def _session_entries(entries: Iterable[LedgerEntry], session: str) -> list[LedgerEntry]:
    return [e for e in entries if e.data.get("room_session") == session]


def disc_contents(entries: list[LedgerEntry], session: str,
                  products: SessionProducts | None) -> tuple[list[_Wanted], LedgerEntry]:
    """What the disc of `session` holds, by its ledger entries (`entries`) and its `products`
    (edge.rooms.product_sets): exactly its newest set, the ``room_products`` made from its newest sealed
    manifest, which names the manifest, the joined files and the statement; an older set, superseded, is
    never exported, and a session whose newest manifest has no set made from it yet is refused (its
    products are owed). Returns (file path, item, ledger hash, what) and the products entry. A
    source without a joined recording (a camera that changed its picture size mid-session: the join
    refused to put the two layouts in one file) has its sealed segments on the disc instead, in the order
    they were sealed (:func:`unjoined_notes` says why, on the disc)."""
    stopped = next((e for e in entries if e.type == EntryType.SESSION_STOPPED), None)
    if stopped is None:
        raise ExportRefused(f"session {session} has not stopped: only a stopped session is exported")
    newest = None if products is None else products.newest
    if newest is None:
        if products is not None and products.manifest is not None:
            raise ExportRefused(f"session {session}: its joined recordings and statement are not made (yet) "
                                f"from its newest sealed manifest (item {products.manifest.item}): they are "
                                "made at the agent's next start")
        raise ExportRefused(f"session {session}: its joined recordings and statement are not made (yet): "
                            f"{printable(str(stopped.data.get('products', 'none')))}")
    data = newest.data
    wanted: list[_Wanted] = []
    # By item: a source joined again (a newer set) has a `joined` entry per set; the set names its own.
    joined_entries = {e.item: e for e in entries if e.type == EntryType.JOINED and e.item is not None}
    for joined in data.get("joined", []):
        source, item = str(joined.get("source")), joined.get("item")
        entry = joined_entries.get(item) if isinstance(item, str) else None
        if entry is not None and str(entry.data.get("source")) != source:
            entry = None
        if item and entry is not None:
            wanted.append(_Wanted(f"recordings/{source}.mp4", str(item), str(entry.data.get("sha256")),
                                  f"合并录像 joined recording of source {source}"))
            continue
        segments = _segments_of(entries, source)
        if item:  # named joined but not on the ledger: the record disagrees with itself
            raise ExportRefused(f"session {session}: source {printable(source)}: its joined recording "
                                f"{printable(str(item))} has no `joined` entry of this session")
        # A source that sealed nothing (a camera away the whole session: one gap from start to stop) has
        # only a note on the disc; the rest of the session is exported all the same (review 28).
        for number, segment in enumerate(segments, 1):
            name = _disc_name(source)  # the file's name alone is unique too (its manifest is named by it)
            wanted.append(_Wanted(f"recordings/{name}-segments/{name}-{number:04d}.mp4",
                                  str(segment.item), segment.data.get("sha256"),
                                  f"分段录像 sealed segment {number} of source {source} (not joined)"))
    if not data.get("manifest_item"):
        raise ExportRefused(f"session {session}: its manifest was not sealed")
    wanted.append(_Wanted("session-manifest.json", str(data["manifest_item"]), data.get("manifest_sha256"),
                          "会话清单 session manifest (signed)"))
    if not data.get("statement_item"):
        raise ExportRefused(f"session {session}: its statement was not sealed")
    wanted.append(_Wanted("statement-相关说明.txt", str(data["statement_item"]), data.get("statement_sha256"),
                          "相关说明 session statement"))
    for number, entry in enumerate((e for e in entries if e.type == EntryType.ATTACHED), 1):
        ext = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}.get(
            str(entry.data.get("type")), "bin")
        wanted.append(_Wanted(f"documents/document-{number}.{ext}", str(entry.item), entry.data.get("sha256"),
                              f"附件 {printable(str(entry.data.get('kind')))} attached document"))
    return wanted, newest


def _segments_of(entries: list[LedgerEntry], source: str) -> list[LedgerEntry]:
    """The sealed segments of `source`, in the order they were sealed (the ledger's)."""
    return [e for e in entries if e.type == EntryType.SEGMENT_SEALED and str(e.data.get("source")) == source
            and e.item is not None]


def _disc_name(source: str) -> str:
    """A source id as part of a name on the disc (config ids are plain already; anything else replaced)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in source) or "_"


def unjoined_notes(entries: list[LedgerEntry], products: LedgerEntry) -> dict[str, bytes]:
    """For each source whose sealed segments are on the disc for want of a joined recording: a note
    beside them (``recordings/<source>-NOT-JOINED.txt``) saying so and why (the ``room join`` error); for
    a source that sealed nothing, ``recordings/<source>-NOT-RECORDED.txt`` with its gaps."""
    notes: dict[str, bytes] = {}
    for joined in products.data.get("joined", []):
        source = str(joined.get("source"))
        if joined.get("item"):
            continue
        if not _segments_of(entries, source):
            notes[f"recordings/{_disc_name(source)}-NOT-RECORDED.txt"] = _not_recorded_note(entries, source)
            continue
        why = [printable(str(e.data.get("reason"))) for e in entries if e.type == EntryType.ERROR
               and e.data.get("stage") == "room join" and str(e.data.get("source")) == source]
        name = _disc_name(source)
        notes[f"recordings/{name}-NOT-JOINED.txt"] = (
            f"来源 {printable(source)} 无合并录像 / source {printable(source)} has no joined recording.\n"
            f"Its {len(_segments_of(entries, source))} sealed segments are on this disc instead, in the "
            f"order they were sealed, under recordings/{name}-segments/ (each as sealed: its hash is in "
            "SHA256SUMS and in the ledger's segment_sealed entry; the statement lists them and every gap).\n"
            f"Why it was not joined: {why[-1] if why else 'see the statement (相关说明)'}\n").encode()
    return notes


NOTE_GAPS_LISTED = 50


def _not_recorded_note(entries: list[LedgerEntry], source: str) -> bytes:
    """The note for a source that sealed nothing in the session: its closed gaps (its time on record)."""
    gaps = [e.data for e in entries if e.type == EntryType.GAP and str(e.data.get("source")) == source
            and e.data.get("state") == "closed"]
    lines = [f"  {printable(str(g.get('from')))} - {printable(str(g.get('to')))}: "
             f"{printable(str(g.get('reason')))[:300]}" for g in gaps[:NOTE_GAPS_LISTED]]
    if len(gaps) > NOTE_GAPS_LISTED:
        lines.append(f"  ... and {len(gaps) - NOTE_GAPS_LISTED} more (see the statement)")
    listed = "\n".join(lines) or "  (none recorded)"
    name = printable(source)
    return (f"来源 {name} 本次会话无录像 / source {name} recorded nothing in this session: no segment of it "
            "was sealed. Its time is on the record as gaps (also in the statement 相关说明 and the session "
            f"manifest):\n{listed}\n").encode()


@dataclass(frozen=True)
class SpaceNeeded:
    """What an export takes: its staged files and its image (estimated from the files' ledger sizes)."""

    staged_bytes: int
    image_bytes: int

    @property
    def staging_bytes(self) -> int:
        """On the staging file system: the staged copy and the image beside it."""
        return self.staged_bytes + self.image_bytes


def space_needed(file_sizes: Iterable[int]) -> SpaceNeeded:
    """The space an export of files of `file_sizes` needs, with margin for what the sizes leave out."""
    staged = sum(file_sizes) + IMAGE_SLACK_BYTES // 2  # the supporting files, the sector rounding
    return SpaceNeeded(staged, int(staged * (1 + IMAGE_OVERHEAD_SHARE)) + IMAGE_SLACK_BYTES // 2)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _space_refusal(needed: SpaceNeeded, work_free: int, reserve_bytes: int,
                   output_free_bytes: int | None, others: Iterable[int] = (),
                   reserve_what: str = "the store's reserve") -> str | None:
    """Why the export does not fit (the figures named), or None. `others`: what the exports, copies and
    documents booked meanwhile will take (at most; part of it may be written already, and so counted
    twice: the safe side).
    `reserve_what` says what `reserve_bytes` keeps free."""
    others = list(others)
    if work_free - sum(others) - needed.staging_bytes < reserve_bytes:
        running = (f", of which {len(others)} other export(s) or copies running will take about "
                   f"{_mib(sum(others))}"
                   if others else "")
        return (f"not enough free space to stage the disc: it needs about {_mib(needed.staging_bytes)} "
                f"({_mib(needed.staged_bytes)} of staged files and an image of about "
                f"{_mib(needed.image_bytes)}) above {reserve_what} of {_mib(reserve_bytes)}, and the "
                f"store's file system has {_mib(work_free)} free{running}: free space first")
    if output_free_bytes is not None and output_free_bytes < needed.image_bytes:
        return (f"not enough free space for the output: the image needs about {_mib(needed.image_bytes)} "
                f"and the output's file system has {_mib(output_free_bytes)} free: choose another place "
                "or free space first")
    return None


def _existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor (the file system a new directory would be on)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


async def export_session(
    pipeline: IngestPipeline,
    session: str,
    *,
    case_number: str,
    station_id: str,
    by: str,
    work_dir: Path,
    from_seq: int = 1,
    xorriso: str = XORRISO,
    reserve_bytes: int = 0,
    reserve_what: str = "the store's reserve",
    output_free_bytes: int | None = None,
) -> ExportedDisc:
    """Write the disc image of stopped `session` (its entries from `from_seq`, its session_started);
    ExportRefused (and a `refused` entry) when it cannot be, also when it would not fit: `work_dir`'s file
    system must keep `reserve_bytes` free beyond the export (the store's reserve), and `output_free_bytes`
    (where the caller will write the image) must hold the image; `reserve_what` names what
    `reserve_bytes` is kept for (in a refusal)."""
    store = pipeline.store
    repository = pipeline.repository
    try:
        entries = _session_entries(store.ledger.entries(from_seq), session)
        sets = product_sets(store.ledger.entries_of_types(SET_TYPES, from_seq)).get(session)
        wanted, products = disc_contents(entries, session, sets)
    except ExportRefused as exc:
        await _refuse(pipeline, session, by, str(exc), exc.status)
    stored = (repository.item(want.item) for want in wanted)
    needed = space_needed(record.size for record in stored if record is not None)
    # Booked before the others' bookings and the free space are read (edge.ingest.kept_space): the order
    # that keeps two checks at once from both passing on the same bytes.
    with pipeline.kept_space.booking_for(BOOKING_KIND, f"session {session}", needed.staging_bytes) as booking:
        others = pipeline.kept_space.booked_before(booking)
        work_free = await asyncio.to_thread(free_bytes, _existing(work_dir))
        too_big = _space_refusal(needed, work_free, reserve_bytes, output_free_bytes,
                                 [b.remaining for b in others], reserve_what)
        if too_big is not None:
            await _refuse(pipeline, session, by, f"session {session}: {too_big}", INSUFFICIENT_STORAGE)
        pipeline.kept_space.admit(booking)  # passed: a download's receiver keeps its bytes free from now on
        return await _stage_and_write(pipeline, session, booking, needed, work_free, entries, wanted,
                                      products, case_number=case_number, station_id=station_id, by=by,
                                      work_dir=work_dir, xorriso=xorriso)


async def _stage_and_write(pipeline: IngestPipeline, session: str, booking: Booking, needed: SpaceNeeded,
                           work_free: int, entries: list[LedgerEntry], wanted: list[_Wanted],
                           products: LedgerEntry, *, case_number: str, station_id: str, by: str,
                           work_dir: Path, xorriso: str) -> ExportedDisc:
    """Stage the files, write the image, record the export, under `booking` (lowered by every byte staged:
    what is on the disk is in the free figure, review rev11f)."""
    store = pipeline.store
    repository = pipeline.repository
    kept_space = pipeline.kept_space
    token = uuid.uuid4().hex[:12]
    staging = work_dir / f"export-{token}"
    image = work_dir / f"export-{token}.iso"
    try:
        await asyncio.to_thread(make_dirs_durable, staging)
        files: list[DiscFile] = []
        items = {w.item for w in wanted}
        for want in wanted:
            record = repository.item(want.item)
            problem = None
            if record is None or record.path is None:
                problem = "it has no stored copy on this station"
            elif repository.purged(want.item):
                problem = "its local copy was purged after the central's receipt"
            elif record.sha256 != want.sha256:
                problem = f"its item row says {record.sha256}, the ledger {want.sha256}"
            if problem is None:
                assert record is not None and record.path is not None
                target = staging / want.path
                await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
                found, size = await asyncio.to_thread(_copy_hashed, store.layout.root / record.path,
                                                      record.size, target)
                kept_space.wrote(booking, size)  # on the disk now, in the free figure
                if (found, size) != (want.sha256, record.size):
                    problem = (f"altered after sealing: its stored copy gives {found} ({size} bytes), the "
                               f"ledger {want.sha256} ({record.size} bytes)")
            if problem is not None:
                reason = f"{want.path} (item {want.item}): {problem}: not exported"
                await _refuse(pipeline, session, by, reason, 409)
            files.append(DiscFile(want.path, want.item, str(want.sha256), want.what))
        extra: dict[str, bytes] = unjoined_notes(entries, products)
        for want in wanted:
            record = repository.item(want.item)
            if record is not None and record.manifest is not None:
                extra[f"manifests/{Path(want.path).name}.manifest.json"] = canonical_json(record.manifest)
        about = [e for e in store.ledger.entries(entries[0].seq if entries else 1)
                 if e.data.get("room_session") == session or e.item in items]
        extra["ledger.jsonl"] = "".join(
            json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for e in about).encode()
        key = store.key
        extra["station-key.txt"] = (f"station {station_id}\nkey id {key.key_id}\nalgorithm Ed25519\n"
                                    f"public key (base64, raw 32 bytes) {key.public_key_b64}\n").encode()
        for name, data in extra.items():
            target = staging / name
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(target.write_bytes, data)
            kept_space.wrote(booking, len(data))
            files.append(DiscFile(name, None, hashlib.sha256(data).hexdigest(), "supporting file"))
        page = how_to_verify(case_number, session, station_id, key.key_id, key.public_key_b64, files)
        for name, text in ((VERIFY_PAGE, page), (SUMS_NAME, sums_file(files))):
            data = text.encode("utf-8")
            (staging / name).write_bytes(data)
            kept_space.wrote(booking, len(data))
        volume = volume_id(session)
        said = await _run(disc_argv(xorriso, staging, image, volume))
        if said is not None:
            full = _full(work_dir)  # judged before the clean-up frees the space
            image.unlink(missing_ok=True)
            await asyncio.to_thread(shutil.rmtree, staging, True)  # room for the refused entry
            if full:
                said += (f" (the store's file system filled up: the export was estimated at "
                         f"{_mib(needed.staging_bytes)} with {_mib(work_free)} free at its start; another "
                         "writer took the space meanwhile): free space first")
            await _refuse(pipeline, session, by, f"xorriso could not write the image: {said}",
                          INSUFFICIENT_STORAGE if full else 500)
        kept_space.set_remaining(booking, 0)  # the image is written: nothing more to write
        digest, size = await asyncio.to_thread(_hash_file, image)
    except OSError as exc:  # a disk that filled meanwhile (another writer), an I/O error: nothing is left
        image.unlink(missing_ok=True)
        await asyncio.to_thread(shutil.rmtree, staging, True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        await _refuse(pipeline, session, by, (
            f"session {session}: staging the disc failed: {exc.strerror or type(exc).__name__}"
            + (f" (estimated {_mib(needed.staging_bytes)}, {_mib(work_free)} free at the start: another "
               "writer took the space meanwhile): free space first" if full else "")),
            INSUFFICIENT_STORAGE if full else 500)
    except BaseException:
        image.unlink(missing_ok=True)
        raise
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)
        with contextlib.suppress(OSError):  # the session's work directory, unless the image is in it
            work_dir.rmdir()
    exported = {"room_session": session, "by": by, "image_sha256": digest, "image_size": size,
                "volume_id": volume,
                "files": [{"path": f.path, "item": f.item, "sha256": f.sha256} for f in files]}
    entry = await pipeline.commit(lambda: repository.entry(EntryType.EXPORTED, None, exported))
    log.info("room session %s exported by %s: image %s (%d bytes, %d files)", session, printable(by), digest,
             size, len(files))
    return ExportedDisc(image, digest, size, volume, files, entry.seq)


def _full(work_dir: Path) -> bool:
    """Whether `work_dir`'s file system is (all but) full: why a tool writing there may have failed."""
    try:
        return free_bytes(_existing(work_dir)) < IMAGE_SLACK_BYTES // 8
    except OSError:
        return False


async def _run(argv: list[str]) -> str | None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await process.communicate()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode == 0:
        return None
    tail = err.decode("utf-8", "replace").splitlines()[-STDERR_LINES_KEPT:]
    return f"exit {process.returncode}: " + printable(" | ".join(tail))


async def _refuse(pipeline: IngestPipeline, session: str, by: str, reason: str, status: int) -> NoReturn:
    log.warning("room session %s: export refused (%s): %s", session, printable(by), printable(reason))
    data: Mapping[str, Any] = {"stage": "room", "action": "export", "room_session": session, "by": by,
                               "reason": printable(reason)[:1000]}
    repository = pipeline.repository
    await pipeline.commit(lambda: repository.entry(EntryType.REFUSED, None, data))
    raise ExportRefused(reason, status)
