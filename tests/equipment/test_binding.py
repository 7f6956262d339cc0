"""The assignment block: a recording placed in station time and bound to the station's assignments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from edge.equipment.assignments import Assignment
from edge.equipment.binding import assignment_block

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
SHIFT_START = datetime(2026, 12, 5, 0, 0, tzinfo=UTC)  # 08:00 in Beijing
CLAIM = {"officer_no": "220001", "officer_name": "赵敏", "unit_code": "330100000000",
         "unit_name": "杭州市公安局", "identity_source": "usb-control"}


def assignment(id_: int, officer_no: str, out: datetime, back: datetime | None) -> Assignment:
    return Assignment(id_, officer_no, "赵敏", "330100000000", "杭州市公安局", "7654321", "EEZ01TEST", 1,
                      "card", out.strftime(FORMAT), 1, None if back is None else back.strftime(FORMAT))


def file_at(local_wall: datetime, officer_no: str = "220001") -> str:
    return f"{officer_no}_7654321_{local_wall:%Y%m%d%H%M%S}_0001.MP4"


def block(name: str, end_wall: datetime | None, assignments: list[Assignment], *, offset_ms: int | None = 0,
          claim: dict[str, str] = CLAIM, tz: int | None = 480) -> dict[str, Any]:
    mtime_ns = None if end_wall is None else int((end_wall - datetime(1970, 1, 1)).total_seconds() * 1e9)
    return assignment_block(file_name=name, mtime_ns=mtime_ns, claim=claim, tz_offset_min=tz,
                            offset_ms=offset_ms, offset_basis="measured at docking", assignments=assignments,
                            margin_s=60.0)


DAY = [assignment(1, "220001", SHIFT_START, SHIFT_START + timedelta(hours=8))]
TEN = datetime(2026, 12, 5, 10, 0)  # device wall time, Beijing


def test_a_recording_inside_the_shift_is_bound_to_the_officer_who_checked_it_out() -> None:
    found = block(file_at(TEN), TEN + timedelta(minutes=10), DAY)
    assert found["status"] == "bound" and found["holder"]["officer_no"] == "220001"
    assert found["recorded"]["start_utc"] == "2026-12-05T02:00:00.000000Z"
    assert found["recorded"]["from"] == ["file name", "mtime"]
    assert found["device_claim"]["file_name_officer_no"] == "220001"


def test_a_device_that_claims_another_officer_is_flagged_with_both_sides_kept() -> None:
    other = {**CLAIM, "officer_no": "110001"}
    found = block(file_at(TEN, "110001"), TEN + timedelta(minutes=10), DAY, claim=other)
    assert found["status"] == "mismatch" and found["holder"]["officer_no"] == "220001"
    assert found["mismatch"] == ["device identity says 警号 110001", "file name says 警号 110001"]
    assert found["device_claim"]["officer_no"] == "110001"


def test_a_recording_outside_every_assignment_has_no_holder() -> None:
    evening = datetime(2026, 12, 5, 19, 0)  # after the 16:00 return
    found = block(file_at(evening), evening + timedelta(minutes=5), DAY)
    assert (found["status"], found["holder"]) == ("no_assignment", None)
    assert block(file_at(TEN), TEN, [])["status"] == "no_assignment"


def test_the_clock_offset_measured_at_docking_moves_the_recording_into_the_shift() -> None:
    # The recorder's clock ran 9 hours fast: its 19:00 was 10:00 in Beijing (02:00Z), inside the shift.
    fast = datetime(2026, 12, 5, 19, 0)
    assert block(file_at(fast), fast, DAY)["status"] == "no_assignment"
    corrected = block(file_at(fast), fast, DAY, offset_ms=9 * 3600 * 1000)
    assert corrected["status"] == "bound"
    assert corrected["recorded"]["start_utc"] == "2026-12-05T02:00:00.000000Z"


def test_the_margin_absorbs_clock_slack_at_the_edges_and_no_more() -> None:
    just_before = datetime(2026, 12, 5, 7, 59, 30)  # 30 s before the check-out, within 60 s
    assert block(file_at(just_before), just_before + timedelta(minutes=1), DAY)["status"] == "bound"
    well_before = datetime(2026, 12, 5, 7, 55)
    assert block(file_at(well_before), well_before + timedelta(minutes=10), DAY)["status"] == "ambiguous"


def test_a_recording_spanning_two_assignments_is_ambiguous() -> None:
    two = [assignment(1, "220001", SHIFT_START, SHIFT_START + timedelta(hours=2)),
           assignment(2, "220003", SHIFT_START + timedelta(hours=2, minutes=5), None)]
    found = block(file_at(TEN - timedelta(minutes=5)), TEN + timedelta(minutes=30), two)
    assert found["status"] == "ambiguous"
    assert [h["officer_no"] for h in found["overlapping"]] == ["220001", "220003"]


def test_an_assignment_still_open_covers_everything_after_its_check_out() -> None:
    still_out = [assignment(1, "220001", SHIFT_START, None)]
    late = datetime(2026, 12, 6, 3, 0)
    assert block(file_at(late), late, still_out)["status"] == "bound"


def test_a_file_with_no_time_at_all_is_time_unknown() -> None:
    found = block("CLIP0001.MP4", None, DAY)
    assert (found["status"], found["recorded"]["start_utc"]) == ("time_unknown", None)
    assert block("CLIP0001.MP4", TEN, DAY)["status"] == "bound"  # the mtime alone places it
