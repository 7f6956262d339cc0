"""Room recording with real ffmpeg (lavfi sources), the real ingest pipeline, store and ledger
(edge.rooms.capture, edge.rooms.sealing, edge.rooms.recording): each segment is sealed as it closes with
its seal latency on the ledger, carries the case metadata, and verifies; a source whose ffmpeg is killed
or falls silent gets a gap with its reason and times while the other source records on; a sealed segment
modified afterwards is caught by `edge verify`."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import signal
from datetime import UTC, datetime
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording, run_anchor_ns, run_name
from edge.rooms.session import RoomSession, new_session
from edge.rooms.state import SessionFiles
from edge.verify.station import verify_store
from tests.rooms.conftest import STATION, LedgerWatch, UploadsSeen, ffprobe_json, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")


def _session() -> RoomSession:
    return new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                       fields={"case_number": "A3301062026000123", "collector": "张三", "subject": "询问过程",
                               "persons": [{"name": "李四", "role": "被询问人"}]},
                       started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")


def _recording(store: StationStore, pipeline: IngestPipeline, *sources: dict[str, Any],
               **settings: object) -> SessionRecording:
    config = rooms_config(*sources, **settings)
    files = SessionFiles(store.layout.root)
    files.prepare()
    return SessionRecording(_session(), config.room[0], config, pipeline, files, station_id=STATION)


def test_a_run_directory_names_its_start() -> None:
    name = run_name(1_764_930_000_123_456_789)
    assert name.startswith("run-20251205T") and run_anchor_ns(name) == 1_764_930_000_123_456_000
    assert run_anchor_ns("run-x") == 0


async def test_segments_are_sealed_as_they_close_and_verify(store: StationStore, pipeline: IngestPipeline,
                                                            watch: LedgerWatch, uploads: UploadsSeen) -> None:
    recording = _recording(store, pipeline, lavfi_source("a", audio=True), lavfi_source("b", codec="auto"))
    task = asyncio.create_task(recording.run())
    # Sealed while the session still runs: three segments of each source before anyone stops it.
    await watch.until(lambda: all(len(watch.of("segment_sealed", source=s)) >= 3 for s in ("a", "b")))
    assert not task.done()
    recording.stop()
    await task
    repository = IngestRepository(store)
    for source in ("a", "b"):
        sealed = watch.of("segment_sealed", source=source)
        assert [e.data["index"] for e in sealed] == list(range(len(sealed)))
        for entry in sealed:
            data = entry.data
            assert data["room_session"] == recording.session.session
            # The seal latency is measured from ffmpeg listing the segment to the item's `sealed` entry.
            assert data["closed_utc"] <= data["sealed_utc"] and data["seal_latency_s"] >= 0
            sealed_entry = [e for e in watch.of("sealed") if e.item == entry.item]
            assert len(sealed_entry) == 1 and sealed_entry[0].seq < entry.seq
            record = repository.item(str(entry.item))
            assert record is not None and record.manifest is not None and record.sha256 == data["sha256"]
            manifest = record.manifest
            assert manifest["source"]["kind"] == "room" and manifest["source"]["source"] == source
            assert manifest["case"]["case_number"] == "A3301062026000123"
            assert manifest["case"]["location"] == "文三路 100 号 第一询问室"
            assert manifest["time"]["recorded_start"] == data["start_utc"]
        for one, two in itertools.pairwise(sealed):
            assert one.data["end_utc"] == two.data["start_utc"]  # consecutive: no hole between segments
        # The case metadata ffmpeg wrote is in the sealed item itself.
        first = repository.item(str(sealed[0].item))
        assert first is not None and first.path is not None
        tags = ffprobe_json(store.layout.root / first.path)["format"]["tags"]
        assert (tags["case_number"], tags["room"], tags["collector"]) == ("A3301062026000123", "xw-1", "张三")
    # Each segment went to the upload queue as it was sealed.
    assert sorted(uploads.items) == sorted(str(e.item) for e in watch.of("segment_sealed"))
    assert recording.sources["b"].coding == ("encode", "encode")  # lavfi rawvideo: auto must encode
    assert watch.of("gap") == []
    # Every capture file went once sealed: the store's copy holds its bytes.
    capture = SessionFiles(store.layout.root).capture_dir
    assert list(capture.rglob("*.mp4")) == []
    report = verify_store(store.layout.root)
    assert report.ok, report.problems
    latencies = [e.data["seal_latency_s"] for e in watch.of("segment_sealed")]
    print(f"seal latency: max {max(latencies):.3f} s over {len(latencies)} segments")


async def test_a_sealed_segment_modified_afterwards_is_caught_by_verify(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    recording = _recording(store, pipeline)
    task = asyncio.create_task(recording.run())
    await watch.until(lambda: len(watch.of("segment_sealed")) >= 2)
    recording.stop()
    await task
    assert verify_store(store.layout.root).ok  # control
    entry = watch.of("segment_sealed")[1]
    record = IngestRepository(store).item(str(entry.item))
    assert record is not None and record.path is not None
    path = store.layout.root / record.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_store(store.layout.root)
    assert not report.ok
    assert any(str(entry.item) in p.where for p in report.problems), report.problems


async def test_a_killed_source_gets_a_gap_and_resumes_while_the_other_records_on(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    recording = _recording(store, pipeline, lavfi_source("a"), lavfi_source("b"))
    task = asyncio.create_task(recording.run())
    await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 2)
    victim = recording.sources["a"].pid
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    opened = (await watch.until(lambda: watch.of("gap", source="a", state="open")))[0]
    assert "killed" in opened.data["reason"] or "status -9" in opened.data["reason"], opened.data
    closed = (await watch.until(lambda: watch.of("gap", source="a", state="closed")))[0]
    b_before = len(watch.of("segment_sealed", source="b"))
    # Recording resumes: new segments of a, in a new run, after the gap.
    await watch.until(lambda: [e for e in watch.of("segment_sealed", source="a") if e.seq > closed.seq])
    await watch.until(lambda: len(watch.of("segment_sealed", source="b")) > b_before)
    recording.stop()
    await task
    assert closed.data["from"] == opened.data["from"] and closed.data["to"] > closed.data["from"]
    assert closed.data["reason"] == opened.data["reason"] and closed.data["duration_s"] > 0
    runs_a = {e.data["run"] for e in watch.of("segment_sealed", source="a")}
    assert len(runs_a) == 2
    # The segment ffmpeg was writing when it was killed is sealed too, marked partial with the reason.
    partial = [e for e in watch.of("segment_sealed", source="a") if "partial" in e.data]
    assert len(partial) == 1 and "killed by SIGKILL" in partial[0].data["partial"]
    assert partial[0].seq < closed.seq
    after = [e for e in watch.of("segment_sealed", source="a") if e.seq > closed.seq]
    assert after[0].data["start_utc"] == closed.data["to"]  # the gap ends where recording starts again
    before = [e for e in watch.of("segment_sealed", source="a")
              if e.seq < opened.seq and "partial" not in e.data]
    assert before[-1].data["end_utc"] <= opened.data["from"]
    # The other source was never interrupted: one run, consecutive segments, no gap.
    b = watch.of("segment_sealed", source="b")
    assert watch.of("gap", source="b") == [] and len({e.data["run"] for e in b}) == 1
    assert [e.data["index"] for e in b] == list(range(len(b)))
    assert verify_store(store.layout.root).ok


async def test_a_silent_source_is_restarted_with_the_reason_on_the_ledger(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    recording = _recording(store, pipeline, lavfi_source("a"), lavfi_source("b"), stop_timeout_s=1.0,
                           stale_margin_s=1.0)
    task = asyncio.create_task(recording.run())
    await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 1)
    victim = recording.sources["a"].pid
    assert victim is not None
    os.kill(victim, signal.SIGSTOP)  # alive, but writes nothing: only the age of its last segment shows it
    try:
        opened = (await watch.until(lambda: watch.of("gap", source="a", state="open")))[0]
    finally:
        if _alive(victim):
            os.kill(victim, signal.SIGCONT)
    assert "no new segment for more than 2 s" in opened.data["reason"]
    # The gap starts where ffmpeg stopped writing, not when the silence was noticed (2 s later at least).
    noticed = _ns(opened.time)
    assert noticed - _ns(opened.data["from"]) >= 2_000_000_000
    await watch.until(lambda: watch.of("gap", source="a", state="closed"))
    recording.stop()
    await task
    assert watch.of("gap", source="b") == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_source_that_never_starts_leaves_a_gap_until_the_stop_and_the_other_records(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    broken: dict[str, Any] = {"id": "cam", "codec": "encode",
                              "input": [{"format": "v4l2",
                                         "url": "/dev/v4l/by-id/usb-Absent_video7-video-index0"}]}
    recording = _recording(store, pipeline, lavfi_source("a"), broken)
    task = asyncio.create_task(recording.run())
    opened = (await watch.until(lambda: watch.of("gap", source="cam", state="open")))[0]
    # ffmpeg's own words (the ledger shows absolute paths as "<station path>", like every entry).
    assert "exited with status 1" in opened.data["reason"]
    assert "Cannot open video device" in opened.data["reason"]
    await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 3)
    await watch.until(lambda: recording.sources["cam"].runs >= 3)  # retried with backoff meanwhile
    assert "Cannot open video device" in recording.status()[1]["gap"]["reason"]
    recording.stop()
    await task
    closed = watch.of("gap", source="cam", state="closed")
    assert len(closed) == 1 and closed[0].data["to_stop"] is True and closed[0].data["attempts"] >= 2
    assert closed[0].data["from"] == opened.data["from"] <= closed[0].data["to"]
    assert watch.of("segment_sealed", source="cam") == [] and watch.of("gap", source="a") == []


def _ns(iso: str) -> int:
    moment = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


async def test_segments_that_could_not_be_sealed_are_sealed_at_the_stop(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    recording = _recording(store, pipeline)
    task = asyncio.create_task(recording.run())
    await watch.until(lambda: len(watch.of("segment_sealed")) >= 1)
    roomy = pipeline.settings
    # The station disk "fills up": the pipeline keeps min_free_bytes free and refuses to copy.
    pipeline.settings = dataclasses.replace(roomy, min_free_bytes=1 << 62)
    await watch.until(lambda: len(watch.of("error", stage="room segment")) >= 2)
    await watch.until(lambda: recording.sources["a"].failed >= 2)
    unsealed = {e.data["segment"] for e in watch.of("error", stage="room segment")}
    pipeline.settings = roomy  # space again
    recording.stop()
    await task
    sealed = watch.of("segment_sealed", source="a")
    # Nothing dropped: every segment ffmpeg listed is sealed in the end (those that failed last).
    assert sorted(e.data["index"] for e in sealed) == list(range(len(sealed)))
    assert unsealed <= {e.data["segment"] for e in sealed}
    capture = SessionFiles(store.layout.root).capture_dir
    assert list(capture.rglob("*.mp4")) == []
    assert verify_store(store.layout.root).ok


async def test_a_restarted_source_reuses_the_sessions_probe(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Any
) -> None:
    """codec = auto probes a source once a session: a camera serving one client may still count the probe's
    connection when ffmpeg connects right after it, so a probe before every restart would lose that race
    at every restart. Counted through an ffprobe that logs its calls."""
    calls = tmp_path / "ffprobe-calls"
    wrapper = tmp_path / "ffprobe"
    wrapper.write_text(f'#!/bin/sh\necho call >> "{calls}"\nexec ffprobe "$@"\n')
    wrapper.chmod(0o755)
    source = {**lavfi_source("a"), "codec": "auto"}
    config = rooms_config(source, ffprobe=str(wrapper))
    files = SessionFiles(store.layout.root)
    files.prepare()
    recording = SessionRecording(_session(), config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 2)
        assert calls.read_text().count("call") == 1  # control: the first run probed
        victim = recording.sources["a"].pid
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        closed = (await watch.until(lambda: watch.of("gap", source="a", state="closed")))[0]
        await watch.until(lambda: [e for e in watch.of("segment_sealed", source="a") if e.seq > closed.seq])
    finally:
        recording.stop()
        await task
    assert calls.read_text().count("call") == 1, "the restart probed the camera again"
    assert recording.sources["a"].coding == ("encode", "encode")  # lavfi's raw video is encoded, as probed
