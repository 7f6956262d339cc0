"""Review 16: the download completeness check (edge.sources.gb28181.scheduler.completeness) reads the
received video's span as (last PTS - first PTS) mod 2**33, with `last` the last frame's PTS, not the
greatest. A recorder whose encoder restarts its PTS mid-file (or any stream whose last frame's PTS is below
its first) yields a span of ~26.5 hours, so a transfer cut after a few seconds is sealed `complete: true`
and is never downloaded again. And nothing bounds a transfer from above: a device that keeps sending past the
recording's end (live after the file, another file appended) gives a span far beyond the recording, still
`complete: true`, so the sealed raw PS holds media outside the time range its manifest claims."""

from __future__ import annotations

from datetime import datetime

from drivers.gb28181.manscdp import RecordItem
from edge.gb28181.sessions import EndReason, SessionResult
from edge.sources.gb28181 import RecordingRef
from edge.sources.gb28181.scheduler import completeness

DEVICE = "34020000001320000016"
CHANNEL = "34020000001310000016"
PTS_HZ = 90000


class Outcome:
    """The receiver's outcome fields `completeness` reads."""

    def __init__(self, first_pts: int, last_pts: int, size: int) -> None:
        self.first_video_pts, self.last_video_pts, self.bytes = first_pts, last_pts, size


def _ref() -> RecordingRef:
    return RecordingRef.from_record_item(DEVICE, RecordItem(
        device_id=CHANNEL, name="rec", file_path="/sd/1.mp4", address="",
        start_time=datetime(2026, 12, 5, 9, 0), end_time=datetime(2026, 12, 5, 9, 1), secrecy=0,
        type="time", recorder_id=""))


def _result(outcome: Outcome) -> SessionResult:
    """A Download that ended on MediaStatus 121, no a=filesize in the answer (it is optional)."""
    return SessionResult(call_id="c", end_reason=EndReason.FILE_END, ssrc_offered=1, ssrc_answered=None,
                         ssrc_answer_text=None, ssrc_used=1, file_size_bytes=None, outcome=outcome)


def test_a_short_transfer_whose_pts_restarted_is_not_complete() -> None:
    # 5 s of a 60 s recording: frames from PTS 100 s, the encoder restarts at 0 after 2 s, 3 s more.
    restarted = completeness(_result(Outcome(100 * PTS_HZ, 3 * PTS_HZ, 400_000)), _ref(), 60.0)
    assert restarted["received_video_s"] is not None and restarted["received_video_s"] < 60.0, restarted
    assert restarted["complete"] is False, restarted


def test_control_the_same_short_transfer_with_monotonic_pts_is_incomplete() -> None:
    short = completeness(_result(Outcome(100 * PTS_HZ, 105 * PTS_HZ, 400_000)), _ref(), 60.0)
    assert short["complete"] is False and short["received_video_s"] == 5.0


def test_a_transfer_far_longer_than_the_recording_is_not_sealed_as_that_recording_complete() -> None:
    # The device kept sending 10 minutes past the 60 s recording's end before its 121.
    overlong = completeness(_result(Outcome(0, 660 * PTS_HZ, 90_000_000)), _ref(), 60.0)
    assert overlong["complete"] is False, overlong


def test_control_a_whole_recording_is_complete() -> None:
    whole = completeness(_result(Outcome(0, 60 * PTS_HZ, 9_000_000)), _ref(), 60.0)
    assert whole["complete"] is True
