"""Build one case's disclosure package (layout: :mod:`edge.custody.disclosure`) and stream it as a zip.

:func:`coverage_for` and :func:`segment_for` plan each station's part from a snapshot of the index: the
ledger head the central holds, and the ledger from the first entry of a disclosed item or of the docking
that produced it to that head (ending at the checkpoint the station signed there), which of its entries
are shown whole (an explicit allow-list, :data:`STATION_LEVEL_TYPES` and :data:`DOCKING_TYPES`; the others
are redacted), the checkpoints the station signed at the shown ones, and every key rotation of the station
with the checkpoints at its seq. :func:`write_package` writes the zip to any binary sink in one pass: the
ledger lines are read again from the index one at a time and the original files from the object store a
chunk at a time, hashed as they go out, so memory stays bounded whatever the evidence size and however
long the ledger span; the zip is stored, not compressed (video does not compress) and written with data
descriptors, so it never seeks. An object that does not hash to its item's SHA-256 stops the package
(:class:`DamagedObject`) before the package's signed list of files is written: a damaged object is never
disclosed as evidence.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.index import ItemRecord
from edge.central.storage import Index
from edge.custody.canonical import canonical_json
from edge.custody.disclosure import (
    CENTRAL_KEY_FILE,
    CHECKSUMS_FILE,
    CHECKSUMS_SIGNATURE_FILE,
    INDEX_FILE,
    PAGE_FILE,
    TEXT_FILE,
    DisclosedItem,
    PackageIndex,
    StationCoverage,
    checkpoint_line,
    checksum_line,
    entry_line,
    item_paths,
    ledger_paths,
    manifest_signature_parts,
    rotation_line,
    station_key_file,
    tree_head_signature_parts,
)
from edge.custody.keys import StationKey, key_id_of
from edge.custody.ledger import Checkpoint, EntryType, LedgerEntry, RedactedEntry, checkpoint_payload, redact
from edge.custody.receipt import Receipt
from edge.ingest.store import stored_extension

__all__ = [
    "DamagedObject", "PackagePlan", "StationSegment", "coverage_for", "station_keys_in_use", "write_package",
]

_CHUNK_BYTES = 1 << 20


class DamagedObject(Exception):
    """An original read from the object store does not hash to its item's SHA-256."""


@dataclass(frozen=True)
class StationSegment:
    """One station's ledger segment as planned: its bounds and which seqs it shows whole. The lines are read
    again from the index as they are written (:meth:`lines`): a segment runs to the station's head and may
    span millions of entries, which are never all held at once. Entries up to the segment's end never
    change (the ledger is append-only), so a second read gives the same lines."""

    station: str
    first_seq: int
    checkpoint: Checkpoint  # at the segment's last seq
    shown: frozenset[int]  # seqs of the entries shown whole; every other one is redacted
    signed: list[Checkpoint]  # every checkpoint the station signed at a shown seq of the segment
    # every key_rotated entry of the station (wherever it lies) with the checkpoints at its seq: the key
    # epochs the verifier applies, whether or not the segment shows the rotation
    rotations: list[tuple[LedgerEntry, list[Checkpoint]]] = field(default_factory=list)

    def lines(self, index: Index) -> Iterator[LedgerEntry | RedactedEntry]:
        """The segment's entries in seq order, each whole or redacted as planned."""
        for entry in index.ledger_entries(self.station, self.first_seq, end_seq=self.checkpoint.seq):
            yield entry if entry.seq in self.shown else redact(entry)


@dataclass(frozen=True)
class PackagePlan:
    """Everything but the originals' bytes, read from the index before the first byte is sent."""

    index: PackageIndex
    records: list[ItemRecord]
    receipts: dict[str, Receipt]
    segments: list[StationSegment]
    station_keys: dict[str, dict[str, Ed25519PublicKey]]
    central_key: Ed25519PublicKey
    page_html: bytes
    page_text: bytes


def extension_of(record: ItemRecord) -> str:
    original = record.manifest.get("original")
    name = original.get("name") if isinstance(original, dict) else None
    return stored_extension(name) if isinstance(name, str) else "bin"


def disclosed_item(record: ItemRecord) -> DisclosedItem:
    signature = record.manifest.get("signature")
    key_id = signature.get("key_id") if isinstance(signature, dict) else None
    return DisclosedItem(record.item, record.station, record.sha256, record.size, extension_of(record),
                         key_id if isinstance(key_id, str) else "unsigned")


# Station entries that name no item, shown whole in every package that covers them: they say what the
# station was (its start and stop with its checkpoint cadence, its key rotations, its configuration
# reloads and the central log's witnessing), which a verifier needs to judge the chain, and they name no
# person, device or bay. `witness_alarm_cleared` names the operator who cleared the alarm: an official act
# of custody a court must see, not another officer's evidence.
STATION_LEVEL_TYPES = frozenset({
    EntryType.STATION_STARTED, EntryType.STATION_STOPPED, EntryType.KEY_ROTATED, EntryType.CONFIG_RELOADED,
    EntryType.WITNESS_ALARM, EntryType.WITNESS_ALARM_CLEARED,
})
# Entries of a docking: shown only for the docking that produced a disclosed item (its device, officer,
# bay and clock facts are the item's custody); another officer's docking names their device, their name
# and number, their battery and bay, and is redacted. Attributed by the session id, or before the session
# starts by the recorder's USB serial *and* its bay, USB port and device serial wherever the entry names
# them, from its last `device_connected` on: USB serials are not unique in the field (a batch of cheap
# recorders shares one, a hostile device copies one), so a serial alone would show another bay's officer.
# Bay-only dock events and volume mounts name no recorder, cannot be attributed, and are redacted; errors
# and refusals of no item are shown only when they fall inside a disclosed docking and name its session or
# its recorder (:data:`DOCKING_FAULT_TYPES`), otherwise redacted (they may name anyone's device or volume).
DOCKING_TYPES = frozenset({
    EntryType.DEVICE_CONNECTED, EntryType.DEVICE_AUTHENTICATED, EntryType.CLOCK_MEASURED,
    EntryType.CLOCK_SET, EntryType.SESSION_STARTED, EntryType.SESSION_STOPPED, EntryType.DEVICE_REMOVED,
})
# Faults of no item (a file that failed to copy, a refused file): the disclosed docking's own custody
# when they lie between its first entry and its session_stopped and name its session or its recorder.
DOCKING_FAULT_TYPES = frozenset({EntryType.ERROR, EntryType.REFUSED})
# How far before its session_started a docking's first entry may lie (connect, authenticate, clock).
_DOCKING_LOOKBACK = 256


@dataclass(frozen=True)
class _Docking:
    """One docking that produced a disclosed item: its session, recorder and the seqs it spans."""

    session: str
    usb_serial: str | None
    first_seq: int  # its device_connected (or its session_started when none is found)
    started_seq: int
    bay: object = None  # as its session_started names it (None: a port mapped to no bay)
    usb_port: str | None = None  # as its device_connected names it
    device_serial: str | None = None  # as its session_started's identity names it
    stopped_seq: int | None = None  # its session_stopped; None while the docking has not ended

    def names_recorder(self, data: Mapping[str, object]) -> bool:
        """Does an entry's data name this docking's recorder? It names its USB serial or device serial, and
        every one of the USB serial, bay, USB port and device serial it carries is this docking's."""
        expected = {"usb_serial": self.usb_serial, "bay": self.bay, "usb_port": self.usb_port,
                    "device_serial": self.device_serial}
        named = any(name in data and expected[name] is not None for name in ("usb_serial", "device_serial"))
        return named and all(data[name] == value for name, value in expected.items() if name in data)


def _dockings(station: str, sessions: set[str], index: Index) -> list[_Docking]:
    dockings: list[_Docking] = []
    if not sessions:
        return dockings  # items of no docking (a recording room, an import): nothing to attribute
    for started in index.ledger_entries(station, type_=EntryType.SESSION_STARTED):
        session = started.data.get("session")
        if session not in sessions:
            continue
        identity = started.data.get("identity")
        usb = identity.get("usb_serial") if isinstance(identity, dict) else None
        usb = usb if isinstance(usb, str) else None
        device = identity.get("device_serial") if isinstance(identity, dict) else None
        device = device if isinstance(device, str) else None
        bay = started.data.get("bay")
        first, port = started.seq, None
        for entry in index.ledger_entries(station, max(1, started.seq - _DOCKING_LOOKBACK),
                                          end_seq=started.seq - 1):
            if (entry.type == EntryType.DEVICE_CONNECTED and usb is not None
                    and entry.data.get("usb_serial") == usb and entry.data.get("bay") == bay):
                first = entry.seq  # the last connect of this recorder at this bay before its session
                found_port = entry.data.get("usb_port")
                port = found_port if isinstance(found_port, str) else None
        dockings.append(_Docking(str(session), usb, first, started.seq, bay, port, device))
    return dockings


def _of_docking(entry: LedgerEntry, dockings: list[_Docking], removed_after: dict[str, int]) -> bool:
    """Does this item-less entry belong to a disclosed item's docking?"""
    for docking in dockings:
        if entry.data.get("session") == docking.session:
            return True
        if entry.type in DOCKING_FAULT_TYPES:
            # A fault naming its recorder, between its first entry and its end.
            end = docking.stopped_seq if docking.stopped_seq is not None else entry.seq
            if docking.first_seq <= entry.seq <= end and docking.names_recorder(entry.data):
                return True
            continue
        if docking.usb_serial is None or entry.data.get("usb_serial") != docking.usb_serial:
            continue
        # Its connect, authentication and clock before the session (at its bay and port); its removal after
        # it (the USB poll's removal names the USB serial alone, and nothing else).
        if docking.first_seq <= entry.seq <= docking.started_seq and docking.names_recorder(entry.data):
            return True
        if entry.type == EntryType.DEVICE_REMOVED and removed_after.get(docking.session) == entry.seq:
            return True
    return False


# The entries that bound a room session (edge.rooms) in the ledger: its start, its stop and the record of
# its products, found by the session's id (`room_session`).
ROOM_SESSION_BOUNDS = (EntryType.SESSION_STARTED, EntryType.SESSION_STOPPED, EntryType.ROOM_PRODUCTS)


def room_sessions_of(entries: Iterable[LedgerEntry]) -> set[str]:
    """The room sessions the disclosed items' own entries name (a segment, a joined file, a statement)."""
    return {str(e.data["room_session"]) for e in entries if isinstance(e.data.get("room_session"), str)}


def _room_session_bounds(station: str, sessions: set[str], index: Index) -> list[int]:
    if not sessions:
        return []
    return [entry.seq for type_ in ROOM_SESSION_BOUNDS for entry in index.ledger_entries(station, type_=type_)
            if entry.data.get("room_session") in sessions]


def _shown(entry: LedgerEntry, disclosed: set[str], dockings: list[_Docking],
           removed_after: dict[str, int], room_sessions: set[str]) -> bool:
    if entry.item is not None:
        # Another item's entry says which item, device and hash it was: only its links are shown.
        return entry.item in disclosed
    if entry.type in STATION_LEVEL_TYPES:
        return True
    if entry.data.get("room_session") in room_sessions:
        # The disclosed recording's own session: its start and stop, every gap with its reason, the marks,
        # the case changes, its products and exports, its errors. A session records one case and its
        # persons, so none of this is another case's (a case number changed mid-session shows both).
        return True
    return (entry.type in DOCKING_TYPES | DOCKING_FAULT_TYPES) and _of_docking(entry, dockings, removed_after)


def segment_for(station: str, records: Iterable[ItemRecord], index: Index,
                head_seq: int | None = None) -> StationSegment | None:
    """The station's ledger from the first entry of the disclosed items (or of the dockings or room
    sessions that produced them; a room session's entries to its products' record) to ``head_seq`` (the
    head :func:`coverage_for` stated: a reader can then see that no later entry of a disclosed item is
    hidden, :mod:`edge.verify.package`), ending at the checkpoint the station signed
    there, with every checkpoint the station signed at its shown entries; entries of other items and of
    other dockings or room sessions redacted. Without a checkpoint at ``head_seq`` (or without
    ``head_seq``), to the first signed checkpoint at or after their last entry (the verifier then says
    NOT COMPLETE past it). None when no checkpoint covers them yet.

    Streamed from the index: only the seqs of shown entries are kept (:class:`StationSegment`), so the
    plan's memory does not grow with the redacted entries of a long span."""
    disclosed = {record.item for record in records}
    entries = [entry for item in sorted(disclosed) for entry in index.ledger_entries(station, item=item)]
    if not entries:
        return None
    sessions = {str(e.data["session"]) for e in entries
                if e.type == EntryType.ACQUIRED and isinstance(e.data.get("session"), str)}
    dockings = _dockings(station, sessions, index)
    room_sessions = room_sessions_of(entries)
    room_bounds = _room_session_bounds(station, room_sessions, index)
    first = min([e.seq for e in entries] + [d.first_seq for d in dockings] + room_bounds)
    # To the end of those dockings too: their session_stopped says how each ended (items, errors, wipes).
    stopped_entries = [e for e in index.ledger_entries(station, first, type_=EntryType.SESSION_STOPPED)
                       if e.data.get("session") in sessions]
    stopped = [e.seq for e in stopped_entries]
    stopped_at: dict[str, int] = {}
    for entry in stopped_entries:
        stopped_at.setdefault(str(entry.data["session"]), entry.seq)
    dockings = [replace(d, stopped_seq=stopped_at.get(d.session)) for d in dockings]
    last = max([e.seq for e in entries] + stopped + room_bounds)
    at_head = (index.checkpoints(station, head_seq, head_seq)
               if head_seq is not None and head_seq >= last else [])
    checkpoint = at_head[0] if at_head else index.checkpoint_at_or_after(station, last)
    if checkpoint is None:
        return None
    removed_after: dict[str, int] = {}  # session -> its recorder's first device_removed after it started
    whole: list[int] = []
    for entry in index.ledger_entries(station, first, end_seq=checkpoint.seq):
        if entry.type == EntryType.DEVICE_REMOVED:
            for docking in dockings:
                # Its USB serial, and its port and bay where the entry names them (since stations
                # tracked recorders by attachment): two recorders may claim one serial.
                if (entry.seq > docking.started_seq and entry.data.get("usb_serial") == docking.usb_serial
                        and docking.names_recorder(entry.data)):
                    removed_after.setdefault(docking.session, entry.seq)
        if _shown(entry, disclosed, dockings, removed_after, room_sessions):
            whole.append(entry.seq)
    # Only the checkpoints of shown entries: one at a redacted line binds nothing the package discloses and
    # would tell the reader when another case's entry was written (its station time). (The final checkpoint
    # at the head does date the head entry: the price of proving the segment is the station's to its end.)
    signed = [c for seq in whole for c in index.checkpoints(station, seq, seq)]
    return StationSegment(station, first, checkpoint, frozenset(whole), signed, key_rotations(station, index))


def station_keys_in_use(station: str, index: Index) -> dict[str, Ed25519PublicKey]:
    """The station's enrolled keys a package lists and a spot check trusts: its current key and every key
    its stored ``key_rotated`` entries name. A key enrolled by mistake (the wrong file given to `edge central
    enroll`, corrected at once) stays in the index for ever but signed nothing: listed, it would fail every
    package and spot check of the station as a key no rotation introduces."""
    keys = index.station_keys(station)
    named: set[str] = set()
    record = index.station(station)
    if record is not None:
        named.add(key_id_of(record.public_key()))
    for entry in index.ledger_entries(station, type_=EntryType.KEY_ROTATED):
        named.update(str(entry.data.get(name)) for name in ("old_key_id", "new_key_id"))
    return {key_id: key for key_id, key in keys.items() if key_id in named}


def key_rotations(station: str, index: Index) -> list[tuple[LedgerEntry, list[Checkpoint]]]:
    """Every ``key_rotated`` entry the central holds of the station, with the checkpoints the station
    signed at its seq: they chain the station keys the package lists and set each key's epoch, including
    rotations before or after the segment (a later case's package) or hidden in it as a redacted line."""
    return [(entry, index.checkpoints(station, entry.seq, entry.seq))
            for entry in index.ledger_entries(station, type_=EntryType.KEY_ROTATED)]


def coverage_for(station: str, records: Iterable[ItemRecord], index: Index) -> StationCoverage | None:
    """What the package states the central held of the station's ledger: its head and each disclosed
    item's last entry. Read before :func:`segment_for`, whose segment then reaches every one of those
    entries (entries that arrive in between only lengthen it). None when the central holds no entry."""
    head_seq, head_hash = index.ledger_head(station)
    if head_seq < 1:
        return None
    last: dict[str, int] = {}
    for record in records:
        for entry in index.ledger_entries(station, item=record.item, end_seq=head_seq):
            last[record.item] = entry.seq
    return StationCoverage(head_seq, head_hash, last)


class _Sums:
    """The SHA256SUMS lines of what was written, in the order written."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, sha256: str) -> None:
        self.lines.append(checksum_line(sha256, path))

    def text(self) -> bytes:
        return "".join(self.lines).encode("utf-8")


def _put(archive: zipfile.ZipFile, sums: _Sums, path: str, data: bytes) -> None:
    archive.writestr(_info(path), data)
    sums.add(path, hashlib.sha256(data).hexdigest())


def _put_lines(archive: zipfile.ZipFile, sums: _Sums, path: str, lines: Iterable[bytes]) -> None:
    """Write a file line by line (a ledger segment may span many entries), hashing as it goes."""
    digest = hashlib.sha256()
    with archive.open(_info(path), "w", force_zip64=True) as out:
        for line in lines:
            digest.update(line)
            out.write(line)
    sums.add(path, digest.hexdigest())


def _info(path: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(path, date_time=(2000, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def write_package(
    plan: PackagePlan,
    sink: BinaryIO,
    open_object: Callable[[str], BinaryIO],
    signing_key: StationKey,
    index: Index,
) -> None:
    """Write the package to ``sink`` (it need not seek), the ledger segments read again from ``index`` (a
    snapshot, :meth:`Index.snapshot`, when in a worker thread); raises :class:`DamagedObject`."""
    sums = _Sums()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        _put(archive, sums, INDEX_FILE, canonical_json(plan.index.to_dict()))
        _put(archive, sums, PAGE_FILE, plan.page_html)
        _put(archive, sums, TEXT_FILE, plan.page_text)
        _put(archive, sums, CENTRAL_KEY_FILE, _pem(plan.central_key))
        for station, keys in sorted(plan.station_keys.items()):
            for key_id, key in sorted(keys.items()):
                _put(archive, sums, station_key_file(station, key_id), _pem(key))
        for segment in plan.segments:
            paths = ledger_paths(segment.station)
            _put_lines(archive, sums, paths.entries, (entry_line(e) for e in segment.lines(index)))
            cp = segment.checkpoint
            _put(archive, sums, paths.checkpoint, canonical_json(cp.to_dict()))
            _put(archive, sums, paths.checkpoint_payload, checkpoint_payload(cp.station, cp.seq, cp.hash,
                                                                             cp.time))
            _put(archive, sums, paths.checkpoint_signature, _b64decode(cp.signature))
            _put(archive, sums, paths.checkpoints, b"".join(checkpoint_line(c) for c in segment.signed))
            _put(archive, sums, paths.key_rotations,
                 b"".join(rotation_line(entry, signed) for entry, signed in segment.rotations))
        for record in plan.records:
            _write_item(archive, sums, plan, record, open_object)
        checksums = sums.text()
        archive.writestr(_info(CHECKSUMS_FILE), checksums)
        # The central vouches for the whole package: its key signs the list of every file's hash.
        archive.writestr(_info(CHECKSUMS_SIGNATURE_FILE), signing_key.sign(checksums))


def _write_item(
    archive: zipfile.ZipFile, sums: _Sums, plan: PackagePlan, record: ItemRecord,
    open_object: Callable[[str], BinaryIO],
) -> None:
    paths = item_paths(record.item, extension_of(record))
    digest = hashlib.sha256()
    written = 0
    with open_object(record.sha256) as source, archive.open(_info(paths.content), "w",
                                                             force_zip64=True) as out:
        while chunk := source.read(_CHUNK_BYTES):
            written += len(chunk)
            if written > record.size:
                break
            digest.update(chunk)
            out.write(chunk)
    if written != record.size or digest.hexdigest() != record.sha256:
        raise DamagedObject(f"item {record.item}: object {record.sha256} does not hash to its name "
                            f"({written} bytes read); the package was stopped; run `edge verify`")
    sums.add(paths.content, record.sha256)
    _put(archive, sums, paths.manifest, record.manifest_text.encode("utf-8"))
    payload, signature, _ = manifest_signature_parts(record.manifest)
    _put(archive, sums, paths.manifest_payload, payload)
    _put(archive, sums, paths.manifest_signature, signature)
    _put(archive, sums, paths.content_checksum, checksum_line(record.sha256, paths.content).encode("utf-8"))
    receipt = plan.receipts[record.item].to_dict()
    _put(archive, sums, paths.receipt, canonical_json(receipt))
    head_payload, head_signature = tree_head_signature_parts(receipt["tree_head"])
    _put(archive, sums, paths.tree_head_payload, head_payload)
    _put(archive, sums, paths.tree_head_signature, head_signature)


def _pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))

