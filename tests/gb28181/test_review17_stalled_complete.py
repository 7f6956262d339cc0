"""Review 17: a download whose stream stalls near its end is sealed complete and never fetched again.

`completeness` takes the session as ended by the device when its media stopped (`idle`: many devices send
no MediaStatus 121), and the video span as enough when it falls short of the recording's time range by up
to SHORT_TOLERANCE_FRACTION (5 %) of it: meant for the one frame a PTS span lacks, it is 30 s of a 10-min
recording and 3 min of an hour. A 4G uplink that drops for longer than `idle_timeout_s` (while the device's
keepalives, every 60 s with 3 misses allowed, keep it online, so it is not `interrupted`) in the last 5 %
ends the transfer `idle` with the end missing: `complete: true`, the recording is skipped at every later
pass, the missing minutes are never downloaded, and nothing but the two numbers in the manifest says so.

Real receiver over real UDP; `completeness` as the scheduler calls it."""

from __future__ import annotations

from pathlib import Path

from edge.sources.gb28181.recordings import RecordingRef
from tests.gb28181.completeness_rig import judged_transfer, tiny_video

SSRC = 1100000077
PORTS = (34000, 34999)
LENGTH_S = 600  # a 10-minute recording, as RecordInfo lists it
REF = RecordingRef(device_id="34020000001320000021", channel_id="34020000001310000021", name="rec",
                   file_path="/sd/1.ps", start_time="2026-12-05T10:00:00", end_time="2026-12-05T10:10:00",
                   record_type="time", recorder_id="", address="", file_size_bytes=None)


async def _transfer_stalling_after(tmp_path: Path, seconds: int) -> dict[str, object]:
    """The device sends `seconds` of the recording's video, then nothing more (its uplink dropped): the
    receiver ends idle; the result checked as the scheduler checks it."""
    return await judged_transfer(tmp_path, tiny_video(seconds, ssrc=SSRC), ref=REF, length_s=LENGTH_S,
                                 ssrc=SSRC, ports=PORTS)


async def test_a_transfer_stalling_with_its_last_29_seconds_missing_is_not_complete(tmp_path: Path) -> None:
    check = await _transfer_stalling_after(tmp_path, LENGTH_S - 29)
    assert check["complete"] is False, (
        f"{check['received_video_s']} s of the {LENGTH_S} s recording came before the stream stalled, and it "
        "is sealed complete: never downloaded again")


async def test_control_the_whole_recording_is_complete(tmp_path: Path) -> None:
    check = await _transfer_stalling_after(tmp_path, LENGTH_S)
    assert check["complete"] is True, check
