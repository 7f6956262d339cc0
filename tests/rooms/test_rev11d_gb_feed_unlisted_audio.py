"""Review rev11d (issue 11, GB/T 28181 room sound): the feed (edge.rooms.gb_feed) over real pipes, with
the scripted reader of tests.rooms.test_gb_feed in place of the live layer.
The camera's PSM lists one audio stream
(0xC0, G.711A); its PS also carries audio PES on a stream id the PSM does not list (0xC1). The splitter gives
those the codec UNKNOWN and the feed takes UNKNOWN as the recorded codec: the unlisted stream's bytes are
written into the raw G.711 pipe as the camera's sound, and (coming first at each PTS) the listed stream's
samples are dropped as overlap. Control: the same stream without the unlisted PES records the listed sound."""

from __future__ import annotations

from drivers.gb28181.ps import Codec, PsMuxer
from tests.rooms.test_gb_feed import FRAME, IDR, SLICE, record_a_law_sound

LISTED, UNLISTED = 0x2A, 0x55


def _stream(seconds: float, *, unlisted: bool) -> list[bytes]:
    muxer = PsMuxer(Codec.H264, Codec.G711A)
    chunks = []
    for frame in range(round(seconds * 25)):
        pts = 90000 + frame * FRAME
        chunk = muxer.video_frame(IDR if frame % 25 == 0 else SLICE, pts, key=frame % 25 == 0)
        if unlisted:  # a second audio stream the PSM does not name, ahead of the listed one
            chunk += muxer.audio_frame(bytes([UNLISTED]) * 320, pts).replace(b"\x00\x00\x01\xc0",
                                                                              b"\x00\x00\x01\xc1")
        chunk += muxer.audio_frame(bytes([LISTED]) * 320, pts)
        chunks.append(chunk)
    return chunks


async def _sound(chunks: list[bytes]) -> bytes:
    sound, _, _ = await record_a_law_sound(chunks)
    return sound


async def test_control_the_listed_stream_is_recorded() -> None:
    assert await _sound(_stream(4.0, unlisted=False)) == bytes([LISTED]) * (4 * 8000)


async def test_an_audio_stream_the_psm_does_not_list_is_not_recorded_as_the_camera_s_sound() -> None:
    sound = await _sound(_stream(4.0, unlisted=True))
    assert sound.count(UNLISTED) == 0, (
        f"{sound.count(UNLISTED) / 8000:.2f} s of the unlisted stream 0xC1 recorded as the camera's G.711 "
        f"sound, {sound.count(LISTED) / 8000:.2f} s of the listed 0xC0 kept")
    assert sound == bytes([LISTED]) * (4 * 8000)
