"""MPEG-PS demuxer against real ffmpeg output and ffprobe's own reading, the GB/T 28181 layout (PSM, G.711),
a pack built by hand from the standard's layout, random RTP-sized chunks, loss, garbage and hostile bytes."""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.gb28181.ps import (
    Codec,
    EsFrame,
    FrameDropped,
    PsDemuxer,
    PsEvent,
    PsMuxer,
    Resync,
    StreamInfo,
    StreamMap,
    crc32_mpeg2,
    encode_timestamp,
    pack_header,
    parse_timestamp,
)
from tests.prerequisites import require, requires

HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
needs_ffmpeg = requires(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
FRAME_TICKS = 3600  # 25 fps at 90 kHz


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=120)


@dataclass(frozen=True)
class Media:
    vob: Path  # ffmpeg's MPEG-2 PS (DVD): H.264 in 0xE2, 2 KiB packs, no PSM
    vob_bframes: Path  # the same with B-frames: DTS differs from PTS
    mpeg: Path  # ffmpeg's MPEG-1 system stream
    h264: Path  # raw Annex B H.264
    h265: Path  # raw Annex B H.265
    alaw: Path  # raw G.711 A-law, 8 kHz mono


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    folder = tmp_path_factory.mktemp("ps-media")
    source = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "4"]
    x264 = ["-c:v", "libx264", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p"]
    media = Media(folder / "v.vob", folder / "vb.vob", folder / "v.mpg", folder / "v.h264", folder / "v.h265",
                  folder / "a.alaw")
    _ffmpeg(*source, *x264, "-f", "vob", str(media.vob))
    _ffmpeg(*source, *x264, "-bf", "2", "-f", "vob", str(media.vob_bframes))
    _ffmpeg(*source, *x264, "-f", "mpeg", str(media.mpeg))
    _ffmpeg(*source, *x264, "-bsf:v", "h264_mp4toannexb", "-f", "h264", str(media.h264))
    _ffmpeg(*source, "-c:v", "libx265", "-x265-params", "log-level=error", "-g", "25", "-bf", "0",
            "-f", "hevc", str(media.h265))
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000", "-t", "4", "-c:a", "pcm_alaw",
            "-ar", "8000", "-ac", "1", "-f", "alaw", str(media.alaw))
    return media


def _probe_packets(path: Path, *args: str) -> list[tuple[int | None, int]]:
    """ffprobe's packets of the first video stream: (pts or None, size)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", *args, "-select_streams", "v:0", "-show_entries", "packet=pts,size",
         "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split()
    fields = (line.split(",")[:2] for line in out)
    return [(None if pts == "N/A" else int(pts), int(size)) for pts, size in fields]


def _probe_frame_count(path: Path, *args: str) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", *args, "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames,codec_name", "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    return int(out.split(",")[-1])


def _es_access_units(path: Path, codec: str) -> list[tuple[bytes, bool]]:
    """The access units of a raw Annex B file as ffmpeg's own parser cuts them: (bytes, key)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-f", codec, "-show_entries", "packet=size,pos,flags", "-of", "csv=p=0",
         str(path)], check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split()
    data = path.read_bytes()
    units = []
    for line in out:
        size, pos, flags = line.split(",")[:3]
        units.append((data[int(pos):int(pos) + int(size)], "K" in flags))
    assert b"".join(u for u, _ in units) == data
    return units


def _demux(chunks: list[bytes], demuxer: PsDemuxer | None = None) -> list[PsEvent]:
    demuxer = demuxer or PsDemuxer()
    events: list[PsEvent] = []
    for chunk in chunks:
        events += demuxer.feed(chunk)
    return events + demuxer.flush()


def _frames(events: list[PsEvent], stream_id: int | None = None) -> list[EsFrame]:
    return [e for e in events if isinstance(e, EsFrame) and (stream_id is None or e.stream_id == stream_id)]


def _rtp_sized(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks, at = [], 0
    while at < len(data):
        size = rng.choice([1, 3, 7, 188, 1400, 1400, 1400, 1388, 4000])
        chunks.append(data[at:at + size])
        at += size
    return chunks


def _assert_one_run_missing(frames: list[EsFrame], reference: list[EsFrame], *, at_most: int) -> None:
    """What came out is the reference with one contiguous run of frames missing: nothing damaged, nothing
    reordered, and everything after the damage intact."""
    missing = len(reference) - len(frames)
    assert 1 <= missing <= at_most
    first = next((i for i, (a, b) in enumerate(zip(frames, reference, strict=False)) if a != b), len(frames))
    assert frames == reference[:first] + reference[first + missing:]
    assert frames[-1] == reference[-1]


# -- ffmpeg's program streams ------------------------------------------------------------------------------


@needs_ffmpeg
@pytest.mark.parametrize("kind", ["vob", "mpeg"])
def test_access_units_and_pts_match_ffprobe(media: Media, kind: str) -> None:
    path = media.vob if kind == "vob" else media.mpeg
    events = _demux([path.read_bytes()])
    frames = _frames(events)
    assert not [e for e in events if isinstance(e, Resync | FrameDropped)]
    probed = _probe_packets(path)
    assert len(frames) == _probe_frame_count(path) == len(probed) == 100
    assert [(f.pts, len(f.data)) for f in frames] == probed
    # Both cases are compared: access units that begin in a PES with a PTS, and several small ones that
    # begin in the same 2 KiB pack (only the first of those gets the PES's PTS; ffprobe agrees).
    assert sum(f.pts is not None for f in frames) >= 10 and sum(f.pts is None for f in frames) >= 10
    assert {f.codec for f in frames} == {Codec.H264}  # no PSM: probed
    assert [i for i, f in enumerate(frames) if f.key] == [0, 25, 50, 75]


@needs_ffmpeg
def test_dts_of_b_frames_match_ffprobe(media: Media) -> None:
    frames = _frames(_demux([media.vob_bframes.read_bytes()]))
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts,dts,size",
         "-of", "csv=p=0", str(media.vob_bframes)], check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split()
    probed = [tuple(None if v == "N/A" else int(v) for v in line.split(",")[:3]) for line in out]
    # ffmpeg's parser hands a PES's timestamps to two packets when an access unit begins right at the PES
    # boundary and a short one follows in the same PES (two B-frames with one PTS: impossible). The PES
    # carried one PTS, for the access unit that begins in it: the second gets none here.
    repeated = {i for i in range(1, len(probed))
                if probed[i][0] is not None and probed[i][:2] == probed[i - 1][:2]}
    assert len(repeated) <= 3
    expected = [(None, None, p[2]) if i in repeated else p for i, p in enumerate(probed)]
    assert [(f.pts, f.dts, len(f.data)) for f in frames] == expected
    assert any(f.dts is not None and f.pts is not None and f.dts < f.pts for f in frames)


@needs_ffmpeg
@pytest.mark.parametrize("seed", range(5))
def test_random_rtp_sized_chunks_give_the_same_frames(media: Media, seed: int) -> None:
    data = media.vob.read_bytes()
    whole = _frames(_demux([data]))
    assert _frames(_demux(_rtp_sized(data, seed))) == whole


@needs_ffmpeg
# Not a whole number of 2 KiB packs: a loss of exactly N packs that leaves every PES length consistent is
# invisible in the program stream; the transport reports it (the `discontinuity()` test below).
@pytest.mark.parametrize(("lost_at", "lost_bytes"), [(15000, 700), (20480 + 100, 2000), (8192, 3000)])
def test_bytes_lost_mid_stream_are_a_reported_resync_and_later_frames_are_intact(
        media: Media, lost_at: int, lost_bytes: int) -> None:
    data = media.vob.read_bytes()
    reference = _frames(_demux([data]))
    events = _demux(_rtp_sized(data[:lost_at] + data[lost_at + lost_bytes:], seed=lost_at))
    frames = _frames(events)
    (resync,) = [e for e in events if isinstance(e, Resync)]
    assert resync.offset <= lost_at and resync.dropped_frames >= 1 and resync.reason
    _assert_one_run_missing(frames, reference, at_most=25)


@needs_ffmpeg
def test_garbage_between_packs_is_skipped_and_reported(media: Media) -> None:
    data = media.vob.read_bytes()
    reference = _frames(_demux([data]))
    garbage = bytes(random.Random(5).randbytes(777)).replace(b"\x00\x00\x01", b"\x00\x02\x01")
    events = _demux([data[:10240] + garbage + data[10240:]])
    (resync,) = [e for e in events if isinstance(e, Resync)]
    # The PES before the garbage cannot be told from one that lost bytes (its end is not followed by a start
    # code), so it goes too: the skip starts in the pack before and ends exactly at the next pack header.
    assert 8192 <= resync.offset <= 10240 and resync.offset + resync.skipped_bytes == 10240 + 777
    _assert_one_run_missing(_frames(events), reference, at_most=25)


# -- the GB/T 28181 layout: one pack per frame, PSM, G.711 -------------------------------------------------


def _gb_stream(units: list[tuple[bytes, bool]], audio: bytes | None, video: Codec,
               audio_codec: Codec | None) -> bytes:
    muxer = PsMuxer(video, audio_codec)
    out = bytearray()
    for i, (unit, key) in enumerate(units):
        pts = 90000 + i * FRAME_TICKS
        out += muxer.video_frame(unit, pts, key=key)
        if audio is not None:  # 40 ms of 8 kHz G.711 per video frame: 320 bytes, in its own pack
            out += muxer.audio_frame(audio[i * 320:(i + 1) * 320], pts)
    return bytes(out)


@needs_ffmpeg
def test_gb_layout_h264_with_g711a_audio(media: Media, tmp_path: Path) -> None:
    units = _es_access_units(media.h264, "h264")
    audio = media.alaw.read_bytes()
    stream = _gb_stream(units, audio, Codec.H264, Codec.G711A)
    events = _demux(_rtp_sized(stream, seed=11))
    maps = [e for e in events if isinstance(e, StreamMap)]
    assert maps[0].streams == (StreamInfo(0xE0, 0x1B, Codec.H264), StreamInfo(0xC0, 0x90, Codec.G711A))
    assert len(maps) == 1  # the same PSM repeated before each key frame is reported once
    video = _frames(events, 0xE0)
    assert [(f.data, f.key) for f in video] == units
    assert [f.pts for f in video] == [90000 + i * FRAME_TICKS for i in range(len(units))]
    sound = _frames(events, 0xC0)
    assert all(f.codec is Codec.G711A for f in sound)
    assert b"".join(f.data for f in sound) == audio[:320 * len(units)]
    # ffmpeg reads the same stream (our muxer is checked by an independent demuxer): same frames, same PTS.
    path = tmp_path / "gb.ps"
    path.write_bytes(stream)
    assert [pts for pts, _ in _probe_packets(path)] == [f.pts for f in video]


@needs_ffmpeg
def test_gb_layout_h265(media: Media, tmp_path: Path) -> None:
    units = _es_access_units(media.h265, "hevc")
    stream = _gb_stream(units, None, Codec.H265, None)
    events = _demux(_rtp_sized(stream, seed=3))
    video = _frames(events)
    # ffmpeg's HEVC parser gives a 4-byte start code's zero_byte to the unit before, this demuxer to the
    # unit it starts (as H.264/H.265 Annex B does): compare the units without their edge zeros.
    assert [(f.data.strip(b"\0"), f.key) for f in video] == [(u.strip(b"\0"), k) for u, k in units]
    assert b"".join(f.data for f in video) == b"".join(u for u, _ in units)
    assert {f.codec for f in video} == {Codec.H265}
    path = tmp_path / "gb265.ps"
    path.write_bytes(stream)
    assert _probe_frame_count(path) == len(units) == 100


@needs_ffmpeg
def test_a_lost_pack_reported_by_rtp_resyncs_at_the_next_pack(media: Media) -> None:
    units = _es_access_units(media.h264, "h264")
    muxer = PsMuxer(Codec.H264)
    packs = [muxer.video_frame(unit, i * FRAME_TICKS, key=key) for i, (unit, key) in enumerate(units)]
    demuxer = PsDemuxer()
    events: list[PsEvent] = []
    for i, pack in enumerate(packs):
        if i == 40:  # a whole pack lost: invisible in the PS, known from the RTP sequence gap
            events += demuxer.discontinuity("RTP sequence gap 1234..1240")
            continue
        events += demuxer.feed(pack)
    events += demuxer.flush()
    (resync,) = [e for e in events if isinstance(e, Resync)]
    assert resync.reason == "RTP sequence gap 1234..1240" and resync.dropped_frames == 1
    video = [(f.data, f.key) for f in _frames(events)]
    assert video == units[:39] + units[41:]  # 39 (pending when the gap came) and 40 (lost) are missing


def test_a_pack_built_by_hand_from_the_standards_layout() -> None:
    """GB/T 28181-2016 C.1 and ISO/IEC 13818-1 2.5.3: pack header, system header, PSM (G.711A on 0xC0,
    H.265 on 0xE0, as in the capture quoted in gb28181.md §7), a video PES with PTS, an audio PES."""
    pts = 0x1_2345_6789 & ((1 << 33) - 1)
    pack = bytes.fromhex(
        "000001ba"  # pack_start_code
        "44 00 04 00 04 01"  # '01', SCR 0 with its marker bits, SCR extension 0, marker
        "00 5f 6b"  # program_mux_rate 6106 (units of 50 bytes/s), '11'
        "f8"  # reserved '11111', pack_stuffing_length 0
    )
    system = bytes.fromhex(
        "000001bb 0012"  # system header, 18 bytes follow
        "80 2f b5"  # marker, rate_bound 6106, marker
        "04 e1 7f"  # audio_bound 1, fixed 0, CSPS 0; locks, marker, video_bound 1; no rate restriction
        "e0 e0 80  c0 c0 20  bd e0 80  bf e0 80"  # streams and their P-STD buffer bounds
    )
    entries = bytes.fromhex("90 c0 0000  24 e0 0000")  # stream_type, stream_id, no descriptors
    psm_body = bytes.fromhex("e0 ff 0000") + len(entries).to_bytes(2, "big") + entries
    psm_head = b"\x00\x00\x01\xbc" + (len(psm_body) + 4).to_bytes(2, "big") + psm_body
    psm = psm_head + crc32_mpeg2(psm_head).to_bytes(4, "big")
    hevc = bytes.fromhex("00000001 4001 0c01ffff  00000001 4201 01  00000001 4401 c1  00000001 2601 af 0123")
    video_pes = b"\x00\x00\x01\xe0" + (3 + 5 + len(hevc)).to_bytes(2, "big") + b"\x80\x80\x05"
    video_pes += encode_timestamp(2, pts) + hevc
    alaw = bytes(range(0xD5, 0xD5 + 16))
    audio_pes = b"\x00\x00\x01\xc0" + (3 + 5 + len(alaw)).to_bytes(2, "big") + b"\x80\x80\x05"
    audio_pes += encode_timestamp(2, pts) + alaw
    stream = pack + system + psm + video_pes + pack + audio_pes
    assert len(pack) == 14 and parse_timestamp(encode_timestamp(2, pts), 0) == pts
    events = _demux([stream])
    expected_map = (StreamInfo(0xC0, 0x90, Codec.G711A), StreamInfo(0xE0, 0x24, Codec.H265))
    assert events[0] == StreamMap(0, expected_map)
    audio = _frames(events, 0xC0)
    video = _frames(events, 0xE0)
    assert audio == [EsFrame(0xC0, Codec.G711A, pts, None, alaw, key=True)]
    assert video == [EsFrame(0xE0, Codec.H265, pts, None, hevc, key=True)]  # NAL type 19: IDR_W_RADL
    assert not [e for e in events if isinstance(e, Resync)]


def test_an_unbounded_video_pes_runs_to_the_next_start_code() -> None:
    muxer = PsMuxer(Codec.H264)
    frames = [b"\x00\x00\x00\x01\x67\x42\x00\x1e\x00\x00\x00\x01\x68\xce\x00\x00\x00\x01\x65\x88" + bytes(50),
              b"\x00\x00\x00\x01\x41\x9a" + bytes(30)]
    bounded = [muxer.video_frame(frame, i * FRAME_TICKS, key=i == 0) for i, frame in enumerate(frames)]
    first = bytearray(bounded[0])
    at = first.index(b"\x00\x00\x01\xe0")
    first[at + 4:at + 6] = b"\x00\x00"  # PES_packet_length 0: unbounded, as some cameras send video
    events = _demux([bytes(first), bounded[1]])
    assert [f.data for f in _frames(events)] == frames
    assert not [e for e in events if isinstance(e, Resync)]


def test_a_frame_over_the_bound_is_dropped_and_reported() -> None:
    muxer = PsMuxer(Codec.H264)
    big = b"\x00\x00\x00\x01\x65\x88" + bytes(5000)
    small = b"\x00\x00\x00\x01\x41\x9a" + bytes(100)
    events = _demux([muxer.video_frame(big, 0, key=True), muxer.video_frame(small, 3600, key=False),
                     muxer.video_frame(small, 7200, key=False)], PsDemuxer(max_frame_bytes=2048))
    assert any(isinstance(e, FrameDropped) and e.size_bytes > 2048 for e in events)
    assert [f.pts for f in _frames(events)] == [3600, 7200]  # the frames after the dropped one are whole


def test_the_crc_is_mpeg2s() -> None:
    assert crc32_mpeg2(b"123456789") == 0x0376E6E7  # the CRC-32/MPEG-2 check value


# -- hostile input: events only, never an exception; memory bounded ----------------------------------------


def _gb_sample() -> bytes:
    muxer = PsMuxer(Codec.H264, Codec.G711U)
    out = bytearray()
    for i in range(6):
        unit = b"\x00\x00\x00\x01" + (b"\x65\x88" if i % 3 == 0 else b"\x41\x9a") + bytes(range(i, 200 + i))
        out += muxer.video_frame(unit, i * FRAME_TICKS, key=i % 3 == 0)
        out += muxer.audio_frame(bytes(160), i * FRAME_TICKS)
    return bytes(out)


GB_SAMPLE = _gb_sample()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_and_cut_streams_only_give_events(data: st.DataObject) -> None:
    stream = bytearray(GB_SAMPLE)
    for _ in range(data.draw(st.integers(0, 12))):
        at = data.draw(st.integers(0, len(stream) - 1))
        match data.draw(st.sampled_from(["flip", "cut", "insert"])):
            case "flip":
                stream[at] = data.draw(st.integers(0, 255))
            case "cut":
                del stream[at:at + data.draw(st.integers(1, 300))]
            case _:
                stream[at:at] = data.draw(st.binary(max_size=64))
        if not stream:
            break
    demuxer = PsDemuxer(max_frame_bytes=4096)
    sizes = data.draw(st.lists(st.integers(1, 1500), min_size=1, max_size=8))
    at = i = 0
    while at < len(stream):
        size = sizes[i % len(sizes)]
        for event in demuxer.feed(bytes(stream[at:at + size])):
            if isinstance(event, EsFrame):
                assert len(event.data) <= 4096
        assert demuxer.buffered_bytes <= 4096 + 65536 + 1500
        at += size
        i += 1
    demuxer.flush()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_only_give_events(data: bytes) -> None:
    demuxer = PsDemuxer(max_frame_bytes=4096)
    events = demuxer.feed(data) + demuxer.flush()
    assert all(isinstance(e, EsFrame | StreamMap | Resync | FrameDropped) for e in events)


def test_joining_a_live_stream_mid_pack_starts_at_the_next_pack() -> None:
    muxer = PsMuxer(Codec.H264)
    units = [b"\x00\x00\x00\x01" + (b"\x65\x88" if i == 0 else b"\x41\x9a") + bytes([i + 1]) * 500
             for i in range(4)]
    packs = [muxer.video_frame(unit, i * FRAME_TICKS, key=i == 0) for i, unit in enumerate(units)]
    events = _demux([b"".join(packs)[100:]])
    (resync,) = [e for e in events if isinstance(e, Resync)]
    assert resync == Resync(0, len(packs[0]) - 100, "the stream did not start with a pack header", 0)
    assert [f.data for f in _frames(events)] == units[1:]
    # Control: from the start, nothing is skipped and every frame comes.
    whole = _demux([b"".join(packs)])
    assert [f.data for f in _frames(whole)] == units and not [e for e in whole if isinstance(e, Resync)]


def test_a_run_of_pack_headers_each_followed_by_garbage_is_one_resync_not_one_per_pack_header() -> None:
    # A pack header then a bad byte, again and again: each pack header is a place where reading could
    # resume, and each is followed by garbage. Reported one Resync per pack header, 10 MB of it made
    # ~700 000 events for the receiver; it is one run of garbage, so one event, with the count and the
    # bytes skipped (memory and event count bounded whatever the run's length).
    muxer = PsMuxer(Codec.H264)
    units = [b"\x00\x00\x00\x01" + (b"\x65\x88" if i == 0 else b"\x41\x9a") + bytes([i + 1]) * 500
             for i in range(4)]
    packs = [muxer.video_frame(unit, i * FRAME_TICKS, key=i == 0) for i, unit in enumerate(units)]
    repeats = 20_000
    garbage = (pack_header(0) + b"\x01") * repeats
    stream = packs[0] + packs[1] + garbage + packs[2] + garbage + packs[3]
    events = _demux([stream[at:at + 1400] for at in range(0, len(stream), 1400)])

    resyncs = [e for e in events if isinstance(e, Resync)]
    first_garbage = len(packs[0]) + len(packs[1])
    second_garbage = first_garbage + len(garbage) + len(packs[2])
    # The frame in progress when the garbage began (unit 1: an access unit ends only when the next begins)
    # is dropped with it; the frames after each run are whole.
    assert resyncs == [
        Resync(first_garbage + len(pack_header(0)), len(garbage) - len(pack_header(0)),
               f"expected a start code at input offset {first_garbage + len(pack_header(0))}", 1, repeats),
        Resync(second_garbage + len(pack_header(0)), len(garbage) - len(pack_header(0)),
               f"expected a start code at input offset {second_garbage + len(pack_header(0))}", 1, repeats),
    ]
    assert [f.data for f in _frames(events)] == [units[0], units[3]]


def test_a_resync_confirmed_by_a_structure_is_reported_before_the_frames_after_it() -> None:
    # Control for the coalescing: garbage then a good pack, twice: two runs, two events, each reported
    # before the frame that the structure ending it completed (here an audio PES: one frame per PES).
    muxer = PsMuxer(Codec.H264, Codec.G711A)
    units = [b"\x00\x00\x00\x01" + (b"\x65\x88" if i == 0 else b"\x41\x9a") + bytes([i + 1]) * 500
             for i in range(3)]
    video = [muxer.video_frame(unit, i * FRAME_TICKS, key=i == 0) for i, unit in enumerate(units)]
    audio = muxer.audio_frame(bytes(160), 0)
    garbage = b"\x01\x02\x03" * 100
    events = _demux([video[0] + garbage + audio + video[1] + garbage + audio + video[2]])
    described = [(type(e).__name__, e.stream_id if isinstance(e, EsFrame) else None)
                 for e in events if not isinstance(e, StreamMap)]
    assert described == [("Resync", None), ("EsFrame", 0xC0), ("Resync", None), ("EsFrame", 0xC0),
                         ("EsFrame", 0xE0)]
    assert [e.count for e in events if isinstance(e, Resync)] == [1, 1]
