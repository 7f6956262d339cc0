"""`edge verify PACKAGE_DIR`: check an unzipped disclosure package offline, naming every file or entry that
is wrong.

A package (layout: :mod:`edge.custody.disclosure`) verifies when: SHA256SUMS is signed by the pinned
central key (``--central-key``, or the station configuration's; without one the package's own key is used
and the verdict is ORIGIN UNPROVEN, never OK); every file it lists is there and hashes
to its line, and no other file is there; package.json lists the items and station keys; every item's
manifest is signed by one of its station's keys in the package and names the original's hash and size,
its receipt is the central's (signed tree head, inclusion proof) for exactly this item and manifest, the
ledger segment holds its acquired and sealed entries; the files openssl checks (payloads, signatures,
content.sha256) say the same as the documents they are cut from; each station's ledger segment is an
unbroken hash chain ending at a checkpoint signed by one of the station's keys, each within its epoch as
the station's key rotations (key_rotations.jsonl: one chain over the listed keys, each rotation re-hashed
and its checkpoints verified, none hidden as a redacted line) set it; and each line of its
checkpoints.jsonl is signed by one of those keys, at a seq of the segment, over the hash of the entry there
(recomputed) or of the redacted line there. Files are hashed a chunk at a time, so memory stays bounded
whatever the evidence size. Redacted ledger entries (items outside the package, other dockings) are
checked to link, and counted in a note; a disclosed entry from which no chain of whole entries reaches a
signed checkpoint before a redacted line is named NOT BOUND (its content rests on the central's word), a
redacted line where a disclosed item's manifest puts its acquired entry is refused, and each item must
belong to the package's case. Each item's entries must all be shown: its ``item_prev`` links, walked back
from the last entry package.json states (``coverage``), meet only whole entries of the item down to its
acquired entry; an item without those links is NOT COMPLETE (chain not recorded). Each ledger segment is
read once, a line at a time, and only its whole entries are kept (:mod:`edge.verify.segment`): memory is
bounded by what the package discloses, never by the redacted lines, which run to the station's head.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import parse_json
from edge.custody.disclosure import (
    CENTRAL_KEY_FILE,
    CHECKSUMS_FILE,
    CHECKSUMS_SIGNATURE_FILE,
    INDEX_FILE,
    PackageIndex,
    ShippedRotation,
    checksum_line,
    entry_from_line,
    item_evidence_problems,
    item_paths,
    ledger_paths,
    ledger_segment_problems,
    manifest_signature_parts,
    rotation_chain_problems,
    rotation_from_line,
    station_key_file,
    station_schedule,
    tree_head_signature_parts,
)
from edge.custody.errors import CanonicalJsonError, CustodyError, LedgerError
from edge.custody.keys import key_id_of, load_public_key, public_key_raw, verify_signature
from edge.custody.keyschedule import KeySchedule
from edge.custody.ledger import (
    GENESIS_PREV,
    ITEM_PREV,
    Checkpoint,
    LedgerEntry,
    RedactedEntry,
    checkpoint_payload,
)
from edge.custody.problems import Problem
from edge.custody.text import printable
from edge.verify.segment import SegmentScan
from edge.verify.station import VerifyReport

__all__ = ["central_key_fingerprint", "is_package", "verify_package"]

_CHUNK_BYTES = 1 << 20
# Documents read whole (package.json, manifests, receipts, ledger lines) are small; a bigger one is hostile.
_MAX_DOCUMENT_BYTES = 16 << 20
_SUM_LINE = re.compile(r"([0-9a-f]{64})  (\S(?:.*\S)?)")
_UNLISTED = {CHECKSUMS_FILE, CHECKSUMS_SIGNATURE_FILE}


def is_package(path: Path) -> bool:
    return path.is_dir() and (path / INDEX_FILE).is_file() and (path / CHECKSUMS_FILE).is_file()


def _safe_relative(name: str) -> bool:
    parts = name.split("/")
    return not name.startswith("/") and "\\" not in name and all(p not in ("", ".", "..") for p in parts)


def _read_document(root: Path, name: str, problems: list[Problem]) -> bytes | None:
    path = root / name
    try:
        if path.is_symlink() or not path.is_file():
            problems.append(Problem(f"file {name}", "missing"))
            return None
        if path.stat().st_size > _MAX_DOCUMENT_BYTES:
            problems.append(Problem(f"file {name}", f"larger than {_MAX_DOCUMENT_BYTES} bytes"))
            return None
        return path.read_bytes()
    except OSError as exc:
        problems.append(Problem(f"file {name}", f"cannot be read: {exc.strerror or exc}"))
        return None


def _document_lines(root: Path, name: str, problems: list[Problem]) -> Iterator[tuple[int, bytes]]:
    """(number, line) of a file of JSON lines read a line at a time: a ledger segment spans as many entries
    as the station wrote from the first disclosed one to its head, so it is not read whole. A line longer
    than any entry (:data:`_MAX_DOCUMENT_BYTES`) is hostile and ends the file."""
    path = root / name
    try:
        if path.is_symlink() or not path.is_file():
            problems.append(Problem(f"file {name}", "missing"))
            return
        with open(path, "rb") as stream:
            number = 0
            while line := stream.readline(_MAX_DOCUMENT_BYTES + 1):
                number += 1
                if len(line) > _MAX_DOCUMENT_BYTES:
                    problems.append(Problem(f"file {name} line {number}",
                                            f"longer than {_MAX_DOCUMENT_BYTES} bytes"))
                    return
                yield number, line.rstrip(b"\n")
    except OSError as exc:
        problems.append(Problem(f"file {name}", f"cannot be read: {exc.strerror or exc}"))


def _read_json(root: Path, name: str, problems: list[Problem]) -> Any:
    data = _read_document(root, name, problems)
    if data is None:
        return None
    try:
        return parse_json(data)
    except CanonicalJsonError as exc:
        problems.append(Problem(f"file {name}", f"is not valid JSON: {exc}"))
        return None


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _files_on_disk(root: Path, problems: list[Problem]) -> set[str]:
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in [*dirs, *files]:
            path = here / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                problems.append(Problem(f"file {relative}", "is a symbolic link: a package holds files only"))
            elif path.is_file():
                found.add(relative)
            elif not path.is_dir():
                problems.append(Problem(f"file {relative}", "is not a regular file"))
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
    return found


def _checksums(root: Path, report: VerifyReport, central_key: Ed25519PublicKey | None) -> dict[str, str]:
    """The SHA256SUMS lines by path, after checking its signature; every file checked against them."""
    problems = report.problems
    data = _read_document(root, CHECKSUMS_FILE, problems)
    signature = _read_document(root, CHECKSUMS_SIGNATURE_FILE, problems)
    if data is None:
        return {}
    if (central_key is not None and signature is not None
            and not verify_signature(central_key, signature, data)):
        problems.append(Problem(f"file {CHECKSUMS_FILE}", "its signature (SHA256SUMS.sig) does not verify "
                                                          "with the central key: the list was changed"))
    listed: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        match = _SUM_LINE.fullmatch(line)
        if match is None or not _safe_relative(match.group(2)) or match.group(2) in _UNLISTED:
            problems.append(Problem(f"file {CHECKSUMS_FILE} line {number}", "is not a sha256sum line of a "
                                                                            "file inside the package"))
            continue
        if match.group(2) in listed:
            problems.append(Problem(f"file {CHECKSUMS_FILE} line {number}", "lists a file a second time"))
        listed[match.group(2)] = match.group(1)
    on_disk = _files_on_disk(root, problems)
    for name in sorted(on_disk - set(listed) - _UNLISTED):
        problems.append(Problem(f"file {name}", "is not part of the package (not in SHA256SUMS): a file was "
                                                "added"))
    for name, expected in sorted(listed.items()):
        if name not in on_disk:
            problems.append(Problem(f"file {name}", "is missing: SHA256SUMS lists it"))
            continue
        try:
            found = _hash_file(root / name)
        except OSError as exc:
            problems.append(Problem(f"file {name}", f"cannot be read: {exc.strerror or exc}"))
            continue
        if found != expected:
            problems.append(Problem(f"file {name}", f"hashes to {found}, but SHA256SUMS says {expected}: the "
                                                    "file was changed"))
    report.checked["files"] = len(listed)
    return listed


def _key(root: Path, name: str, problems: list[Problem]) -> Ed25519PublicKey | None:
    try:
        return load_public_key(root / name)
    except CustodyError as exc:
        problems.append(Problem(f"file {name}", f"is not a usable public key: {exc}"))
        return None


def _station_keys(root: Path, index: PackageIndex, problems: list[Problem]) -> dict[str, dict[str, Any]]:
    keys: dict[str, dict[str, Any]] = {}
    for station, key_ids in index.station_keys.items():
        keys[station] = {}
        for key_id in key_ids:
            name = station_key_file(station, key_id)
            key = _key(root, name, problems)
            if key is None:
                continue
            if key_id_of(key) != key_id:
                problems.append(Problem(f"file {name}", f"holds key {key_id_of(key)}, not {key_id}"))
                continue
            keys[station][key_id] = key
    return keys


def _same(root: Path, name: str, expected: bytes, problems: list[Problem]) -> None:
    found = _read_document(root, name, problems)
    if found is not None and found != expected:
        problems.append(Problem(f"file {name}", "differs from the document it is cut from: what openssl "
                                                "checks would not be what the package says"))


def _final_checkpoint(root: Path, station: str, problems: list[Problem]) -> Checkpoint | None:
    """The checkpoint at the segment's end (checkpoint.json), checked against its .payload and .sig."""
    paths = ledger_paths(station)
    doc = _read_json(root, paths.checkpoint, problems)
    checkpoint = None
    if isinstance(doc, Mapping):
        try:
            checkpoint = Checkpoint.from_dict(doc)
        except LedgerError as exc:
            problems.append(Problem(f"file {paths.checkpoint}", str(exc)))
    if checkpoint is not None:
        _same(root, paths.checkpoint_payload, checkpoint_payload(checkpoint.station, checkpoint.seq,
                                                                 checkpoint.hash, checkpoint.time), problems)
        try:
            signature = base64.b64decode(checkpoint.signature.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            signature = b""
        _same(root, paths.checkpoint_signature, signature, problems)
    return checkpoint


def _checkpoint_lines(root: Path, station: str, problems: list[Problem]) -> list[tuple[str, Checkpoint]]:
    """The checkpoints.jsonl lines (where, checkpoint): one per shown entry at most, so read whole."""
    paths = ledger_paths(station)
    signed: list[tuple[str, Checkpoint]] = []
    # A package built before stations signed every entry has no checkpoints.jsonl (if SHA256SUMS lists
    # it, its absence is already named): its entries are bound only by the final checkpoint.
    listed = (root / paths.checkpoints).exists() or (root / paths.checkpoints).is_symlink()
    lines = (_read_document(root, paths.checkpoints, problems) or b"").splitlines() if listed else []
    for number, line in enumerate(lines, 1):
        where = f"file {paths.checkpoints} line {number}"
        try:
            raw = parse_json(line)
            if not isinstance(raw, Mapping):
                raise LedgerError("not a JSON object")
            signed.append((where, Checkpoint.from_dict(raw)))
        except (CanonicalJsonError, LedgerError) as exc:
            problems.append(Problem(where, str(exc)))
    return signed


def _segment_lines(
    root: Path, station: str, problems: list[Problem]
) -> Iterator[LedgerEntry | RedactedEntry]:
    """The segment's entries as entries.jsonl holds them, read and parsed a line at a time (a line that is
    not an entry is a problem naming it); nothing is kept here."""
    paths = ledger_paths(station)
    for number, line in _document_lines(root, paths.entries, problems):
        where = f"file {paths.entries} line {number}"
        try:
            yield entry_from_line(parse_json(line), where)
        except (CanonicalJsonError, LedgerError) as exc:
            problems.append(Problem(where, str(exc)))


def _scan_segment(
    root: Path, station: str, scan: SegmentScan, problems: list[Problem],
    check: Callable[[Iterator[LedgerEntry | RedactedEntry]], list[Problem]] | None,
) -> list[Problem]:
    """One pass over the segment: every line fed to ``scan`` and, when given, to ``check`` (the chain
    check, which walks the lines as they come); what ``check`` found. Lines it leaves unread (a segment it
    cannot check at all) are still fed to the scan."""

    def fed() -> Iterator[LedgerEntry | RedactedEntry]:
        for entry in _segment_lines(root, station, problems):
            scan.feed(entry)
            yield entry

    lines = fed()
    found = check(lines) if check is not None else []
    for _ in lines:
        pass
    return found


def _redacted_with_hash(root: Path, station: str, hashes: set[str]) -> dict[str, RedactedEntry]:
    """The (last) redacted line of the segment with each of ``hashes``: a second pass, made only when a
    disclosed item's entry links (item_prev) to an entry the package does not show, to name where it hides
    it. Problems with the file were named by the first pass."""
    found: dict[str, RedactedEntry] = {}
    for entry in _segment_lines(root, station, []):
        if isinstance(entry, RedactedEntry) and entry.hash in hashes:
            found[entry.hash] = entry
    return found


def _manifest_chain_seqs(root: Path, index: PackageIndex) -> dict[str, set[int]]:
    """station -> the seqs where its disclosed items' manifests put their acquired entries, read ahead of
    the items' checks (which name what is wrong with a manifest) so that the segment's single pass can note
    a redacted line there."""
    seqs: dict[str, set[int]] = {}
    for item in index.items:
        manifest = _read_json(root, item_paths(item.item, item.extension).manifest, [])
        chain = manifest.get("chain") if isinstance(manifest, Mapping) else None
        seq = chain.get("seq") if isinstance(chain, Mapping) else None
        if isinstance(seq, int):
            seqs.setdefault(item.station, set()).add(seq)
    return seqs


def _rotations(
    root: Path, station: str, listed_keys: Sequence[str], problems: list[Problem]
) -> list[ShippedRotation]:
    """The station's key rotations the package ships (key_rotations.jsonl), checked to chain the listed
    keys; every line or key that does not hold is a problem. A package without the file (built before it
    was shipped) holds no rotation: more than one listed key is then refused."""
    path = ledger_paths(station).key_rotations
    present = (root / path).exists() or (root / path).is_symlink()
    lines: list[tuple[str, LedgerEntry, list[Checkpoint]]] = []
    for number, line in enumerate((_read_document(root, path, problems) or b"").splitlines()
                                  if present else [], 1):
        where = f"file {path} line {number}"
        try:
            lines.append((where, *rotation_from_line(parse_json(line), where)))
        except (CanonicalJsonError, LedgerError) as exc:
            problems.append(Problem(where, str(exc)))
    chain, found = rotation_chain_problems(station, lines, listed_keys)
    problems.extend(found)
    return chain


def _chained(
    keys: Mapping[str, Ed25519PublicKey], rotations: Sequence[ShippedRotation], listed: int
) -> dict[str, Ed25519PublicKey]:
    """The station keys whose epoch the rotations set (all of them when one key was never rotated): a
    listed key no rotation names (already a problem) signs nothing the package binds."""
    if not rotations and listed == 1:
        return dict(keys)
    on_chain = {shipped.rotation.new_key_id for shipped in rotations}
    on_chain.update(shipped.rotation.old_key_id for shipped in rotations[:1])
    return {key_id: key for key_id, key in keys.items() if key_id in on_chain}


def _signed_seqs(
    station: str, entries: Iterable[LedgerEntry | RedactedEntry], signed: Sequence[tuple[str, Checkpoint]],
    keys: Mapping[str, Ed25519PublicKey], problems: list[Problem],
    rotations: Sequence[ShippedRotation] | None = None,
) -> set[int]:
    """Seqs of whole entries whose recomputed hash a valid station checkpoint signs; every line of
    checkpoints.jsonl that does not hold is a problem naming the line. A checkpoint counts only within its
    key's epoch: a key a key_rotated entry of the segment retired signs nothing after it, the key it
    announced nothing before it (as for `edge verify STORE`); the epochs come from ``rotations`` (the
    package's checked key_rotations.jsonl) when given, else from the rotations the entries show (which are
    then gathered first). :func:`verify_package` does the same within its single pass
    (:class:`SegmentScan`)."""
    if rotations is None:
        entries = list(entries)
    scan = SegmentScan(station, signed=signed, schedule=_schedule(keys, entries, rotations))
    for entry in entries:
        scan.feed(entry)
    problems.extend(scan.signed_problems())
    return scan.bound_seqs()


def _schedule(keys: Mapping[str, Ed25519PublicKey], entries: Iterable[LedgerEntry | RedactedEntry],
              rotations: Sequence[ShippedRotation] | None) -> KeySchedule | None:
    """The station's keys over their epochs; None when no key is trusted (then no checkpoint binds)."""
    return station_schedule(keys, entries, rotations) if keys else None


def central_key_fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, in groups of four hex digits: what a person compares with
    the fingerprint the agency gives out of band."""
    digest = hashlib.sha256(public_key_raw(key)).hexdigest()
    return " ".join(digest[i:i + 4] for i in range(0, len(digest), 4))



def verify_package(
    root: Path, central_key: Ed25519PublicKey | None = None,
    pinned_station_keys: Sequence[Ed25519PublicKey] | None = None,
) -> VerifyReport:
    """Every problem with the unzipped package at ``root``; ``central_key`` pins the central's key.

    Without a pinned key the package's own key is used for the checks, and ``report.unproven["origin"]``
    says so: a package that vouches for itself proves nothing about who built it. Disclosed ledger entries
    that a redacted line separates from the station's signed checkpoint are named in
    ``report.unproven["binding"]``: their content rests on the central's word alone (a redacted line's
    hash cannot be recomputed).

    The station keys are whatever package.json lists, and only the central vouches for that list:
    ``pinned_station_keys`` (``--station-key``, obtained from the station, not from the package) are then
    the only station keys trusted, and anything signed by another key the package lists fails. Without
    pins the report notes each station key's fingerprint as enrolled at the central.
    """
    report = VerifyReport(f"disclosure package {root}")
    problems = report.problems
    included = _key(root, CENTRAL_KEY_FILE, problems)
    if central_key is None:
        central_key = included
        if included is not None:
            fingerprint = central_key_fingerprint(included)
            report.unproven["origin"] = (
                f"no central key was pinned: the package's own key {CENTRAL_KEY_FILE} (id "
                f"{key_id_of(included)}, SHA-256 fingerprint {fingerprint}) vouches only for itself")
            report.notes.insert(0, (
                f"ORIGIN UNPROVEN: the central key in this package has SHA-256 fingerprint {fingerprint} "
                f"(id {key_id_of(included)}). Anyone can build a self-consistent package with a key of their "
                "own: obtain your agency central's key fingerprint out of band (not from this package), "
                "compare, then pin it: edge verify --central-key central-signing.pub PACKAGE_DIR (or "
                "--config the station configuration that pins it)"))
    elif included is not None and public_key_raw(included) != public_key_raw(central_key):
        problems.append(Problem(f"file {CENTRAL_KEY_FILE}", f"is key {key_id_of(included)}, not the pinned "
                                                            f"central key {key_id_of(central_key)}"))
    listed = _checksums(root, report, central_key)
    doc = _read_json(root, INDEX_FILE, problems)
    try:
        index = PackageIndex.from_dict(doc)
    except ValueError as exc:
        problems.append(Problem(f"file {INDEX_FILE}", str(exc)))
        return report
    if central_key is None:
        return report
    keys = _station_keys(root, index, problems)
    _apply_station_pins(keys, pinned_station_keys, report)
    scans: dict[str, SegmentScan] = {}
    anchored: dict[str, set[int]] = {}  # station -> seqs of whole entries a valid station checkpoint signs
    finals: dict[str, Checkpoint] = {}  # station -> the checkpoint at its segment's end, when it verified
    acquired_seqs = _manifest_chain_seqs(root, index)
    for station in sorted(index.station_keys):
        scans[station], found = _station_segment(root, station, index, keys.get(station, {}),
                                                 acquired_seqs.get(station, set()), problems)
        if found is None:
            continue  # no final checkpoint: nothing of the segment is bound or checked against one
        verified, checkpoint = found
        anchored[station] = scans[station].bound_seqs()
        if verified and checkpoint.seq in scans[station].by_seq:
            anchored[station].add(checkpoint.seq)
        if verified:
            finals[station] = checkpoint
    segments = {station: scan.shown for station, scan in scans.items()}
    pinned: set[tuple[str, int, str]] = set()  # (station, seq, hash) a station-signed manifest names
    acquired: dict[str, int] = {}  # item -> seq of the acquired entry its signed manifest names
    for item in index.items:
        chain = _check_item(root, item, index.case_number, listed, keys, segments, central_key, problems)
        if chain is not None:
            pinned.add((item.station, *chain))
            acquired[item.item] = chain[0]
    _check_binding(index, scans, anchored, pinned, report)
    _check_completeness(root, index, scans, acquired, finals, report)
    redacted = sum(scan.redacted for scan in scans.values())
    report.checked.update({"items": len(index.items), "stations": len(index.station_keys),
                           "ledger_entries": sum(scan.lines for scan in scans.values()),
                           "station_checkpoints": sum(len(s) for s in anchored.values())})
    if redacted:
        report.notes.append(f"{redacted} ledger entries of items outside this package or of other dockings "
                            "are redacted: they were checked to link into the chain, their content is not "
                            "disclosed")
    return report


def _station_segment(
    root: Path, station: str, index: PackageIndex, keys: Mapping[str, Ed25519PublicKey],
    acquired_seqs: set[int], problems: list[Problem],
) -> tuple[SegmentScan, tuple[bool, Checkpoint] | None]:
    """Check one station's segment in a single pass over entries.jsonl (:mod:`edge.verify.segment`): the
    scan it leaves, and, when the segment ends at a checkpoint.json, (whether the whole chain verified up
    to that checkpoint, the checkpoint). The problems come in the order of the files: entries.jsonl's
    lines, checkpoint.json, checkpoints.jsonl, key_rotations.jsonl, the chain, checkpoints.jsonl's
    signatures."""
    read: list[Problem] = []  # entries.jsonl's lines, named as they are read
    files: list[Problem] = []  # checkpoint.json, checkpoints.jsonl and key_rotations.jsonl
    checkpoint = _final_checkpoint(root, station, files)
    signed = _checkpoint_lines(root, station, files)
    rotations = _rotations(root, station, index.station_keys[station], files)
    trusted = _chained(keys, rotations, len(index.station_keys[station]))
    coverage = None if index.coverage is None else index.coverage.get(station)
    wanted = set(acquired_seqs)
    if coverage is not None:
        wanted.add(coverage.head_seq)
        wanted.update(coverage.item_last_seq.values())
    if checkpoint is not None:
        wanted.add(checkpoint.seq)
    scan = SegmentScan(station, items=[item.item for item in index.items if item.station == station],
                       wanted_seqs=wanted, watched_seqs=acquired_seqs,
                       signed=signed if checkpoint is not None else (),
                       final_seq=None if checkpoint is None else checkpoint.seq,
                       schedule=_schedule(trusted, (), rotations))
    final_cp = checkpoint
    chain = None if final_cp is None else (
        lambda lines: ledger_segment_problems(station, lines, final_cp, trusted, rotations))
    found = _scan_segment(root, station, scan, read, chain)
    problems.extend(read + files)
    if checkpoint is None:
        return scan, None
    problems.extend(Problem(f"ledger/{station} {p.where}", p.what) for p in found)
    problems.extend(scan.signed_problems())
    return scan, (not found, checkpoint)


def _apply_station_pins(
    keys: dict[str, dict[str, Any]], pinned: Sequence[Ed25519PublicKey] | None, report: VerifyReport
) -> None:
    """Keep only pinned station keys (naming each listed key that is not), or note, without pins, that the
    station keys are as enrolled at the central: a central that lists a key of its own choosing as the
    station's could otherwise re-sign any entry it rewrites."""
    if not pinned:
        for station, station_keys in sorted(keys.items()):
            for key_id, key in sorted(station_keys.items()):
                report.notes.append(
                    f"STATION KEY AS ENROLLED AT THE CENTRAL: station {station} key {key_id} (SHA-256 "
                    f"fingerprint {central_key_fingerprint(key)}). The package's station keys are the "
                    "central's word: compare with the station's own public key (keys/station.key.pub of its "
                    "store), then pin it: edge verify --station-key station.pub ...")
        return
    allowed = {public_key_raw(key) for key in pinned}
    for station, station_keys in sorted(keys.items()):
        for key_id in sorted(station_keys):
            if public_key_raw(station_keys[key_id]) not in allowed:
                del station_keys[key_id]
                report.notes.append(f"station {station} key {key_id} is listed in {INDEX_FILE} but not "
                                    "pinned (--station-key): nothing it signs is trusted")
    report.checked["station_keys_pinned"] = len(pinned)


def _check_binding(
    index: PackageIndex, scans: Mapping[str, SegmentScan], anchored: Mapping[str, set[int]],
    pinned: set[tuple[str, int, str]], report: VerifyReport,
) -> None:
    """Which disclosed entries the station's signature reaches by a recomputable chain.

    A whole entry is bound when a chain of whole entries (each hash recomputed from content, each linked to
    the one before) leads from it, forwards, to an entry the station signed a valid checkpoint at, before
    any redacted line of ledger format 1 (a format-2 line's hash is recomputed from its parts, so the chain
    binds through it); or when a station-signed manifest names its hash. An entry whose chain to every
    signed checkpoint passes a format-1 redacted line is not: that line's hash is the central's word, so
    the central alone could rewrite the entry and patch the line's prev. The walk goes over what the
    segment's single pass kept of it (:meth:`SegmentScan.not_bound`). A redacted line where a disclosed
    item's manifest puts its acquired entry is refused outright.
    """
    disclosed = {(item.station, item.item) for item in index.items}
    acquired_at = {(station, seq) for station, seq, _ in pinned}
    unbound: list[str] = []
    unbound_other = 0
    for station, scan in sorted(scans.items()):
        if station not in anchored:
            continue
        for seq in scan.redacted_at:
            if (station, seq) in acquired_at:
                report.problems.append(Problem(
                    f"ledger/{station} seq {seq}", "is a redacted line, but a disclosed item's signed "
                    "manifest names its acquired entry here: an entry of a disclosed item was hidden"))
        for entry in scan.not_bound(anchored[station]):
            if (station, entry.seq, entry.hash) in pinned:
                continue
            if entry.item is not None and (station, entry.item) in disclosed:
                unbound.append(f"ledger/{station} seq {entry.seq} ({printable(entry.type)} of item "
                               f"{printable(entry.item)})")
            else:
                unbound_other += 1
    report.checked["ledger_entries_unbound"] = len(unbound)
    if unbound:
        report.unproven["binding"] = (
            f"{len(unbound)} custody entries of disclosed items are not bound to a checkpoint the station "
            "signed: a redacted line lies between each and every signed checkpoint, so they rest on the "
            "central's word")
        for where in sorted(unbound, key=_seq_order):
            report.notes.append(f"NOT BOUND {where}: a redacted line lies between it and every checkpoint "
                                "the station signed, so its content rests on the central's word, not the "
                                "station's signature")
    if unbound_other:
        report.notes.append(f"{unbound_other} disclosed station entries of no disclosed item are not bound "
                            "to a signed checkpoint either (a redacted line follows them)")


def _check_completeness(
    root: Path, index: PackageIndex, scans: Mapping[str, SegmentScan],
    acquired: Mapping[str, int], finals: Mapping[str, Checkpoint], report: VerifyReport,
) -> None:
    """Every entry of each disclosed item is shown, from its first to the station's signed head.

    Backwards: each station entry naming an item carries ``item_prev``, the hash of the item's previous
    entry (the genesis value for its first): walking those links back from the item's last entry to its
    acquired entry must meet only whole entries of the item. Forwards: each redacted line of ledger format 2
    carries its entry's item tag (:func:`edge.custody.ledger.item_tag`), which the chain hash commits to:
    none may be a disclosed item's, so no entry of one is hidden up to the segment's end, where the station
    signed the checkpoint package.json's stated head (``coverage``) must match. What cannot be shown is NOT
    COMPLETE, never OK: an item whose entries carry no ``item_prev`` (written before stations recorded it),
    a format-1 redacted line after an item's first entry (its content is hidden and its hash cannot be
    recomputed), a segment that ends before the stated head.
    """
    incomplete: list[str] = []
    stated: list[str] = []
    for station, scan in sorted(scans.items()):
        items = [item.item for item in index.items if item.station == station]
        coverage = None if index.coverage is None else index.coverage.get(station)
        if coverage is None:
            incomplete += [f"item {item}: package.json states no ledger head of station {station}, chain not "
                           "recorded" for item in items]
            continue
        head = scan.by_seq.get(coverage.head_seq)
        if head is not None and head.hash != coverage.head_hash:
            report.problems.append(Problem(f"file {INDEX_FILE}", f"states head seq {coverage.head_seq} of "
                                           f"station {station} with hash {coverage.head_hash}, but the "
                                           f"segment's entry there has hash {head.hash[:80]}"))
        _find_hidden_links(root, station, items, scan)
        not_recorded: list[str] = []
        for item in items:
            missing = _item_chain_problem(station, item, scan, coverage.item_last_seq, acquired.get(item),
                                          not_recorded)
            if missing is not None:
                report.problems.append(Problem(f"item {item}", missing))
        incomplete += [f"{what}: chain not recorded" for what in not_recorded]
        report.problems.extend(
            Problem(f"item {hidden}", f"an entry of the item was hidden at ledger/{station} seq {seq}: the "
                                      "redacted line there carries the item's tag (item_tag)")
            for hidden, seq in scan.tag_hits)
        end = scan.last_seq or 0
        if end < coverage.head_seq:
            incomplete += [f"item {item}: the ledger segment of station {station} ends at seq {end}, "
                           f"before the head seq {coverage.head_seq} package.json states: later entries of "
                           "the item cannot be ruled out" for item in items]
        incomplete += _format1_gaps(station, items, scan)
        report.problems.extend(Problem(f"ledger/{station} seq {seq}", "is a redacted line without item_tag "
                                       "and body_sha256 after entries of ledger format 2: the station writes "
                                       "format 2 from its upgrade on, so its parts were stripped")
                               for seq in scan.stripped)
        final = finals.get(station)
        if final is not None and end:
            stated.append(f"station {station} up to seq {final.seq}, which the station signed at its time "
                          f"{final.time}")
    report.checked["ledger_redacted_tags_checked"] = sum(scan.recomputable for scan in scans.values())
    if incomplete:
        report.unproven["completeness"] = (
            f"{len(incomplete)} disclosed items cannot be shown to have all their custody entries in the "
            "package")
        for what in incomplete:
            report.notes.append(f"NOT COMPLETE {what}: the package cannot show that none of its entries was "
                                "hidden or cut off")
    if stated:
        report.notes.append(
            "COVERAGE: every custody entry of the disclosed items is shown for " + "; ".join(stated)
            + " (the checkpoint at the end of the segment). Entries the station wrote after that are not "
            "covered; that this was the newest entry the central held when it built the package is the "
            "central's signed statement (package.json, in the signed SHA256SUMS): compare the station time "
            "above with the package's date, and with the station's own ledger")


def _find_hidden_links(root: Path, station: str, items: Sequence[str], scan: SegmentScan) -> None:
    """Add to ``scan.by_hash`` the redacted lines a disclosed item's entry links to (item_prev) when no
    shown entry has that hash: the single pass kept no redacted line by hash, so a second one finds them.
    Only a package that hides an entry of an item (or cuts its start off) needs it."""
    disclosed = set(items)
    links = {entry.data.get(ITEM_PREV) for entry in scan.shown if entry.item in disclosed}
    wanted = {link for link in links
              if isinstance(link, str) and link != GENESIS_PREV and link not in scan.by_hash}
    if wanted:
        scan.by_hash.update(_redacted_with_hash(root, station, wanted))


def _format1_gaps(station: str, items: Sequence[str], scan: SegmentScan) -> list[str]:
    """Items with a format-1 redacted line after their last shown entry: it may hide a later one of theirs
    (before it, the item chain already rules a hidden entry out). Format-1 lines after an entry of format
    2 are not counted here but named (``scan.stripped``): a station writes format 2 from its upgrade on, so
    such a line is a format-2 entry stripped of its parts, which would turn a proven hiding into an
    unprovable one."""
    gaps = []
    for item in items:
        last = max((e.seq for e in scan.shown if e.item == item), default=None)
        after = scan.format1_after(last)
        if after is not None:
            count, first, end = after
            gaps.append(f"item {item}: {count} redacted lines of ledger format 1 (written before "
                        f"stations tagged them, ledger/{station} seqs {first}-{end}) lie after its "
                        "last entry, and their hashes cannot be recomputed")
    return gaps


def _item_chain_problem(
    station: str, item: str, scan: SegmentScan, last_seqs: Mapping[str, int], acquired_seq: int | None,
    not_recorded: list[str],
) -> str | None:
    """What hides an entry of ``item``, or None when its chain is whole (or not recorded: added to
    ``not_recorded``)."""
    where = f"ledger/{station}"
    last_seq = last_seqs.get(item)
    if last_seq is None:
        return f"package.json states no last entry of the item in station {station}'s ledger"
    first, end = (scan.first_seq, scan.last_seq) if scan.first_seq is not None else (0, -1)
    last = scan.by_seq.get(last_seq)
    if last is None:
        return (f"its last entry is seq {last_seq} (package.json), but the ledger segment holds seqs "
                f"{first}-{end}: the segment stops before the item's later entries")
    if isinstance(last, RedactedEntry) or last.item != item:
        return (f"its last entry is seq {last_seq} (package.json), but {where} seq {last_seq} is a redacted "
                "line or another entry: an entry of the item was hidden there")
    later = [e.seq for e in scan.shown if e.item == item and e.seq > last_seq]
    if later:
        return (f"package.json states seq {last_seq} is its last entry, but {where} seq {later[0]} is a "
                "later one")
    on_chain = {last.seq}
    entry = last
    while True:
        link = entry.data.get(ITEM_PREV)
        if link is None:
            not_recorded.append(f"item {item} ({where} seq {entry.seq} carries no item_prev)")
            return None
        if link == GENESIS_PREV:
            break
        before = scan.by_hash.get(link) if isinstance(link, str) else None
        if before is None or before.seq >= entry.seq:
            return (f"{where} seq {entry.seq} links (item_prev) to an entry of the item that is not in the "
                    f"segment (seqs {first}-{end}): an earlier entry of the item is missing")
        if isinstance(before, RedactedEntry):
            return (f"an entry of the item was hidden at {where} seq {before.seq}: it is a redacted line, "
                    f"but the item's entry at seq {entry.seq} links to it (item_prev)")
        if before.item != item:
            return f"{where} seq {entry.seq} links (item_prev) to seq {before.seq}, another item's entry"
        on_chain.add(before.seq)
        entry = before
    if acquired_seq is not None and entry.seq != acquired_seq:
        return (f"its chain of entries starts at {where} seq {entry.seq}, but its signed manifest names its "
                f"acquired entry at seq {acquired_seq}")
    stray = [e.seq for e in scan.shown if e.item == item and e.seq not in on_chain]
    if stray:
        return f"{where} seq {stray[0]} is an entry of the item that is not on its chain (item_prev)"
    return None


def _seq_order(where: str) -> tuple[str, int]:
    station, _, rest = where.partition(" seq ")
    number = rest.split(" ", 1)[0]
    return station, int(number) if number.isdigit() else 0


def _check_item(
    root: Path, item: Any, case_number: str, listed: Mapping[str, str],
    keys: Mapping[str, Mapping[str, Any]], segments: Mapping[str, Sequence[LedgerEntry]],
    central_key: Ed25519PublicKey, problems: list[Problem],
) -> tuple[int, str] | None:
    """Check one item; the (seq, hash) of the acquired entry its manifest names, when it names one."""
    paths = item_paths(item.item, item.extension)
    if item.station not in keys:
        problems.append(Problem(f"item {item.item}", f"its station {item.station} has no keys in "
                                                     "package.json"))
        return None
    manifest = _read_json(root, paths.manifest, problems)
    receipt = _read_json(root, paths.receipt, problems)
    if not isinstance(manifest, dict):
        return None
    content = root / paths.content
    try:
        content_sha = _hash_file(content) if paths.content in listed else ""
        size = content.stat().st_size
    except OSError:
        problems.append(Problem(f"item {item.item}", f"its original {paths.content} is missing"))
        return None
    _check_membership(item.item, case_number, manifest, segments.get(item.station, []), problems)
    found = item_evidence_problems(
        item=item.item, station=item.station, content_sha256=content_sha, content_size=size,
        manifest=manifest, station_keys=keys[item.station],
        receipt=receipt if isinstance(receipt, dict) else None, central_key=central_key,
        item_entries=segments.get(item.station, []),
    )
    problems.extend(Problem(f"{p.where} ({paths.content})" if p.where == f"item {item.item}" else p.where,
                            p.what) for p in found)
    if (item.sha256, item.size) != (manifest.get("sha256"), manifest.get("size")):
        problems.append(Problem(f"file {INDEX_FILE}", f"lists item {item.item} with another hash or size "
                                                      "than its manifest"))
    try:
        payload, signature, _ = manifest_signature_parts(manifest)
    except ValueError as exc:
        problems.append(Problem(f"file {paths.manifest}", str(exc)))
    else:
        _same(root, paths.manifest_payload, payload, problems)
        _same(root, paths.manifest_signature, signature, problems)
    _same(root, paths.content_checksum, checksum_line(str(manifest.get("sha256")), paths.content).encode(),
          problems)
    if isinstance(receipt, dict) and isinstance(receipt.get("tree_head"), dict):
        try:
            head_payload, head_signature = tree_head_signature_parts(receipt["tree_head"])
        except ValueError as exc:
            problems.append(Problem(f"file {paths.receipt}", str(exc)))
        else:
            _same(root, paths.tree_head_payload, head_payload, problems)
            _same(root, paths.tree_head_signature, head_signature, problems)
    chain = manifest.get("chain")
    seq = chain.get("seq") if isinstance(chain, Mapping) else None
    entry_hash = chain.get("entry_hash") if isinstance(chain, Mapping) else None
    if isinstance(seq, int) and isinstance(entry_hash, str):
        return seq, entry_hash
    return None


def _check_membership(item: str, case_number: str, manifest: Mapping[str, Any],
                      entries: Sequence[LedgerEntry], problems: list[Problem]) -> None:
    """The item belongs to the package's case: its station-signed manifest's case, changed by its disclosed
    ``tagged`` entries in ledger order (as the station computes it), names the case."""
    case = manifest.get("case")
    found = case.get("case_number") if isinstance(case, Mapping) else None
    for entry in entries:
        if entry.item == item and entry.type == "tagged":
            changes = entry.data.get("changes")
            if isinstance(changes, Mapping) and "case_number" in changes:
                found = changes["case_number"]
    if found != case_number:
        problems.append(Problem(f"item {item}", f"does not belong to case {printable(case_number)}: its "
                                                f"signed manifest and its disclosed tagged entries name case "
                                                f"{printable(str(found))}"))
