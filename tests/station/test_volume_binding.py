"""A docking's volume is bound to the one mount it was found on, and only the very file whose bytes
were hashed in the docking is ever unlinked (see edge/sources/usb/mounted.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.enumerate import list_volume
from edge.sources.usb.mounted import VolumeGoneError, VolumeRoot, mount_now_at
from edge.sources.usb.offload import BayProgress, OffloadOutcome, VolumeOffload
from simulators.recorder.volume import mount_volume
from tests.mounting import require_volume_mounts

from .conftest import session_info, volume_hashes


def replace_keeping_size_and_mtime(path: Path) -> bytes:
    """Another file at `path` (a new inode) with the same size and mtime, different bytes."""
    info = path.stat()
    other = bytes(b ^ 0xFF for b in path.read_bytes())
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(other)
    os.utime(staged, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.rename(staged, path)
    return other


async def test_a_file_replaced_by_another_with_its_size_and_mtime_after_sealing_is_not_erased(
    volume: Path, store: StationStore, config_factory: Callable[..., StationConfig]
) -> None:
    before = volume_hashes(volume)
    target = volume / sorted(before)[0]
    replaced: list[bytes] = []

    def replace_once_everything_is_sealed(progress: BayProgress) -> None:
        if progress.files_total and progress.verified == progress.files_total and not replaced:
            replaced.append(replace_keeping_size_and_mtime(target))

    result = await VolumeOffload(
        store, config_factory(), session_info(), volume, on_progress=replace_once_everything_is_sealed
    ).run()
    assert replaced
    assert result.outcome is OffloadOutcome.PARTIAL, result.errors
    assert target.read_bytes() == replaced[0], "the file that was never copied is still there"
    assert volume_hashes(volume).keys() == {sorted(before)[0]}, "every other file erased"
    errors = [e.data for e in store.ledger.entries() if e.type == "error"]
    (refusal,) = [data for data in errors if data.get("stage") == "wipe"]
    # The read of the recorder's file before erasing (always made) sees other bytes before the
    # erasure's own identity check (another inode) is reached; either refusal keeps the file.
    reason = refusal["reason"]
    assert "not the acquisition hash" in reason or "another file than the one copied" in reason
    assert result.wiped == len(before) - 1


async def test_without_the_replacement_every_file_is_erased(
    volume: Path, store: StationStore, config_factory: Callable[..., StationConfig]
) -> None:
    """Control for the test above: the same offload erases everything when nothing is replaced."""
    before = volume_hashes(volume)
    result = await VolumeOffload(store, config_factory(), session_info(), volume).run()
    assert result.outcome is OffloadOutcome.DONE, result.errors
    assert result.wiped == len(before) and volume_hashes(volume) == {}


def test_a_root_is_bound_to_its_mount_and_not_to_the_next_one_at_the_same_directory(
    tmp_path: Path, volume_template: Path
) -> None:
    require_volume_mounts()
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(volume_template, first)
    shutil.copytree(volume_template, second)
    bay = tmp_path / "media" / "bay1"
    bay.mkdir(parents=True)
    volume_a = mount_volume(first, bay)
    try:
        mount_a = mount_now_at(bay)
        assert mount_a is not None
        root = VolumeRoot.open(bay, mount_a)
        try:
            assert root.reachable()
            listed = list_volume(root.fd, max_files=100, max_depth=8).files
            volume_a.unmount()  # pulled out: lazily, the session still holds the root open
            volume_b = mount_volume(second, bay)  # and the next recorder docked in the same bay
            try:
                mount_b = mount_now_at(bay)
                assert mount_b is not None and mount_b.identity != mount_a.identity
                assert not root.reachable(), "some mount at the directory is not this docking's"
                with pytest.raises(VolumeGoneError):
                    root.open_file(listed[0])
                with pytest.raises(VolumeGoneError):
                    VolumeRoot.open(bay, mount_a)
                with VolumeRoot.open(bay, mount_b) as other:  # control: the mount that is there now
                    assert other.reachable()
                    os.close(other.open_file(listed[0]))
            finally:
                volume_b.unmount()
        finally:
            root.close()
    finally:
        volume_a.unmount()


def test_a_lost_root_opens_nothing_more(tmp_path: Path, volume: Path) -> None:
    with VolumeRoot.open(volume) as root:
        file = list_volume(root.fd, max_files=100, max_depth=8).files[0]
        os.close(root.open_file(file))  # control
        root.lose("its mount left the mount table")
        assert not root.reachable()
        with pytest.raises(VolumeGoneError, match="left the mount table"):
            root.open_file(file)


def test_a_plain_directory_stays_reachable_while_threads_ask_at_once(tmp_path: Path, volume: Path) -> None:
    """Asked from several threads at once (the copy workers do), a present plain-directory volume is
    reachable every time; listing through the shared descriptor made some answers 'gone'."""
    from concurrent.futures import ThreadPoolExecutor

    for n in range(2000):  # a wide directory makes a listing slow enough to interleave
        (volume / f"filler-{n:04d}").write_bytes(b"")
    with VolumeRoot.open(volume) as root, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: root.reachable(), range(400)))
        assert all(answers), f"{answers.count(False)} of {len(answers)} answers said gone"
        # Control: the directory replaced at the same path is not the bound volume any more.
        volume.rename(tmp_path / "moved-away")
        volume.mkdir()
        assert not root.reachable()
