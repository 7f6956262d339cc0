"""Device faults during an offload, through a real FUSE volume that misbehaves like a failing recorder.

Each fault must leave: a clear ledger error, nothing erased that was not verified, and every other
file of the volume acquired. The stored copy is always the recorder's true bytes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, OffloadResult, VolumeOffload
from edge.verify.station import verify_store
from simulators.recorder.faultfs import VolumeFaults
from simulators.recorder.volume import MountedVolume, check_fuse_available, mount_volume
from tests.prerequisites import require

from .conftest import session_info, volume_hashes

FIRST_VIDEO = "*_0001.MP4"


@pytest.fixture
def backing(volume_template: Path, tmp_path: Path) -> Path:
    try:
        check_fuse_available()
    except Exception as exc:
        require(False, f"FUSE unavailable: {exc}")
    root = tmp_path / "backing"
    shutil.copytree(volume_template, root)
    return root


@pytest.fixture
def mount(backing: Path, tmp_path: Path) -> Iterator[Callable[[VolumeFaults], MountedVolume]]:
    mounted: list[MountedVolume] = []

    def make(faults: VolumeFaults) -> MountedVolume:
        volume = mount_volume(
            backing, tmp_path / "media" / "ZFY_3300001", faults=faults, unplug_marker=tmp_path / "UNPLUGGED"
        )
        mounted.append(volume)
        return volume

    yield make
    for volume in mounted:
        volume.unmount()


def errors(store: StationStore) -> list[str]:
    return [str(e.data.get("reason", "")) for e in store.ledger.entries() if e.type == "error"]


async def run(store: StationStore, config: StationConfig, root: Path) -> OffloadResult:
    return await VolumeOffload(store, config, session_info(), root).run()


async def test_transient_bit_flip_is_caught_by_the_second_read_and_copied_again(
    store: StationStore,
    backing: Path,
    mount: Callable[[VolumeFaults], MountedVolume],
    config_factory: Callable[..., StationConfig],
) -> None:
    truth = volume_hashes(backing)
    volume = mount(VolumeFaults(bit_flip=(FIRST_VIDEO, 1000)))
    config = config_factory(offload={"reread_original": True})
    result = await run(store, config, volume.mount_point)
    assert result.outcome is OffloadOutcome.PARTIAL  # it recovered, but the event is on the record
    assert any("inconsistent device reads" in e for e in errors(store))
    stored = {r["sha256"] for r in store.conn.execute("SELECT sha256 FROM items")}
    assert stored == set(truth.values()), "only true bytes are sealed"
    assert volume_hashes(backing) == {}, "every file verified, so every file erased"
    assert verify_store(store.layout.root).ok


async def test_without_reread_original_a_transient_bit_flip_is_not_seen(
    store: StationStore,
    backing: Path,
    mount: Callable[[VolumeFaults], MountedVolume],
    config_factory: Callable[..., StationConfig],
) -> None:
    """The control of the test above, and the cost the default (`reread_original = false`) accepts:
    a device that returns a wrong byte once, without an I/O error, is read once and that is what is
    hashed and stored (README, Performance)."""
    truth = volume_hashes(backing)
    volume = mount(VolumeFaults(bit_flip=(FIRST_VIDEO, 1000)))
    result = await run(store, config_factory(wipe={"policy": "never"}), volume.mount_point)
    assert result.outcome is OffloadOutcome.DONE and errors(store) == []
    stored = {r["sha256"] for r in store.conn.execute("SELECT sha256 FROM items")}
    assert len(stored - set(truth.values())) == 1, "the flipped read was hashed and stored"
    verified = [e.data for e in store.ledger.entries() if e.type == "verified"]
    assert verified and not any(v["source_reread"] for v in verified)


async def test_read_error_fails_that_file_only_and_it_stays_on_the_recorder(
    store: StationStore,
    backing: Path,
    mount: Callable[[VolumeFaults], MountedVolume],
    config_factory: Callable[..., StationConfig],
) -> None:
    truth = volume_hashes(backing)
    volume = mount(VolumeFaults(read_error=(FIRST_VIDEO, 4096)))
    result = await run(store, config_factory(), volume.mount_point)
    assert result.outcome is OffloadOutcome.PARTIAL
    left = volume_hashes(backing)
    assert len(left) == 1 and next(iter(left)).endswith("_0001.MP4"), "the unreadable file is kept"
    assert len(result.items) == len(truth) - 1
    assert any("read failed" in e for e in errors(store))
    failed = store.conn.execute("SELECT state, attempts FROM acquisitions WHERE state='failed'").fetchall()
    assert [(r["state"], r["attempts"]) for r in failed] == [("failed", 3)]


async def test_file_vanishing_mid_copy_is_recorded_and_not_sealed(
    store: StationStore,
    backing: Path,
    mount: Callable[[VolumeFaults], MountedVolume],
    config_factory: Callable[..., StationConfig],
) -> None:
    truth = volume_hashes(backing)
    volume = mount(VolumeFaults(vanish=FIRST_VIDEO))
    result = await run(store, config_factory(), volume.mount_point)
    assert result.outcome is OffloadOutcome.PARTIAL
    assert len(result.items) == len(truth) - 1
    stored = {r["sha256"] for r in store.conn.execute("SELECT sha256 FROM items WHERE path IS NOT NULL")}
    assert stored <= set(truth.values())
    assert errors(store)


async def test_file_growing_mid_copy_is_never_sealed_half_or_erased(
    store: StationStore,
    backing: Path,
    mount: Callable[[VolumeFaults], MountedVolume],
    config_factory: Callable[..., StationConfig],
) -> None:
    truth = volume_hashes(backing)
    volume = mount(VolumeFaults(grow=FIRST_VIDEO))
    result = await run(store, config_factory(), volume.mount_point)
    assert result.outcome is OffloadOutcome.PARTIAL
    assert any("grew" in e or "changed" in e for e in errors(store))
    left = volume_hashes(backing)
    assert list(left) == [k for k in truth if k.endswith("_0001.MP4")], "the changing file is not erased"
    stored = {r["sha256"] for r in store.conn.execute("SELECT sha256 FROM items WHERE path IS NOT NULL")}
    assert stored == {v for k, v in truth.items() if not k.endswith("_0001.MP4")}


async def test_recorder_pulled_mid_copy_erases_nothing_and_resumes_on_redock(
    store: StationStore,
    backing: Path,
    mount: Callable[[VolumeFaults], MountedVolume],
    config_factory: Callable[..., StationConfig],
) -> None:
    truth = volume_hashes(backing)
    volume = mount(VolumeFaults(unplug_after_bytes=400_000))
    config = config_factory()
    result = await run(store, config, volume.mount_point)
    assert result.outcome is OffloadOutcome.DEVICE_GONE
    assert volume_hashes(backing) == truth, "nothing erased when the recorder went away"
    volume.unmount()
    # Docked again: the offload resumes and completes; nothing is acquired twice.
    healthy = mount(VolumeFaults())
    second = await run(store, config, healthy.mount_point)
    assert second.outcome is OffloadOutcome.DONE, second.errors
    stored = [r["sha256"] for r in store.conn.execute("SELECT sha256 FROM items WHERE path IS NOT NULL")]
    assert sorted(stored) == sorted(truth.values())
    assert volume_hashes(healthy.mount_point) == {}
    assert not list(store.layout.tmp.iterdir()), "no partial copy is left behind"
    assert verify_store(store.layout.root).ok
