"""A hostile volume cannot exhaust the station's memory by the number of its directory entries (exFAT
allows about 2.8 million per directory): directories are read as a stream under a per-directory and a
per-volume cap, the rest is refused with a ledger entry, and a docking lists its volume once."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import edge.sources.usb.offload as offload_module
import edge.sources.usb.session as session_module
from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.enumerate import list_volume
from edge.sources.usb.offload import OffloadOutcome, VolumeOffload

from .conftest import session_info, volume_hashes
from .harness import simulated_station, spec


def crowd(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        os.close(os.open(directory / f"F{i:07d}.DAT", os.O_CREAT | os.O_WRONLY, 0o600))


async def test_a_directory_beyond_the_entry_cap_is_refused_past_it_and_the_evidence_still_offloaded(
    volume: Path, store: StationStore, config_factory: Callable[..., StationConfig]
) -> None:
    evidence = volume_hashes(volume)
    crowd(volume / "JUNK", 3000)
    config = config_factory(offload={"max_dir_entries": 1000})
    result = await VolumeOffload(store, config, session_info(), volume).run()
    assert result.outcome is OffloadOutcome.PARTIAL, result.errors
    refused = [e.data for e in store.ledger.entries() if e.type == "refused"]
    assert [r["original"] for r in refused if "more than 1000 entries" in r["reason"]] == ["JUNK"]
    assert result.wiped == len(evidence) and not set(volume_hashes(volume)) & set(evidence)


def test_the_whole_volume_has_an_entry_cap_too(tmp_path: Path) -> None:
    for name in ("A", "B", "C"):
        crowd(tmp_path / name, 500)
    listing = list_volume(tmp_path, max_files=10_000, max_depth=4, max_dir_entries=1000, max_entries=1000)
    assert listing.entries == 1000
    assert [r.reason for r in listing.rejected] == [
        "more than 1000 entries on the volume: the rest were not looked at"
    ]
    uncapped = list_volume(tmp_path, max_files=10_000, max_depth=4)  # control
    assert len(uncapped.files) == 1500 and uncapped.rejected == []


@pytest.mark.parametrize("cap", [1000, 1_000_000], ids=["capped", "control-uncapped"])
def test_listing_a_crowded_directory_holds_only_the_capped_names(tmp_path: Path, cap: int) -> None:
    crowd(tmp_path / "DCIM", 40_000)
    tracemalloc.start()
    try:
        listing = list_volume(tmp_path, max_files=10, max_depth=4, max_dir_entries=cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if cap == 1000:
        assert listing.entries == 1000 + 1  # the directory itself, then 1000 of its entries
        assert peak < 1_000_000, f"{peak} bytes for a capped listing"
    else:
        # The control: without the cap, the same listing holds every name (the measurement sees it).
        assert listing.entries == 40_001
        assert peak > 2_000_000, f"{peak} bytes"


async def test_a_docking_lists_its_volume_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return list_volume(*args, **kwargs)

    for module in (offload_module, session_module):
        monkeypatch.setattr(module, "list_volume", counting, raising=False)
    recorder = spec(0, files=2, msc_only=True)  # its clock is estimated from the listing too
    async with simulated_station(tmp_path, [recorder]) as station:
        await station.dock_recorder(recorder.device_serial, 1)
        await station.wait_results(1)
        assert station.agent.results[0].outcome is OffloadOutcome.DONE
    assert len(calls) == 1
