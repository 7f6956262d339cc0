"""Build one case's disclosure package (layout: :mod:`edge.custody.disclosure`) and stream it as a zip.

:func:`plan_package` reads the index (items the reader may see, their receipts, the stations' keys, and
for each station the ledger from the first entry of a disclosed item to the first signed checkpoint at
or after its last one). :func:`write_package` writes the zip to any binary sink in one pass: the original
files are read from the object store a chunk at a time and hashed as they go out, so memory stays bounded
whatever the evidence size; the zip is stored, not compressed (video does not compress) and written
with data descriptors, so it never seeks. An object that does not hash to its item's SHA-256 stops the
package (:class:`DamagedObject`) before the package's signed list of files is written: a damaged object
is never disclosed as evidence.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
    checksum_line,
    entry_line,
    item_paths,
    ledger_paths,
    manifest_signature_parts,
    station_key_file,
    tree_head_signature_parts,
)
from edge.custody.keys import StationKey
from edge.custody.ledger import Checkpoint, LedgerEntry, RedactedEntry, checkpoint_payload
from edge.custody.receipt import Receipt
from edge.ingest.store import stored_extension

__all__ = ["DamagedObject", "PackagePlan", "StationSegment", "write_package"]

_CHUNK_BYTES = 1 << 20


class DamagedObject(Exception):
    """An original read from the object store does not hash to its item's SHA-256."""


@dataclass(frozen=True)
class StationSegment:
    station: str
    entries: list[LedgerEntry | RedactedEntry]
    checkpoint: Checkpoint


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


def segment_for(station: str, records: Iterable[ItemRecord], index: Index) -> StationSegment | None:
    """The station's ledger from the first entry of the disclosed items to the first signed checkpoint at
    or after their last one, entries of other items redacted; None when no checkpoint covers it yet."""
    disclosed = {record.item for record in records}
    seqs = [entry.seq for item in sorted(disclosed) for entry in index.ledger_entries(station, item=item)]
    if not seqs:
        return None
    first, last = min(seqs), max(seqs)
    checkpoint = next((cp for cp in index.checkpoints(station) if cp.seq >= last), None)
    if checkpoint is None:
        return None
    shown: list[LedgerEntry | RedactedEntry] = []
    for entry in index.ledger_entries(station, first, end_seq=checkpoint.seq):
        # Another item's entry says which item, device and hash it was: only its links are shown.
        if entry.item is not None and entry.item not in disclosed:
            shown.append(RedactedEntry(entry.seq, entry.prev, entry.hash))
        else:
            shown.append(entry)
    return StationSegment(station, shown, checkpoint)


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
) -> None:
    """Write the package to ``sink`` (it need not seek); raises :class:`DamagedObject`."""
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
            _put(archive, sums, paths.entries, b"".join(entry_line(e) for e in segment.entries))
            cp = segment.checkpoint
            _put(archive, sums, paths.checkpoint, canonical_json(cp.to_dict()))
            _put(archive, sums, paths.checkpoint_payload, checkpoint_payload(cp.station, cp.seq, cp.hash,
                                                                             cp.time))
            _put(archive, sums, paths.checkpoint_signature, _b64decode(cp.signature))
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

