"""Review of issue 12: a docking pulled out after a moment is not a return.

`DockingSession.offload` closes the recorder's assignment (`return_recorder`) as the offload *starts*, and
the overdue alert with it. An officer whose recorder is overdue docks it for a few seconds and takes it
away again mid-copy (the docking ends `device_gone`): the station writes `returned` (with the overdue's
`late_s`), closes the alert, and counts the recorder as back, while it is in the officer's pocket. The
alert that exists to make a supervisor chase an unreturned recorder is silenced by a touch-and-go. The
control: a docking that runs to `done` closes the assignment and the alert.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from edge.sources.usb.offload import OffloadOutcome
from tests.equipment.test_review_eq_volume_return import check_out
from tests.station.harness import eventually, simulated_station, spec, station_config

WAIT_S = 90.0


@pytest.mark.parametrize("pulled_early", [False, True], ids=["docked to the end", "touch and go"])
async def test_an_overdue_recorder_docked_for_a_moment_stays_out_and_overdue(tmp_path: Path,
                                                                           pulled_early: bool) -> None:
    recorder = spec(0, files=3, file_mb=1.0, rate_limit_bytes_per_s=1_000_000, battery_percent=90)
    await check_out(tmp_path, recorder)
    # Overdue after ~1 s, looked for every second.
    config = station_config(tmp_path, [recorder],
                            equipment={"enabled": True, "overdue_after_h": 0.0003, "overdue_check_s": 1})
    async with simulated_station(tmp_path, [recorder], agent_config=config) as station:
        [overdue] = await station.wait_ledger("overdue", timeout_s=WAIT_S)
        assert overdue["device_serial"] == recorder.device_serial
        await station.dock_recorder(recorder.device_serial, 2)
        if pulled_early:
            async with asyncio.timeout(WAIT_S):
                while (view := station.agent.views.get(recorder.device_serial)) is None \
                        or view.progress.bytes_done == 0:
                    await asyncio.sleep(0.01)
            await station.undock(recorder.device_serial, 2)
        await station.wait_results(1, timeout_s=WAIT_S)
        outcome = station.agent.results[0].outcome
        returned = station.ledger("returned")
        seen_and_left = [e for e in station.ledger("refused") if e.get("what") == "check-in"]
        assert station.agent.store is not None
        conn = station.agent.store.conn
        still_out = [tuple(row) for row in
                     conn.execute("SELECT officer_no FROM assignments WHERE returned IS NULL")]
        alert_open = conn.execute("SELECT COUNT(*) FROM overdue_alerts WHERE closed_at IS NULL").fetchone()[0]
        fleet = station.agent.fleet
        assert fleet is not None

        def fleet_view() -> dict[str, Any] | None:
            summary = fleet.summary()
            if summary is None:
                return None
            return next((r for r in summary["recorders"] if r["device_serial"] == recorder.device_serial
                         and r["last_docking"] is not None and r["last_docking"]["ended_at"] is not None),
                        None)

        def settled() -> bool:
            """The fleet has read the docking's end and what the check-in made of it (its monitor re-reads
            on every ledger change, so it may first show the docking ended and the check-in not yet)."""
            view = fleet_view()
            return view is not None and (view["holder"] is None) == (not pulled_early)

        with contextlib.suppress(TimeoutError):  # asserted below, with what the fleet shows
            await eventually(settled, timeout_s=WAIT_S)
        seen = fleet_view()
        assert seen is not None
    if not pulled_early:  # the control: a full docking is the return, and closes the alert
        assert outcome is OffloadOutcome.DONE
        assert [e["officer_no"] for e in returned] == ["110001"] and "overdue" in returned[0]
        assert still_out == [] and alert_open == 0 and seen_and_left == []
        assert seen["state"] not in ("out", "overdue") and seen["holder"] is None, seen
        return
    assert outcome is OffloadOutcome.DEVICE_GONE
    # Failed before the fix: `returned` was written as the offload started, the overdue alert closed.
    assert returned == [], returned
    assert still_out == [("110001",)] and alert_open == 1
    # The ledger says it was seen and left, with the docking's end.
    left = [(e["officer_no"], e["outcome"]) for e in seen_and_left]
    assert left == [("110001", "device-gone")], seen_and_left
    # The fleet: still overdue with 110001, and the docking's fault beside it.
    assert seen["state"] == "overdue" and seen["holder"]["officer_no"] == "110001", seen
    assert [p["code"] for p in seen["problems"]] == ["last_docking_failed"], seen
