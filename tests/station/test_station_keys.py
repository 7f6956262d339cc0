"""Keys are never silently replaced: a lost or swapped key is refused; rotation is explicit and verifiable.

Stores here are real (SQLite, files, a real offload of ffmpeg media); tampering is done to the files and
rows the way an attacker with write access would.
"""

from __future__ import annotations

import base64
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.cli import main
from edge.config.station import StationConfig
from edge.custody.keys import StationKey, key_id_of, load_public_key
from edge.custody.keyschedule import KEY_ROTATED, rotation_data
from edge.custody.ledger import Ledger, checkpoint_payload
from edge.ingest import key_rotation
from edge.ingest.key_rotation import RotationError, rotate_station_key
from edge.ingest.station_key import retired_key_path, staged_key_path
from edge.ingest.store import StationStore, StoreError
from edge.ingest.tagging import tag_item
from edge.sources.usb.offload import VolumeOffload
from edge.verify.station import verify_file, verify_store

from .conftest import DEVICE, populate_recorder_volume, session_info

STATION = "TEST-STATION"


def _problems(root: Path, **kwargs: object) -> list[str]:
    return [f"{p.where}: {p.what}" for p in verify_store(root, **kwargs).problems]  # type: ignore[arg-type]


def _open(root: Path) -> StationStore:
    return StationStore(root, STATION)


def _history(root: Path) -> str:
    """A store with ledger entries and a checkpoint; returns its key id."""
    store = _open(root)
    try:
        store.record("station_started", None, {"station": STATION})
        with store.transaction():
            store.ledger.checkpoint()
        return store.key.key_id
    finally:
        store.close()


def test_a_key_is_made_for_an_empty_store_and_kept(tmp_path: Path) -> None:
    store = _open(tmp_path / "store")
    first = store.key.key_id
    store.close()
    store = _open(tmp_path / "store")
    assert store.key.key_id == first
    store.close()


def test_a_lost_key_over_a_ledger_is_refused_not_replaced(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key_id = _history(root)
    key_file = root / "keys" / "station.key"
    backup = tmp_path / "backup.key"
    shutil.copy2(key_file, backup)
    key_file.unlink()
    with pytest.raises(StoreError) as refused:
        _open(root)
    message = str(refused.value)
    assert f"station store {root}: the station key {key_file} is missing" in message
    assert f"the ledger has 1 entry, and its 1 checkpoint(s) are signed with key {key_id}" in message
    assert "Restore the key file from backup" in message
    assert "edge keys rotate --config FILE --lost-key" in message
    assert not key_file.exists()
    # Control: the same store opens once the key is restored.
    shutil.copy2(backup, key_file)
    store = _open(root)
    assert store.key.key_id == key_id
    store.close()


def test_a_replaced_key_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key_id = _history(root)
    for name in ("station.key", "station.key.pub"):
        (root / "keys" / name).unlink()
    other = StationKey.create(root / "keys" / "station.key")
    expected = f"is key {other.key_id}, but the ledger .* signed with key {key_id}"
    with pytest.raises(StoreError, match=expected):
        _open(root)


def _offload(store: StationStore, config: StationConfig, volume: Path) -> list[str]:
    import asyncio

    result = asyncio.run(VolumeOffload(store, config, session_info(), volume).run())
    assert result.items
    return list(result.items)


def _second_volume(tmp_path: Path) -> Path:
    return populate_recorder_volume(tmp_path / "media2" / f"ZFY_{DEVICE}", files=1, file_mb=0.1, seed=99)


def test_rotation_is_on_the_record_and_everything_signed_before_and_after_verifies(
    tmp_path: Path, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    config = config_factory()
    root = config.station.store_dir
    store = StationStore(root, STATION)
    before = _offload(store, config, volume)
    old = store.key
    store.close()

    result = rotate_station_key(root, STATION, reason="yearly rotation", by="admin")

    assert (result.old_key_id, result.old_key_lost) == (old.key_id, False)
    retired = retired_key_path(root / "keys" / "station.key", old.key_id)
    assert result.retired_path == retired
    assert StationKey.load(retired).key_id == old.key_id and retired.stat().st_mode & 0o777 == 0o600
    assert load_public_key(retired.with_name(retired.name + ".pub")) is not None
    assert key_id_of(load_public_key(root / "keys" / "station.key.pub")) == result.new_key_id
    assert not staged_key_path(root / "keys" / "station.key").exists()
    store = StationStore(root, STATION)
    assert store.key.key_id == result.new_key_id
    entry = next(e for e in store.ledger.entries() if e.type == KEY_ROTATED)
    assert entry.seq == result.seq and entry.data["old_key"] == "retired"
    assert entry.data["reason"] == "yearly rotation" and entry.data["by"] == "admin"
    assert (entry.data["old_key_id"], entry.data["new_key_id"]) == (old.key_id, result.new_key_id)
    signers = [cp.key_id for cp in store.ledger.checkpoints() if cp.seq == entry.seq]
    assert set(signers) == {old.key_id, result.new_key_id}  # the old key vouches for the new one
    # One each: the new key signed as the entry was appended, and its second signature after the old key's
    # is that same row (a third would break a central's limit of two checkpoints per entry).
    assert len(signers) == 2, signers
    # After the rotation the new key seals and signs.
    after = _offload(store, config, _second_volume(tmp_path))
    tag_item(store, before[0], {"case_number": "A-1"}, by="clerk")
    with store.transaction():
        store.ledger.checkpoint()
    store.close()

    assert _problems(root) == []
    # The key pinned at enrollment (the old one) still verifies: the old key signed the rotation.
    assert _problems(root, pinned_key=old.public_key()) == []
    rows = sqlite3.connect(root / "state.db").execute("SELECT item, path FROM items")
    sealed = {item: path for item, path in rows}
    assert verify_file(root / sealed[before[0]]).ok and verify_file(root / sealed[after[0]]).ok


def _rotated(tmp_path: Path) -> tuple[Path, StationKey, int]:
    """A store rotated once, with entries signed by the new key after it; returns the rotation's seq."""
    root = tmp_path / "store"
    _history(root)
    old = StationKey.load(root / "keys" / "station.key")
    result = rotate_station_key(root, STATION)
    store = _open(root)
    store.record("station_started", None, {"station": STATION})
    with store.transaction():
        store.ledger.checkpoint()
    store.close()
    assert _problems(root) == []
    return root, old, result.seq


def _insert_checkpoint(root: Path, key: StationKey, seq: int) -> None:
    conn = sqlite3.connect(root / "state.db")
    try:
        (hash_hex,) = conn.execute("SELECT hash FROM ledger WHERE seq=?", (seq,)).fetchone()
        time = "2030-01-01T00:00:00.000000Z"
        signature = base64.b64encode(key.sign(checkpoint_payload(STATION, seq, hash_hex, time))).decode()
        with conn:
            conn.execute(
                "INSERT INTO ledger_checkpoints (station, seq, hash, time, key_id, signature) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (STATION, seq, hash_hex, time, key.key_id, signature),
            )
    finally:
        conn.close()


def test_a_replaced_public_key_file_is_named(tmp_path: Path) -> None:
    root, _old, _seq = _rotated(tmp_path)
    intruder = StationKey.generate()
    (root / "keys" / "station.key.pub").write_bytes(intruder.public_pem())
    problems = _problems(root)
    pub = root / "keys" / "station.key.pub"
    expected = f"key {pub}: is key {intruder.key_id}, which the ledger never announced"
    assert any(expected in p for p in problems), problems


def test_a_checkpoint_by_an_unannounced_key_is_named(tmp_path: Path) -> None:
    root, _old, _new = _rotated(tmp_path)
    intruder = StationKey.generate()
    _insert_checkpoint(root, intruder, 1)
    problems = _problems(root)
    expected = f"checkpoint seq 1: signed by key '{intruder.key_id}', which no key_rotated entry announced"
    assert any(expected in p for p in problems), problems


def test_the_retired_key_signing_after_its_rotation_is_named(tmp_path: Path) -> None:
    root, old, rotated_at = _rotated(tmp_path)
    head = sqlite3.connect(root / "state.db").execute("SELECT MAX(seq) FROM ledger").fetchone()[0]
    _insert_checkpoint(root, old, head)
    problems = _problems(root)
    expected = f"checkpoint seq {head}: signed by key {old.key_id}, which was retired at seq {rotated_at}"
    assert any(expected in p for p in problems), problems


def test_an_unsigned_key_change_is_named(tmp_path: Path) -> None:
    """A key_rotated entry that claims the old key was retired, but that key never signed it."""
    root = tmp_path / "store"
    _history(root)
    old = StationKey.load(root / "keys" / "station.key")
    new = StationKey.generate()
    conn = sqlite3.connect(root / "state.db", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        ledger = Ledger(conn, STATION, new)
        data = rotation_data(old.key_id, old.public_key_b64, new.key_id, new.public_key_b64,
                             old_key_lost=False, reason="", by="intruder")
        entry = ledger.append(KEY_ROTATED, None, data)
        ledger.checkpoint()
        conn.execute("COMMIT")
    finally:
        conn.close()
    (root / "keys" / "station.key.pub").write_bytes(new.public_pem())
    problems = _problems(root)
    expected = f"ledger seq {entry.seq}: key rotation from {old.key_id} to {new.key_id} carries no checkpoint"
    assert any(expected in p and "signed by the old key" in p for p in problems), problems


def test_a_rotation_entry_announcing_the_wrong_key_is_named(tmp_path: Path) -> None:
    root, _old, rotated_at = _rotated(tmp_path)
    conn = sqlite3.connect(root / "state.db")
    try:
        conn.execute("DROP TRIGGER ledger_no_update")
        data = conn.execute("SELECT data FROM ledger WHERE type='key_rotated'").fetchone()[0]
        new_id = key_id_of(load_public_key(root / "keys" / "station.key.pub"))
        forged = data.replace(new_id, "0" * 32)
        with conn:
            conn.execute("UPDATE ledger SET data=? WHERE type='key_rotated'", (forged,))
    finally:
        conn.close()
    problems = _problems(root)
    assert any("key_rotated entry is malformed: new_public_key is key" in p for p in problems), problems
    assert any(f"ledger seq {rotated_at}: content does not match its hash" in p for p in problems), problems


def test_a_lost_key_is_rotated_on_the_record(tmp_path: Path) -> None:
    root = tmp_path / "store"
    old_id = _history(root)
    old_pub = tmp_path / "enrolled.pub"
    shutil.copy2(root / "keys" / "station.key.pub", old_pub)
    (root / "keys" / "station.key").unlink()
    with pytest.raises(RotationError, match="is missing: if it is lost for good, run again with --lost-key"):
        rotate_station_key(root, STATION)
    (root / "keys" / "station.key.pub").unlink()
    with pytest.raises(RotationError, match="give --old-public-key FILE"):
        rotate_station_key(root, STATION, lost_key=True)
    wrong = StationKey.generate()
    (tmp_path / "wrong.pub").write_bytes(wrong.public_pem())
    expected = f"is key {wrong.key_id}, but the ledger is signed with key {old_id}"
    with pytest.raises(RotationError, match=expected):
        rotate_station_key(root, STATION, lost_key=True, old_public_key=tmp_path / "wrong.pub")

    result = rotate_station_key(root, STATION, lost_key=True, old_public_key=old_pub, reason="disk died")

    assert result.old_key_lost and result.retired_path is None and result.old_key_id == old_id
    store = _open(root)
    entry = next(e for e in store.ledger.entries() if e.type == KEY_ROTATED)
    assert entry.data["old_key"] == "lost"
    assert {cp.key_id for cp in store.ledger.checkpoints() if cp.seq == entry.seq} == {result.new_key_id}
    store.close()
    assert _problems(root) == []
    # Whoever pinned the lost key learns that nothing it signed vouches for the new one.
    pinned = _problems(root, pinned_key=load_public_key(old_pub))
    assert pinned == [
        f"ledger seq {entry.seq}: key {result.new_key_id} replaced the lost key {old_id}; nothing the "
        f"trusted key {old_id} signed vouches for it: trust the new key (from the re-enrollment) to verify "
        "beyond this seq"
    ]
    with pytest.raises(RotationError, match="is not lost: rotate without --lost-key"):
        rotate_station_key(root, STATION, lost_key=True)


def test_a_crash_after_the_ledger_entry_is_finished_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    old_id = _history(root)

    def power_cut(*_args: object) -> StationKey:
        raise RuntimeError("power cut")

    monkeypatch.setattr(key_rotation, "finish_rotation", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        rotate_station_key(root, STATION)
    monkeypatch.undo()
    key_file = root / "keys" / "station.key"
    staged = staged_key_path(key_file)
    new_id = StationKey.load(staged).key_id
    assert StationKey.load(key_file).key_id == old_id  # the files were not moved yet
    (root / "keys" / "station.key.pub").unlink()  # and the crash came in the middle of moving them

    store = _open(root)
    assert store.key.key_id == new_id
    store.close()
    assert StationKey.load(retired_key_path(key_file, old_id)).key_id == old_id
    assert not staged.exists()
    assert _problems(root) == []


def test_a_rotation_that_never_reached_the_ledger_leaves_the_old_key_in_force(tmp_path: Path) -> None:
    root = tmp_path / "store"
    old_id = _history(root)
    staged = staged_key_path(root / "keys" / "station.key")
    StationKey.generate().save_new(staged)  # written, then the power went before the ledger commit
    store = _open(root)
    assert store.key.key_id == old_id
    store.close()
    assert not staged.exists()


def test_edge_keys_rotate_says_what_to_do_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "station.toml"
    config.write_text(f'[station]\nid = "{STATION}"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n')
    _history(tmp_path / "store")
    assert main(["keys", "rotate", "--config", str(config), "--reason", "audit finding 7"]) == 0
    out = capsys.readouterr().out
    assert f"edge central enroll {STATION} --signing-key station.key.pub --out DIR" in out
    assert f"New public key: {tmp_path / 'store' / 'keys' / 'station.key.pub'}" in out
    (tmp_path / "store" / "keys" / "station.key").unlink()
    assert main(["run", "--config", str(config)]) == 78
    assert "edge keys rotate --config FILE --lost-key" in capsys.readouterr().err
