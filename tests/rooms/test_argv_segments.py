"""ffmpeg command lines (edge.rooms.argv) tested as lists, and the segment list parser
(edge.rooms.segments). Each refusal has a control that passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config.rooms import RoomInputConfig
from edge.rooms.argv import Coding, SegmentPlan, codec_plan, input_args, probe_argv, segment_argv
from edge.rooms.segments import SegmentListError, SegmentListReader, parse_line


def _input(**kw: object) -> RoomInputConfig:
    return RoomInputConfig.model_validate({"url": "testsrc2", "format": "lavfi", **kw})


def test_input_args_are_one_list_per_input_in_order() -> None:
    camera = "/dev/v4l/by-id/usb-cam-video-index0"
    inputs = [_input(realtime=True), _input(url=camera, format="v4l2",
                                            options={"video_size": "1280x720", "framerate": "25"})]
    assert input_args(inputs) == [
        "-f", "lavfi", "-re", "-i", "testsrc2",
        "-f", "v4l2", "-video_size", "1280x720", "-framerate", "25", "-i", camera,
    ]
    assert input_args([_input(format="", url="rtsp://cam/1")]) == ["-i", "rtsp://cam/1"]


def test_segment_argv_writes_listed_segments_with_case_metadata() -> None:
    plan = SegmentPlan(10.0, "fragmented", Coding.ENCODE, Coding.COPY, {"case_number": "A-1", "room": "xw-1"})
    argv = segment_argv("ffmpeg", [_input(realtime=True)], plan, Path("/s/run"))
    assert argv == [
        "ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning",
        "-f", "lavfi", "-re", "-i", "testsrc2",
        "-map", "0:v?", "-map", "0:a?",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-force_key_frames",
        "expr:gte(t,n_forced*10)",
        "-c:a", "copy",
        "-metadata", "case_number=A-1", "-metadata", "room=xw-1",
        "-f", "segment", "-segment_time", "10", "-reset_timestamps", "1", "-segment_format", "mp4",
        "-segment_format_options", "movflags=+frag_keyframe+empty_moov+default_base_moof+skip_trailer"
        "+use_metadata_tags",
        "-segment_list", "/s/run/segments.csv", "-segment_list_type", "csv", "/s/run/seg-%06d.mp4",
    ]
    copy = SegmentPlan(1.5, "faststart", Coding.COPY, Coding.COPY)
    plain = segment_argv("ff", [_input()], copy, Path("/r"))
    assert plain[plain.index("-c:v"):plain.index("-c:v") + 4] == ["-c:v", "copy", "-c:a", "copy"]
    assert "movflags=+faststart+use_metadata_tags" in plain
    assert plain[plain.index("-segment_time") + 1] == "1.5"


def test_a_plan_refuses_metadata_that_could_break_out() -> None:
    SegmentPlan(1.0, metadata={"case_number": "A-1"})  # control
    with pytest.raises(ValueError, match="line break"):
        SegmentPlan(1.0, metadata={"case_number": "A\nx=1"})
    with pytest.raises(ValueError, match="identifier"):
        SegmentPlan(1.0, metadata={"a=b": "x"})
    with pytest.raises(ValueError, match="mp4_layout"):
        SegmentPlan(1.0, "mkv")


def test_codec_plan_copies_only_what_mp4_takes_as_it_is() -> None:
    assert codec_plan("auto", [("video", "h264"), ("audio", "aac")]) == (Coding.COPY, Coding.COPY)
    assert codec_plan("auto", [("video", "h264"), ("audio", "pcm_s16le")]) == (Coding.COPY, Coding.ENCODE)
    assert codec_plan("auto", [("video", "rawvideo")]) == (Coding.ENCODE, Coding.ENCODE)
    assert codec_plan("auto", [("video", "h264"), ("video", "mjpeg")]) == (Coding.ENCODE, Coding.ENCODE)
    assert codec_plan("auto", None) == (Coding.ENCODE, Coding.ENCODE)  # the probe failed
    assert codec_plan("copy", None) == (Coding.COPY, Coding.COPY)
    assert probe_argv("ffprobe", _input(options={"thread_queue_size": "512"}))[-6:] == [
        "-f", "lavfi", "-thread_queue_size", "512", "-i", "testsrc2"]


def test_segment_list_lines_are_parsed_strictly() -> None:
    seg = parse_line("seg-000003.mp4,3.080000,4.080000")
    assert (seg.name, seg.index, seg.start_s, seg.end_s) == ("seg-000003.mp4", 3, 3.08, 4.08)
    bad_lines = ("../x.mp4,0.0,1.0", "seg-000001.mp4,2.0,1.0", "seg-000001.mp4,1,2",
                 '"seg-000001.mp4",0.0,1.0')
    for bad in bad_lines:
        with pytest.raises(SegmentListError):
            parse_line(bad)


def test_the_list_reader_returns_whole_lines_once_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "segments.csv"
    reader = SegmentListReader(path)
    assert reader.read_new() == ([], None)  # no list yet
    path.write_bytes(b"seg-000000.mp4,0.000000,1.000000\nseg-000001.mp4,1.0000")
    found, when = reader.read_new()
    assert [s.index for s in found] == [0] and when is not None
    with path.open("ab") as f:
        f.write(b"00,2.000000\n")
    assert [s.index for s in reader.read_new()[0]] == [1]
    assert reader.read_new() == ([], None)
    with path.open("ab") as f:
        f.write(b"seg-000001.mp4,2.000000,3.000000\n")  # listed again: not from our ffmpeg
    with pytest.raises(SegmentListError, match="after segment 1"):
        reader.read_new()


def test_a_list_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.csv").write_bytes(b"seg-000000.mp4,0.000000,1.000000\n")
    (tmp_path / "segments.csv").symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(SegmentListError, match="cannot be read"):
        SegmentListReader(tmp_path / "segments.csv").read_new()
    assert SegmentListReader(tmp_path / "elsewhere.csv").read_new()[0]  # control: the file itself reads
