"""Raw GB/T 28181 PS → MP4 with the real ffmpeg (edge/gb28181/convert.py): the argv as lists, and real
conversions of PsMuxer streams made from ffmpeg-encoded H.264 / H.265 with G.711 audio, checked with ffprobe
against the source: frame count, duration, audio as AAC at its offset, H.265 tagged hvc1; failures name the
recording and leave no file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.ps import Codec
from drivers.gb28181.rtp import parse_rtp
from edge.gb28181.convert import (
    AUDIO_PLACEHOLDER,
    ConversionError,
    confined_argv,
    convert_argv,
    convert_recording,
    mp4_argv,
    recorded_argv,
)
from tests.gb28181.media_sender import (
    AUDIO_DELAY_TICKS,
    FRAME_TICKS,
    HAVE_FFMPEG,
    SourceMedia,
    make_source,
    ps_packs,
    rtp_packets,
)
from tests.prerequisites import require

# -- argv, pure ---------------------------------------------------------------------------------------------


def test_argv_h264_with_g711a_copies_video_and_transcodes_audio_at_its_offset() -> None:
    argv = convert_argv(Path("/s/r.ps"), video_codec=Codec.H264, audio=Path("/s/a.raw"),
                        audio_codec=Codec.G711A, audio_offset_s=0.1)
    assert argv == [
        "ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-protocol_whitelist", "file",
        "-f", "mpeg", "-i", "file:/s/r.ps",
        "-itsoffset", "0.100000", "-f", "alaw", "-ar", "8000", "-ac", "1", "-i", "file:/s/a.raw",
        "-map", "0:v:0", "-map", "1:a:0", "-c", "copy", "-f", "nut", "pipe:1",
    ]  # fmt: skip
    recorded = recorded_argv(argv, {Path("/s/r.ps"): "{raw_ps}", Path("/s/a.raw"): AUDIO_PLACEHOLDER})
    assert recorded[0] == "-nostdin" and recorded[9:11] == ["-i", "{raw_ps}"]
    assert AUDIO_PLACEHOLDER in recorded
    assert "/s/" not in " ".join(recorded)


def test_the_mp4_copies_video_makes_g711_aac_and_puts_the_index_first() -> None:
    assert mp4_argv(Path("/s/i.nut"), Path("/s/o.mp4"), video_codec=Codec.H264, audio_codec=Codec.G711A) == [
        "ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-protocol_whitelist", "file",
        "-f", "nut", "-i", "file:/s/i.nut", "-map", "0", "-c:v", "copy", "-c:a", "aac", "-b:a", "64k",
        "-movflags", "+faststart", "-f", "mp4", "file:/s/o.mp4",
    ]  # fmt: skip
    h265 = mp4_argv(Path("i"), Path("o"), video_codec=Codec.H265)
    assert h265[h265.index("-c:v"):h265.index("-c:v") + 4] == ["-c:v", "copy", "-tag:v", "hvc1"]
    assert "-c:a" not in h265
    aac = mp4_argv(Path("i"), Path("o"), video_codec=Codec.H264, audio_codec=Codec.AAC)
    assert aac[aac.index("-c:a") + 1] == "copy"


def test_the_conversion_runs_confined_to_reading_its_inputs() -> None:
    command = ["ffmpeg", "-i", "x"]
    argv = confined_argv([Path("/s/r.ps"), Path("/s/a.raw")], command)
    assert argv[1:2] == ["-I"] and argv[2].endswith("edge/ingest/probe_sandbox.py")
    assert argv[3:] == ["--read", "/s/r.ps", "--read", "/s/a.raw", "--", *command]


def test_argv_mulaw_and_aac_are_read_by_their_type() -> None:
    argv = convert_argv(Path("r.ps"), video_codec=Codec.H265)
    assert "-map" in argv and "1:a:0" not in argv
    mulaw = convert_argv(Path("r.ps"), video_codec=Codec.H264, audio=Path("a"), audio_codec=Codec.G711U)
    assert mulaw[mulaw.index("-itsoffset") + 2:mulaw.index("-itsoffset") + 4] == ["-f", "mulaw"]
    aac = convert_argv(Path("r.ps"), video_codec=Codec.H264, audio=Path("a"), audio_codec=Codec.AAC)
    assert aac[aac.index("-itsoffset") + 2:aac.index("-itsoffset") + 4] == ["-f", "aac"]


def test_argv_refuses_codecs_an_mp4_cannot_take_by_copy() -> None:
    with pytest.raises(ConversionError, match="mpeg4"):
        convert_argv(Path("r.ps"), video_codec=Codec.MPEG4)
    with pytest.raises(ConversionError, match="g729"):
        convert_argv(Path("r.ps"), video_codec=Codec.H264, audio=Path("a"), audio_codec=Codec.G729)


# -- real conversions ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SourceMedia]:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    root = tmp_path_factory.mktemp("convert-sources")
    return {
        "h264": make_source(root / "h264", Codec.H264, seconds=3),
        "h265": make_source(root / "h265", Codec.H265, seconds=2),
        "h264-mulaw": make_source(root / "mulaw", Codec.H264, seconds=2, audio_codec=Codec.G711U),
        "h264-aac": make_source(root / "aac", Codec.H264, seconds=2, audio_codec=Codec.AAC),
    }


def _probe(path: Path) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_packets", "-show_entries",
         "stream=codec_type,codec_name,codec_tag_string,duration,start_time,nb_read_packets,channels",
         "-of", "json", str(path)], check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


@pytest.mark.parametrize("kind", ["h264", "h265", "h264-mulaw", "h264-aac"])
async def test_ps_with_audio_becomes_an_mp4_matching_the_source(sources: dict[str, SourceMedia], kind: str,
                                                              tmp_path: Path) -> None:
    media = sources[kind]
    raw = tmp_path / "rec.ps"
    raw.write_bytes(b"".join(p for p, _ in ps_packs(media)))
    result = await convert_recording(raw, tmp_path / "rec.mp4", display="录像 0001")
    streams = _probe(tmp_path / "rec.mp4")
    assert int(streams["video"]["nb_read_packets"]) == len(media.units)
    assert float(streams["video"]["duration"]) == pytest.approx(media.duration_s, abs=0.041)
    assert streams["video"]["codec_name"] == ("hevc" if kind == "h265" else "h264")
    if kind == "h265":
        assert streams["video"]["codec_tag_string"] == "hvc1"
    assert streams["audio"]["codec_name"] == "aac" and int(streams["audio"]["channels"]) == 1
    # The audio keeps its place: it began 0.1 s after the video in the PS.
    # (An AAC encoder's priming packet of 1024 samples comes first: it is not sound.)
    priming = 0.0 if kind == "h264-aac" else 1024 / 8000
    first_sound = _packet_times(tmp_path / "rec.mp4", "a:0")[0] + priming
    offset = first_sound - _packet_times(tmp_path / "rec.mp4", "v:0")[0]
    assert offset == pytest.approx(AUDIO_DELAY_TICKS / 90000, abs=0.01)
    assert result.scan.video_frames == len(media.units) and result.scan.audio_codec is media.audio_codec
    assert result.size == (tmp_path / "rec.mp4").stat().st_size
    assert result.ffmpeg_version and result.argv[0] == "-nostdin" and result.mp4_argv[0] == "-nostdin"
    assert str(tmp_path) not in " ".join(result.argv + result.mp4_argv), "no station path in a manifest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.mp4", "rec.ps"], "no temp file left"
    assert _moov_before_mdat(tmp_path / "rec.mp4"), "+faststart: the index comes first"


def _packet_times(path: Path, stream: str) -> list[float]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", stream, "-show_entries", "packet=pts_time", "-of",
         "csv=p=0", str(path)], check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split()
    times = (t.strip(",") for t in out)
    return [float(t) for t in times if t not in ("", "N/A")]


def _moov_before_mdat(path: Path) -> bool:
    data = path.read_bytes()
    at, order = 0, []
    while at + 8 <= len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        order.append(data[at + 4:at + 8])
        if size < 8:
            break
        at += size
    return order.index(b"moov") < order.index(b"mdat")


async def test_a_ps_with_lost_packets_still_converts_and_is_checked(sources: dict[str, SourceMedia],
                                                                   tmp_path: Path) -> None:
    media = sources["h264"]
    packets = rtp_packets(ps_packs(media), ssrc=1)
    kept = [p for i, p in enumerate(packets) if i not in (30, 31, 80, 200)]
    raw = tmp_path / "rec.ps"
    raw.write_bytes(b"".join(parse_rtp(p).payload for p in kept))
    result = await convert_recording(raw, tmp_path / "rec.mp4", display="lossy")
    streams = _probe(tmp_path / "rec.mp4")
    assert result.scan.video_frames < len(media.units)
    assert result.scan.video_frames <= int(streams["video"]["nb_read_packets"]) < len(media.units)
    assert result.probe["video_packets"] == int(streams["video"]["nb_read_packets"])


async def test_garbage_is_a_clear_error_naming_the_recording_and_leaves_nothing(tmp_path: Path) -> None:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    raw = tmp_path / "rec.ps"
    raw.write_bytes(bytes(range(256)) * 400)
    with pytest.raises(ConversionError, match=r"^recording 7: the PS holds no H\.264 or H\.265 video"):
        await convert_recording(raw, tmp_path / "rec.mp4", display="recording 7")
    assert [p.name for p in tmp_path.iterdir()] == ["rec.ps"]


async def test_ffmpeg_past_its_deadline_is_killed_and_leaves_no_half_file(sources: dict[str, SourceMedia],
                                                                        tmp_path: Path) -> None:
    raw = tmp_path / "rec.ps"
    raw.write_bytes(b"".join(p for p, _ in ps_packs(sources["h264"])))
    with pytest.raises(ConversionError, match=r"^slow: ffmpeg did not finish within 0\.001 s"):
        await convert_recording(raw, tmp_path / "rec.mp4", display="slow", timeout_s=0.001)
    assert [p.name for p in tmp_path.iterdir()] == ["rec.ps"]
    # Control: the same recording converts with time to do it.
    await convert_recording(raw, tmp_path / "rec.mp4", display="slow")
    assert (tmp_path / "rec.mp4").stat().st_size > 0


async def test_an_existing_output_is_never_overwritten(sources: dict[str, SourceMedia],
                                                        tmp_path: Path) -> None:
    raw = tmp_path / "rec.ps"
    raw.write_bytes(b"".join(p for p, _ in ps_packs(sources["h264"])))
    (tmp_path / "rec.mp4").write_bytes(b"earlier")
    with pytest.raises(ConversionError, match="already exists"):
        await convert_recording(raw, tmp_path / "rec.mp4", display="again")
    assert (tmp_path / "rec.mp4").read_bytes() == b"earlier"


def test_frame_ticks_are_25_fps() -> None:
    assert FRAME_TICKS == 90000 // 25


async def test_an_mp4_that_does_not_match_the_ps_is_refused_and_removed(
    sources: dict[str, SourceMedia], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.gb28181 import convert

    raw = tmp_path / "rec.ps"
    raw.write_bytes(b"".join(p for p, _ in ps_packs(sources["h264"])))
    real_scan = convert.scan_ps

    def miscounted(raw: Path, audio: Path) -> convert.PsScan:
        scan = real_scan(raw, audio)
        scan.video_frames += 3  # as if ffmpeg had lost three frames the demuxer saw
        return scan

    monkeypatch.setattr(convert, "scan_ps", miscounted)
    count = len(sources["h264"].units)
    expected = f"^checked: the MP4 has {count} video frames, the PS {count + 3}"
    with pytest.raises(ConversionError, match=expected):
        await convert_recording(raw, tmp_path / "rec.mp4", display="checked")
    assert [p.name for p in tmp_path.iterdir()] == ["rec.ps"], "the unchecked MP4 is not left behind"


async def test_the_run_that_reads_the_ps_is_the_confined_one(
    sources: dict[str, SourceMedia], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.gb28181 import convert

    raw = tmp_path / "rec.ps"
    raw.write_bytes(b"".join(p for p, _ in ps_packs(sources["h264"])))
    real_run = convert._run
    argvs: list[list[str]] = []

    async def recording(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        argvs.append(argv)
        return await real_run(argv, *args, **kwargs)

    monkeypatch.setattr(convert, "_run", recording)
    await convert_recording(raw, tmp_path / "rec.mp4", display="confined")
    reading_the_ps = [a for a in argvs if f"file:{raw}" in a]
    assert len(reading_the_ps) == 1
    wrapper = reading_the_ps[0][: reading_the_ps[0].index("--") + 1]
    assert wrapper[2].endswith("probe_sandbox.py")
    assert wrapper[3:] == ["--read", str(raw), "--read", str(tmp_path / ".rec.mp4.audio"), "--"]
