"""Mass-storage-only recorders: their clock offset is estimated from the volume, labelled an estimate."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from edge.sources.usb.offload import OffloadOutcome
from edge.sources.usb.volume_clock import (
    FAT_RESOLUTION_MS,
    MAX_PLAUSIBLE_OFFSET_S,
    TimedFile,
    estimate_device_clock_offset,
)

from .harness import simulated_station, spec

EPOCH = datetime(1970, 1, 1)
DOCKED = datetime(2026, 3, 1, 12, 0, 0)  # station UTC
DOCKED_MS = int((DOCKED - EPOCH).total_seconds() * 1000)
CST = 480
# How far the estimate may be from the simulator's real offset when the recorder recorded until docked:
# FAT's 2 s steps, plus the time between plugging in and the station reading the volume (the agent
# polls every 0.1 s in these tests; the offload's start adds well under a second).
TOLERANCE_MS = FAT_RESOLUTION_MS + 1500


def _file(name: str, mtime: datetime | int) -> TimedFile:
    ns = mtime if isinstance(mtime, int) else int((mtime - EPOCH) / timedelta(microseconds=1)) * 1000
    return TimedFile(name, f"DCIM/100MEDIA/{name}", ns)


def _wall(offset_s: float, before_dock_s: float = 0.0) -> datetime:
    """The recorder's wall clock (CST) at `before_dock_s` before docking, with `offset_s` error."""
    return DOCKED + timedelta(minutes=CST, seconds=offset_s - before_dock_s)


@pytest.mark.parametrize("offset_s", [-7200.0, -3.0, 0.0, 95.0, 86400.0 * 30])
def test_recording_until_docked_gives_the_offset(offset_s: float) -> None:
    end = _wall(offset_s)
    files = [
        _file(f"110001_3300001_{end - timedelta(hours=3):%Y%m%d%H%M%S}_0001.MP4", end - timedelta(hours=2)),
        _file(f"110001_3300001_{end - timedelta(minutes=20):%Y%m%d%H%M%S}_0002.MP4", end),
        _file("PARAM.INI", end + timedelta(days=3)),  # not a recording: no basis whatever its time
    ]
    estimate = estimate_device_clock_offset(files, docked_utc_ms=DOCKED_MS, tz_offset_min=CST)
    assert estimate.offset_ms == round(offset_s * 1000)
    doc = estimate.as_dict()
    assert (doc["kind"], doc["bound"], doc["method"]) == ("estimate", "lower", "newest-recording-end")
    assert doc["basis"]["file"].endswith("_0002.MP4") and doc["basis"]["named_files"] == 2


def test_an_idle_recorder_gives_a_lower_bound() -> None:
    end = _wall(-60, before_dock_s=3600)  # stopped recording an hour before docking
    files = [_file(f"110001_3300001_{end - timedelta(minutes=5):%Y%m%d%H%M%S}_0001.MP4", end)]
    estimate = estimate_device_clock_offset(files, docked_utc_ms=DOCKED_MS, tz_offset_min=CST)
    assert estimate.offset_ms == (-60 - 3600) * 1000  # ≤ the real -60 s: a bound, said so in the reason
    assert "lower bound" in estimate.reason


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ([], "no file on the volume carries a recorder name"),
        ([_file("110001_3300001_20241399250000_0001.MP4", DOCKED)], "no file on the volume"),
        ([_file("110001_3300001_20260230120000_0001.MP4", DOCKED)], "no file on the volume"),
        ([_file("notes.txt", DOCKED)], "no file on the volume"),
        # Names fine, mtimes from a reset clock or a corrupt FAT entry: they disagree with the names.
        ([_file("110001_3300001_20260301195000_0001.MP4", 0)], "mtime 1970-01-01"),
        ([_file("110001_3300001_20260301195000_0001.MP4", datetime(2200, 1, 1))], "mtime 2200-01-01"),
        ([_file("110001_3300001_20260301195000_0001.MP4", -(2**63))], "mtime"),
        ([_file("110001_3300001_20260301195000_0001.MP4", 2**63 - 1)], "mtime"),
        # The recording "ended" before it started, or ran for a day.
        ([_file("110001_3300001_20260301195000_0001.MP4", datetime(2026, 3, 1, 19, 0))], "between"),
        ([_file("110001_3300001_20260301195000_0001.MP4", datetime(2026, 3, 2, 19, 50))], "between"),
        # Name and mtime agree, but on a clock reset to 2000 or set to 2200: no usable offset.
        ([_file("110001_3300001_20000101000500_0001.MP4", datetime(2000, 1, 1, 0, 10))], "days from"),
        ([_file("110001_3300001_22000101000500_0001.MP4", datetime(2200, 1, 1, 0, 10))], "days from"),
    ],
)
def test_no_basis_gives_no_estimate_and_says_why(files: list[TimedFile], words: str) -> None:
    estimate = estimate_device_clock_offset(files, docked_utc_ms=DOCKED_MS, tz_offset_min=CST)
    assert estimate.offset_ms is None
    assert estimate.reason.startswith("no estimate") and words in estimate.reason
    assert estimate.as_dict()["kind"] == "estimate"


def test_an_implausible_file_does_not_hide_a_good_one() -> None:
    good_end = _wall(12.0)
    files = [
        _file(f"110001_3300001_{good_end - timedelta(minutes=9):%Y%m%d%H%M%S}_0001.MP4", good_end),
        _file("110001_3300001_22000101000500_0002.MP4", datetime(2200, 1, 1, 0, 10)),
    ]
    estimate = estimate_device_clock_offset(files, docked_utc_ms=DOCKED_MS, tz_offset_min=CST)
    assert estimate.offset_ms == 12_000
    assert estimate.basis["implausible"] == 1
    assert abs(estimate.offset_ms) < MAX_PLAUSIBLE_OFFSET_S * 1000


# -- the agent, with the simulator's drifting recorders ---------------------------------------------------


def _manifests(store: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_bytes()) for p in sorted(store.rglob("*.manifest.json"))]


async def test_mass_storage_recorders_get_an_estimated_offset_within_tolerance(tmp_path: Path) -> None:
    specs = [
        spec(0, msc_only=True, clock_offset_s=-7200.0, clock_drift_ppm=50.0, recording_until_docked=True),
        spec(1, msc_only=True, clock_offset_s=95.0, clock_drift_ppm=-20.0, recording_until_docked=True),
    ]
    async with simulated_station(
        tmp_path, specs, usb={"mass_storage_tz_offset_min": 480}, wipe={"policy": "never"}
    ) as station:
        for bay, s in enumerate(specs, start=1):
            await station.dock_recorder(s.device_serial, bay)
        await station.wait_results(2)
        assert {r.outcome for r in station.agent.results} == {OffloadOutcome.DONE}
        # The simulator's own clock error now; drift adds well under a millisecond over this test.
        real = {
            s.device_serial: station.bus.recorder_state(s.device_serial).clock_utc_ms - time.time() * 1000
            for s in specs
        }
        started = {e["identity"]["device_serial"]: e["clock"] for e in station.ledger("session_started")}
    for s in specs:
        clock = started[s.device_serial]
        true_offset_ms = real[s.device_serial]
        assert abs(true_offset_ms - s.clock_offset_s * 1000) < 2000
        estimate = clock["estimate"]
        assert clock["offset_ms"] is None, "never recorded as a measurement"
        assert estimate["kind"] == "estimate" and estimate["bound"] == "lower"
        assert abs(estimate["offset_ms"] - true_offset_ms) <= TOLERANCE_MS, (estimate, true_offset_ms)
        assert estimate["offset_ms"] <= true_offset_ms + FAT_RESOLUTION_MS, "a lower bound"
    manifests = _manifests(tmp_path / "store")
    assert len(manifests) == 6
    for manifest in manifests:
        time_block = manifest["time"]
        assert isinstance(time_block, dict)
        assert time_block["device_clock_offset_ms"] is None
        assert time_block["device_clock_offset_estimate"]["kind"] == "estimate"
        assert time_block["station_clock_source"] == "config"


async def test_mass_storage_recorder_without_a_basis_says_so(tmp_path: Path) -> None:
    # Files stamped 2024 by a recorder whose clock reads today: nothing on the volume dates docking.
    specs = [spec(0, msc_only=True, files=2)]
    async with simulated_station(tmp_path, specs, usb={"mass_storage_tz_offset_min": 480}) as station:
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.wait_results(1)
        clock = station.ledger("session_started")[0]["clock"]
    assert clock["offset_ms"] is None
    assert clock["estimate"]["offset_ms"] is None
    assert "days from the station" in clock["estimate"]["reason"]
    for manifest in _manifests(tmp_path / "store"):
        estimate = manifest["time"]["device_clock_offset_estimate"]  # type: ignore[index]
        assert estimate["offset_ms"] is None and estimate["reason"].startswith("no estimate")
