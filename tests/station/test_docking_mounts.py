"""The station agent with volumes mounted as production mounts them: each bay's recorder is mounted at
the same directory every time, a directory that is there before the first docking and stays after
each one; mounts can come before their content, and go away in the middle of a copy."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.offload import BayProgress, OffloadOutcome, VolumeOffload
from edge.verify.station import verify_store
from simulators.recorder.faultfs import VolumeFaults
from simulators.recorder.media import make_mp4
from simulators.recorder.volume import is_mounted, mount_volume, recorder_file_name
from tests.mounting import require_volume_mounts

from .conftest import session_info, volume_hashes
from .harness import Station, simulated_station, spec


def evidence_on(station: Station, serial: str) -> list[str]:
    return sorted(n for n in station.bus.volume_files(serial) if not n.endswith("PARAM.INI"))


def record_on(station: Station, serial: str, officer_no: str, seq: int) -> str:
    """The recorder records another clip during the next shift (written to its own storage)."""
    when = datetime(2024, 6, 4, 9, 0, seq)
    name = recorder_file_name(officer_no, serial, when, seq, False, "MP4")
    target = station.bus.state_dir / "recorders" / serial / "volume" / "DCIM" / "100MEDIA" / name
    make_mp4(target, size_bytes=150_000, seed=seq, creation_time=when)
    os.utime(target, (when.timestamp(), when.timestamp()))
    return f"DCIM/100MEDIA/{name}"


async def wait_ledger(station: Station, type_: str, count: int = 1, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while len(station.ledger(type_)) < count:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("msc_only", [False, True], ids=["control-mode", "mass-storage-only"])
async def test_the_second_docking_in_the_same_bay_is_offloaded(tmp_path: Path, msc_only: bool) -> None:
    s = spec(0, files=2, msc_only=msc_only)
    async with simulated_station(tmp_path, [s]) as station:
        bay_directory = station.bus.bay_directory("1-1.1")
        assert bay_directory.is_dir() and not is_mounted(bay_directory), "there before the first docking"
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1, timeout_s=30)
        assert station.agent.results[0].outcome is OffloadOutcome.DONE
        assert evidence_on(station, s.device_serial) == []
        await station.undock(s.device_serial, 1)
        assert bay_directory.is_dir() and not is_mounted(bay_directory), "left behind, as systemd does"

        new_clip = record_on(station, s.device_serial, s.officer_no, 7)
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(2, timeout_s=30)
        second = station.agent.results[1]
        assert second.outcome is OffloadOutcome.DONE and len(second.items) == 1
        assert evidence_on(station, s.device_serial) == []
        acquired = [e["original"] for e in station.ledger("acquired")]
        assert acquired.count(new_clip) == 1 and len(acquired) == 3
        # Two dockings, two mounts of the one bay directory, both on the record.
        mounts = [e for e in station.ledger("device_connected") if e.get("source") == "volume"]
        assert len(mounts) == 2 and {m["volume"] for m in mounts} == {bay_directory.name}
    assert verify_store(tmp_path / "store").ok


async def test_a_symlink_posing_as_a_volume_is_refused_at_once_and_a_real_mount_is_not(
    tmp_path: Path,
) -> None:
    s = spec(0, files=2)
    async with simulated_station(tmp_path, [s]) as station:
        recorder_storage = station.bus.state_dir / "recorders" / s.device_serial / "volume"
        before = evidence_on(station, s.device_serial)
        fake = station.config.usb.mount_root / "bay-9"
        fake.symlink_to(recorder_storage, target_is_directory=True)
        await wait_ledger(station, "refused")
        refused = station.ledger("refused")
        assert refused == [{"volume": "bay-9", "reason": refused[0]["reason"]}]
        assert "symlink" in refused[0]["reason"]
        assert station.ledger("session_started") == [] and station.ledger("acquired") == []
        # The control: the same storage, really mounted in the same place, is a docking.
        fake.unlink()
        fake.mkdir()
        volume = await asyncio.get_running_loop().run_in_executor(
            None, lambda: mount_volume(recorder_storage, fake)
        )
        try:
            await station.wait_results(1, timeout_s=30)
            result = station.agent.results[0]
            assert result.outcome is OffloadOutcome.DONE and len(result.items) == len(before)
        finally:
            volume.unmount()
        assert len(station.ledger("refused")) == 1


async def test_unplugged_mid_copy_ends_as_device_gone_and_resumes_when_mounted_again(tmp_path: Path) -> None:
    # Slow enough (USB 2.0 at its worst) that the recorder is pulled while a file is being copied.
    s = spec(0, files=3, file_mb=1.0, rate_limit_bytes_per_s=1_000_000)
    async with simulated_station(tmp_path, [s]) as station:
        truth = station.bus.volume_files(s.device_serial)
        await station.dock_recorder(s.device_serial, 1)
        async with asyncio.timeout(30):
            while (view := station.agent.views.get(s.device_serial)) is None or view.progress.bytes_done == 0:
                await asyncio.sleep(0.01)
        await station.undock(s.device_serial, 1)
        await station.wait_results(1, timeout_s=30)
        first = station.agent.results[0]
        assert first.outcome is OffloadOutcome.DEVICE_GONE, first.errors
        assert station.bus.volume_files(s.device_serial) == truth, "nothing erased from a gone volume"
        assert [e for e in station.ledger("wiped")] == []

        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(2, timeout_s=60)
        second = station.agent.results[1]
        assert second.outcome is OffloadOutcome.DONE, second.errors
        sealed = {e["original"] for e in station.ledger("acquired")}
        assert sealed == {n for n in truth if not n.endswith("PARAM.INI")}
        assert len(station.ledger("sealed")) == 3
        assert evidence_on(station, s.device_serial) == []
    assert verify_store(tmp_path / "store").ok


async def test_a_volume_mounted_before_its_content_is_readable_is_waited_for(tmp_path: Path) -> None:
    """FUSE puts the mount in the table before the filesystem answers; everything blocks meanwhile."""
    s = spec(0, files=2, msc_only=True, faults=VolumeFaults(ready_delay_ms=1500))
    async with simulated_station(tmp_path, [s]) as station:
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1, timeout_s=30)
        result = station.agent.results[0]
        assert result.outcome is OffloadOutcome.DONE and len(result.items) == 2
        assert station.ledger("refused") == [] and station.ledger("error") == []


def test_stations_docked_before_leave_the_directories_in_place(tmp_path: Path) -> None:
    """What the simulator guarantees the tests above: every hub port has its directory up front."""
    from simulators.recorder.bus import DEFAULT_BAY_PORTS, RecorderBus

    with RecorderBus(tmp_path / "state", tmp_path / "media") as bus:
        assert sorted(p.name for p in (tmp_path / "media").iterdir()) == sorted(
            bus.bay_directory(port).name for port in DEFAULT_BAY_PORTS
        )
    assert all(p.is_dir() for p in (tmp_path / "media").iterdir())
    shutil.rmtree(tmp_path / "media")


async def test_a_volume_pulled_out_before_erasing_is_never_recorded_as_erased(
    tmp_path: Path,
    volume_template: Path,
    store: StationStore,
    config_factory: Callable[..., StationConfig],
) -> None:
    """Once unmounted, the bay directory is still there, empty: every file is "not found" in it. That
    is the recorder gone, not its files erased by someone else (a WIPED entry would claim an erasure
    that never happened, and the files would stay on the recorder, never offered again)."""
    require_volume_mounts()
    backing = tmp_path / "recorder"
    shutil.copytree(volume_template, backing)
    before = volume_hashes(backing)
    bay = tmp_path / "media" / "bay1"
    bay.mkdir(parents=True)
    volume = mount_volume(backing, bay)

    def pull_once_everything_is_sealed(progress: BayProgress) -> None:
        if progress.files_total and progress.verified == progress.files_total and not progress.current:
            volume.unmount()  # pulled out between the last seal and the first erasure

    try:
        offload = VolumeOffload(
            store, config_factory(), session_info(), bay, on_progress=pull_once_everything_is_sealed
        )
        result = await offload.run()
    finally:
        volume.unmount()
    assert result.outcome is OffloadOutcome.DEVICE_GONE, result.errors
    assert result.verified == len(before) and result.wiped == 0
    assert [e for e in store.ledger.entries() if e.type == "wiped"] == []
    assert volume_hashes(backing) == before  # all still on the recorder, to be erased next docking


async def test_a_volume_pulled_out_between_files_ends_the_docking_and_fails_no_file(
    tmp_path: Path,
    volume_template: Path,
    store: StationStore,
    config_factory: Callable[..., StationConfig],
) -> None:
    """A kernel mount lets a file already open be read to its end after the unmount; the next file
    is then "not found" in the empty bay directory. That is the recorder gone (resume at the next
    docking), not a file that vanished (each would be failed, a final error on the ledger, and the
    docking would end as if the rest of the recorder had been dealt with)."""
    require_volume_mounts()
    backing = tmp_path / "recorder"
    shutil.copytree(volume_template, backing)
    before = volume_hashes(backing)
    bay = tmp_path / "media" / "bay1"
    bay.mkdir(parents=True)
    volume = mount_volume(backing, bay)
    pulled: list[bool] = []

    def pull_after_the_first_file(progress: BayProgress) -> None:
        if progress.files_done >= 1 and not pulled:
            pulled.append(True)
            volume.unmount()

    config = config_factory()
    try:
        offload = VolumeOffload(store, config, session_info(), bay, on_progress=pull_after_the_first_file)
        first = await offload.run()
    finally:
        volume.unmount()
    assert pulled and first.outcome is OffloadOutcome.DEVICE_GONE, first.errors
    assert not any(e.type == "error" and e.data.get("final") for e in store.ledger.entries())
    assert volume_hashes(backing) == before
    again = mount_volume(backing, bay)  # docked again
    try:
        second = await VolumeOffload(store, config, session_info(), bay).run()
    finally:
        again.unmount()
    assert second.outcome is OffloadOutcome.DONE, second.errors
    assert second.verified == len(before) and second.wiped == len(before)
    assert volume_hashes(backing) == {}
