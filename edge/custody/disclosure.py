"""The disclosure package (一案一包): its layout, the checks of one disclosed item, and the offline commands.

A disclosure package is everything a court expert needs to check one case's evidence without the central:

    package.json                      what the package holds (format, case, items, stations, key files)
                                      and its coverage: per station the ledger head the central held and
                                      each disclosed item's last entry (the central's signed statement)
    SHA256SUMS                        sha256sum lines of every other file but SHA256SUMS.sig
    SHA256SUMS.sig                    the central's Ed25519 signature over SHA256SUMS (raw 64 bytes)
    README.html, VERIFY.txt           how to verify it, in Chinese and English
    keys/central-signing.pem          the central's signing key (compare its id with the published one)
    keys/station-STATION-KEYID.pem    every key the station was enrolled with
    items/ITEM/ITEM.EXT               the original bytes as the central stores them
    items/ITEM/manifest.json          the signed manifest exactly as the station sent it
    items/ITEM/manifest.payload       the bytes the station signed (the manifest without its signature)
    items/ITEM/manifest.sig           that signature (raw 64 bytes)
    items/ITEM/content.sha256         one sha256sum line: the signed hash of the original
    items/ITEM/receipt.json           the central's receipt with its inclusion proof
    items/ITEM/tree-head.payload      the bytes the central signed for the receipt's tree head
    items/ITEM/tree-head.sig          that signature
    ledger/STATION/entries.jsonl      the station ledger from the first entry of a disclosed item (or of
                                      the docking that produced one) to the first signed checkpoint after
                                      its last one, one entry per line
    ledger/STATION/checkpoint.json    that checkpoint; .payload and .sig as above
    ledger/STATION/checkpoints.jsonl  the checkpoint the station signed at each shown (not redacted) entry
                                      of the segment, one per line (the station signs one at each entry
                                      by default; none at a redacted line: it would date that entry)
    ledger/STATION/key_rotations.jsonl every ``key_rotated`` entry of the station that chains the keys
                                      package.json lists (wherever it lies in the ledger, before, in or
                                      after the segment), whole, one per line as ``{"entry": ENTRY,
                                      "checkpoints": [CHECKPOINT, ...]}`` with the checkpoints the station
                                      signed at its seq (the old key's, unless it was lost, and the new
                                      key's)

Entries of items outside the package (other cases, or items the reader may not see), and station entries
of no disclosed item's docking, are in the ledger file as ``{"seq", "prev", "hash", "redacted": true,
"item_tag", "body_sha256"}`` (ledger format 2, :mod:`edge.custody.ledger`): what they say is not shown, but
their hash is recomputed from those parts, so the chain binds every disclosed entry through them to the
checkpoint at the segment's end, and each tag is tested against every disclosed item id: a match is an
entry of a disclosed item the package hides. Entries written before format 2 show only ``{"seq", "prev",
"hash", "redacted": true}`` and cannot be re-hashed: a disclosed entry is bound across one only by a
checkpoint the station signed at or after it before the line (or a station-signed manifest naming its
hash), else `edge verify` names it NOT BOUND; such a line after an item's last entry leaves the item NOT
COMPLETE, and one after entries of format 2 is refused as stripped parts. Each station entry of an item
also names the hash of the item's previous entry (``data.item_prev``), so a verifier walking back from
the item's last entry sees any earlier entry of it that the package hides (:mod:`edge.verify.package`).
The segment runs from the first disclosed entry to the head the central held (``coverage``), ending at the
checkpoint the station signed there: that this was the newest head is the central's signed word.

What a tag tells: nothing to a reader without the item id (a random UUID); to one who holds the id of an
item of another case (from that case's package), the seqs of that item's entries within this segment, not
their content.

Which station key may sign which checkpoint comes from key_rotations.jsonl, not from what the segment
happens to show: the listed keys must form one chain of rotations (the first key is the one no rotation
introduces), each rotation's hash is recomputed and its checkpoints verified, and a redacted line at a
rotation's seq is refused (:func:`rotation_chain_problems`); otherwise a central could hide a rotation as
a redacted line (or build a later case's package that starts after it) and have a retired, lost key
trusted again.

Everything here is pure: the central builds packages with it (:mod:`edge.central.disclosure`), `edge
verify` checks them (:mod:`edge.verify.package`) and the spot checks (:mod:`edge.central.spotcheck`)
check stored items with the same :func:`item_evidence_problems`. The commands a person runs with
openssl and sha256sum alone come from :func:`openssl_commands`, the one source of both the page and
the test that runs them literally.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.errors import CanonicalJsonError, KeyFormatError, LedgerError
from edge.custody.keys import key_id_of, verify_signature
from edge.custody.keyschedule import KEY_ROTATED, KeyRotation, KeySchedule, ScheduledKey, parse_rotation
from edge.custody.ledger import (
    Checkpoint,
    LedgerEntry,
    RedactedEntry,
    checkpoint_payload,
    entry_hash,
    verify_chain,
)
from edge.custody.manifest import verify_manifest
from edge.custody.problems import Problem
from edge.custody.receipt import tree_head_payload, verify_receipt

__all__ = [
    "CENTRAL_KEY_FILE",
    "CHECKSUMS_FILE",
    "CHECKSUMS_SIGNATURE_FILE",
    "INDEX_FILE",
    "PACKAGE_FORMAT",
    "PAGE_FILE",
    "TEXT_FILE",
    "DisclosedItem",
    "PackageIndex",
    "ShippedRotation",
    "StationCoverage",
    "Step",
    "checkpoint_line",
    "checksum_line",
    "entry_from_line",
    "entry_line",
    "item_evidence_problems",
    "item_paths",
    "key_epoch_problem",
    "ledger_paths",
    "ledger_segment_problems",
    "manifest_signature_parts",
    "openssl_commands",
    "rotation_chain_problems",
    "rotation_from_line",
    "rotation_line",
    "shown_rotations",
    "station_key_file",
    "station_schedule",
    "tree_head_signature_parts",
]

PACKAGE_FORMAT = "evidence-edge/disclosure/1"
INDEX_FILE = "package.json"
CHECKSUMS_FILE = "SHA256SUMS"
CHECKSUMS_SIGNATURE_FILE = "SHA256SUMS.sig"
PAGE_FILE = "README.html"
TEXT_FILE = "VERIFY.txt"
CENTRAL_KEY_FILE = "keys/central-signing.pem"


def station_key_file(station: str, key_id: str) -> str:
    return f"keys/station-{station}-{key_id}.pem"


@dataclass(frozen=True)
class ItemPaths:
    content: str
    manifest: str
    manifest_payload: str
    manifest_signature: str
    content_checksum: str
    receipt: str
    tree_head_payload: str
    tree_head_signature: str


def item_paths(item: str, extension: str) -> ItemPaths:
    base = f"items/{item}"
    return ItemPaths(
        content=f"{base}/{item}.{extension}",
        manifest=f"{base}/manifest.json",
        manifest_payload=f"{base}/manifest.payload",
        manifest_signature=f"{base}/manifest.sig",
        content_checksum=f"{base}/content.sha256",
        receipt=f"{base}/receipt.json",
        tree_head_payload=f"{base}/tree-head.payload",
        tree_head_signature=f"{base}/tree-head.sig",
    )


@dataclass(frozen=True)
class LedgerPaths:
    entries: str
    checkpoint: str
    checkpoint_payload: str
    checkpoint_signature: str
    checkpoints: str
    key_rotations: str


def ledger_paths(station: str) -> LedgerPaths:
    base = f"ledger/{station}"
    return LedgerPaths(f"{base}/entries.jsonl", f"{base}/checkpoint.json", f"{base}/checkpoint.payload",
                       f"{base}/checkpoint.sig", f"{base}/checkpoints.jsonl", f"{base}/key_rotations.jsonl")


def checkpoint_line(checkpoint: Checkpoint) -> bytes:
    """One line of checkpoints.jsonl: the checkpoint as the station signed it."""
    return canonical_json(checkpoint.to_dict()) + b"\n"


def checksum_line(sha256: str, path: str) -> str:
    """One line of ``sha256sum`` output (text mode: two spaces), which ``sha256sum -c`` reads back."""
    return f"{sha256}  {path}\n"


@dataclass(frozen=True)
class DisclosedItem:
    """One item as package.json lists it."""

    item: str
    station: str
    sha256: str
    size: int
    extension: str
    key_id: str  # the station key that signed its manifest

    def to_dict(self) -> dict[str, Any]:
        return {"item": self.item, "station": self.station, "sha256": self.sha256, "size": self.size,
                "extension": self.extension, "key_id": self.key_id}


@dataclass(frozen=True)
class StationCoverage:
    """What the central held of one station's ledger when it built the package (package.json
    ``coverage``, signed by the central with the rest): its head, and each disclosed item's last entry.

    "No later entries of these items up to the head" is the central's signed statement: the station's own
    ledger contradicts it if it is false, and the central's signature makes it attributable."""

    head_seq: int
    head_hash: str
    item_last_seq: Mapping[str, int]  # disclosed item -> seq of its last entry the central held

    def to_dict(self) -> dict[str, Any]:
        return {"head_seq": self.head_seq, "head_hash": self.head_hash,
                "item_last_seq": dict(sorted(self.item_last_seq.items()))}


def _coverage(raw: object) -> dict[str, StationCoverage] | None:
    """package.json ``coverage`` (absent in packages built before it was stated: None)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError("package.json coverage must be an object")
    found: dict[str, StationCoverage] = {}
    for station, doc in raw.items():
        where = f"package.json coverage[{str(station)[:40]!r}]"
        if not _safe_name(station) or not isinstance(doc, Mapping):
            raise ValueError(f"{where} must be an object under a station id")
        seq, hash_hex, last = doc.get("head_seq"), doc.get("head_hash"), doc.get("item_last_seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError(f"{where}.head_seq is not a positive integer")
        if not (isinstance(hash_hex, str) and len(hash_hex) == 64
                and all(c in "0123456789abcdef" for c in hash_hex)):
            raise ValueError(f"{where}.head_hash is not 64 lower-case hex digits")
        if not isinstance(last, Mapping) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= seq
                for k, v in last.items()):
            raise ValueError(f"{where}.item_last_seq must map items to seqs from 1 to head_seq")
        found[station] = StationCoverage(seq, hash_hex, dict(last))
    return found


@dataclass(frozen=True)
class PackageIndex:
    """package.json: what the package holds, and who had it built when."""

    case_number: str
    central: str
    created_utc: str
    reader: str
    central_key_id: str
    items: tuple[DisclosedItem, ...]
    # station -> key ids whose public keys are in keys/
    station_keys: Mapping[str, tuple[str, ...]]
    # station -> the ledger head the central held and each disclosed item's last entry; None in packages
    # built before the central stated it (their items' entries cannot be shown complete)
    coverage: Mapping[str, StationCoverage] | None = None

    def to_dict(self) -> dict[str, Any]:
        coverage = ({} if self.coverage is None else
                    {"coverage": {s: c.to_dict() for s, c in sorted(self.coverage.items())}})
        return {
            **coverage,
            "format": PACKAGE_FORMAT,
            "case_number": self.case_number,
            "central": self.central,
            "created_utc": self.created_utc,
            "reader": self.reader,
            "central_key_id": self.central_key_id,
            "items": [item.to_dict() for item in self.items],
            "stations": {station: list(keys) for station, keys in sorted(self.station_keys.items())},
        }

    @classmethod
    def from_dict(cls, doc: object) -> PackageIndex:
        """Strictly from package.json; raises ValueError naming the first field that is wrong."""
        if not isinstance(doc, Mapping):
            raise ValueError("package.json is not a JSON object")
        if doc.get("format") != PACKAGE_FORMAT:
            raise ValueError(f"package.json format is {str(doc.get('format'))[:60]!r}, expected "
                             f"{PACKAGE_FORMAT}")
        for name in ("case_number", "central", "created_utc", "reader", "central_key_id"):
            if not isinstance(doc.get(name), str):
                raise ValueError(f"package.json {name} must be a string")
        raw_items, raw_stations = doc.get("items"), doc.get("stations")
        if not isinstance(raw_items, list) or not isinstance(raw_stations, Mapping):
            raise ValueError("package.json items must be a list and stations an object")
        items: list[DisclosedItem] = []
        for n, raw in enumerate(raw_items):
            items.append(_disclosed_item(raw, f"package.json items[{n}]"))
        stations: dict[str, tuple[str, ...]] = {}
        for station, keys in raw_stations.items():
            if not (_safe_name(station) and isinstance(keys, list) and keys
                    and all(isinstance(k, str) and _safe_name(k) for k in keys)):
                raise ValueError(f"package.json stations[{str(station)[:40]!r}] must list key ids")
            stations[station] = tuple(keys)
        return cls(doc["case_number"], doc["central"], doc["created_utc"], doc["reader"],
                   doc["central_key_id"], tuple(items), stations, _coverage(doc.get("coverage")))


def _safe_name(text: object) -> bool:
    """A name used as a path part: letters, digits, ``-``, ``_``, ``.``, not starting with a dot."""
    return (isinstance(text, str) and 0 < len(text) <= 128 and not text.startswith(".")
            and all(c.isascii() and (c.isalnum() or c in "-_.") for c in text))


def _disclosed_item(raw: object, where: str) -> DisclosedItem:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} is not an object")
    item = raw.get("item")
    try:
        valid = isinstance(item, str) and str(uuid.UUID(item)) == item
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"{where}.item is not a lower-case UUID")
    for name in ("station", "extension", "key_id"):
        if not _safe_name(raw.get(name)):
            raise ValueError(f"{where}.{name} is not a plain name")
    sha, size = raw.get("sha256"), raw.get("size")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"{where}.sha256 is not 64 lower-case hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"{where}.size is not a non-negative integer")
    assert isinstance(item, str)
    return DisclosedItem(item, str(raw["station"]), sha, size, str(raw["extension"]), str(raw["key_id"]))


# -- ledger lines ----------------------------------------------------------------------------------------


def entry_line(entry: LedgerEntry | RedactedEntry) -> bytes:
    """One line of entries.jsonl: the whole entry, or only its links (and format-2 parts) when redacted."""
    if isinstance(entry, RedactedEntry):
        redacted: dict[str, Any] = {"seq": entry.seq, "prev": entry.prev, "hash": entry.hash,
                                    "redacted": True}
        if entry.item_tag is not None and entry.body_sha256 is not None:
            redacted.update(item_tag=entry.item_tag, body_sha256=entry.body_sha256)
        return canonical_json(redacted) + b"\n"
    return canonical_json(entry.to_dict()) + b"\n"


_ENTRY_MEMBERS = frozenset({"seq", "time", "type", "item", "data", "prev", "hash"})
_REDACTED_MEMBERS = frozenset({"seq", "prev", "hash", "redacted"})
_REDACTED_FORMAT2_MEMBERS = _REDACTED_MEMBERS | {"item_tag", "body_sha256"}


def entry_from_line(doc: object, where: str) -> LedgerEntry | RedactedEntry:
    """An entry read back from entries.jsonl; raises LedgerError naming what is malformed."""
    if not isinstance(doc, Mapping):
        raise LedgerError(f"{where}: not a JSON object")
    seq, prev, hash_ = doc.get("seq"), doc.get("prev"), doc.get("hash")
    if not (isinstance(seq, int) and not isinstance(seq, bool) and isinstance(prev, str)
            and isinstance(hash_, str)):
        raise LedgerError(f"{where}: seq, prev and hash are required")
    if doc.get("redacted") is True:
        members = set(doc)
        if members == _REDACTED_MEMBERS:
            return RedactedEntry(seq, prev, hash_)
        if members != _REDACTED_FORMAT2_MEMBERS:
            raise LedgerError(f"{where}: a redacted entry holds only seq, prev and hash (and item_tag and "
                              "body_sha256 in ledger format 2)")
        tag, digest = doc["item_tag"], doc["body_sha256"]
        if not isinstance(tag, str) or not isinstance(digest, str):
            raise LedgerError(f"{where}: item_tag and body_sha256 must be text")
        return RedactedEntry(seq, prev, hash_, tag, digest)
    time, type_, item, data = doc.get("time"), doc.get("type"), doc.get("item"), doc.get("data")
    if not (isinstance(time, str) and isinstance(type_, str) and (item is None or isinstance(item, str))
            and isinstance(data, dict)):
        raise LedgerError(f"{where}: time, type, item and data are malformed")
    unexpected = sorted(set(doc) - _ENTRY_MEMBERS)
    if unexpected:
        raise LedgerError(f"{where}: unexpected members {unexpected[:5]}")
    return LedgerEntry(seq=seq, time=time, type=type_, item=item, data=data, prev=prev, hash=hash_)


def station_schedule(
    keys: Mapping[str, Ed25519PublicKey], entries: Iterable[LedgerEntry | RedactedEntry] = (),
    rotations: Sequence[ShippedRotation] | None = None,
) -> KeySchedule:
    """The station's keys in the package, each trusted over its epoch: a key a ``key_rotated`` entry
    retires signs nothing after that seq, a key one announces signs nothing before it (the rules of `edge
    verify STORE`, :mod:`edge.custody.keyschedule`). The epochs come from ``rotations`` (a package's
    key_rotations.jsonl, checked by :func:`rotation_chain_problems`) when given, else from the rotations
    the segment shows whole (the central's own segment checks), where a key no shown rotation names is
    trusted over the whole segment."""
    introduced: dict[str, int] = {}
    retired: dict[str, tuple[int, bool]] = {}
    decoded = (shown_rotations(entries)[0] if rotations is None
               else [shipped.rotation for shipped in rotations])
    for rotation in decoded:
        retired.setdefault(rotation.old_key_id, (rotation.seq, rotation.old_key_lost))
        introduced.setdefault(rotation.new_key_id, rotation.seq)
    scheduled = [
        ScheduledKey(key_id, key, introduced.get(key_id, 0), retired.get(key_id, (None, False))[0],
                     retired.get(key_id, (None, False))[1])
        for key_id, key in sorted(keys.items())
    ]
    scheduled.sort(key=lambda key: key.introduced_at)
    return KeySchedule(scheduled, [])


def shown_rotations(
    entries: Iterable[LedgerEntry | RedactedEntry],
) -> tuple[list[KeyRotation], list[Problem]]:
    """The ``key_rotated`` entries the segment shows whole, decoded; one that cannot be decoded is a
    problem naming its seq (its key epochs could not be applied)."""
    rotations: list[KeyRotation] = []
    problems: list[Problem] = []
    for entry in entries:
        if not isinstance(entry, LedgerEntry) or entry.type != KEY_ROTATED:
            continue
        try:
            rotations.append(parse_rotation(entry.seq, entry.data))
        except KeyFormatError as exc:
            problems.append(Problem(f"ledger seq {entry.seq}", f"key_rotated entry is malformed, its key "
                                                               f"epochs cannot be applied: {exc}"))
    return rotations, problems


@dataclass(frozen=True)
class ShippedRotation:
    """One line of key_rotations.jsonl whose entry hash, data and checkpoints hold."""

    entry: LedgerEntry
    rotation: KeyRotation


def rotation_line(entry: LedgerEntry, checkpoints: Iterable[Checkpoint]) -> bytes:
    """One line of key_rotations.jsonl: a whole ``key_rotated`` entry and the checkpoints at its seq."""
    doc = {"entry": entry.to_dict(), "checkpoints": [c.to_dict() for c in checkpoints]}
    return canonical_json(doc) + b"\n"


def rotation_from_line(doc: object, where: str) -> tuple[LedgerEntry, list[Checkpoint]]:
    """A line of key_rotations.jsonl read back; raises LedgerError naming what is malformed."""
    if not isinstance(doc, Mapping) or set(doc) != {"entry", "checkpoints"}:
        raise LedgerError(f"{where}: not an object of entry and checkpoints")
    entry = entry_from_line(doc["entry"], where)
    if not isinstance(entry, LedgerEntry):
        raise LedgerError(f"{where}: a key rotation is shipped whole, never as a redacted line")
    raw = doc["checkpoints"]
    if not isinstance(raw, list) or not all(isinstance(c, Mapping) for c in raw):
        raise LedgerError(f"{where}: checkpoints must be a list of checkpoints")
    return entry, [Checkpoint.from_dict(c) for c in raw]


def rotation_chain_problems(
    station: str,
    lines: Sequence[tuple[str, LedgerEntry, Sequence[Checkpoint]]],
    listed_keys: Iterable[str],
) -> tuple[list[ShippedRotation], list[Problem]]:
    """The station's key rotations a package ships (where, entry, checkpoints at its seq), checked: each
    entry is a ``key_rotated`` entry whose hash is recomputed from its content, with a checkpoint at its
    seq over that hash by the new key and one by the old key unless it was lost (each verified with the
    public key the entry announces); together they form one chain (each retires the key the one before
    announced), and every listed key is on it (the first key is the one no rotation introduces). Returns
    the rotations that hold, in seq order, and a problem naming each line or key that does not."""
    problems: list[Problem] = []
    shipped: list[ShippedRotation] = []
    for where, entry, checkpoints in lines:
        where = f"{where} (seq {entry.seq})"
        if entry.type != KEY_ROTATED:
            problems.append(Problem(where, f"is a {str(entry.type)[:40]!r} entry, not key_rotated"))
            continue
        try:
            recomputed = entry_hash(entry.body())
            rotation = parse_rotation(entry.seq, entry.data)
        except (LedgerError, CanonicalJsonError, KeyFormatError) as exc:
            problems.append(Problem(where, f"key_rotated entry is malformed: {exc}"))
            continue
        if recomputed != entry.hash:
            problems.append(Problem(where, f"the key_rotated entry hashes to {recomputed}, not its hash "
                                           f"{entry.hash[:80]}: the rotation was altered"))
            continue
        announced = {rotation.old_key_id: rotation.old_public_key,
                     rotation.new_key_id: rotation.new_public_key}
        signers: set[str] = set()
        for cp in checkpoints:
            public = announced.get(cp.key_id)
            try:
                signature = base64.b64decode(cp.signature.encode("ascii"), validate=True)
                payload = checkpoint_payload(cp.station, cp.seq, cp.hash, cp.time)
            except (binascii.Error, UnicodeEncodeError, CanonicalJsonError):
                signature, payload = b"", b""
            if (cp.station != station or cp.seq != entry.seq or cp.hash != entry.hash or public is None
                    or not payload or not verify_signature(public, signature, payload)):
                problems.append(Problem(where, f"a checkpoint by key {str(cp.key_id)[:40]} does not verify "
                                               "over this rotation with the keys it announces"))
                continue
            signers.add(cp.key_id)
        needed = [rotation.new_key_id] + ([] if rotation.old_key_lost else [rotation.old_key_id])
        missing = [key for key in needed if key not in signers]
        if missing:
            problems.append(Problem(where, f"carries no valid checkpoint at its seq by key "
                                           f"{', '.join(missing)}: the rotation is not vouched for"))
            continue
        shipped.append(ShippedRotation(entry, rotation))
    shipped.sort(key=lambda s: s.entry.seq)
    chain: list[ShippedRotation] = []
    for candidate in shipped:
        if chain and (candidate.entry.seq == chain[-1].entry.seq
                      or candidate.rotation.old_key_id != chain[-1].rotation.new_key_id):
            before = chain[-1]
            problems.append(Problem(f"ledger seq {candidate.entry.seq}",
                                    f"key_rotated retires key {candidate.rotation.old_key_id}, but the key "
                                    f"in force since seq {before.entry.seq} is {before.rotation.new_key_id}: "
                                    "the rotations do not form one chain"))
            continue
        chain.append(candidate)
    on_chain = ({chain[0].rotation.old_key_id} | {s.rotation.new_key_id for s in chain}) if chain else set()
    listed = sorted(set(listed_keys))
    if not chain and len(listed) == 1:
        return chain, problems  # one key, never rotated: it signs the whole ledger
    for key_id in listed:
        if key_id not in on_chain:
            problems.append(Problem(f"station {station} key {key_id}",
                                    "is listed, but no key_rotated entry the package ships introduces or "
                                    "retires it: its epoch cannot be known, so nothing it signs is trusted"))
    return chain, problems


def key_epoch_problem(schedule: KeySchedule, key_id: str, seq: int) -> str | None:
    """Why the key may not sign a checkpoint at ``seq`` (outside its epoch), or None."""
    key = schedule.get(key_id)
    if key is None:
        return None
    if key.retired_at is not None and seq > key.retired_at:
        return (f"is signed by key {key.key_id}, which the station's key_rotated entry retired at seq "
                f"{key.retired_at}: a retired key signs nothing after its rotation")
    if seq < key.introduced_at:
        return (f"is signed by key {key.key_id}, which the station's key_rotated entry announced only at seq "
                f"{key.introduced_at}: a key signs nothing before its rotation")
    return None


def ledger_segment_problems(
    station: str,
    entries: Iterable[LedgerEntry | RedactedEntry],
    checkpoint: Checkpoint,
    station_keys: Mapping[str, Ed25519PublicKey],
    rotations: Sequence[ShippedRotation] | None = None,
) -> list[Problem]:
    """Problems with one station's segment: it must be an unbroken chain (each entry's prev the hash of
    the one before, each whole entry hashing to its hash) ending at the signed checkpoint. With
    ``rotations`` (a package's checked key_rotations.jsonl) the key epochs are theirs, and the segment's
    line at each rotation's seq must be that rotation, whole; every key_rotated entry it shows must be
    among them.

    With ``rotations`` the entries are walked once, as they come, and none is kept: a package's segment
    runs to the station's head, millions of lines (the caller may hand over a generator reading them; it
    is not exhausted when the segment cannot be checked at all). Without them the key epochs come from the
    rotations the segment shows, so the entries are gathered first."""
    remaining = iter(entries)
    first = next(remaining, None)
    if first is None:
        return [Problem(f"ledger of station {station}", "the segment holds no entries")]
    if not station_keys:
        return [Problem(f"ledger of station {station}", "no station key to check its checkpoint with")]
    if rotations is None:
        gathered = [first, *remaining]
        schedule = station_schedule(station_keys, gathered, None)
        remaining = iter(gathered[1:])
    else:
        schedule = station_schedule(station_keys, (), rotations)
    malformed: list[Problem] = []  # shown key_rotated entries that cannot be decoded
    hidden: list[Problem] = []  # lines at odds with key_rotations.jsonl
    shipped = None if rotations is None else {s.entry.seq: s.entry for s in rotations}
    last = first

    def walked() -> Iterator[LedgerEntry | RedactedEntry]:
        nonlocal last
        for entry in itertools.chain((first,), remaining):
            last = entry
            malformed.extend(shown_rotations((entry,))[1])
            if shipped is not None:
                hidden.extend(_segment_rotation_problem(entry, shipped))
            yield entry

    chain = verify_chain(walked(), [checkpoint], schedule, station, after=(first.seq - 1, first.prev))
    problems = malformed + hidden + chain
    key = schedule.get(checkpoint.key_id)
    if key is not None and checkpoint.seq < key.introduced_at:  # a retired key: verify_chain names it
        problems.append(Problem(f"checkpoint seq {checkpoint.seq}",
                                str(key_epoch_problem(schedule, key.key_id, checkpoint.seq))))
    if checkpoint.seq < last.seq:
        problems.append(Problem(f"ledger of station {station}",
                                f"the checkpoint is at seq {checkpoint.seq} but the segment runs to seq "
                                f"{last.seq}: entries after it are vouched for by nothing"))
    return problems


def _segment_rotation_problem(
    entry: LedgerEntry | RedactedEntry, shipped: Mapping[int, LedgerEntry]
) -> list[Problem]:
    """The segment's line at a rotation's seq must be that rotation, whole; a key_rotated entry elsewhere
    is one key_rotations.jsonl does not hold."""
    rotation = shipped.get(entry.seq)
    if rotation is None:
        if isinstance(entry, LedgerEntry) and entry.type == KEY_ROTATED:
            return [Problem(f"ledger seq {entry.seq}", "is a key_rotated entry that key_rotations.jsonl does "
                            "not hold (or that does not hold there): its key epochs are not the ones "
                            "applied")]
        return []
    if isinstance(entry, RedactedEntry):
        return [Problem(f"ledger seq {entry.seq}", "is a redacted line, but key_rotations.jsonl names the "
                        "station's key_rotated entry here: a key rotation was hidden")]
    if entry.hash != rotation.hash:
        return [Problem(f"ledger seq {entry.seq}", f"has hash {entry.hash[:80]}, but the key_rotated entry "
                        f"key_rotations.jsonl ships at this seq has hash {rotation.hash}")]
    return []


# -- one disclosed item ------------------------------------------------------------------------------------


def item_evidence_problems(
    *,
    item: str,
    station: str,
    content_sha256: str,
    content_size: int,
    manifest: Mapping[str, Any],
    station_keys: Mapping[str, Ed25519PublicKey],
    receipt: Mapping[str, Any] | None,
    central_key: Ed25519PublicKey,
    item_entries: Iterable[LedgerEntry | RedactedEntry],
) -> list[Problem]:
    """Everything that ties one item together, given its content's hash as read now.

    The manifest is signed by an enrolled key of its station and names this item, hash and size; the
    receipt is the central's (signed tree head, inclusion proof) for exactly this item, hash, station and
    manifest; the ledger holds the item's ``acquired`` entry where the manifest says and a ``sealed`` entry
    for exactly this manifest.
    """
    where = f"item {item}"
    problems = list(verify_manifest(manifest, station_keys))
    for name, found, expected in (("item", manifest.get("item"), item),
                                  ("sha256", manifest.get("sha256"), content_sha256),
                                  ("size", manifest.get("size"), content_size)):
        if found != expected:
            what = "the content as read now" if name != "item" else "the item"
            problems.append(Problem(where, f"manifest {name} is {str(found)[:80]!r} but {what} has "
                                           f"{str(expected)[:80]!r}"))
    try:
        manifest_sha256 = sha256_hex(canonical_json(manifest))
    except CanonicalJsonError as exc:
        return [*problems, Problem(where, f"the manifest cannot be serialised canonically: {exc}")]
    if receipt is None:
        problems.append(Problem(where, "no receipt: the central's acceptance cannot be checked"))
    else:
        found = verify_receipt(receipt, central_key, expected_item=item, expected_sha256=content_sha256,
                               expected_station=station)
        problems += [Problem(f"{where} {p.where}", p.what) for p in found]
        leaf = receipt.get("leaf")
        if isinstance(leaf, Mapping) and leaf.get("manifest_sha256") != manifest_sha256:
            problems.append(Problem(f"{where} receipt.leaf.manifest_sha256",
                                    f"is {str(leaf.get('manifest_sha256'))[:80]!r} but the manifest hashes "
                                    f"to {manifest_sha256}: the receipt is for another manifest"))
    chain = manifest.get("chain")
    chain_seq = chain.get("seq") if isinstance(chain, Mapping) else None
    chain_hash = chain.get("entry_hash") if isinstance(chain, Mapping) else None
    acquired = sealed = False
    for entry in item_entries:
        if isinstance(entry, RedactedEntry) or entry.item != item:
            continue
        if entry.type == "acquired" and entry.seq == chain_seq:
            acquired = True
            if entry.hash != chain_hash:
                problems.append(Problem(f"{where} ledger seq {entry.seq}",
                                        f"the acquired entry has hash {entry.hash[:80]} but the manifest "
                                        f"names {str(chain_hash)[:80]}"))
        elif entry.type == "sealed":
            sealed = True
            if entry.data.get("manifest_sha256") != manifest_sha256:
                problems.append(Problem(f"{where} ledger seq {entry.seq}",
                                        "the sealed entry names another manifest than the one disclosed"))
    if not acquired:
        problems.append(Problem(where, f"the ledger holds no acquired entry for it at seq {chain_seq!r}, "
                                       "where its manifest says"))
    if not sealed:
        problems.append(Problem(where, "the ledger holds no sealed entry for it"))
    return problems


# -- the parts openssl checks ------------------------------------------------------------------------------


def manifest_signature_parts(manifest: Mapping[str, Any]) -> tuple[bytes, bytes, str]:
    """(signed bytes, raw signature, key id) of a signed manifest; ValueError when it has no usable one."""
    signature = manifest.get("signature")
    if not isinstance(signature, Mapping):
        raise ValueError("the manifest is not signed")
    body = {name: value for name, value in manifest.items() if name != "signature"}
    try:
        raw = base64.b64decode(str(signature.get("value", "")).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("the manifest signature is not base64") from None
    return canonical_json(body), raw, str(signature.get("key_id", ""))


def tree_head_signature_parts(head: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(signed bytes, raw signature) of a tree head document."""
    try:
        raw = base64.b64decode(str(head["signature"]).encode("ascii"), validate=True)
        payload = tree_head_payload(head["origin"], head["tree_size"], head["root_hash"], head["time"])
    except (KeyError, binascii.Error, UnicodeEncodeError, CanonicalJsonError):
        raise ValueError("the tree head is malformed") from None
    return payload, raw


@dataclass(frozen=True)
class Step:
    """One command of the offline check and what it proves, in both languages."""

    zh: str
    en: str
    command: str


def _verify_signature(key: str, payload: str, signature: str) -> str:
    return f"openssl pkeyutl -verify -pubin -inkey {key} -rawin -in {payload} -sigfile {signature}"


def openssl_commands(index: PackageIndex) -> list[Step]:
    """Every command a person runs in the unzipped package with openssl and sha256sum alone; each exits 0
    when its check holds and non-zero when it fails (the page shows them, the tests run them)."""
    steps = [
        Step("中心对文件清单的签名有效（用中心公钥）",
             "the central's signature over the list of files verifies (with the central key)",
             _verify_signature(CENTRAL_KEY_FILE, CHECKSUMS_FILE, CHECKSUMS_SIGNATURE_FILE)),
        Step("包内每个文件与清单一致，一个字节也未改动",
             "every file in the package matches the list, not one byte changed",
             f"sha256sum --strict --quiet -c {CHECKSUMS_FILE}"),
    ]
    for entry in index.items:
        paths = item_paths(entry.item, entry.extension)
        key = station_key_file(entry.station, entry.key_id)
        steps += [
            Step(f"证据 {entry.item}：采集站对清单（manifest）的签名有效",
                 f"item {entry.item}: the station's signature over its manifest verifies",
                 _verify_signature(key, paths.manifest_payload, paths.manifest_signature)),
            Step(f"证据 {entry.item}：签名的清单载明的哈希值就是原始文件的哈希值",
                 f"item {entry.item}: the signed manifest names the hash of the original file",
                 f"grep -c -F '\"sha256\":\"{entry.sha256}\"' {paths.manifest_payload}"),
            Step(f"证据 {entry.item}：原始文件的 SHA-256 与签名的哈希值一致",
                 f"item {entry.item}: the original file's SHA-256 is the signed hash",
                 f"sha256sum --strict -c {paths.content_checksum}"),
            Step(f"证据 {entry.item}：中心回执所依据的树头签名有效",
                 f"item {entry.item}: the central's signature over the tree head of its receipt verifies",
                 _verify_signature(CENTRAL_KEY_FILE, paths.tree_head_payload, paths.tree_head_signature)),
        ]
    for station, keys in sorted(index.station_keys.items()):
        paths_l = ledger_paths(station)
        steps.append(Step(
            f"采集站 {station}：台账片段末尾的签名检查点有效（任一登记的密钥通过即可）",
            f"station {station}: the signed checkpoint that ends its ledger segment verifies (with one of "
            "its enrolled keys)",
            " || ".join(_verify_signature(station_key_file(station, k), paths_l.checkpoint_payload,
                                          paths_l.checkpoint_signature) for k in keys),
        ))
    return steps


def central_key_id(key: Ed25519PublicKey) -> str:
    return key_id_of(key)
