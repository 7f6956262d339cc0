"""A docking while rooms record keeps the space they hold (issue 11, review rev11d): the real agent, the
recorder bus and the bay board simulator. The recorder is left untouched, the bay says why (its own error
class, the full LED) and the ledger names the rooms; control: once the rooms stopped, the same recorder docked
again is copied and erased as ever."""

from __future__ import annotations

import functools
from pathlib import Path

from drivers.serial.dock import BayLed
from edge.rooms.space import ROOMS_GROUP, rooms_kept_free
from edge.sources.usb.offload import OffloadOutcome

from .harness import simulated_station, spec

# More than any disk: the space the rooms hold is never there for a copy.
HELD = functools.partial(rooms_kept_free, start_min_free_bytes=1 << 50, record_margin_bytes=1 << 30)


async def test_a_docking_while_a_room_records_leaves_the_recorder_untouched_and_says_why(
        tmp_path: Path) -> None:
    s = spec(0)
    async with simulated_station(tmp_path, [s]) as station:
        files_before = s.files
        pipeline = station.agent.pipeline
        assert pipeline is not None
        # What a recording room does (edge.rooms.recording): its room holds the space while it records.
        with pipeline.kept_space.holding(ROOMS_GROUP, "xw-1", HELD):
            await station.dock_recorder(s.device_serial, 1)
            await station.wait_results(1)
        first = station.agent.results[0]
        assert first.outcome is OffloadOutcome.STORE_FULL and first.kept_for_rooms == ["xw-1"]
        assert first.wiped == 0 and station.ledger("wiped") == []
        assert station.agent.status.bay("1")["error_class"] == "rooms_recording"  # type: ignore[index]
        assert await station.led_shows(1, BayLed.FULL)
        (refused,) = [e for e in station.ledger("error") if e.get("stage") == "store"]
        assert [k["members"] for k in refused["kept_for"]] == [["xw-1"]]
        assert "rooms recording (1: xw-1)" in refused["reason"]
        # Control: the rooms stopped; docked again, the same recorder is copied and erased.
        await station.undock(s.device_serial, 1)
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(2)
        second = station.agent.results[1]
        assert second.outcome is OffloadOutcome.DONE, second.errors
        assert second.kept_for_rooms == [] and len(second.items) == second.wiped == files_before
