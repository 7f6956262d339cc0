"""A case's evidence across two station key rotations, end to end (issue 8).

A real station (real agent, simulated recorders and dock) offloads one recorder and uploads to a real
central over mutual TLS; the administrator stops it and rotates its key with `edge keys rotate`, and the
agent runs again before the station is re-enrolled (the central refuses its new key's entries while it
offloads a second recorder); then the administrator re-enrolls it with `edge central enroll` (README
"Commands") and the second recorder's items go up; its
key is then lost (the private key file is gone) and rotated with `edge keys rotate --lost-key`, re-enrolled
again, and a third recorder is offloaded. Every recorder's officer works the same case, so its disclosure
package spans both rotations. The package must verify with `edge verify` pinned to the three keys, fail
with only the newest pinned, fail when the central leaves the rotations out, and a spot check over every
item must pass.

The run takes seconds, so it is made once per session; each test serves its own copy of the central store.
"""

from __future__ import annotations

import asyncio
import base64
import json
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.central.embedded import EmbeddedCentral
from edge.central.identity import load_signing_key
from edge.central.index import ItemQuery, ReaderScope, Role
from edge.central.sqlite.index import create_schema
from edge.central.verify import verify_central_store
from edge.custody.keys import StationKey, key_id_of, load_public_key
from edge.custody.ledger import Checkpoint, checkpoint_payload
from edge.ingest.store import StoreLayout
from simulators.recorder.bus import RecorderSpec
from tests.audit.conftest import FAST, STATION, AuditCentral, StationEvidence, _audit_central
from tests.audit.package_edits import resign_all
from tests.audit.test_disclosure_package import documented_commands, download, run_commands
from tests.audit.test_stats_and_spot_checks import EVERYTHING, get
from tests.station.harness import Station, eventually, simulated_station, spec
from tests.tamper.stores import Verdict, run_edge

CASE = "R-2026-007"
UNIT = ("330100000000", "杭州市综合行政执法局")
FILES_PER_RECORDER = 2
ROTATIONS = f"ledger/{STATION}/key_rotations.jsonl"


@dataclass(frozen=True)
class RotatedStation:
    """The central store a station filled across two key rotations, and what the test knows of it."""

    evidence: StationEvidence
    public_keys: list[Path]  # the station's public keys in the order it used them (copies made on the way)
    retired_private_key: Path  # the first key, retired (not lost) by the first rotation, kept by the store
    rotation_seqs: list[int]  # the ledger seq of each key_rotated entry
    items_by_phase: list[list[str]]  # the items uploaded under each key
    # Before the station was re-enrolled after the first rotation: the central's head as the agent started
    # again, as it stopped, and what the central refused meanwhile.
    station_store: Path
    head_before_enrollment: int
    head_at_enrollment: int
    refused_before_enrollment: list[dict[str, Any]]


def _write_central_config(path: Path, central: EmbeddedCentral) -> Path:
    """The central's configuration file, as `edge central enroll --config` reads it."""
    config = central.config
    path.write_text(
        f'[central]\nid = "{config.central.id}"\nstore_dir = "{config.central.store_dir}"\n'
        f'[server]\nlisten = "127.0.0.1"\nport = {config.server.port}\nnames = ["localhost", "127.0.0.1"]\n',
        encoding="utf-8",
    )
    return path


def _write_station_config(path: Path, store: Path) -> Path:
    """The station's configuration file, as `edge keys rotate --config` reads it."""
    media = path.parent / "media"
    path.write_text(f'[station]\nid = "{STATION}"\nstore_dir = "{store}"\n[usb]\nmount_root = "{media}"\n',
                    encoding="utf-8")
    return path


def _edge(*args: str) -> Verdict:
    verdict = run_edge(*args)
    assert verdict.code == 0, (args, verdict)
    return verdict


@asynccontextmanager
async def _station_run(root: Path, store: Path, recorder: RecorderSpec, central_url: str,
                       bundle: Path) -> AsyncIterator[Station]:
    """The agent on ``store`` with ``recorder`` allowed (not docked), uploading with the bundle in
    ``bundle``; each run has its own recorder bus and dock under ``root``."""
    root.mkdir()
    async with simulated_station(
        root, [recorder],
        station={"store_dir": str(store)},
        uplink={"central_url": central_url, "identity_dir": str(bundle), **FAST},
        wipe={"policy": "after-receipt", "receipt_wait_s": 60},
        officers={recorder.officer_no: {"case_number": CASE}},
    ) as station:
        yield station


async def _run_rotated_station(root: Path) -> RotatedStation:
    store = root / "store"
    layout = StoreLayout(store)
    central = await EmbeddedCentral.start(root, STATION, store)
    central_config = _write_central_config(root / "central.toml", central)
    station_config = _write_station_config(root / "station.toml", store)
    specs = [spec(n, files=FILES_PER_RECORDER, unit_code=UNIT[0], unit_name=UNIT[1]) for n in range(3)]
    index = central.running.parts.index
    everything = ReaderScope("test", Role.SUPERVISOR, frozenset())
    public_keys: list[Path] = []
    items_by_phase: list[list[str]] = []
    bundle = central.bundle_dir
    retired: Path | None = None
    window: tuple[int, int, list[dict[str, Any]]] | None = None

    def officers_items(officer: str) -> list[str]:
        page, _ = index.query_items(ItemQuery(officer_no=officer, limit=100), everything)
        return [row["item"] for row in page]

    async def all_uploaded(station: Station, officer: str) -> None:
        """Until the central holds the officer's items and the station's whole ledger."""
        ledger = station.agent.store.ledger if station.agent.store is not None else None
        assert ledger is not None
        await eventually(lambda: len(officers_items(officer)) == FILES_PER_RECORDER
                         and index.ledger_head(STATION)[0] == ledger.head()[0], 30)

    try:
        for phase, recorder in enumerate(specs):
            docked = False
            if phase:
                old = key_id_of(load_public_key(layout.public_key))
                if phase == 1:
                    # A yearly rotation: the old key vouches for the new one.
                    _edge("keys", "rotate", "--config", str(station_config), "--reason", "yearly rotation")
                    retired = layout.private_key.with_name(f"{layout.private_key.name}.{old}.retired")
                    # The agent is started again before the administrator re-enrolled the station: it
                    # offloads, and the central refuses its new ledger entries; nothing is given up.
                    head_before = index.ledger_head(STATION)[0]
                    async with _station_run(root / "phase-1-before-enrollment", store, recorder,
                                            central.url, bundle) as station:
                        await station.dock_recorder(recorder.device_serial, 1)
                        await station.wait_ledger("sealed", FILES_PER_RECORDER, timeout_s=30)
                        await eventually(lambda: any(r["code"] == "bad_checkpoint"
                                                     for r in index.rejections(STATION)), 30)
                    docked = True
                    window = (head_before, index.ledger_head(STATION)[0], index.rejections(STATION))
                else:
                    # The station PC's key is lost: only its public half is left in the store.
                    layout.private_key.unlink()
                    _edge("keys", "rotate", "--config", str(station_config), "--lost-key",
                          "--reason", "disk replaced, key not recoverable")
                # The administrator re-enrolls the station with its new key (README: `edge keys rotate`).
                bundle = root / f"station-identity-{phase}"
                _edge("central", "enroll", STATION, "--config", str(central_config),
                      "--signing-key", str(layout.public_key), "--out", str(bundle))
            copy = root / f"station-key-{phase}.pub"
            copy.write_bytes(layout.public_key.read_bytes())
            public_keys.append(copy)
            async with _station_run(root / f"phase-{phase}", store, recorder, central.url, bundle) as station:
                if not docked:
                    await station.dock_recorder(recorder.device_serial, 1)
                    await station.wait_results(1)
                await all_uploaded(station, recorder.officer_no)
            items_by_phase.append(officers_items(recorder.officer_no))
        rotation_seqs = [entry.seq for entry in index.ledger_entries(STATION, type_="key_rotated")]
    finally:
        await central.stop()
    assert retired is not None and window is not None
    return RotatedStation(
        StationEvidence(central.store_dir, {s.officer_no: UNIT[0] for s in specs},
                        {s.officer_no: FILES_PER_RECORDER for s in specs}, 0, ""),
        public_keys, retired, rotation_seqs, items_by_phase, store, *window)


_BUILT: list[RotatedStation] = []


@pytest.fixture(scope="session")
def rotated_station(tmp_path_factory: pytest.TempPathFactory) -> RotatedStation:
    if not _BUILT:
        _BUILT.append(asyncio.run(_run_rotated_station(tmp_path_factory.mktemp("rotated-station"))))
    return _BUILT[0]


@pytest.fixture
async def rotated_central(tmp_path: Path, rotated_station: RotatedStation) -> AsyncIterator[AuditCentral]:
    async for central in _audit_central(tmp_path, rotated_station.evidence):
        yield central


async def _package(central: AuditCentral, tmp_path: Path) -> Path:
    archive = tmp_path / "package.zip"
    async with central.reader("auditor-rotation") as session:
        assert await download(session, central.url, CASE, archive) == 200
    folder = tmp_path / "package"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    return folder


def _verify(folder: Path, central: AuditCentral, station_keys: list[Path]) -> Verdict:
    pinned = folder.parent / "central-signing.pub"
    pinned.write_bytes(load_signing_key(central.config).public_pem())
    pins = [arg for key in station_keys for arg in ("--station-key", str(key))]
    return run_edge("verify", "--central-key", str(pinned), *pins, str(folder))


async def test_a_package_spanning_two_rotations_verifies_with_every_key_pinned(
    rotated_station: RotatedStation, rotated_central: AuditCentral, tmp_path: Path
) -> None:
    old, middle, new = rotated_station.public_keys
    ids = [key_id_of(load_public_key(key)) for key in rotated_station.public_keys]
    assert len(set(ids)) == 3 and len(rotated_station.rotation_seqs) == 2
    folder = await _package(rotated_central, tmp_path)
    case_items = [item for phase in rotated_station.items_by_phase for item in phase]
    assert len(case_items) == 3 * FILES_PER_RECORDER
    assert sorted(p.name for p in (folder / "items").iterdir()) == sorted(case_items)
    # The package's segment shows both rotations, and key_rotations.jsonl ships them with their checkpoints:
    # the first by the old and the new key, the lost key's by the new key alone.
    shipped = [json.loads(line) for line in (folder / ROTATIONS).read_text().splitlines()]
    assert [line["entry"]["seq"] for line in shipped] == rotated_station.rotation_seqs
    assert [sorted({c["key_id"] for c in line["checkpoints"]}) for line in shipped] == [
        sorted(ids[:2]), [ids[2]]]
    assert [line["entry"]["data"]["old_key"] for line in shipped] == ["retired", "lost"]
    verdict = _verify(folder, rotated_central, [old, middle, new])
    assert verdict.code == 0 and "OK: disclosure package" in verdict.stdout, verdict
    # Control: only the newest key pinned, what the older keys signed (manifests, checkpoints) is not OK.
    verdict = _verify(folder, rotated_central, [new])
    assert verdict.code == 1 and verdict.stdout.splitlines()[-1].startswith("FAILED: disclosure package")
    for old_id, phase in ((ids[0], 0), (ids[1], 1)):
        assert f"key {old_id} is listed in package.json but not pinned" in verdict.stdout, verdict.stdout
        for item in rotated_station.items_by_phase[phase]:  # each item the unpinned key signed is named
            assert any(item in line and old_id in line for line in verdict.failures), (item, verdict.stdout)
    assert not any(item in line for item in rotated_station.items_by_phase[2] for line in verdict.failures)
    # Control: the first key left unpinned, what it signed is refused, and only that.
    verdict = _verify(folder, rotated_central, [middle, new])
    assert verdict.code == 1 and all(ids[0] in line for line in verdict.failures), verdict.stdout


async def test_a_package_without_its_key_rotations_fails(
    rotated_station: RotatedStation, rotated_central: AuditCentral, tmp_path: Path
) -> None:
    folder = await _package(rotated_central, tmp_path)
    assert _verify(folder, rotated_central, rotated_station.public_keys).code == 0  # control
    # A central leaves the rotations out and signs the list of files again: the keys' epochs are unknown.
    (folder / ROTATIONS).unlink()
    resign_all(folder, load_signing_key(rotated_central.config).sign)
    verdict = _verify(folder, rotated_central, rotated_station.public_keys)
    assert verdict.code != 0, verdict
    ids = [key_id_of(load_public_key(key)) for key in rotated_station.public_keys]
    assert verdict.code == 1 and "no key_rotated entry" in verdict.stdout, verdict.stdout
    assert all(f"key {key_id}" in verdict.stdout for key_id in ids), verdict.stdout


async def test_a_spot_check_over_items_of_every_key_passes(
    rotated_station: RotatedStation, rotated_central: AuditCentral
) -> None:
    async with rotated_central.reader("supervisor-rotation") as session:
        status, doc = await get(session, f"{rotated_central.url}/v1/spot-checks",
                                {**EVERYTHING, "fraction": "1", "seed": "11"})
    assert status == 200, doc
    sampled = {item["item"] for item in doc["items"]}
    assert sampled == {item for phase in rotated_station.items_by_phase for item in phase}
    assert doc["failed"] == 0, [i for i in doc["items"] if not i["ok"]]


async def test_a_spot_check_after_a_rotation_refuses_a_checkpoint_by_the_retired_key(
    rotated_station: RotatedStation, rotated_central: AuditCentral
) -> None:
    """The spot check takes the key epochs from the station's rotations, not from the ledger stretch it
    checks: an item of the second key's time, whose stretch shows no rotation, is not vouched for by a
    checkpoint the retired first key signed (whoever kept that key rewrote the central's checkpoint)."""
    index = rotated_central.index
    first_rotation, second_rotation = rotated_station.rotation_seqs
    # An item of the second key's time whose last entry came before the second rotation (an item's receipt
    # can come after it on a loaded machine: that item's stretch then shows the rotation).
    candidates = [(item, max(entry.seq for entry in index.ledger_entries(STATION, item=item)))
                  for item in rotated_station.items_by_phase[1]]
    victim, last = next(((item, seq) for item, seq in candidates
                         if first_rotation < seq < second_rotation
                         and len(index.checkpoints(STATION, seq, seq)) == 1), candidates[0])
    params = {**EVERYTHING, "fraction": "1", "seed": "5"}
    async with rotated_central.reader("supervisor-epochs") as session:
        status, clean = await get(session, f"{rotated_central.url}/v1/spot-checks", params)
        assert status == 200 and clean["failed"] == 0, clean  # control: the honest central passes
        genuine = index.checkpoints(STATION, last, last)
        assert len(genuine) == 1 and first_rotation < last < second_rotation, (candidates, first_rotation,
                                                                               second_rotation)
        retired = StationKey.load(rotated_station.retired_private_key)
        signature = retired.sign(checkpoint_payload(STATION, last, genuine[0].hash, genuine[0].time))
        forged = Checkpoint(STATION, last, genuine[0].hash, genuine[0].time, retired.key_id,
                            base64.b64encode(signature).decode("ascii"))
        assert verify_central_store(rotated_central.store) == []  # control: the store holds
        with index.transaction() as conn:  # what someone with write access to the file can do
            conn.execute("DROP TRIGGER station_checkpoints_no_update")
            conn.execute("UPDATE station_checkpoints SET key_id = ?, signature = ? "
                         "WHERE station = ? AND seq = ?", (forged.key_id, forged.signature, STATION, last))
            create_schema(conn)
        status, tampered = await get(session, f"{rotated_central.url}/v1/spot-checks", params)
    assert status == 200
    failed = {item["item"]: item for item in tampered["items"] if not item["ok"]}
    assert victim in failed, f"the retired key {retired.key_id} vouched for seq {last} after its rotation"
    ledger = failed[victim]["checks"]["ledger"]["problems"]
    assert any(f"retired at seq {rotated_station.rotation_seqs[0]}" in p and retired.key_id in p
               for p in ledger), ledger
    assert failed[victim]["checks"]["manifest"]["ok"] and failed[victim]["checks"]["object"]["ok"]
    # `edge verify` of the central store applies the station's key epochs to its checkpoints too.
    problems = verify_central_store(rotated_central.store)
    assert [p.where for p in problems] == [f"station {STATION} checkpoint seq {last}"], problems
    assert f"retired at seq {rotated_station.rotation_seqs[0]}" in problems[0].what, problems


async def test_a_spot_check_names_a_rotation_its_old_key_no_longer_vouches_for(
    rotated_station: RotatedStation, rotated_central: AuditCentral
) -> None:
    """The rotations whose epochs the spot check applies are checked as a package's are: the yearly
    rotation's checkpoint by the key it retired gone from the central, nothing vouches that the old key
    handed over to the new one, and every item sampled says so."""
    index = rotated_central.index
    rotated_at = rotated_station.rotation_seqs[0]
    old_id = key_id_of(load_public_key(rotated_station.public_keys[0]))
    assert old_id in {cp.key_id for cp in index.checkpoints(STATION, rotated_at, rotated_at)}
    with index.transaction() as conn:  # what someone with write access to the file can do
        conn.execute("DROP TRIGGER station_checkpoints_no_delete")
        conn.execute("DELETE FROM station_checkpoints WHERE station = ? AND seq = ? AND key_id = ?",
                     (STATION, rotated_at, old_id))
        create_schema(conn)
    async with rotated_central.reader("supervisor-rotations") as session:
        status, doc = await get(session, f"{rotated_central.url}/v1/spot-checks",
                                {**EVERYTHING, "size": "2", "seed": "3"})
    assert status == 200 and doc["sampled"] == 2 and doc["failed"] == 2, doc
    for item in doc["items"]:
        problems = item["checks"]["ledger"]["problems"]
        assert any(f"seq {rotated_at}" in p and f"no valid checkpoint at its seq by key {old_id}" in p
                   for p in problems), problems


async def test_before_re_enrollment_the_central_refuses_the_new_key_and_nothing_is_lost(
    rotated_station: RotatedStation,
) -> None:
    """The agent started again after `edge keys rotate` but before `edge central enroll`: the central
    refuses the ledger entries signed by the new key, saying what to do, and accepts none of them; the
    recorder docked meanwhile is offloaded, and its items reach the central once the station is enrolled
    again (README: uploads wait in the spool)."""
    rotated_at = rotated_station.rotation_seqs[0]
    assert rotated_station.head_at_enrollment == rotated_station.head_before_enrollment < rotated_at
    refused = rotated_station.refused_before_enrollment
    assert refused and all(r["code"] == "bad_checkpoint" for r in refused), refused
    assert all(f"the station rotated its ledger key at seq {rotated_at}" in r["detail"]
               and f"edge central enroll {STATION} --signing-key" in r["detail"] for r in refused), refused
    assert len(rotated_station.items_by_phase[1]) == FILES_PER_RECORDER


def test_the_station_store_verifies_across_both_rotations(rotated_station: RotatedStation) -> None:
    """`edge verify STORE` (no central configured: local checks only) holds for the store whose key was
    rotated, then lost and rotated again: each key signed only within its epoch."""
    verdict = run_edge("verify", str(rotated_station.station_store))
    assert verdict.code == 3 and not verdict.failures, verdict
    assert verdict.stdout.splitlines()[-1].startswith("LOCAL CHECKS ONLY"), verdict.stdout


async def test_the_documented_commands_hold_for_a_package_spanning_rotations(
    rotated_station: RotatedStation, rotated_central: AuditCentral, tmp_path: Path
) -> None:
    """The openssl and sha256sum commands the package's own page documents pass for a package whose items
    three station keys signed, and fail for an original changed afterwards."""
    folder = await _package(rotated_central, tmp_path)
    commands = documented_commands(folder)
    for key in rotated_station.public_keys:  # each item's manifest is checked with the key that signed it
        pem = f"keys/station-{STATION}-{key_id_of(load_public_key(key))}.pem"
        manifests = [command for command in commands if pem in command and "manifest.payload" in command]
        assert len(manifests) == FILES_PER_RECORDER, commands
    results = run_commands(folder, commands)
    assert all(code == 0 for _, code, _ in results), [r for r in results if r[1] != 0]
    item = rotated_station.items_by_phase[0][0]  # signed by the first, retired key
    original = next((folder / "items" / item).glob(f"{item}.*"))
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0x01
    original.write_bytes(bytes(data))
    failed = [command for command, code, _ in run_commands(folder, commands) if code != 0]
    assert any(f"items/{item}/content.sha256" in command for command in failed), failed
