"""Offloading a recorder volume: copy+hash, verify, seal, wipe — and what the ledger says about it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from edge.config.station import StationConfig
from edge.custody.seal import verify_sealed_file
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, OffloadResult, VolumeOffload
from edge.verify.station import verify_store

from .conftest import session_info, sha256_file, volume_hashes


def ledger_types(store: StationStore, item: str | None = None) -> list[str]:
    return [e.type for e in store.ledger.entries(item=item)]


async def offload(store: StationStore, config: StationConfig, root: Path) -> OffloadResult:
    return await VolumeOffload(store, config, session_info(), root).run()


async def test_every_file_is_sealed_verified_and_wiped(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    before = volume_hashes(volume)
    result = await offload(store, config_factory(), volume)

    assert result.outcome is OffloadOutcome.DONE, result.errors
    assert len(result.items) == len(before) == result.verified == result.wiped
    assert volume_hashes(volume) == {}, "verified files are erased from the recorder"
    assert (volume / "PARAM.INI").exists(), "only evidence files are erased"
    stored = {}
    for item in result.items:
        row = store.conn.execute(
            "SELECT path, sha256, sealed_in_file, manifest FROM items WHERE item=?", (item,)
        ).fetchone()
        manifest = json.loads(row["manifest"])
        stored[manifest["original"]["path"]] = row["sha256"]
        path = store.layout.root / row["path"]
        report = verify_sealed_file(path)
        assert report.ok, report.problems
        assert report.prefix_sha256 == row["sha256"]
        assert bool(row["sealed_in_file"]) == path.name.endswith(".mp4")
        # The second `verified` is the read of the recorder's file just before erasing it.
        assert ledger_types(store, item) == ["acquired", "verified", "sealed", "verified", "wiped"]
        assert manifest["source"]["device_serial"] == "3300001"
        assert manifest["case"]["collector"] == "张伟(110001)"
    assert stored == before, "every stored hash is the hash of the recorder's original bytes"
    assert verify_store(store.layout.root).ok


async def test_sealed_mp4_still_plays_and_its_prefix_is_the_original(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    originals = {p.name: p.read_bytes() for p in volume.rglob("*.MP4")}
    result = await offload(store, config_factory(wipe={"policy": "never"}), volume)
    sealed = [
        store.layout.root / r["path"]
        for r in store.conn.execute("SELECT path FROM items WHERE sealed_in_file=1")
    ]
    assert len(sealed) == len(originals) >= 1
    for path in sealed:
        manifest = json.loads(path.with_name(path.name + ".manifest.json").read_bytes())
        original = originals[manifest["original"]["name"]]
        data = path.read_bytes()
        assert data[: len(original)] == original and len(data) > len(original)
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
            capture_output=True,
            check=True,
        )
        duration = float(json.loads(probe.stdout)["format"]["duration"]) * 1000
        assert abs(duration - manifest["media"]["duration_ms"]) < 50
    assert result.wiped == 0 and len(volume_hashes(volume)) == len(result.items)


async def test_offload_twice_is_idempotent(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    config = config_factory(wipe={"policy": "never"})
    first = await offload(store, config, volume)
    entries = store.ledger.head()[0]
    second = await offload(store, config, volume)
    assert sorted(first.items) == sorted(second.items)
    assert store.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == len(first.items)
    new_types = [e.type for e in store.ledger.entries(start_seq=entries + 1)]
    assert "acquired" not in new_types, "nothing is copied twice"


async def test_no_wipe_without_reread_verification(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    before = volume_hashes(volume)
    result = await offload(
        store, config_factory(offload={"verify_reread": False, "min_free_bytes": 0}), volume
    )
    assert result.wiped == 0
    assert volume_hashes(volume) == before
    reasons = [e.data.get("reason", "") for e in store.ledger.entries() if e.type == "error"]
    assert any("re-read verification is disabled" in r for r in reasons)


async def test_disk_reserve_stops_cleanly_and_leaves_recorder_untouched(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    before = volume_hashes(volume)
    config = config_factory(offload={"min_free_bytes": 1 << 62})
    result = await offload(store, config, volume)
    assert result.outcome is OffloadOutcome.STORE_FULL
    assert volume_hashes(volume) == before
    assert not list(store.layout.tmp.iterdir()), "no partial copies left behind"
    errors = [e.data for e in store.ledger.entries() if e.type == "error"]
    assert any("station disk" in d["reason"] for d in errors)


async def test_stored_copy_hash_matches_file_on_disk(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    other = next(p for p in volume.rglob("*") if p.suffix in (".JPG", ".WAV"))
    expected = sha256_file(other)
    await offload(store, config_factory(), volume)
    row = store.conn.execute("SELECT path FROM items WHERE sha256=?", (expected,)).fetchone()
    assert row is not None and sha256_file(store.layout.root / row["path"]) == expected


async def test_identical_content_is_found_by_hash_and_linked_in_the_ledger(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    original = next(volume.rglob("*_0001.MP4"))
    twin = original.with_name(original.name.replace("_0001", "_0099"))
    twin.write_bytes(original.read_bytes())
    expected = sha256_file(original)
    result = await offload(store, config_factory(), volume)
    assert result.outcome is OffloadOutcome.DONE
    duplicates = [e for e in store.ledger.entries() if e.type == "duplicate"]
    assert len(duplicates) == 1 and duplicates[0].data["sha256"] == expected
    assert len(duplicates[0].data["same_as"]) == 1
    assert verify_store(store.layout.root).ok
