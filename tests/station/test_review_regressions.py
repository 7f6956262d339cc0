"""Regression tests for defects found in review: each one once broke an invariant."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.serial.dock import BayLed
from drivers.usb.protocol import VendorRequest
from edge.cli import main
from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, VolumeOffload
from edge.verify.station import verify_store

from .conftest import session_info, volume_hashes
from .harness import simulated_station, spec


async def test_nothing_is_erased_that_was_not_reread_even_if_sealed_earlier(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    """Sealed without re-reading, then a stored object rots: the next docking (re-reading on) must
    re-verify before erasing; the rotten copy is found and rebuilt from the recorder, which still holds
    the file (issue 7, 1.9), before that file is erased."""
    before = volume_hashes(volume)
    first = await VolumeOffload(
        store, config_factory(offload={"verify_reread": False, "min_free_bytes": 0}), session_info(), volume
    ).run()
    assert first.wiped == 0
    row = store.conn.execute("SELECT item, path FROM items WHERE sealed_in_file=0 LIMIT 1").fetchone()
    rotten = store.layout.root / row["path"]
    sealed = rotten.read_bytes()
    data = bytearray(sealed)
    data[0] ^= 0xFF
    rotten.write_bytes(bytes(data))
    second = await VolumeOffload(store, config_factory(), session_info(), volume).run()
    assert volume_hashes(volume) == {} and second.wiped == len(before)
    assert rotten.read_bytes() == sealed, "rebuilt from the recorder before its file was erased"
    types = [e.type for e in store.ledger.entries(item=row["item"])]
    assert types.index("reacquired") < types.index("wiped")
    # Each file listed again was read from the recorder again and matched its item once (the identity
    # proof, which also serves as the re-read before erasing).
    rechecks = [e for e in store.ledger.entries() if e.type == "verified" and e.data.get("purpose")]
    items = sorted(r[0] for r in store.conn.execute("SELECT item FROM items"))
    assert sorted(str(e.item) for e in rechecks) == items


async def test_an_unexpected_error_ends_the_docking_on_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> object:
        raise RuntimeError("simulated bug in media facts")

    monkeypatch.setattr("edge.ingest.pipeline.media_facts_and_seal", explode)
    specs = [spec(0)]
    async with simulated_station(tmp_path, specs) as station:
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.wait_results(1)
        result = station.agent.results[0]
        assert result.outcome is OffloadOutcome.FAILED
        stopped = station.ledger("session_stopped")
        assert stopped and stopped[0]["outcome"] == "failed"
        assert any("simulated bug" in e.get("reason", "") for e in station.ledger("error"))
        assert await station.led_shows(1, BayLed.ERROR)
        assert len(station.bus.volume_files(specs[0].device_serial)) == 4, "nothing erased"


async def test_wrong_password_is_tried_once_per_docking_never_to_lockout(tmp_path: Path) -> None:
    specs = [spec(0, password="999999")]
    async with simulated_station(tmp_path, specs) as station:
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.wait_ledger("refused")
        # Ten more looks at the bus by the agent, each a chance to try the password again; then every
        # session those looks started has finished.
        looked = station.bus.enumerations
        assert await asyncio.to_thread(station.bus.wait_for_enumerations, looked + 10, 20)
        await station.agent.idle()
        state = station.bus.recorder_state(specs[0].device_serial)
        assert state.failed_logins == 1 and not state.locked
        assert len(station.ledger("refused")) == 1
        # Re-docking is a new attempt, once the agent has seen the recorder go.
        station.bus.unplug(specs[0].device_serial)
        removed = await station.wait_ledger("device_removed")
        assert removed[0]["usb_serial"] == specs[0].usb_serial
        station.bus.plug(specs[0].device_serial, "1-1.1")
        await station.wait_ledger("refused", 2)


async def test_absurd_device_status_numbers_are_recorded_not_fatal(tmp_path: Path) -> None:
    specs = [spec(0)]
    async with simulated_station(tmp_path, specs) as station:
        status = struct.pack("<BQQHHI", 80, 1 << 60, 1 << 59, 1920, 1080, 7)
        station.bus.inject_reply(specs[0].device_serial, VendorRequest.GET_STATUS, status)
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.wait_results(1)
        assert station.agent.results[0].outcome is OffloadOutcome.DONE
        authenticated = station.ledger("device_authenticated")[0]
        assert authenticated["status"]["storage_total_bytes"] == str(1 << 60)


async def test_a_volume_of_junk_is_refused_in_bounded_records(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    junk = volume / "JUNK"
    junk.mkdir()
    for i in range(1300):
        os.symlink("/etc/passwd", junk / f"link{i:05d}")
    result = await VolumeOffload(store, config_factory(), session_info(), volume).run()
    refused = [e.data for e in store.ledger.entries() if e.type == "refused"]
    assert len(refused) == 1001
    assert refused[-1]["reason"] == "300 more refused entries not listed"
    assert result.verified == 5 and result.wiped == 5


def test_verify_catches_an_edited_index_and_survives_malformed_ledger_data(
    store: StationStore,
    volume: Path,
    config_factory: Callable[..., StationConfig],
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncio.run(VolumeOffload(store, config_factory(), session_info(), volume).run())
    with store.transaction():
        store.ledger.checkpoint()
    db = sqlite3.connect(store.layout.db, isolation_level=None)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f'DROP TRIGGER "{name}"')
    item, manifest = db.execute("SELECT item, manifest FROM items LIMIT 1").fetchone()
    forged = json.loads(manifest)
    forged["case"]["case_number"] = "FORGED"
    db.execute("UPDATE items SET manifest=? WHERE item=?", (json.dumps(forged), item))
    report = verify_store(store.layout.root)
    assert any(
        p.where == f"item {item}" and "index holds a different manifest" in p.what for p in report.problems
    )
    seq = db.execute("SELECT seq FROM ledger WHERE type='sealed' LIMIT 1").fetchone()[0]
    db.execute("UPDATE ledger SET data='{bad' WHERE seq=?", (seq,))
    db.close()
    assert main(["verify", str(store.layout.root), "--json"]) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert any(p["where"] == f"ledger seq {seq}" for p in out["problems"])


def test_verify_pins_the_station_key(
    store: StationStore,
    volume: Path,
    config_factory: Callable[..., StationConfig],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncio.run(VolumeOffload(store, config_factory(), session_info(), volume).run())
    genuine = tmp_path / "genuine.pub"
    genuine.write_bytes(store.layout.public_key.read_bytes())
    assert main(["verify", str(store.layout.root), "--key", str(genuine)]) == 3  # local checks held
    other = StationStore(tmp_path / "other-store", "OTHER")
    other.close()
    assert main(["verify", str(store.layout.root), "--key", str(other.layout.public_key)]) == 1
    assert "pinned station key" in capsys.readouterr().out
