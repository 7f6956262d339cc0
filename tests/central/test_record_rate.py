"""edge.central.record_rate: per-station token buckets for what the central records of a station's
refused messages (review 8, finding 5)."""

from __future__ import annotations

import logging

import pytest

from edge.central.record_rate import RecordRate, noting_skipped


def test_a_burst_then_the_rate_and_the_skipped_count_goes_into_the_next_record() -> None:
    now = [0.0]
    rate = RecordRate(6, monotonic=lambda: now[0])
    assert [rate.admit("st-a") for _ in range(6)] == [0] * 6
    assert [rate.admit("st-a") for _ in range(50)] == [None] * 50
    now[0] += 9.9  # 6 a minute: one every 10 s
    assert rate.admit("st-a") is None
    now[0] += 0.1
    assert rate.admit("st-a") == 51
    assert rate.admit("st-a") is None
    # Control: another station is not held back by st-a.
    assert rate.admit("st-b") == 0
    # Refilled, never above the burst.
    now[0] += 3600.0
    assert [rate.admit("st-a") for _ in range(7)] == [1, 0, 0, 0, 0, 0, None]


def test_the_stations_it_remembers_are_bounded() -> None:
    rate = RecordRate(1, monotonic=lambda: 0.0, remembered=3)
    for station in ("a", "b", "c", "d"):
        assert rate.admit(station) == 0
    assert rate.admit("d") is None
    assert rate.admit("a") == 0  # forgotten: a fresh burst
    assert len(rate._buckets) == 3


def test_a_station_forgotten_with_records_not_written_logs_their_count_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review 9, finding 9: the count of a forgotten station's records not written was dropped without a
    word, though the module says nothing is silently forgotten. Its eviction logs one line with the count.
    Control: a station forgotten with nothing skipped logs nothing."""
    caplog.set_level(logging.WARNING, logger="edge.central.record_rate")
    rate = RecordRate(1, monotonic=lambda: 0.0, remembered=2)
    assert rate.admit("quiet") == 0
    assert rate.admit("loud\n") == 0
    assert [rate.admit("loud\n") for _ in range(7)] == [None] * 7
    assert rate.admit("c") == 0  # forgets "quiet": nothing skipped, nothing logged
    assert caplog.records == []
    assert rate.admit("d") == 0  # forgets "loud\n" with 7 not written
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "7 record(s) of station 'loud\\n' were not written" in line  # repr: no raw control characters
    assert rate.admit("e") == 0 and len(caplog.records) == 1  # "c": nothing skipped


def test_noting_skipped() -> None:
    assert noting_skipped("refused", 0) == "refused"
    assert "41 more of this station were not recorded" in noting_skipped("refused", 41)
    with pytest.raises(ValueError):
        RecordRate(0)
