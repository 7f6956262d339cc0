"""Review s9 (A): the stuck disk-full give-up's 48 h span runs from when the stuck copies were first found
in this run, not over the refusals themselves. Copies stuck for 3 h (a quota full for a while), then no
try for 46 h (the disk tight, or the device away), give the recording up at the first pass after 48 h
although no refusal was seen for 46 h: the recording is never downloaded again (given_up_because)."""

from __future__ import annotations

from edge.sources.gb28181.downloads import given_up_because
from edge.sources.gb28181.give_up_span import StuckSince
from edge.sources.gb28181.recordings import INTERRUPTED_DISK_FULL, RecordingRef, SealedDownload

H = 3600.0


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0
        self.m = 1000.0

    def advance(self, s: float) -> None:
        self.t += s
        self.m += s


def _ref() -> RecordingRef:
    return RecordingRef(device_id="34020000001320000001", channel_id="34020000001310000001", name="r",
                        file_path="/r.ps", start_time="2026-12-01T08:00:00", end_time="2026-12-01T09:00:00",
                        file_size_bytes=10_000_000)


def _stuck_copies(n: int) -> list[SealedDownload]:
    """A first disk-full copy, then `n` refused with room (EDQUOT) no further: all stuck."""
    return [SealedDownload(item=f"i{k}", attempt=k + 1, complete=False, interrupted=INTERRUPTED_DISK_FULL,
                           received_bytes=1_000_000, written_bytes=1_000_000, write_refused="EDQUOT",
                           write_refused_free_bytes=10**9) for k in range(n + 1)]


def _found_stuck_for_three_hours() -> tuple[Clock, StuckSince, RecordingRef, list[SealedDownload]]:
    clock = Clock()
    stuck = StuckSince(lambda: clock.t, lambda: clock.m)
    ref = _ref()
    copies: list[SealedDownload] = []
    for hour in range(11):  # a pass every ~18 min over 3 h, each sealing one more stuck copy
        copies = _stuck_copies(hour)
        assert given_up_because(copies, stuck.span(ref)) is None
        clock.advance(0.3 * H)
    return clock, stuck, ref, copies


def test_control_stuck_for_three_hours_gives_nothing_up() -> None:
    clock, stuck, ref, copies = _found_stuck_for_three_hours()
    assert given_up_because(copies, stuck.span(ref)) is None


def test_no_refusal_for_46_hours_does_not_give_the_recording_up() -> None:
    clock, stuck, ref, copies = _found_stuck_for_three_hours()
    clock.advance(46 * H)  # no try since (the disk tight: `_tight_for`; or the device away)
    # Expected: the refusals spanned ~3 h, not 48 h: a quota full only for a while gives nothing up.
    assert given_up_because(copies, stuck.span(ref)) is None
