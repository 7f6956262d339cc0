"""`TryTimes` keeps one running `FailingSpan` per recording (rev10b's fix): its first try stays however many
tries follow, the same item told twice is one try, and the recordings kept are bounded (`MAX_SPANS_KEPT`),
the one tried longest ago forgotten. Pure, on the clock seams."""

from __future__ import annotations

import dataclasses

import pytest

import edge.sources.gb28181.give_up_span as give_up_span
from edge.sources.gb28181.give_up_span import GIVE_UP_AFTER_S, Since, TryTimes
from tests.gb28181.test_review24_disk_full_give_up import RECORDING

HOURS = 3600.0
WALL0, MONO0 = 1_790_000_000.0, 1000.0


def _at(seconds: float) -> Since:
    return Since(WALL0 + seconds, MONO0 + seconds)


def test_a_thousand_tries_keep_the_first() -> None:
    times = TryTimes()
    for n in range(1000):  # one every four minutes: 66.6 h
        times.tried(RECORDING, f"raw-{n}", _at(n * 240.0))
    span = times.of(RECORDING)
    assert span is not None and span.first == _at(0.0) and span.latest == _at(999 * 240.0)
    assert span.count == 1000 and span.passed()
    # control: the first 700 of them span 46.6 h, short of two days
    short = TryTimes()
    for n in range(700):
        short.tried(RECORDING, f"raw-{n}", _at(n * 240.0))
    kept = short.of(RECORDING)
    assert kept is not None and kept.count == 700 and not kept.passed()


def test_the_same_item_told_again_is_one_try() -> None:
    times = TryTimes()
    times.tried(RECORDING, "raw-1", _at(0.0))
    times.tried(RECORDING, "raw-1", _at(60.0))
    span = times.of(RECORDING)
    assert span is not None and span.count == 1 and span.latest == _at(0.0)
    times.tried(RECORDING, "raw-2", _at(120.0))  # control: another item is another try
    span = times.of(RECORDING)
    assert span is not None and span.count == 2 and span.latest == _at(120.0)


def test_what_of_gives_is_a_copy() -> None:
    times = TryTimes()
    times.tried(RECORDING, "raw-1", _at(0.0))
    span = times.of(RECORDING)
    assert span is not None
    span.failed_again(_at(GIVE_UP_AFTER_S))
    kept = times.of(RECORDING)
    assert kept is not None and kept.count == 1 and not kept.passed()


def test_the_recordings_kept_are_bounded_the_one_tried_longest_ago_forgotten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(give_up_span, "MAX_SPANS_KEPT", 3)
    others = [dataclasses.replace(RECORDING, start_time=f"2026-01-0{n}T00:00:00") for n in range(1, 5)]
    times = TryTimes()
    times.tried(others[0], "a", _at(0.0))
    times.tried(others[1], "b", _at(1.0))
    times.tried(others[2], "c", _at(2.0))
    times.tried(others[0], "a2", _at(3.0))  # tried again: now the one tried last
    times.tried(others[3], "d", _at(4.0))  # one too many: others[1] goes
    assert times.of(others[1]) is None
    kept = times.of(others[0])
    assert kept is not None and kept.first == _at(0.0) and kept.count == 2, "its span kept whole"
    assert times.of(others[2]) is not None and times.of(others[3]) is not None


def test_forget_drops_the_span() -> None:
    times = TryTimes()
    times.tried(RECORDING, "raw-1", _at(0.0))
    times.forget(RECORDING)
    assert times.of(RECORDING) is None
    times.tried(RECORDING, "raw-2", _at(HOURS))  # control: a try after it starts a new span
    span = times.of(RECORDING)
    assert span is not None and span.first == _at(HOURS) and span.count == 1
