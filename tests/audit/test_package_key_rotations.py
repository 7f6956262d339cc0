"""A package's key epochs come from the station's key rotations, shipped whole (review4 finding).

The package used to apply key epochs only from the ``key_rotated`` entries its segment shows whole, and
trusted a key no shown rotation names over the whole segment. So a hostile central that ships the rotation
as a redacted line, or any later case's package whose segment starts after the rotation, let a key retired
because it was lost sign a rewritten tag, and `edge verify` bound it (exit 0). The builder now ships every
``key_rotated`` entry of the station with its checkpoints (ledger/STATION/key_rotations.jsonl); the
verifier requires them to chain the listed keys and applies their epochs to every checkpoint.

The packages here are built by the central's own builder (:func:`segment_for`, :func:`write_package`) from
a real index filled with a real station ledger, then checked by `edge verify` as a person runs it.
"""

from __future__ import annotations

import base64
import io
import sqlite3
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edge.central.disclosure.package import PackagePlan, segment_for, write_package
from edge.central.sqlite import SqliteIndex
from edge.custody.canonical import canonical_json
from edge.custody.disclosure import PackageIndex
from edge.custody.keys import StationKey, key_id_of
from edge.custody.keyschedule import rotation_data
from edge.custody.ledger import Ledger, checkpoint_payload, entry_hash
from tests.audit.package_edits import read_lines, resign_all, write_lines
from tests.tamper.stores import Verdict, run_edge

STATION = "ST-1"
EARLIER = "00000000-0000-4000-8000-000000000001"  # acquired before the rotation
LATER = "00000000-0000-4000-8000-000000000002"  # acquired after it: a later case's package
CASE = "B-2026-002"
TIME = "2026-12-05T00:00:00.000000Z"
ENTRIES = f"ledger/{STATION}/entries.jsonl"
CHECKPOINTS = f"ledger/{STATION}/checkpoints.jsonl"
CHECKPOINT = f"ledger/{STATION}/checkpoint.json"
ROTATIONS = f"ledger/{STATION}/key_rotations.jsonl"


@dataclass(frozen=True)
class _Record:
    item: str
    station: str = STATION


@dataclass
class _Station:
    conn: sqlite3.Connection
    keys: list[StationKey]  # in the order the station used them

    def ledger(self, checkpoint_every: int = 1) -> Ledger:
        return Ledger(self.conn, STATION, self.keys[-1], checkpoint_every=checkpoint_every)

    def rotate(self, *, lost: bool) -> None:
        """What `edge keys rotate` records: the entry by the new key, the old key's checkpoint at it (unless
        lost) and the new key's, in one transaction (edge/ingest/key_rotation.py)."""
        old, new = self.keys[-1], StationKey.generate()
        data = rotation_data(old.key_id, old.public_key_b64, new.key_id, new.public_key_b64,
                             old_key_lost=lost, reason="station PC stolen" if lost else "yearly", by="admin")
        with self.conn:
            Ledger(self.conn, STATION, new, checkpoint_every=0).append("key_rotated", None, data)
            if not lost:
                Ledger(self.conn, STATION, old).checkpoint()
            Ledger(self.conn, STATION, new).checkpoint()
        self.keys.append(new)


def _station() -> _Station:
    conn = sqlite3.connect(":memory:")
    Ledger.create_schema(conn)
    station = _Station(conn, [StationKey.generate()])
    station.ledger().append("station_started", None, {"station": STATION, "checkpoint_every": 1})
    return station


def _custody(station: _Station, item: str) -> None:
    ledger = station.ledger()
    ledger.append("acquired", item, {"sha256": "0" * 64})
    ledger.append("sealed", item, {"manifest_sha256": "1" * 64})
    ledger.append("tagged", item, {"changes": {"case_number": CASE}, "by": "clerk-01"})


def _package(station: _Station, item: str, tmp_path: Path, central: StationKey) -> Path:
    """The package the central builds for ``item`` from its index of the station's ledger, unzipped."""
    ledger = station.ledger()
    index = SqliteIndex.open(tmp_path / "index.db")
    with index.transaction():
        index.insert_ledger_entries(STATION, list(ledger.entries()), TIME)
        for cp in ledger.checkpoints():
            index.insert_checkpoint(cp, TIME)
    segment = segment_for(STATION, [_Record(item)], index)  # type: ignore[list-item]
    assert segment is not None
    station_keys = {STATION: {key.key_id: key.public_key() for key in station.keys}}
    package_index = PackageIndex(CASE, "CENTRAL-1", TIME, "auditor", key_id_of(central.public_key()), (),
                                 {STATION: tuple(sorted(station_keys[STATION]))})
    plan = PackagePlan(package_index, [], {}, [segment], station_keys, central.public_key(), b"", b"")
    sink = io.BytesIO()
    write_package(plan, sink, lambda _: io.BytesIO(), central, index)
    index.close()
    folder = tmp_path / "package"
    with zipfile.ZipFile(io.BytesIO(sink.getvalue())) as archive:
        archive.extractall(folder)
    return folder


def _verify(folder: Path, central: StationKey) -> Verdict:
    pinned = folder.parent / "central.pub"
    pinned.write_bytes(central.public_pem())
    return run_edge("verify", "--central-key", str(pinned), str(folder))





def _forge_tag(folder: Path, item: str, lost_key: StationKey) -> int:
    """Rewrite the item's tag (the segment's last entry) into another case and sign its checkpoint with
    the lost key, as whoever stole it would; returns its seq."""
    entries = read_lines(folder, ENTRIES)
    tag = entries[-1]
    assert (tag["type"], tag["item"]) == ("tagged", item)
    body = {k: v for k, v in tag.items() if k != "hash"}
    body["data"] = {**body["data"], "changes": {"case_number": "A-2026-001"}}
    forged = {**body, "hash": entry_hash(body)}
    write_lines(folder, ENTRIES, [*entries[:-1], forged])
    signature = lost_key.sign(checkpoint_payload(STATION, forged["seq"], forged["hash"], TIME))
    cp = {"station": STATION, "seq": forged["seq"], "hash": forged["hash"], "time": TIME,
          "key_id": lost_key.key_id, "signature": base64.b64encode(signature).decode()}
    write_lines(folder, CHECKPOINTS, [*(c for c in read_lines(folder, CHECKPOINTS) if c["seq"] != cp["seq"]),
                                       cp])
    (folder / CHECKPOINT).write_bytes(canonical_json(cp))
    (folder / f"ledger/{STATION}/checkpoint.payload").write_bytes(
        checkpoint_payload(STATION, cp["seq"], cp["hash"], TIME))
    (folder / f"ledger/{STATION}/checkpoint.sig").write_bytes(signature)
    return int(forged["seq"])


def _rotation_seq(station: _Station) -> int:
    return next(e.seq for e in station.ledger().entries() if e.type == "key_rotated")


def test_an_honest_rotated_station_verifies_and_a_forged_tag_with_the_lost_key_is_refused(
    tmp_path: Path,
) -> None:
    central, station = StationKey.generate(), _station()
    station.ledger().append("acquired", EARLIER, {"sha256": "0" * 64})
    station.rotate(lost=True)
    station.ledger().append("sealed", EARLIER, {"manifest_sha256": "1" * 64})
    station.ledger().append("tagged", EARLIER, {"changes": {"case_number": CASE}, "by": "clerk-01"})
    folder = _package(station, EARLIER, tmp_path, central)
    assert (folder / ROTATIONS).is_file()
    verdict = _verify(folder, central)
    assert verdict.code == 0, verdict.stdout + verdict.stderr
    # Control of the refusal: the rotation shown whole, the lost key's checkpoint after it is refused.
    seq = _forge_tag(folder, EARLIER, station.keys[0])
    resign_all(folder, central.sign)
    verdict = _verify(folder, central)
    assert verdict.code != 0
    assert f"retired at seq {_rotation_seq(station)}" in verdict.stdout and str(seq) in verdict.stdout


def test_a_rotation_shipped_as_a_redacted_line_is_refused(tmp_path: Path) -> None:
    central, station = StationKey.generate(), _station()
    station.ledger().append("acquired", EARLIER, {"sha256": "0" * 64})
    station.rotate(lost=True)
    station.ledger().append("sealed", EARLIER, {"manifest_sha256": "1" * 64})
    station.ledger().append("tagged", EARLIER, {"changes": {"case_number": CASE}, "by": "clerk-01"})
    folder = _package(station, EARLIER, tmp_path, central)
    rotation = _rotation_seq(station)
    entries = [{"seq": e["seq"], "prev": e["prev"], "hash": e["hash"], "redacted": True}
               if e.get("type") == "key_rotated" else e for e in read_lines(folder, ENTRIES)]
    write_lines(folder, ENTRIES, entries)
    seq = _forge_tag(folder, EARLIER, station.keys[0])
    resign_all(folder, central.sign)
    verdict = _verify(folder, central)
    assert verdict.code != 0, f"the lost key binds the rewritten seq {seq}: the rotation was only redacted"
    assert f"seq {rotation}" in verdict.stdout and "redacted line" in verdict.stdout, verdict.stdout
    assert f"retired at seq {rotation}" in verdict.stdout and station.keys[0].key_id in verdict.stdout
    # The central also leaves the rotations out: both listed keys are then of no known epoch.
    (folder / ROTATIONS).write_bytes(b"")
    resign_all(folder, central.sign)
    verdict = _verify(folder, central)
    assert verdict.code != 0
    assert all(f"key {key.key_id}" in verdict.stdout for key in station.keys), verdict.stdout
    assert "no key_rotated entry" in verdict.stdout


def test_a_rotation_before_the_segment_still_retires_the_lost_key(tmp_path: Path) -> None:
    central, station = StationKey.generate(), _station()
    _custody(station, EARLIER)
    station.rotate(lost=True)
    _custody(station, LATER)
    folder = _package(station, LATER, tmp_path, central)
    rotation = _rotation_seq(station)
    assert all(e["seq"] > rotation for e in read_lines(folder, ENTRIES))  # the segment starts after it
    assert _verify(folder, central).code == 0  # control: the honest later package verifies
    seq = _forge_tag(folder, LATER, station.keys[0])
    resign_all(folder, central.sign)
    verdict = _verify(folder, central)
    assert verdict.code != 0, f"the lost key binds the rewritten seq {seq}: the rotation lies before it"
    assert f"retired at seq {rotation}" in verdict.stdout and station.keys[0].key_id in verdict.stdout
    # Without the rotations the listed keys have no known epoch: refused, each key named.
    (folder / ROTATIONS).unlink()
    resign_all(folder, central.sign)
    verdict = _verify(folder, central)
    assert verdict.code != 0
    assert all(f"key {key.key_id}" in verdict.stdout for key in station.keys), verdict.stdout


def test_a_rotation_file_that_does_not_hold_is_refused(tmp_path: Path) -> None:
    central, station = StationKey.generate(), _station()
    _custody(station, EARLIER)
    station.rotate(lost=False)
    station.rotate(lost=True)
    _custody(station, LATER)
    folder = _package(station, LATER, tmp_path, central)
    assert _verify(folder, central).code == 0  # control: two rotations, retired then lost, chain
    rotations = read_lines(folder, ROTATIONS)
    retired = station.keys[0].key_id
    assert retired in {c["key_id"] for c in rotations[0]["checkpoints"]}
    # The retired key's checkpoint dropped: nothing it signed vouches for the rotation.
    kept = [c for c in rotations[0]["checkpoints"] if c["key_id"] != retired]
    write_lines(folder, ROTATIONS, [{**rotations[0], "checkpoints": kept}, rotations[1]])
    resign_all(folder, central.sign)
    verdict = _verify(folder, central)
    assert verdict.code != 0 and f"{ROTATIONS} line 1" in verdict.stdout, verdict.stdout
    assert f"by key {retired}" in verdict.stdout
    # The rotation's content changed (its reason): its hash no longer holds.
    changed = {**rotations[1]["entry"], "data": {**rotations[1]["entry"]["data"], "reason": "routine"}}
    write_lines(folder, ROTATIONS, [rotations[0], {**rotations[1], "entry": changed}])
    resign_all(folder, central.sign)
    verdict = _verify(folder, central)
    assert verdict.code != 0 and f"{ROTATIONS} line 2" in verdict.stdout and "altered" in verdict.stdout


def test_a_station_never_rotated_verifies(tmp_path: Path) -> None:
    central, station = StationKey.generate(), _station()
    _custody(station, EARLIER)
    folder = _package(station, EARLIER, tmp_path, central)
    assert (folder / ROTATIONS).read_bytes() == b""
    verdict = _verify(folder, central)
    assert verdict.code == 0, verdict.stdout + verdict.stderr
