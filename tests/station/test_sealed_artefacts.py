"""What is sealed, what leaves the station, and what is checked before a recorder file is erased
(issue 7, 1.6, second part).

* Signed manifests and ledger entries carry no station path, even when ffprobe fails on a file and
  names the temp copy it read.
* A recorder file that already carries a top-level evidence box (a sealed file brought back onto a
  recorder, or a forged box) gets no second box: it is sealed by sidecar only, the reason on record.
* Before anything is erased, the sealed artefact as stored is verified (signature with the station's
  pinned key, prefix hash, the manifest the ledger recorded). A tampered one is rebuilt from the
  recorder's file when that still gives the item's hash (issue 7, 1.9), and verified again before the
  file is erased; when the recorder cannot give it back, the recorder's file is kept.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge.config.station import StationConfig
from edge.custody.canonical import canonical_json
from edge.custody.isobmff import evidence_box, find_evidence_box
from edge.custody.keys import StationKey
from edge.custody.ledger import EntryType
from edge.custody.manifest import manifest_bytes, sign_manifest
from edge.custody.seal import sidecar_path, write_sidecar
from edge.ingest.key_rotation import rotate_station_key
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, VolumeOffload
from edge.verify.station import verify_file, verify_store

from .conftest import session_info, volume_hashes

VIDEO_DIR = Path("DCIM/100MEDIA")


async def offload(store: StationStore, config: StationConfig, root: Path, **kwargs: Any) -> Any:
    return await VolumeOffload(store, config, session_info(), root, **kwargs).run()


def item_rows(store: StationStore) -> dict[str, dict[str, Any]]:
    """original path -> row (item, path, sealed_in_file, manifest)."""
    rows = {}
    for row in store.conn.execute("SELECT item, path, sealed_in_file, manifest FROM items"):
        manifest = json.loads(row["manifest"])
        rows[manifest["original"]["path"]] = {**dict(row), "manifest": manifest}
    return rows


def everything_that_leaves(store: StationStore) -> str:
    """The ledger entries, index manifests and sidecars, as one text (what the uplink can send)."""
    texts = [canonical_json(e.data).decode() for e in store.ledger.entries()]
    texts += [str(r[0]) for r in store.conn.execute("SELECT manifest FROM items")]
    texts += [p.read_text() for p in store.layout.items.rglob("*.manifest.json")]
    return "\n".join(texts)


# -- station paths -----------------------------------------------------------------------------------


async def test_no_station_path_in_manifests_or_ledger_when_ffprobe_fails(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    junk = volume / VIDEO_DIR / "ZFY_JUNK_0009.AVI"
    junk.write_bytes(os.urandom(20000))
    result = await offload(store, config_factory(wipe={"policy": "never"}), volume)
    assert result.outcome is OffloadOutcome.DONE, result.errors
    row = item_rows(store)[str(VIDEO_DIR / junk.name)]
    assert "error" in row["manifest"]["media"], "ffprobe cannot read it: the media facts say why"
    needle = str(store.layout.root)
    leaving = everything_that_leaves(store)
    assert needle not in leaving
    assert ".part" not in leaving
    assert verify_store(store.layout.root).ok
    # Control: the search sees the ledger, so a path that leaked into a field that is kept exactly
    # (device data is) would be found.
    store.record(EntryType.REFUSED, None, {"original": f"{needle}/tmp/x.part"})
    assert needle in everything_that_leaves(store)


def test_error_prose_on_the_ledger_never_carries_a_station_path(store: StationStore) -> None:
    part = store.layout.tmp_copy("0f6c4f7e-7a88-4b44-9f2c-2a3b1c0d9e8f")
    oserror = FileNotFoundError(2, "No such file or directory", str(part))
    entry = store.record(
        EntryType.ERROR,
        None,
        {"stage": "verify", "reason": f"DCIM/1.MP4: {oserror}", "original": "DCIM/1.MP4",
         "nested": [{"detail": f"cannot append the evidence box to {part}: No space left on device"}]},
    )
    text = canonical_json(entry.data).decode()
    assert str(store.layout.root) not in text and ".part" not in text
    assert entry.data["reason"] == "DCIM/1.MP4: [Errno 2] No such file or directory: '<station path>'"
    assert entry.data["original"] == "DCIM/1.MP4", "device data is kept exactly"
    assert str(part) in str(oserror), "control: the exception names the temp path"


# -- re-docked and forged evidence boxes ---------------------------------------------------------------


async def test_a_sealed_file_brought_back_to_a_recorder_is_sealed_by_sidecar_only(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    first = await offload(store, config_factory(wipe={"policy": "never"}), volume)
    assert first.outcome is OffloadOutcome.DONE, first.errors
    earlier = next(r for r in item_rows(store).values() if r["sealed_in_file"])
    sealed_copy = (store.layout.root / earlier["path"]).read_bytes()
    brought_back = volume / VIDEO_DIR / "ZFY_BACK_0009.MP4"
    brought_back.write_bytes(sealed_copy)
    truth = volume_hashes(volume)

    second = await offload(store, config_factory(), volume)

    assert second.outcome is OffloadOutcome.DONE, second.errors
    row = item_rows(store)[str(VIDEO_DIR / brought_back.name)]
    stored = store.layout.root / row["path"]
    assert stored.read_bytes() == sealed_copy, "no second box: the file is kept exactly as it came"
    report = verify_store(store.layout.root)
    assert report.ok, report.problems
    assert row["sealed_in_file"] == 0
    assert row["manifest"]["seal"]["embedded"] is False
    assert "already carries an evidence-edge box" in row["manifest"]["seal"]["reason"]
    verified = next(e.data for e in store.ledger.entries(item=row["item"]) if e.type == "verified")
    assert verified["embedded"] is False and "already carries" in verified["sidecar_reason"]
    assert verified["evidence_box_in_original"] == {
        "offset": earlier["manifest"]["size"], "verifies": True, "item": earlier["item"]
    }
    assert volume_hashes(volume) == {}, "verified as sealed (by sidecar), so erased from the recorder"
    assert set(truth.values()) <= {r["manifest"]["sha256"] for r in item_rows(store).values()}
    assert verify_file(stored).ok


def _forged_box_file(original: bytes, *, trailing: bytes) -> bytes:
    stranger = StationKey.generate()
    manifest = sign_manifest(
        {"format": "evidence-edge/manifest/1", "item": "11111111-2222-4333-8444-555555555555",
         "sha256": "0" * 64, "size": len(original), "source": {"station": "ELSEWHERE"}, "time": {},
         "case": {}, "chain": {"seq": 1, "entry_hash": "0" * 64}},
        stranger,
    )
    signature = bytearray(base64.b64decode(manifest["signature"]["value"]))
    signature[0] ^= 1  # a bad signature
    manifest["signature"]["value"] = base64.b64encode(bytes(signature)).decode()
    return original + evidence_box(manifest_bytes(manifest)) + trailing


@pytest.mark.parametrize("trailing", [b"", b"\x00\x00\x00\x10free" + bytes(8)], ids=["last", "not-last"])
async def test_a_forged_evidence_box_stays_part_of_the_original(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig], trailing: bytes
) -> None:
    victim = sorted((volume / VIDEO_DIR).glob("*.MP4"))[0]
    forged = _forged_box_file(victim.read_bytes(), trailing=trailing)
    victim.write_bytes(forged)
    result = await offload(store, config_factory(wipe={"policy": "never"}), volume)
    assert result.outcome is OffloadOutcome.DONE, result.errors
    row = item_rows(store)[str(VIDEO_DIR / victim.name)]
    stored = store.layout.root / row["path"]
    assert stored.read_bytes() == forged, "no box of ours appended after the forged one"
    report = verify_store(store.layout.root)
    assert report.ok, report.problems
    assert row["sealed_in_file"] == 0 and row["manifest"]["seal"]["embedded"] is False
    verified = next(e.data for e in store.ledger.entries(item=row["item"]) if e.type == "verified")
    assert verified["evidence_box_in_original"]["verifies"] is False
    assert "item" not in verified["evidence_box_in_original"], "a forged manifest's fields are not repeated"
    # Control: without its sidecar the stored file is judged by the forged box, which fails.
    sidecar_path(stored).rename(stored.with_name("moved-away.json"))
    assert not verify_file(stored).ok


# -- verified before erasing ----------------------------------------------------------------------------


def after_receipt(config_factory: Callable[..., StationConfig], tmp_path: Path) -> StationConfig:
    # The uplink itself is not started here: the offload asks the gate below, as it asks the uplink.
    return config_factory(
        wipe={"policy": "after-receipt", "receipt_wait_s": 1},
        uplink={"central_url": "https://central.invalid:8443", "identity_dir": str(tmp_path / "identity")},
    )


class TamperingReceipts:
    """The uplink as the offload sees it under after-receipt; while the offload waits for receipts
    (the window between sealing and erasing), `tamper` changes the store; then all are receipted."""

    def __init__(self, tamper: Callable[[], None]) -> None:
        self.tamper = tamper
        self.sealed: list[str] = []

    def item_sealed(self, item: str) -> None:
        self.sealed.append(item)

    async def wait_receipts(self, items: Sequence[str], timeout_s: float) -> set[str]:
        self.tamper()
        return set(items)


def _resign(store: StationStore, row: dict[str, Any], key: StationKey) -> None:
    """Replace the item's manifest (box and sidecar) by the same one signed with `key`."""
    stored = store.layout.root / row["path"]
    manifest = {k: v for k, v in row["manifest"].items() if k != "signature"}
    forged = sign_manifest(manifest, key)
    if row["sealed_in_file"]:
        with stored.open("r+b") as f:
            f.truncate(row["manifest"]["size"])
            f.seek(row["manifest"]["size"])
            f.write(evidence_box(manifest_bytes(forged)))
    write_sidecar(stored, forged)


def _flip_prefix_byte(store: StationStore, row: dict[str, Any]) -> None:
    with (store.layout.root / row["path"]).open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))


def _swap_with(store: StationStore, row: dict[str, Any], other: dict[str, Any]) -> None:
    """Put another item's sealed file and sidecar (both genuinely signed) in place of this one's."""
    stored, theirs = store.layout.root / row["path"], store.layout.root / other["path"]
    shutil.copyfile(theirs, stored)
    shutil.copyfile(sidecar_path(theirs), sidecar_path(stored))


TAMPERS = ["resigned-box-and-key-file", "resigned-sidecar", "prefix-byte", "swapped-for-another-item"]


def _tamper(store: StationStore, tamper: str, victim: dict[str, Any]) -> None:
    rows = item_rows(store)
    mp4s = [r for r in rows.values() if r["sealed_in_file"]]
    others = [r for r in rows.values() if not r["sealed_in_file"]]
    victim.update(others[0] if tamper == "resigned-sidecar" else mp4s[0])
    victim["sealed_bytes"] = (store.layout.root / victim["path"]).read_bytes()
    if tamper == "resigned-box-and-key-file":
        stranger = StationKey.generate()
        _resign(store, victim, stranger)
        # Whoever can rewrite the store can replace its public key file too: the pinned key counts.
        os.chmod(store.layout.public_key, 0o600)
        store.layout.public_key.write_bytes(stranger.public_pem())
    elif tamper == "resigned-sidecar":
        _resign(store, victim, StationKey.generate())
    elif tamper == "prefix-byte":
        _flip_prefix_byte(store, victim)
    else:
        _swap_with(store, victim, mp4s[1])


@pytest.mark.parametrize("tamper", TAMPERS)
async def test_a_sealed_copy_tampered_before_erasing_is_rebuilt_from_the_recorder_before_erasing(
    store: StationStore,
    volume: Path,
    config_factory: Callable[..., StationConfig],
    tmp_path: Path,
    tamper: str,
) -> None:
    victim: dict[str, Any] = {}
    config = after_receipt(config_factory, tmp_path)
    gate = TamperingReceipts(lambda: _tamper(store, tamper, victim))
    result = await offload(store, config, volume, receipts=gate)

    assert volume_hashes(volume) == {}, "every file erased, the tampered item's once its copy was rebuilt"
    assert (store.layout.root / victim["path"]).read_bytes() == victim["sealed_bytes"]
    entries = list(store.ledger.entries(item=victim["item"]))
    found = [e for e in entries if e.type == "error" and e.data.get("stage") == "stored copy"]
    assert [e.data["found_by"] for e in found] == ["check before erasing"]
    assert [e.type for e in entries][-2:] == ["reacquired", "wiped"]
    wiped = [e.data for e in store.ledger.entries() if e.type == "wiped"]
    assert all(w["verified_before_erasing"]["signature_key"] == store.key.key_id for w in wiped)
    assert all(w["verified_before_erasing"]["stored_read"] for w in wiped)
    assert result.outcome is OffloadOutcome.DONE, result.errors


@pytest.mark.parametrize("tamper", TAMPERS)
async def test_a_sealed_copy_tampered_before_erasing_keeps_a_recorder_file_that_cannot_rebuild_it(
    store: StationStore,
    volume: Path,
    config_factory: Callable[..., StationConfig],
    tmp_path: Path,
    tamper: str,
) -> None:
    """The same tampering, and the recorder's file no longer gives the item's hash either (the same size
    and mtime, other bytes): nothing is rebuilt from it and it is not erased."""
    truth = volume_hashes(volume)
    victim: dict[str, Any] = {}

    def act() -> None:
        _tamper(store, tamper, victim)
        original = volume / victim["manifest"]["original"]["path"]
        info = original.stat()
        data = bytearray(original.read_bytes())
        data[100] ^= 0xFF
        original.write_bytes(bytes(data))
        os.utime(original, ns=(info.st_atime_ns, info.st_mtime_ns))

    config = after_receipt(config_factory, tmp_path)
    result = await offload(store, config, volume, receipts=TamperingReceipts(act))

    left = volume_hashes(volume)
    assert list(left) == [victim["manifest"]["original"]["path"]], "only the tampered item's file stays"
    assert result.wiped == len(truth) - 1
    errors = [e.data["reason"] for e in store.ledger.entries(item=victim["item"]) if e.type == "error"]
    assert any("not erased" in r and victim["item"] in r for r in errors), errors
    assert not [e for e in store.ledger.entries(item=victim["item"]) if e.type == "reacquired"]
    wiped = [e.data for e in store.ledger.entries() if e.type == "wiped"]
    assert all(w["verified_before_erasing"]["signature_key"] == store.key.key_id for w in wiped)


async def test_untampered_after_receipt_erases_everything(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig], tmp_path: Path
) -> None:
    """Control for the tamper cases: the same gate without tampering erases every file."""
    config = after_receipt(config_factory, tmp_path)
    result = await offload(store, config, volume, receipts=TamperingReceipts(lambda: None))
    assert result.outcome is OffloadOutcome.DONE, result.errors
    assert volume_hashes(volume) == {}
    embedded = [r for r in item_rows(store).values() if r["sealed_in_file"]]
    assert len(embedded) >= 2
    for row in embedded:
        stored = store.layout.root / row["path"]
        with stored.open("rb") as f:
            assert find_evidence_box(f, stored.stat().st_size) is not None


async def test_items_sealed_before_a_key_rotation_are_still_erased_after_it(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    """The check before erasing accepts the key in force when an item was sealed, as announced by the
    ledger's key_rotated entry; it trusted only the current key, so older items stayed on the recorder
    for ever (and each docking rebuilt them). The controls are the resigned-* tamper cases above: a
    key the ledger never announced is still refused."""
    first = await offload(store, config_factory(wipe={"policy": "never"}), volume)
    assert first.outcome is OffloadOutcome.DONE, first.errors
    truth = volume_hashes(volume)
    root, station = store.layout.root, store.station_id
    store.close()
    rotate_station_key(root, station, reason="yearly rotation", by="test")
    rotated = StationStore(root, station)
    try:
        second = await offload(rotated, config_factory(), volume)
        assert second.outcome is OffloadOutcome.DONE, second.errors
        assert volume_hashes(volume) == {}, "every item sealed under the old key erased"
        wiped = [e.data for e in rotated.ledger.entries() if e.type == "wiped"]
        assert len(wiped) == len(truth)
        old_key = next(e.data for e in rotated.ledger.entries() if e.type == "key_rotated")["old_key_id"]
        assert {w["verified_before_erasing"]["signature_key"] for w in wiped} == {old_key}
        assert not [e for e in rotated.ledger.entries() if e.type == "reacquired"], "nothing rebuilt"
        assert verify_store(root).ok
    finally:
        rotated.close()

