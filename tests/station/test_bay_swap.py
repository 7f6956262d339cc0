"""A recorder pulled out in the middle of its docking and another docked in the same bay at once: the
second one's volume is mounted at the very directory the first one's session is working on.

The first session must end as device-gone with its files resumable (nothing claimed erased that is
still on its recorder, no file failed for good), and must never touch the second recorder's volume,
even where that holds a different file at the same path with the same size and mtime.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.sources.usb.offload import BayProgress, OffloadOutcome
from edge.station import BayView
from edge.verify.station import verify_store
from simulators.recorder.bus import InvalidRequestError
from tests.mounting import require_volume_mounts

from .harness import Station, simulated_station, spec


def evidence_on(station: Station, serial: str) -> dict[str, str]:
    return {n: h for n, h in station.bus.volume_files(serial).items() if not n.endswith("PARAM.INI")}


def acquired_from(station: Station, serial: str) -> set[str]:
    return {e["original"] for e in station.ledger("acquired") if e["device_serial"] == serial}


def swap_when(station: Station, condition: Callable[[BayProgress], bool], out: str, into: str,
              impersonate: str | None = None) -> list[bool]:
    """Do the swap from the agent's own progress callback, so it lands exactly at that point of the
    first session (the agent's event loop waits for it: the worst case, instant)."""
    swapped: list[bool] = []

    def on_progress(view: BayView) -> None:
        if not swapped and view.device_serial == out and condition(view.progress):
            swapped.append(True)
            station.bus.swap(out, into, impersonate=impersonate)

    station.agent.on_progress = on_progress
    return swapped


# Bind mounts (the kernel serves the files; a lazily unmounted volume still serves open descriptors)
# and FUSE mounts (the recorder's process stops: descriptors still open fail), as root both.
MOUNTS = pytest.mark.parametrize("fuse", [False, True], ids=["bind-mount", "fuse"])


def kind(fuse: bool) -> dict[str, Any]:
    return {"rate_limit_bytes_per_s": 200_000_000} if fuse else {}


@MOUNTS
async def test_a_recorder_swapped_in_mid_copy_gets_no_entries_of_the_first_and_the_first_resumes(
    tmp_path: Path, fuse: bool
) -> None:
    a = spec(0, files=4, msc_only=True, **kind(fuse))
    b = spec(1, files=2, msc_only=True, **kind(fuse))
    async with simulated_station(tmp_path, [a, b]) as station:
        truth_a = evidence_on(station, a.device_serial)
        truth_b = evidence_on(station, b.device_serial)
        swapped = swap_when(station, lambda p: p.files_done >= 1, a.device_serial, b.device_serial)
        await station.dock_recorder(a.device_serial, 1)
        await station.wait_results(2, timeout_s=60)
        assert swapped
        first = next(r for r in station.agent.results if r.outcome is not OffloadOutcome.DONE)
        assert first.outcome is OffloadOutcome.DEVICE_GONE, first.errors

        # Nothing claimed erased that is still on A, no `already_absent` at all, no final error.
        on_a = evidence_on(station, a.device_serial)
        wiped_a = [e for e in station.ledger("wiped") if e["device_serial"] == a.device_serial]
        assert all(e["original"] not in on_a and not e["already_absent"] for e in wiped_a), wiped_a
        finals = [e for e in station.ledger("error") if e.get("final")]
        assert finals == [], finals
        # B's own docking offloaded B: every file of B acquired from B, none of A's recorded from B.
        assert acquired_from(station, b.device_serial) == set(truth_b)
        assert evidence_on(station, b.device_serial) == {}

        # A docked again (in another bay): every one of its files is acquired and erased.
        await station.dock_recorder(a.device_serial, 2)
        await station.wait_results(3, timeout_s=60)
        again = station.agent.results[2]
        assert again.outcome is OffloadOutcome.DONE, again.errors
        assert acquired_from(station, a.device_serial) == set(truth_a)
        assert evidence_on(station, a.device_serial) == {}
    assert verify_store(tmp_path / "store").ok


@MOUNTS
async def test_a_different_file_at_the_same_path_size_and_mtime_on_the_swapped_in_recorder_is_not_erased(
    tmp_path: Path, fuse: bool
) -> None:
    a = spec(0, files=1, msc_only=True, **kind(fuse))
    b = spec(1, files=1, msc_only=True, seed=9, **kind(fuse))
    # B is not on the allow-list: nothing of this station may touch it (its own docking is refused).
    async with simulated_station(
        tmp_path, [a, b], recorders={"allow": [{"device_serial": a.device_serial}]}
    ) as station:
        truth_a = evidence_on(station, a.device_serial)
        (shared,) = truth_a
        swapped = swap_when(
            station,
            lambda p: bool(p.files_total) and p.verified == p.files_total and not p.current,
            a.device_serial,
            b.device_serial,
            impersonate=shared,
        )
        await station.dock_recorder(a.device_serial, 1)
        await station.wait_results(1, timeout_s=60)
        await station.wait_ledger("refused", where=lambda d: d.get("device_serial") == b.device_serial)
        assert swapped
        on_b = evidence_on(station, b.device_serial)
        assert shared in on_b and on_b[shared] != truth_a[shared], "B's own recording, same name"
        first = station.agent.results[0]
        assert first.outcome is OffloadOutcome.DEVICE_GONE, first.errors
        assert station.ledger("wiped") == []
        assert evidence_on(station, a.device_serial) == truth_a, "A's file stays on A, sealed"

        await station.undock(b.device_serial, 1)
        await station.dock_recorder(a.device_serial, 1)
        await station.wait_results(2, timeout_s=60)
        assert station.agent.results[1].outcome is OffloadOutcome.DONE, station.agent.results[1].errors
        assert evidence_on(station, a.device_serial) == {}
        assert evidence_on(station, b.device_serial) == on_b, "B untouched throughout"
        (wiped,) = station.ledger("wiped")
        assert wiped["original"] == shared and not wiped["already_absent"]
    assert verify_store(tmp_path / "store").ok


def test_the_simulator_swaps_recorders_in_one_bay_with_a_twin_file(tmp_path: Path) -> None:
    """What the tests above rely on: the second recorder is mounted at the first one's bay directory,
    holding a different file at the same path with the same size and mtime."""
    from simulators.recorder.bus import RecorderBus

    require_volume_mounts()
    a, b = spec(0, files=1, msc_only=True), spec(1, files=1, msc_only=True, seed=9)
    with RecorderBus(tmp_path / "state", tmp_path / "media") as bus:
        bus.add_recorder(a)
        bus.add_recorder(b)
        bus.plug(a.device_serial, "1-1.1")
        bay = bus.mount_point(a.device_serial)
        assert bay is not None
        (shared,) = [n for n in bus.volume_files(a.device_serial) if not n.endswith("PARAM.INI")]
        before = os.stat(bay / shared)
        with pytest.raises(InvalidRequestError):
            bus.swap(b.device_serial, a.device_serial)  # B is not plugged: nothing to pull out
        bus.swap(a.device_serial, b.device_serial, impersonate=shared)
        state_a, state_b = bus.recorder_state(a.device_serial), bus.recorder_state(b.device_serial)
        assert not state_a.plugged and state_b.plugged and state_b.mount_point == str(bay)
        twin = os.stat(bay / shared)
        assert (twin.st_size, twin.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        assert bus.volume_files(b.device_serial)[shared] != bus.volume_files(a.device_serial)[shared]
