"""The composite's configuration, filter graph, command line and overlay text, as pure functions and lists
(edge.config.room_composite, edge.rooms.composite, edge.rooms.overlay_text). Each refusal has a control."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edge.config.base import ConfigError
from edge.config.room_composite import RoomCompositeConfig
from edge.config.rooms import RoomConfig
from edge.config.station import parse_config
from edge.rooms.argv import Coding, SegmentPlan, segment_argv
from edge.rooms.composite import (
    CompositeOutput,
    composite_argv,
    composite_inputs,
    derived_of,
    filter_graph,
    graph_value,
    room_outputs,
)
from edge.rooms.overlay_text import (
    OverlayLineError,
    OverlayText,
    check_extra_line,
    format_elapsed,
    overlay_lines,
)
from edge.rooms.session import RoomSession, new_session

BASE = """
[station]
id = "ROOM-PC"
store_dir = "/tmp/store"
[usb]
mount_root = "/tmp/mnt"
[[rooms.room]]
id = "xw-1"
name = "第一询问室"
address = "文三路 100 号"
[[rooms.room.source]]
id = "face"
[[rooms.room.source.input]]
format = "{face_format}"
url = "{face_url}"
[[rooms.room.source.input]]
format = "{mic_format}"
url = "{mic_url}"
[[rooms.room.source]]
id = "overview"
[[rooms.room.source.input]]
url = "rtsp://10.0.0.9/stream1"
"""
CAMERA = {"face_format": "lavfi", "face_url": "testsrc2=size=640x480:rate=25",
          "mic_format": "lavfi", "mic_url": "sine=frequency=440"}
FEEDS = {"face": 7, "overview": 8}  # the read ends of the feeds' pipes, as a composite run inherits them
COMPOSITE = '[rooms.room.composite]\nmain = "face"\ninset = "overview"\n'


SECOND_INPUT = '[[rooms.room.source.input]]\nformat = "{mic_format}"\nurl = "{mic_url}"\n'


def _room(extra: str = COMPOSITE, **inputs: str) -> RoomConfig:
    """The room; ``mic_format = "-"``: the face source has its camera input only (a capture device is
    alone in its source)."""
    base = BASE.replace(SECOND_INPUT, "") if inputs.get("mic_format") == "-" else BASE
    return parse_config(base.format(**{**CAMERA, **inputs}) + extra).rooms.room[0]


def test_a_composite_over_network_and_generated_inputs_parses() -> None:
    room = _room()
    assert room.composite is not None and room.composite.id == "composite"
    assert room.composite.font_file == Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
    assert room_outputs(room) == [("face", ""), ("overview", ""), ("composite", "画中画合成")]
    assert derived_of(room, "composite") == {"kind": "composite", "main": "face", "inset": "overview",
                                             "overlay": True, "size": "1280x720", "rate": 25}
    assert derived_of(room, "face") is None
    assert _room("").composite is None  # off unless configured


@pytest.mark.parametrize(("inputs", "composite", "said"), [
    ({"face_format": "alsa", "face_url": "hw:CARD=Mic,DEV=0", "mic_format": "-"}, COMPOSITE,
     "source face input 1 carries no picture (format alsa)"),
    ({"face_format": "lavfi", "face_url": "sine=frequency=440"}, COMPOSITE, "input 1 carries no picture"),
    ({"face_format": "", "face_url": "rtsp://10.0.0.8/stream1", "mic_format": "lavfi",
      "mic_url": "testsrc2=size=640x480:rate=25"}, COMPOSITE + "main_video_input = 1\n",
     "its input(s) [1] before it may carry one: put the camera first"),
    ({}, COMPOSITE.replace('"overview"', '"face"'), "main and inset must be two different sources"),
    ({}, COMPOSITE.replace('inset = "overview"', 'inset = "hall"'), "composite inset 'hall' is not a source"),
    ({}, COMPOSITE + 'id = "overview"\n', "composite id 'overview' is also a source id"),
    ({}, COMPOSITE + "inset_video_input = 1\n", "source overview has 1 input(s)"),
    ({}, COMPOSITE + 'font_file = "/nonexistent/font.ttc"\n', "is not a file"),
    ({}, COMPOSITE + 'size = "1281x720"\n', "both even"),
    ({}, COMPOSITE + "inset_width_pct = 80\n", "inset_width_pct"),
    ({}, COMPOSITE + 'inset_corner = "middle"\n', "inset_corner"),
    ({}, COMPOSITE + 'filter = "movie=/etc/passwd"\n', "filter"),
])
def test_a_composite_it_cannot_build_is_refused_naming_why(inputs: dict[str, str], composite: str,
                                                             said: str) -> None:
    with pytest.raises(ConfigError, match="composite") as refused:
        _room(composite, **inputs)
    assert said in str(refused.value)


@pytest.mark.parametrize("inputs", [
    {"face_format": "v4l2", "face_url": "/dev/v4l/by-id/usb-cam-video-index0", "mic_format": "-"},
    {"face_format": "", "face_url": "rtsp://10.0.0.8/stream1"},
    {"face_format": "", "face_url": "unix:/run/edge/live.sock"},
    {"face_format": "lavfi", "face_url": "sine=frequency=440", "mic_format": "lavfi",
     "mic_url": "testsrc2=size=640x480:rate=25"},
])
def test_the_composite_reads_the_feeds_of_its_sources_never_their_devices(inputs: dict[str, str]) -> None:
    # The control of the refusals above: any source with a camera, which its own ffmpeg alone opens.
    extra = "main_video_input = 1\n" if inputs["face_format"] == "lavfi" else ""
    room = _room(COMPOSITE + extra, **inputs)
    assert room.composite is not None
    output = CompositeOutput(room, Path("/o"), _session)
    assert sorted(output.feeds) == ["face", "overview"]  # "hall" (not shown) feeds nothing
    with output.composite_pipes() as pipes:  # each run: a pipe from each feed, inherited by that run only
        assert len(pipes.pass_fds) == 2 and len(set(pipes.pass_fds)) == 2
        assert not any(os.get_inheritable(fd) for fd in pipes.pass_fds)  # no other child gets them
        argv = pipes.argv("ffmpeg", output.source.input, SegmentPlan(2.0), Path("/r"))
        assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "-i"] == [
            f"pipe:{fd}" for fd in pipes.pass_fds]
        assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "-f"][:2] == ["mpegts", "mpegts"]
        assert not any("udp:" in arg or "tcp:" in arg or "unix:" in arg for arg in argv)
    with output.source_pipes("face") as pipes:
        (fd,) = pipes.pass_fds
        argv = pipes.argv("ffmpeg", room.source[0].input, SegmentPlan(2.0), Path("/r"))
        assert argv[-1].endswith(f"]pipe:{fd}")  # the tee's feed: that pipe, through the dropping fifo
        fifo = "use_fifo=1:fifo_options=queue_size\\\\=600\\\\:drop_pkts_on_overflow\\\\=1:rw_timeout="
        assert fifo in argv[-1]
    output.close()


def test_without_sound_the_composite_takes_only_the_pictures_of_the_feeds() -> None:
    room = _room(COMPOSITE + "audio = false\n")
    assert room.composite is not None
    roles = composite_inputs(room.composite, FEEDS)
    assert [spec.url for spec in roles.inputs] == ["pipe:7", "pipe:8"]
    assert (roles.main_video, roles.audio, roles.inset_video) == (0, (), 1)


@pytest.mark.parametrize(("value", "escaped"), [
    ("/plain/path.txt", "/plain/path.txt"),
    ("/a b", "/a\\\\\\ b"),
    ("/x:y", "/x\\\\:y"),
    ("/it's", "/it\\\\\\'s"),
    ("/[a],b;c", "/\\[a\\]\\,b\\;c"),
    ("/back\\slash", "/back\\\\\\\\slash"),
    ("/中文/字体.ttc", "/中文/字体.ttc"),
])
def test_a_graph_value_is_escaped_for_both_levels_of_the_parser(value: str, escaped: str) -> None:
    assert graph_value(value) == escaped


def _session(case_number: str = "A3301062026000123") -> RoomSession:
    return new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                       fields={"case_number": case_number, "collector": "张三", "subject": "询问过程"},
                       started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")


def _composite(**settings: Any) -> RoomCompositeConfig:
    return RoomCompositeConfig.model_validate({"main": "face", "inset": "overview", "size": "1280x720",
                                               **settings})


@pytest.mark.parametrize(("corner", "x", "y", "text_x"), [
    ("top-right", "main_w-overlay_w-16", "16", "x=14:"),
    ("bottom-right", "main_w-overlay_w-16", "main_h-overlay_h-16", "x=14:"),
    ("top-left", "16", "16", "x=w-tw-14:"),
    ("bottom-left", "16", "main_h-overlay_h-16", "x=w-tw-14:"),
])
def test_the_inset_goes_in_its_corner_and_the_text_to_the_other_side(corner: str, x: str, y: str,
                                                                       text_x: str) -> None:
    config = _composite(inset_corner=corner)
    graph = filter_graph(config, composite_inputs(config, FEEDS), clock_file=Path("/o/clock.txt"),
                         info_file=Path("/o/info.txt"))
    assert f"[main][inset]overlay=x={x}:y={y}:" in graph
    assert "[1:v:0]scale=384:-2" in graph  # 30 % of 1280 (inputs: the main feed, the inset feed)
    assert graph.count(text_x) == 2  # the clock and the info box, font 29 px (4 % of 720), margin 14


def test_the_graph_names_files_never_the_text_and_draws_it_unexpanded() -> None:
    config = _composite()
    roles = composite_inputs(config, FEEDS)
    plan = SegmentPlan(2.0, "fragmented", Coding.ENCODE, Coding.ENCODE,
                       {"case_number": "A'1,2;[x]%{localtime}", "source": "composite"})
    inputs = list(roles.inputs)
    argv = composite_argv("ffmpeg", inputs, plan, Path("/store/run-1"), config=config, roles=roles,
                          overlay_dir=Path("/store/overlay"))
    graph = argv[argv.index("-filter_complex") + 1]
    assert "A'1" not in graph and "localtime" not in graph and "第一" not in graph
    assert "textfile=/store/overlay/clock.txt:expansion=normal" in graph
    assert "textfile=/store/overlay/info.txt:reload=1:expansion=none" in graph
    assert graph.endswith("format=yuv420p[vout]")
    # The case number reaches ffmpeg only as a tag (one argv element of its own, never parsed as a graph).
    assert argv[argv.index("-metadata") + 1] == "case_number=A'1,2;[x]%{localtime}"
    maps = [argv[i + 1] for i, a in enumerate(argv) if a == "-map"]
    assert maps == ["[vout]", "0:a?"]  # the picture, then the main source's sound
    # Encoded with key frames at every segment boundary, and written like a source's segments.
    assert argv[argv.index("-c:v") + 1] == "libx264" and "expr:gte(t,n_forced*2)" in argv
    source_argv = segment_argv("ffmpeg", inputs, plan, Path("/store/run-1"))
    tail = source_argv[source_argv.index("-metadata"):]
    assert argv[-len(tail):] == tail
    with pytest.raises(ValueError, match="opens 2 inputs"):
        composite_argv("ffmpeg", inputs[:1], plan, Path("/r"), config=config, roles=roles,
                       overlay_dir=Path("/o"))


def test_without_an_inset_or_the_overlay_the_graph_leaves_them_out() -> None:
    alone = _composite(inset=None)
    graph = filter_graph(alone, composite_inputs(alone, FEEDS), clock_file=Path("/c"), info_file=Path("/i"))
    assert "overlay=" not in graph and "[main]drawtext=" in graph
    bare = _composite(overlay=False)
    graph = filter_graph(bare, composite_inputs(bare, FEEDS), clock_file=Path("/c"), info_file=Path("/i"))
    assert "drawtext" not in graph and graph.endswith("[pip]format=yuv420p[vout]")
    with pytest.raises(ValueError, match="neither an inset nor the overlay"):
        _composite(inset=None, overlay=False)


def test_a_composite_output_marks_its_segments_derived(tmp_path: Path) -> None:
    room = _room()
    output = CompositeOutput(room, tmp_path / "overlay", _session)
    assert output.source.id == "composite" and output.source.codec == "encode"
    plan = SegmentPlan(2.0, metadata={"source": "composite"})
    with output.composite_pipes() as pipes:
        argv = pipes.argv("ffmpeg", output.source.input, plan, tmp_path / "run")
    output.close()
    assert "derived_from=main=face inset=overview" in argv
    assert output.overlay is not None and not (tmp_path / "overlay").exists()  # written by its task


def test_the_overlay_text_lines() -> None:
    assert format_elapsed(0) == "00:00:00" and format_elapsed(3725.9) == "01:02:05"
    assert format_elapsed(-3) == "00:00:00" and format_elapsed(100 * 3600) == "100:00:00"
    assert overlay_lines("第一询问室", "A1", 61) == "第一询问室\n案件编号 A1\n已用时 00:01:01"
    assert overlay_lines("R", "A1", 0, "温度 22℃").splitlines()[-1] == "温度 22℃"


@pytest.mark.parametrize(("line", "said"), [
    ("温度\n22℃", "one line"), ("a\x1bb", "one line"), ("x" * 65, "at most 64"), ("\u202e22", "one line"),
])
def test_an_extra_line_that_is_not_one_short_line_is_refused(line: str, said: str) -> None:
    with pytest.raises(OverlayLineError, match=said):
        check_extra_line(line)
    assert check_extra_line(" 温度 22.5℃ 湿度 45% ") == "温度 22.5℃ 湿度 45%"  # control


def test_the_overlay_files_follow_the_session_and_count_from_its_start(tmp_path: Path) -> None:
    now = [1_796_464_800_000_000_000 + 3_725_000_000_000]  # 2026-12-05T10:00:00Z + 1 h 2 min 5 s
    session = [_session()]
    overlay = OverlayText(tmp_path / "o", lambda: session[0], clock_ns=lambda: now[0])
    overlay.set_extra_line("温度 22℃")  # before the first write: kept, written with it
    assert not (tmp_path / "o").exists()
    overlay.write()
    assert overlay.info_path.read_text(encoding="utf-8") == (
        "第一询问室\n案件编号 A3301062026000123\n已用时 01:02:05\n温度 22℃")
    inode = overlay.info_path.stat().st_ino
    overlay.write()  # nothing changed: not rewritten
    assert overlay.info_path.stat().st_ino == inode
    now[0] += 1_000_000_000
    session[0] = _session("B2")
    overlay.write()
    shown = overlay.info_path.read_text(encoding="utf-8").splitlines()
    assert shown[1:3] == ["案件编号 B2", "已用时 01:02:06"]
    with pytest.raises(OverlayLineError):
        overlay.set_extra_line("a\nb")
    # The refused line changed nothing.
    assert overlay.info_path.read_text(encoding="utf-8").endswith("温度 22℃")
    overlay.set_extra_line("")
    assert overlay.info_path.read_text(encoding="utf-8").endswith("已用时 01:02:06")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["clock.txt", "info.txt"]
