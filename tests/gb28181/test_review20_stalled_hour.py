"""Review 20 (MEDIUM): review 17's finding 2 (a download stalled near its end, ended `idle`, sealed complete
and never fetched again) is closed for its 10-minute case only: the tolerance is now max(2 s, 1 %), so an
hour-long recording (NVRs and interview-room recorders cut hourly files) may lack its last 35 s and be
sealed complete; a 4-hour interview file, its last 2 min 20 s.

Many devices send no MediaStatus 121 and no a=filesize (then only the span is checked): a 4G or Wi-Fi
uplink that drops for longer than `idle_timeout_s` in the last 1 % (the device stays online: keepalives
allow 3 misses) ends the transfer `idle` with the end missing. The recording is then skipped at every
later pass, and the missing end (in an interview, its last statements) is never downloaded. The 1 % is
said to cover "encoders that cut files on a keyframe near, not at, the listed time": a keyframe interval
is seconds, whatever the file's length, so a tolerance that grows with the length is not what that needs.

Real receiver over real UDP (a frame every 5 s of media, so an hour is 721 packets); `completeness` as the
scheduler calls it."""

from __future__ import annotations

from pathlib import Path

from edge.sources.gb28181.recordings import RecordingRef
from tests.gb28181.completeness_rig import judged_transfer, tiny_video

SSRC = 1100000078
PORTS = (34000, 34999)
LENGTH_S = 3600  # an hour-long recording, as RecordInfo lists it
STEP_S = 5
REF = RecordingRef(device_id="34020000001320000028", channel_id="34020000001310000028", name="rec",
                   file_path="/sd/1.ps", start_time="2026-12-05T10:00:00", end_time="2026-12-05T11:00:00",
                   record_type="time", recorder_id="", address="", file_size_bytes=None)


async def _transfer_stalling_after(tmp_path: Path, seconds: int) -> dict[str, object]:
    """The device sends `seconds` of the recording's video (a frame every STEP_S), then nothing more (its
    uplink dropped): the receiver ends idle; the result checked as the scheduler checks it."""
    return await judged_transfer(tmp_path, tiny_video(seconds, ssrc=SSRC, step_s=STEP_S, key_every=2),
                                 ref=REF, length_s=LENGTH_S, ssrc=SSRC, ports=PORTS)


async def test_an_hour_long_transfer_stalling_with_its_last_35_seconds_missing_is_not_complete(
        tmp_path: Path) -> None:
    check = await _transfer_stalling_after(tmp_path, LENGTH_S - 35)
    assert check["complete"] is False, (
        f"{check['received_video_s']} s of the {LENGTH_S} s recording came before the stream stalled, and it "
        "is sealed complete: its end is never downloaded")


async def test_control_the_whole_hour_is_complete(tmp_path: Path) -> None:
    check = await _transfer_stalling_after(tmp_path, LENGTH_S)
    assert check["complete"] is True, check
