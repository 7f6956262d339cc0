"""The receiver's upload-write slots (:class:`edge.central.limits.UploadWriteSlots`): per station and in
all; the HTTP behaviour is tested in tests/central/test_tus_write_slots.py and test_http_bounds.py."""

from __future__ import annotations

import pytest

from edge.central.limits import UploadWriteSlots, WritesFull


def test_a_station_over_its_share_is_refused_and_others_are_not() -> None:
    slots = UploadWriteSlots(per_station=2, max_total=3)
    assert slots.try_enter("a") is None and slots.try_enter("a") is None
    assert slots.full_for("a") is WritesFull.STATION
    assert slots.try_enter("a") is WritesFull.STATION
    # Control: another station still gets the receiver's last slot, then the receiver is full for all.
    assert slots.try_enter("b") is None
    assert slots.try_enter("c") is WritesFull.RECEIVER
    assert slots.refused == {WritesFull.STATION: 1, WritesFull.RECEIVER: 1}
    slots.leave("a")
    assert slots.try_enter("c") is None and slots.in_progress == 3


def test_leaving_frees_the_slot_and_forgets_the_station() -> None:
    slots = UploadWriteSlots(per_station=1, max_total=None)
    for station in (f"s{i}" for i in range(1000)):  # no receiver-wide bound (the embedded store)
        assert slots.try_enter(station) is None
    for station in (f"s{i}" for i in range(1000)):
        slots.leave(station)
    assert slots.in_progress == 0 and slots.of_station("s1") == 0
    assert "s1" not in repr(slots)
    with pytest.raises(RuntimeError, match="without a matching"):
        slots.leave("s1")


@pytest.mark.parametrize(("per_station", "max_total"), [(0, 3), (1, 0)])
def test_bounds_must_be_positive(per_station: int, max_total: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        UploadWriteSlots(per_station=per_station, max_total=max_total)
