"""Review 25: the composite's loopback UDP feed is open to every local process.

A source's ffmpeg sends its encoded streams (picture and sound of the interview) to 127.0.0.1:PORT,
PORT picked by binding and closing a probe socket (edge/rooms/composite.py free_loopback_port, Feeds).
UDP on the loopback has no owner check: any local user may bind that port first (between the pick and
the composite's bind, or while the supervised composite restarts) and receive the feed, which also keeps
the composite from binding at all; and any local user may send datagrams to the composite's port, which
its ffmpeg reads as the feed (``udp://127.0.0.1:PORT`` with no source filter) and records, sealed, as a
derived output of the session. These tests assert what a court would expect (only the station reads the
feed; only the station's source writes it) and fail today; the controls show the same path working
without the intruder."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
from pathlib import Path

import pytest

from edge.config.rooms import RoomInputConfig
from edge.rooms.argv import SEGMENT_LIST, Coding, SegmentPlan, input_args, segment_argv
from edge.rooms.composite import Feeds

pytestmark = pytest.mark.usefixtures("ffmpeg")

CAMERA = RoomInputConfig(format="lavfi", url="testsrc2=size=160x120:rate=25,trim=duration=3", realtime=True)
SOUND = RoomInputConfig(format="lavfi", url="sine=frequency=440,atrim=duration=3", realtime=True)
PLAN = SegmentPlan(1.0, "fragmented", Coding.ENCODE, Coding.ENCODE, {"case_number": "A3301062026000123"})


async def _record_source(run_dir: Path, feed_url: str) -> int:
    argv = segment_argv("ffmpeg", [CAMERA, SOUND], PLAN, run_dir, feed_url=feed_url)
    run_dir.mkdir(parents=True)
    process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.DEVNULL)
    code = await asyncio.wait_for(process.wait(), 120)
    assert (run_dir / SEGMENT_LIST).read_text().strip()  # the source recorded either way
    return code


async def _composite_reader(feeds: Feeds, source: str, out: Path) -> asyncio.subprocess.Process:
    """An ffmpeg reading the feed exactly as the composite does (its input), copying 1 s of it."""
    return await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
        *input_args([feeds.receive_input(source)]),
        "-t", "1", "-c", "copy", str(out), stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


def _codecs(path: Path) -> list[str]:
    done = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "json",
                           str(path)], capture_output=True, text=True, check=True, timeout=60)
    return sorted(s["codec_name"] for s in json.loads(done.stdout)["streams"])


@pytest.mark.parametrize("intruder", [False, True])
async def test_no_other_local_process_can_take_the_feed(tmp_path: Path, intruder: bool) -> None:
    feeds = Feeds.allocate(["closeup"])
    send_url = feeds.send_url("closeup")
    assert send_url is not None
    port = feeds.ports["closeup"]
    thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if intruder:  # any local user: the port is free between the pick and the composite's bind
            thief.bind(("127.0.0.1", port))
            thief.setblocking(False)
        reader = await _composite_reader(feeds, "closeup", tmp_path / "composite.ts")
        await asyncio.sleep(1.0)
        assert await _record_source(tmp_path / "source", send_url) == 0
        stolen = b""
        if intruder:
            with contextlib.suppress(BlockingIOError):
                while True:
                    stolen += thief.recv(65536)
        try:
            await asyncio.wait_for(reader.wait(), 30)
        except TimeoutError:
            reader.kill()
            await reader.wait()
        # Nobody but the composite received the interview's streams ...
        assert stolen == b"", f"a local process read {len(stolen)} bytes of the feed (MPEG-TS sync "\
                              f"{stolen[:1] == b'G'})"
        # ... and the composite got them (the control: without the intruder it does).
        assert reader.returncode == 0 and _codecs(tmp_path / "composite.ts") == ["aac", "h264"]
    finally:
        thief.close()


INJECTED = ["-f", "lavfi", "-i", "smptebars=size=320x240:rate=25", "-t", "4", "-c:v", "mpeg2video",
            "-f", "mpegts"]


@pytest.mark.parametrize("sender", ["source", "intruder"])
async def test_only_the_station_source_can_write_the_composites_feed(tmp_path: Path, sender: str) -> None:
    feeds = Feeds.allocate(["closeup"])
    send_url = feeds.send_url("closeup")
    assert send_url is not None
    reader = await _composite_reader(feeds, "closeup", tmp_path / "composite.ts")
    await asyncio.sleep(1.0)
    if sender == "source":  # the control: the station's own source is read
        assert await _record_source(tmp_path / "source", send_url) == 0
    else:  # any local process, any user: an unrelated ffmpeg sends its own picture to the port
        intruder = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", *INJECTED, send_url,
            stdin=asyncio.subprocess.DEVNULL)
        assert await asyncio.wait_for(intruder.wait(), 60) == 0
    try:
        await asyncio.wait_for(reader.wait(), 30)
    except TimeoutError:
        reader.kill()
        await reader.wait()
    received = tmp_path / "composite.ts"
    codecs = _codecs(received) if reader.returncode == 0 and received.exists() else []
    if sender == "source":
        assert codecs == ["aac", "h264"]
    else:
        assert "mpeg2video" not in codecs, "the composite read and would record a foreign picture"
