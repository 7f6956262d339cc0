"""Fixtures for the station core: stores, configs and recorder volumes made with real ffmpeg media."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.identity import ClockFacts, RecorderIdentity, SessionInfo
from simulators.recorder.faultfs import VolumeFaults
from simulators.recorder.volume import MountKind, mount_volume, populate_volume

DEVICE = "3300001"
OFFICER = "110001"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def volume_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file except PARAM.INI."""
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != "PARAM.INI"
    }


def populate_recorder_volume(root: Path, *, files: int, file_mb: float, seed: int) -> Path:
    """A volume of the test recorder (DEVICE, officer OFFICER) at `root`, with real media."""
    populate_volume(
        root,
        device_serial=DEVICE,
        officer_no=OFFICER,
        officer_name="张伟",
        unit_code="330100000000",
        unit_name="杭州市综合行政执法局",
        files=files,
        file_mb=file_mb,
        seed=seed,
    )
    return root


@pytest.fixture(scope="session")
def volume_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One populated recorder volume (3 MP4, plus photo/audio), copied per test."""
    return populate_recorder_volume(tmp_path_factory.mktemp("volume-template") / "vol", files=5, file_mb=0.3,
                                    seed=7)


def settle_on_disk(root: Path) -> None:
    """fsync every file under `root`: a recorder's files are on its flash, not dirty pages in the
    station's cache (dirty pages cannot be dropped, so a read of them is never proven to reach the
    device, and the original is then read again before it is erased)."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@pytest.fixture
def volume(volume_template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "media" / f"ZFY_{DEVICE}"
    root.parent.mkdir(parents=True)
    shutil.copytree(volume_template, root, symlinks=True)
    settle_on_disk(root)
    return root


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> StationConfig:
    raw: dict[str, Any] = {
        "station": {"id": "TEST-STATION", "store_dir": str(tmp_path / "store"), "clock": "untrusted"},
        "usb": {"mount_root": str(tmp_path / "media")},
        "recorders": {"allow": [{"device_serial": DEVICE}]},
        "offload": {"min_free_bytes": 0},
        # These tests exercise the offload alone (no central to witness): erase once verified.
        "wipe": {"policy": "after-verify"},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return StationConfig.model_validate(raw)


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., StationConfig]:
    return lambda **sections: make_config(tmp_path, **sections)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def session_info(bay: int | None = 1) -> SessionInfo:
    identity = RecorderIdentity(DEVICE, OFFICER, "张伟", "330100000000", "杭州市综合行政执法局", "PARAM.INI")
    clock = ClockFacts(None, 0, None, None, False)
    return SessionInfo(str(uuid.uuid4()), "TEST-STATION", bay, identity, clock)


@pytest.fixture
def backing(volume_template: Path, tmp_path: Path) -> Path:
    """A recorder's files, to be mounted by `dock` (the simulator's backing folder)."""
    root = tmp_path / "backing"
    shutil.copytree(volume_template, root)
    settle_on_disk(root)
    return root


Dock = Callable[..., AbstractContextManager[Path]]


@pytest.fixture
def dock(backing: Path, tmp_path: Path) -> Dock:
    """Mount the recorder's volume in its bay directory the way production does, for one docking:
    `with dock(faults=None, kind=None) as root:` (the caller checks the mount prerequisites)."""

    @contextmanager
    def docked(faults: VolumeFaults | None = None, kind: MountKind | None = None) -> Iterator[Path]:
        volume = mount_volume(backing, tmp_path / "media" / "ZFY_3300001", faults=faults, kind=kind)
        try:
            yield volume.mount_point
        finally:
            volume.unmount()

    return docked
