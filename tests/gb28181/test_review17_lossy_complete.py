"""Review 17: a download that lost packets is sealed complete and never fetched again.

`completeness` judges a transfer by who ended it, the video's PTS span and a=filesize; lost packets count
for nothing. A UDP download over a 4G uplink that loses 30 s of a 10-minute recording in its middle
(RTP numbering gaps, each a `gap` entry) still spans the whole range, ends by the device, and is sealed
`complete: true`: the recording, still whole on the recorder, is skipped at every later pass, and the
evidence keeps the hole for good. The gap entries say media was lost; nothing ever asks for it again
(over TCP, or at all), unlike a short transfer, which is retried.

Real receiver over real UDP; `completeness` as the scheduler calls it."""


from __future__ import annotations

from pathlib import Path

from edge.sources.gb28181.recordings import RecordingRef
from tests.gb28181.completeness_rig import judged_transfer, tiny_video

SSRC = 1100000078
PORTS = (35000, 35999)
LENGTH_S = 600  # a 10-minute recording, as RecordInfo lists it
REF = RecordingRef(device_id="34020000001320000021", channel_id="34020000001310000021", name="rec",
                   file_path="/sd/1.ps", start_time="2026-12-05T10:00:00", end_time="2026-12-05T10:10:00",
                   record_type="time", recorder_id="", address="", file_size_bytes=None)


async def _transfer_losing(tmp_path: Path, lost: range) -> dict[str, object]:
    """The device sends the whole recording, the packets of `lost` are lost on the way; then it stops
    sending (the end: many devices send no 121); checked as the scheduler checks it."""
    return await judged_transfer(tmp_path, tiny_video(LENGTH_S, ssrc=SSRC, lost=lost), ref=REF,
                                 length_s=LENGTH_S, ssrc=SSRC, ports=PORTS, lost_packets=len(lost))


async def test_a_transfer_that_lost_30_seconds_in_its_middle_is_not_complete(tmp_path: Path) -> None:
    check = await _transfer_losing(tmp_path, range(300, 330))
    assert check["complete"] is False, (
        "30 s of the 600 s recording were lost on the way (30 packets, gap entries), and it is sealed "
        f"complete: never downloaded again ({check})")


async def test_control_a_transfer_without_loss_is_complete(tmp_path: Path) -> None:
    check = await _transfer_losing(tmp_path, range(0))
    assert check["complete"] is True, check
