"""A source that feeds the room composite (edge.rooms.argv.tee_output_args) with real ffmpeg: its
segments are those it writes without the feed, whatever becomes of the feed (a pipe nobody reads: the
fifo drops; a pipe whose reader is gone: ``onfail=ignore``); the composite's input gets the source's own
streams through the agent's relay (edge.rooms.feed_relay), whole TS packets; paths with the tee muxer's
special characters reach ffmpeg intact; a composite that fails at every start never restarts its
originals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config.rooms import RoomInputConfig, RoomsSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.argv import SEGMENT_LIST, Coding, SegmentPlan, input_args, segment_argv
from edge.rooms.composite import RunPipes, feed_input
from edge.rooms.feed_relay import TS_PACKET_BYTES, FeedRelay
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

CAMERA = RoomInputConfig(format="lavfi", url="testsrc2=size=160x120:rate=25,trim=duration=4", realtime=True)
SOUND = RoomInputConfig(format="lavfi", url="sine=frequency=440,atrim=duration=4", realtime=True)
PLAN = SegmentPlan(1.0, "fragmented", Coding.ENCODE, Coding.ENCODE, {"case_number": "A3301062026000123"})


async def _record(run_dir: Path, feed_fd: int | None) -> tuple[int, list[str], str]:
    argv = segment_argv("ffmpeg", [CAMERA, SOUND], PLAN, run_dir, feed_fd=feed_fd)
    run_dir.mkdir(parents=True)
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        pass_fds=() if feed_fd is None else (feed_fd,))
    if feed_fd is not None:
        os.close(feed_fd)  # the agent's copy: the run holds the only write end
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    listed = (run_dir / SEGMENT_LIST).read_text().splitlines()
    return process.returncode, [line.split(",")[0] for line in listed], stderr.decode(errors="replace")


def _probe(path: Path) -> dict[str, Any]:
    done = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name:format_tags",
                           "-of", "json", str(path)], capture_output=True, text=True, check=True, timeout=60)
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


@pytest.mark.parametrize("feed", ["nobody-reads", "reader-gone"])
async def test_whatever_becomes_of_the_feed_the_source_records_as_without_it(
    tmp_path: Path, feed: str
) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # as the relay makes it (FeedRelay.source_end)
    # "nobody-reads": the pipe is held open and never read (a stalled agent): the feed's fifo fills and drops;
    # "reader-gone": nobody holds the read end (EPIPE): the feed's slave fails, and only it.
    if feed == "reader-gone":
        os.close(read_end)
    try:
        control = await _record(tmp_path / "control", None)
        fed = await _record(tmp_path / "fed", write_end)
    finally:
        if feed == "nobody-reads":
            os.close(read_end)
    assert control[0] == 0 and fed[0] == 0, fed[2]
    assert fed[1] == control[1] and len(fed[1]) >= 4  # the same segments, one a second
    for name in fed[1]:
        streams = _probe(tmp_path / "fed" / name)
        assert sorted(s["codec_name"] for s in streams["streams"]) == ["aac", "h264"]
        assert streams["format"]["tags"]["case_number"] == "A3301062026000123"
    # The failure happened (the pipe gone; nobody reading it for rw_timeout), and only the feed was dropped.
    assert "Slave muxer #1 failed" in fed[2] and "continuing with 1/2 slaves" in fed[2]


async def test_the_composite_gets_the_sources_own_streams_through_the_relay(tmp_path: Path) -> None:
    relay = FeedRelay("closeup")
    relaying = asyncio.create_task(relay.run())
    composite_end = relay.composite_end()
    received = tmp_path / "received.ts"
    try:
        reader = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
            *input_args([feed_input(composite_end)]), "-t", "1", "-c", "copy", str(received),
            stdin=asyncio.subprocess.DEVNULL, pass_fds=(composite_end,))
        os.close(composite_end)
        code, listed, stderr = await _record(tmp_path / "odd dir: a|b'[c]", relay.source_end())
        assert code == 0 and len(listed) >= 4, stderr
        assert await asyncio.wait_for(reader.wait(), 60) == 0
    finally:
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
        relay.close()
    streams = _probe(received)["streams"]
    assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"]
    assert (tmp_path / "odd dir: a|b'[c]" / listed[0]).stat().st_size > 0  # the path went through the tee
    assert relay.bytes_relayed > 0 and relay.bytes_relayed % TS_PACKET_BYTES == 0
    assert relay.packets_dropped == 0 and relay.bytes_out_of_sync == 0


async def test_a_composite_that_keeps_failing_never_restarts_its_originals(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path
) -> None:
    # The composite's ffmpeg fails at every start (what the originals feed it is discarded meanwhile).
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
    composite = recording.sources["composite"]
    assert composite.pipes is not None
    real_pipes = composite.pipes

    @contextlib.contextmanager
    def failing_pipes() -> Iterator[RunPipes]:  # the composite's own command, with a graph ffmpeg refuses
        with real_pipes() as pipes:
            def argv(*args: Any) -> list[str]:
                built = pipes.argv(*args)
                built[built.index("-filter_complex") + 1] = "[0:v:0]nosuchfilter[vout]"
                return built
            yield RunPipes(pipes.pass_fds, argv)

    composite.pipes = failing_pipes
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
    assert runs["composite"] >= 3 and watch.of("gap", source="composite", state="open"), (
        runs, [e.data.get("reason", "")[:200] for e in watch.of("gap")])  # control: the composite did fail
    assert min(sealed.values()) >= 4, sealed
    assert runs["a"] == 1 and runs["b"] == 1, runs  # its originals were never restarted
    assert not watch.of("gap", source="a") and not watch.of("gap", source="b")
