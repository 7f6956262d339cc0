"""How a download's completeness is judged (edge.sources.gb28181.scheduler.completeness, pure), beyond the
review-16 cases: who ended the session, PTS read signed (a wrap is a span, a restart is none), the
receiver's own span measure when it gives one, and an overlong transfer flagged in the raw PS manifest.
Each refusal has its control beside it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.manscdp import RecordItem
from edge.gb28181.sessions import EndReason, SessionResult
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings, RecordingRef
from edge.sources.gb28181.scheduler import SHORT_TOLERANCE_S, completeness
from tests.gb28181.media_sender import SourceMedia, ps_packs, rtp_packets
from tests.gb28181.test_download_damage import CASE, DEVICE, SETTINGS, SSRC, Device, media, recording

__all__ = ["media"]  # the module fixture

CHANNEL = "34020000001310000016"
PTS_HZ = 90000
WRAP = 1 << 33


class Outcome:
    def __init__(self, first: int | None, last: int | None, size: int = 9_000_000, ended: str | None = None,
                 **more: Any) -> None:
        self.first_video_pts, self.last_video_pts, self.bytes = first, last, size
        if ended is not None:
            self.ended = ended
        for name, value in more.items():
            setattr(self, name, value)


def _ref() -> RecordingRef:
    return RecordingRef.from_record_item(DEVICE, RecordItem(
        device_id=CHANNEL, name="rec", file_path="/sd/1.mp4", address="",
        start_time=datetime(2026, 12, 5, 9, 0), end_time=datetime(2026, 12, 5, 9, 1), secrecy=0,
        type="time", recorder_id=""))


def _result(outcome: Outcome, end: Any = EndReason.FILE_END) -> SessionResult:
    return SessionResult(call_id="c", end_reason=end, ssrc_offered=1, ssrc_answered=None,
                         ssrc_answer_text=None, ssrc_used=1, file_size_bytes=None, outcome=outcome)


WHOLE = (0, 60 * PTS_HZ)


@pytest.mark.parametrize("end, media_end", [
    (EndReason.FILE_END, None), (EndReason.DEVICE_BYE, None),
    (EndReason.RECEIVER_ENDED, "idle"), (EndReason.RECEIVER_ENDED, "closed"),
])
def test_control_a_whole_recording_the_device_ended_is_complete(end: EndReason,
                                                                media_end: str | None) -> None:
    facts = completeness(_result(Outcome(*WHOLE, ended=media_end), end), _ref(), 60.0)
    assert facts["complete"] is True, facts


@pytest.mark.parametrize("end, media_end", [
    (EndReason.STOPPED, None),  # the station stopped it: the device went offline, or the station stopped
    (EndReason.RECEIVER_ENDED, "limit"), (EndReason.RECEIVER_ENDED, "error"),
    (EndReason.RECEIVER_ENDED, None),
    ("past-end", None), ("time-limit", None), (EndReason.RECEIVER_ENDED, "time-limit"),
])
def test_a_session_the_device_did_not_end_does_not_prove_the_recording_whole(end: Any,
                                                                            media_end: str | None) -> None:
    facts = completeness(_result(Outcome(*WHOLE, ended=media_end), end), _ref(), 60.0)
    assert facts["complete"] is False and "not by the device" in facts["incomplete"], facts


def test_a_pts_wrap_within_the_recording_is_a_span_not_a_restart() -> None:
    start = WRAP - 20 * PTS_HZ  # the stream's clock wraps 20 s in
    facts = completeness(_result(Outcome(start, (start + 60 * PTS_HZ) % WRAP)), _ref(), 60.0)
    assert facts["complete"] is True and facts["received_video_s"] == 60.0, facts
    backwards = completeness(_result(Outcome(start, 5 * PTS_HZ - 30 * PTS_HZ + WRAP)), _ref(), 60.0)
    assert backwards["complete"] is False and backwards["received_video_s"] == 0.0, backwards


def test_the_receivers_own_measure_wins_over_first_and_last() -> None:
    # First and last look whole; the receiver saw the clock jump forward and summed 5 s of frames.
    jumped = completeness(_result(Outcome(*WHOLE, video_run_span_s=5.0, video_pts_restarts=1)), _ref(), 60.0)
    assert jumped["complete"] is False and jumped["received_video_s"] == 5.0
    assert "jumped 1 time" in jumped["incomplete"]
    steady = completeness(_result(Outcome(*WHOLE, video_run_span_s=59.96, video_pts_restarts=0)), _ref(),
                          60.0)
    assert steady["complete"] is True, steady


def test_overlong_is_flagged_and_a_second_over_is_not() -> None:
    far = completeness(_result(Outcome(0, 75 * PTS_HZ)), _ref(), 60.0)
    assert far["complete"] is False and far.get("overlong") is True and "beyond" in far["incomplete"]
    near = completeness(_result(Outcome(0, 61 * PTS_HZ)), _ref(), 60.0)  # listed times are whole seconds
    assert near["complete"] is True and "overlong" not in near


@pytest.mark.parametrize("length_s", [60.0, 600.0, 3600.0, 4 * 3600.0])
def test_the_short_tolerance_is_a_few_seconds_whatever_the_length(length_s: float) -> None:
    """Review 20: what a whole file may lack (whole-second listing, a frame, a keyframe cut) does not grow
    with the file; a transfer a few seconds more short is incomplete at any length, a 4-hour one too."""
    def short_by(seconds: float) -> dict[str, Any]:
        last = round((length_s - seconds) * PTS_HZ) % WRAP
        ended_idle = _result(Outcome(0, last, ended="idle"), EndReason.RECEIVER_ENDED)  # no 121, no filesize
        return completeness(ended_idle, _ref(), length_s)

    stalled = short_by(SHORT_TOLERANCE_S + 1)
    assert stalled["complete"] is False and "video spans" in stalled["incomplete"], stalled
    assert short_by(SHORT_TOLERANCE_S - 0.5)["complete"] is True  # control: within the tolerance


def test_no_time_range_proves_nothing() -> None:
    assert completeness(_result(Outcome(*WHOLE)), _ref(), None)["complete"] is False
    assert completeness(_result(Outcome(None, None)), _ref(), 60.0)["complete"] is False


async def test_an_overlong_download_says_so_in_its_raw_ps_manifest(media: SourceMedia,
                                                                    tmp_path: Path) -> None:
    packets = rtp_packets(ps_packs(media), ssrc=SSRC)
    facts = completeness(_result(Outcome(0, 660 * PTS_HZ)), _ref(), 2.0)
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        pipeline = IngestPipeline(store, SETTINGS)
        await GbDownloads(pipeline, source, Device(packets, facts).start_download).download([recording(1)])
        await GbDownloads(pipeline, source, Device(packets, {"complete": True}).start_download).download(
            [recording(2)])
        repository = IngestRepository(store)
        raws = {}
        for (item,) in store.conn.execute("SELECT item FROM items"):
            record = repository.item(item)
            assert record is not None and record.manifest is not None
            if record.manifest["original"]["role"] == "raw-ps":
                raws[record.manifest["original"]["name"]] = record.manifest["original"]
    finally:
        store.close()
    assert raws["rec 1"]["overlong"] is True and raws["rec 1"]["complete"] is False
    assert "overlong" not in raws["rec 2"] and raws["rec 2"]["complete"] is True  # the control
