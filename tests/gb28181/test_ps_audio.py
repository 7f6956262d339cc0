"""The program stream split into its video and its audio (drivers.gb28181.ps_audio) against real ffmpeg: a
GB/T 28181 stream (H.264, G.711A in PSM type 0x90) in random RTP-sized chunks comes out byte for byte the
same length with every audio PES made padding, which ffprobe then reads as video only (the control: the
stream as sent has an audio stream ffprobe sees), the audio frames whole and in order with their PTS;
an audio PES whose length was damaged is passed on unchanged and counted; an unbounded video PES and
garbage pass through; random bytes never raise."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gb28181.ps import Codec, PsMuxer, pack_header, pes_packets
from drivers.gb28181.ps_audio import AudioPes, PsAudioSplitter, SplitOutput
from tests.prerequisites import require

HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
FRAME_TICKS = 3600  # 25 fps
AUDIO_BYTES = 320  # 40 ms of G.711 per video frame


def _access_units(path: Path) -> list[tuple[bytes, bool]]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-f", "h264", "-show_entries", "packet=size,pos,flags", "-of", "csv=p=0",
         str(path)], check=True, capture_output=True, text=True, timeout=60).stdout.split()
    data = path.read_bytes()
    units = []
    for line in out:
        size, pos, flags = line.split(",")[:3]
        units.append((data[int(pos):int(pos) + int(size)], "K" in flags))
    return units


@pytest.fixture(scope="module")
def gb_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, int]:
    """(the PS as a GB camera sends it, its G.711A, the video frames): 4 s of H.264 and a 440 Hz tone."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    folder = tmp_path_factory.mktemp("ps-audio")
    h264, alaw = folder / "v.h264", folder / "a.alaw"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "4",
                    "-c:v", "libx264", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p", "-f", "h264",
                    str(h264)], check=True, timeout=120)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000",
                    "-t", "4", "-c:a", "pcm_alaw", "-f", "alaw", str(alaw)], check=True, timeout=120)
    units = _access_units(h264)
    audio = alaw.read_bytes()
    muxer = PsMuxer(Codec.H264, Codec.G711A)
    out = bytearray()
    for i, (unit, key) in enumerate(units):
        pts = 90000 + i * FRAME_TICKS
        out += muxer.video_frame(unit, pts, key=key)
        out += muxer.audio_frame(audio[i * AUDIO_BYTES:(i + 1) * AUDIO_BYTES], pts)
    return bytes(out), audio, len(units)


def _split(chunks: list[bytes]) -> tuple[SplitOutput, PsAudioSplitter]:
    splitter = PsAudioSplitter()
    total = SplitOutput()
    video = bytearray()
    for chunk in [*chunks, None]:
        out = splitter.feed(chunk) if chunk is not None else splitter.flush()
        video += out.video
        total.media += out.media
        total.stream_map = out.stream_map or total.stream_map
    total.video = bytes(video)
    return total, splitter


def _rtp_sized(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks, at = [], 0
    while at < len(data):
        size = rng.choice([1, 3, 7, 188, 1400, 1400, 1388, 4000])
        chunks.append(data[at:at + size])
        at += size
    return chunks


def _kinds(data: bytes, folder: Path) -> list[str]:
    path = folder / "probe.ps"
    path.write_bytes(data)
    done = subprocess.run(["ffprobe", "-v", "error", "-f", "mpeg", "-show_entries", "stream=codec_type",
                           "-of", "json", str(path)], capture_output=True, text=True, check=True, timeout=60)
    return sorted(s["codec_type"] for s in json.loads(done.stdout)["streams"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_audio_pes_become_padding_and_their_frames_come_out_whole_with_their_pts(
    gb_stream: tuple[bytes, bytes, int], seed: int, tmp_path: Path
) -> None:
    stream, audio, frames = gb_stream
    out, splitter = _split(_rtp_sized(stream, seed))
    assert len(out.video) == len(stream)  # the same packs, the same lengths: only the audio is gone
    assert out.stream_map is not None and splitter.audio_codec() is Codec.G711A
    sound = out.audio
    assert all(isinstance(f, AudioPes) and f.codec is Codec.G711A and f.stream_id == 0xC0 for f in sound)
    assert b"".join(f.data for f in sound) == audio[:AUDIO_BYTES * frames]
    assert [f.pts for f in sound] == [90000 + i * FRAME_TICKS for i in range(frames)]
    assert out.video_pts == [90000 + i * FRAME_TICKS for i in range(frames)]
    # In stream order: each frame's picture, then its sound.
    assert [type(m).__name__ for m in out.media[:4]] == ["int", "AudioPes", "int", "AudioPes"]
    assert (splitter.audio_pes, splitter.damaged_audio, splitter.resyncs) == (frames, 0, 0)
    # ffmpeg reads the split stream as video only; the stream as sent has its (mis-read) audio stream.
    assert _kinds(out.video, tmp_path) == ["video"]
    assert _kinds(stream, tmp_path) == ["audio", "video"]


def test_an_audio_pes_whose_length_is_wrong_passes_unchanged_and_the_next_pack_is_read() -> None:
    muxer = PsMuxer(Codec.H264, Codec.G711A)
    key = muxer.video_frame(b"\x00\x00\x00\x01\x65\x88" + b"\x11" * 100, 90000, key=True)
    audio = bytearray(muxer.audio_frame(b"\x55" * 160, 90000))
    length_at = audio.index(b"\x00\x00\x01\xc0") + 4
    audio[length_at + 1] += 7  # the PES claims 7 bytes more than it has (a hole in the bytes)
    good = muxer.audio_frame(b"\x56" * 160, 91800)
    stream = key + bytes(audio) + good
    out, splitter = _split([stream])
    assert splitter.damaged_audio == 1 and splitter.resyncs == 1
    assert [f.data for f in out.audio] == [b"\x56" * 160]  # the next one is read again
    assert bytes(audio) in out.video and len(out.video) == len(stream)
    # Control: the same stream undamaged gives both frames.
    whole, _ = _split([key + muxer.audio_frame(b"\x55" * 160, 90000) + good])
    assert [f.data for f in whole.audio] == [b"\x55" * 160, b"\x56" * 160]


def test_without_a_psm_audio_is_of_unknown_codec_and_an_unbounded_video_pes_passes_through() -> None:
    body = b"\x00\x00\x00\x01\x65" + b"\x22" * 5000
    unbounded = b"\x00\x00\x01\xe0\x00\x00\x80\x80\x05" + bytes([0x21, 0, 0x05, 0xbf, 0x21]) + body
    stream = (pack_header(90000) + unbounded + pack_header(90000)
              + pes_packets(0xC0, b"\x55" * 160, pts=90000) + pack_header(93600) + b"garbage!"
              + pack_header(97200))
    out, splitter = _split(_rtp_sized(stream, 5))
    assert splitter.audio_codec() is None and out.stream_map is None
    assert [(f.codec, f.data) for f in out.audio] == [(Codec.UNKNOWN, b"\x55" * 160)]
    assert out.video_pts and len(out.video) == len(stream) and body in out.video
    assert b"garbage!" in out.video and splitter.resyncs == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000), st.integers(min_value=1, max_value=600))
def test_random_bytes_never_raise_and_come_out_no_longer_than_they_went_in(data: bytes, size: int) -> None:
    stream = pack_header(0) + data
    out, _ = _split([stream[i:i + size] for i in range(0, len(stream), size)])
    assert len(out.video) == len(stream)


@pytest.mark.parametrize("follower", [b"\x00\x00\x01", b"\x00\x01", b"\x05"])
def test_zero_stuffing_is_passed_on_in_runs_and_the_structures_after_it_are_read(follower: bytes) -> None:
    # A camera that pads its packs with zeros (as much as its media): passed on byte for byte, a run at a
    # time, whatever the RTP sizes cut it into; the audio after it is still taken out. Control: the same
    # stream without the stuffing gives the same audio.
    muxer = PsMuxer(Codec.H264, Codec.G711A)
    media = [muxer.video_frame(b"\x00\x00\x00\x01\x65" + b"\x55" * 2000, 90000 + n * 3600, key=n == 0)
             + muxer.audio_frame(bytes([n]) * 160, 90000 + n * 3600) for n in range(20)]
    stuffed = b"".join(chunk + b"\x00" * 5000 for chunk in media) + follower
    out, splitter = _split(_rtp_sized(stuffed, 3))
    plain, _ = _split(_rtp_sized(b"".join(media), 3))
    sound = [bytes([n]) * 160 for n in range(20)]
    assert [a.data for a in out.audio] == [a.data for a in plain.audio] == sound
    assert len(out.video) == len(stuffed) and out.video.count(b"\x00" * 5000) >= 20
    assert splitter.damaged_audio == 0
