"""A source that feeds the room composite (edge.rooms.argv.tee_output_args) with real ffmpeg: its
segments are those it writes without the feed, whatever becomes of the feed (nobody reading it, a send
refused: ``onfail=ignore``); a reader gets the source's own streams; paths with the tee muxer's special
characters reach ffmpeg intact; a composite that fails at every start never restarts its originals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.config.rooms import RoomInputConfig, RoomsSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.argv import SEGMENT_LIST, Coding, SegmentPlan, input_args, segment_argv
from edge.rooms.composite import Feeds, free_loopback_port
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

CAMERA = RoomInputConfig(format="lavfi", url="testsrc2=size=160x120:rate=25,trim=duration=4", realtime=True)
SOUND = RoomInputConfig(format="lavfi", url="sine=frequency=440,atrim=duration=4", realtime=True)
PLAN = SegmentPlan(1.0, "fragmented", Coding.ENCODE, Coding.ENCODE, {"case_number": "A3301062026000123"})


async def _record(run_dir: Path, feed_url: str | None) -> tuple[int, list[str], str]:
    argv = segment_argv("ffmpeg", [CAMERA, SOUND], PLAN, run_dir, feed_url=feed_url)
    run_dir.mkdir(parents=True)
    process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    listed = (run_dir / SEGMENT_LIST).read_text().splitlines()
    return process.returncode, [line.split(",")[0] for line in listed], stderr.decode(errors="replace")


def _probe(path: Path) -> dict[str, Any]:
    done = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name:format_tags",
                           "-of", "json", str(path)], capture_output=True, text=True, check=True, timeout=60)
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def _closed_udp_port() -> int:
    return free_loopback_port()


@pytest.mark.parametrize("feed", ["nobody-reads", "refused"])
async def test_whatever_becomes_of_the_feed_the_source_records_as_without_it(
    tmp_path: Path, feed: str
) -> None:
    port = _closed_udp_port()
    # "refused": a connected UDP socket to a port nobody has open gets ECONNREFUSED on its sends, so the
    # feed's slave fails; the station's own feeds are unconnected (never refused), this is the worst case.
    url = f"udp://127.0.0.1:{port}?pkt_size=1316" + ("&connect=1" if feed == "refused" else "")
    control = await _record(tmp_path / "control", None)
    fed = await _record(tmp_path / "fed", url)
    assert control[0] == 0 and fed[0] == 0, fed[2]
    assert fed[1] == control[1] and len(fed[1]) >= 4  # the same segments, one a second
    for name in fed[1]:
        streams = _probe(tmp_path / "fed" / name)
        assert sorted(s["codec_name"] for s in streams["streams"]) == ["aac", "h264"]
        assert streams["format"]["tags"]["case_number"] == "A3301062026000123"
    if feed == "refused":  # the failure happened, and only the feed was dropped
        assert "Slave muxer #1 failed" in fed[2] and "continuing with 1/2 slaves" in fed[2]


async def test_a_reader_of_the_feed_gets_the_sources_own_streams(tmp_path: Path) -> None:
    feeds = Feeds({"closeup": free_loopback_port()})
    reader_input = feeds.receive_input("closeup")
    received = tmp_path / "received.ts"
    reader = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", *input_args([reader_input]),
        "-t", "1", "-c", "copy", str(received), stdin=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1.0)  # the reader's socket is bound well before the source starts
    send_url = feeds.send_url("closeup")
    assert send_url is not None
    code, listed, stderr = await _record(tmp_path / "odd dir: a|b'[c]", send_url)
    assert code == 0 and len(listed) >= 4, stderr
    assert await asyncio.wait_for(reader.wait(), 60) == 0
    streams = _probe(received)["streams"]
    assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"]
    assert (tmp_path / "odd dir: a|b'[c]" / listed[0]).stat().st_size > 0  # the path went through the tee


def test_feed_ports_are_free_loopback_ports() -> None:
    port = free_loopback_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))  # nobody had it


async def test_a_composite_that_keeps_failing_never_restarts_its_originals(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path
) -> None:
    # The composite cannot open its main feed at any start: another socket holds the port (what the
    # originals send goes there and is never read).
    base = rooms_config(lavfi_source("a", rate=10), lavfi_source("b", rate=10))
    room = base.room[0].model_dump()
    room["composite"] = {"main": "a", "inset": "b", "size": "320x240", "rate": 10}
    config = RoomsSection.model_validate({**base.model_dump(), "room": [room]})
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    assert recording.composite is not None
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", recording.composite.feeds.ports["a"]))
    task = asyncio.create_task(recording.run())
    try:
        with contextlib.suppress(TimeoutError):
            await watch.until(lambda: recording.sources["composite"].runs >= 3
                              and all(len(watch.of("segment_sealed", source=s)) >= 4 for s in ("a", "b")),
                              timeout_s=60)
        runs = {s: recording.sources[s].runs for s in ("a", "b", "composite")}
        sealed = {s: len(watch.of("segment_sealed", source=s)) for s in ("a", "b")}
    finally:
        recording.stop()
        await asyncio.wait_for(task, 60)
        holder.close()
    assert runs["composite"] >= 3 and watch.of("gap", source="composite", state="open"), (
        runs, [e.data.get("reason", "")[:200] for e in watch.of("gap")])  # control: the composite did fail
    assert min(sealed.values()) >= 4, sealed
    assert runs["a"] == 1 and runs["b"] == 1, runs  # its originals were never restarted
    assert not watch.of("gap", source="a") and not watch.of("gap", source="b")
