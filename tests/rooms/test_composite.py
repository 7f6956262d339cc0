"""The composite (edge.rooms.composite, edge.rooms.overlay_text) with real ffmpeg, the real pipeline, store
and ledger: a session with two lavfi sources and a composite records composite segments at the configured
size, with the overlay burnt in (compared with the same frame made without it), sealed and marked derived
in their manifests and in the session manifest; the originals are recorded exactly as without a
composite; a composite killed mid-session gives a gap on the composite only, and its elapsed time goes on
from the session's start. The store's path and the case number carry every character that would break an
ffmpeg filter graph."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.config.rooms import RoomsSection
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms.composite import composite_inputs, filter_graph
from edge.rooms.manifest import session_manifest
from edge.rooms.overlay_text import CLOCK_TEXT, replace_text
from edge.rooms.recording import SessionRecording
from edge.rooms.session import RoomSession, new_session
from edge.rooms.state import SessionFiles
from edge.verify.station import verify_store
from tests.rooms.conftest import STATION, LedgerWatch, UploadsSeen, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

# Every character ffmpeg's graph parser treats specially, and drawtext's expansion.
HOSTILE_CASE = "A'1,2;[x]:%{localtime}\\n"
SIZE = (320, 240)


def _session(case_number: str = "A3301062026000123", started_ago_s: float = 0.0) -> RoomSession:
    started = datetime.now(UTC) - timedelta(seconds=started_ago_s)
    return new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                       fields={"case_number": case_number, "collector": "张三", "subject": "询问过程"},
                       started_utc=started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), started_by="operator")


def _config(composite: dict[str, Any] | None, **settings: Any) -> RoomsSection:
    config = rooms_config(lavfi_source("a", size="320x240", rate=10),
                          lavfi_source("b", size="160x120", rate=10), **settings)
    if composite is None:
        return config
    room = config.room[0].model_dump()
    room["composite"] = composite
    return RoomsSection.model_validate({**config.model_dump(), "room": [room]})


COMPOSITE = {"main": "a", "inset": "b", "size": f"{SIZE[0]}x{SIZE[1]}", "rate": 10, "inset_width_pct": 25}


def _recording(store: StationStore, pipeline: IngestPipeline, config: RoomsSection,
               session: RoomSession) -> SessionRecording:
    files = SessionFiles(store.layout.root)
    files.prepare()
    return SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)


def _frame(inputs: list[str], *, graph: str | None = None) -> bytes:
    """The first decoded frame (RGB24, SIZE) of an ffmpeg input, optionally through a filter graph."""
    argv = ["ffmpeg", "-v", "error", *inputs]
    if graph is not None:
        argv += ["-filter_complex", graph, "-map", "[vout]"]
    argv += ["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    done = subprocess.run(argv, capture_output=True, check=True, timeout=60)
    assert len(done.stdout) == SIZE[0] * SIZE[1] * 3, done.stderr[-500:]
    return done.stdout


def _mean_difference(one: bytes, two: bytes, box: tuple[int, int, int, int]) -> float:
    """Mean absolute difference of two RGB24 frames over box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    total = count = 0
    for y in range(y0, y1):
        row = (y * SIZE[0]) * 3
        for x in range(x0 * 3, x1 * 3):
            total += abs(one[row + x] - two[row + x])
            count += 1
    return total / count


def _probe(path: Path) -> dict[str, Any]:
    done = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                           "stream=codec_type,codec_name,width,height,avg_frame_rate:format_tags", "-of",
                           "json", str(path)], capture_output=True, text=True, check=True, timeout=30)
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


@pytest.fixture
def hostile_store(tmp_path: Path) -> Any:
    # The store's path goes into the composite's filter graph (the overlay files): every special character.
    store = StationStore(tmp_path / "st'o:r,e [x];y\\z", STATION)
    yield store
    store.close()


async def test_a_composite_records_pip_with_the_overlay_beside_the_originals(hostile_store: StationStore,
                                                                              uploads: UploadsSeen) -> None:
    store = hostile_store
    watch = LedgerWatch(store)
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=256 * 1024),
                              uploads=uploads)
    config = _config(COMPOSITE)
    session = _session(HOSTILE_CASE)
    recording = _recording(store, pipeline, config, session)
    task = asyncio.create_task(recording.run())
    await watch.until(lambda: len(watch.of("segment_sealed", source="composite")) >= 3, timeout_s=90)
    recording.stop()
    await task
    assert watch.of("gap") == []
    repository = IngestRepository(store)
    composite = watch.of("segment_sealed", source="composite")
    assert [e.data["index"] for e in composite] == list(range(len(composite)))
    first = None
    for entry in composite:
        derived = entry.data["derived"]
        assert (derived["kind"], derived["main"], derived["inset"], derived["overlay"]) == (
            "composite", "a", "b", True)
        record = repository.item(str(entry.item))
        assert record is not None and record.manifest is not None and record.path is not None
        assert record.manifest["source"]["derived"] == derived and record.manifest["source"]["source"] == (
            "composite")
        assert record.manifest["case"]["case_number"] == HOSTILE_CASE
        probe = _probe(store.layout.root / record.path)
        video = [s for s in probe["streams"] if s["codec_type"] == "video"]
        assert [(s["codec_name"], s["width"], s["height"]) for s in video] == [("h264", *SIZE)]
        assert probe["format"]["tags"]["derived_from"] == "main=a inset=b"
        first = first or store.layout.root / record.path
    for source in ("a", "b"):  # the originals carry no derived mark
        assert watch.of("segment_sealed", source=source)
        assert all("derived" not in e.data for e in watch.of("segment_sealed", source=source))
    # The session manifest lists the composite after the originals, marked derived.
    manifest = session_manifest(session, watch.entries, station_id=STATION, stopped_by="operator",
                                sources=[("a", ""), ("b", ""), ("composite", "画中画合成")])
    listed = {s["source"]: s for s in manifest["sources"]}
    assert "derived" not in listed["a"] and "derived" not in listed["b"]
    assert listed["composite"]["derived"]["kind"] == "composite"
    assert len(listed["composite"]["segments"]) == len(composite)
    assert verify_store(store.layout.root).ok
    assert list(SessionFiles(store.layout.root).capture_dir.rglob("*.mp4")) == []

    # The overlay is in the picture: the composite's first frame against the same frame made without it
    # (the same lavfi inputs and graph, overlay off). The text boxes differ, the middle does not.
    assert first is not None
    recorded = _frame(["-i", str(first)])
    no_overlay = config.room[0].composite
    assert no_overlay is not None
    roles = composite_inputs(no_overlay, {"a": 7, "b": 8})  # the graph alone
    graph = filter_graph(no_overlay.model_copy(update={"overlay": False}), roles,
                         clock_file=Path("/unused"), info_file=Path("/unused"))
    inputs = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10", "-f", "lavfi", "-i",
              "testsrc2=size=160x120:rate=10"]
    plain = _frame(inputs, graph=graph)
    # The info box (room, case number, elapsed time: 10 px text, 3 lines) sits bottom left, the clock top
    # left (the inset is top right).
    info_box, clock_box, middle = (6, 206, 90, 233), (6, 6, 90, 14), (120, 90, 200, 150)
    assert _mean_difference(recorded, plain, middle) < 12  # control: only the encoding differs
    assert _mean_difference(recorded, plain, info_box) > 40
    assert _mean_difference(recorded, plain, clock_box) > 40


async def test_the_originals_are_recorded_as_without_a_composite(store: StationStore, tmp_path: Path,
                                                                 uploads: UploadsSeen) -> None:
    session = _session()
    hashes: list[dict[tuple[str, int], str]] = []
    for composite in (None, COMPOSITE):
        one = StationStore(tmp_path / f"store-{len(hashes)}", STATION)
        try:
            watch = LedgerWatch(one)
            pipeline = IngestPipeline(one, IngestSettings(min_free_bytes=0), uploads=uploads)
            recording = _recording(one, pipeline, _config(composite), session)
            task = asyncio.create_task(recording.run())
            await watch.until(lambda w=watch: all(  # type: ignore[misc]
                len(w.of("segment_sealed", source=s)) >= 3 for s in ("a", "b")), timeout_s=90)
            recording.stop()
            await task
            hashes.append({(str(e.data["source"]), int(e.data["index"])): str(e.data["sha256"])
                           for e in watch.of("segment_sealed") if e.data["source"] in ("a", "b")
                           and e.data["index"] in (0, 1)})
            assert bool(watch.of("segment_sealed", source="composite")) == (composite is not None)
        finally:
            one.close()
    # The same session and sources: the originals' first whole segments are the same bytes, composite
    # or not (generated sources and libx264 are deterministic; a composite never touches their ffmpeg).
    assert len(hashes[0]) == 4 and hashes[0] == hashes[1]


async def test_a_killed_composite_gets_a_gap_of_its_own_and_its_elapsed_time_goes_on(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    session = _session(started_ago_s=100.0)
    recording = _recording(store, pipeline, _config(COMPOSITE), session)
    task = asyncio.create_task(recording.run())
    await watch.until(lambda: len(watch.of("segment_sealed", source="composite")) >= 2, timeout_s=90)
    victim = recording.sources["composite"].pid
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    opened = (await watch.until(lambda: watch.of("gap", source="composite", state="open")))[0]
    assert "status -9" in opened.data["reason"] or "killed" in opened.data["reason"], opened.data
    closed = (await watch.until(lambda: watch.of("gap", source="composite", state="closed"), timeout_s=60))[0]
    await watch.until(lambda: [e for e in watch.of("segment_sealed", source="composite")
                               if e.seq > closed.seq], timeout_s=60)
    composite = recording.composite
    assert composite is not None and composite.overlay is not None
    shown = composite.overlay.info_path.read_text(encoding="utf-8").splitlines()
    # Counted from the session's start (100 s before the test), not from the composite's new run.
    hours, minutes, seconds = (int(v) for v in shown[2].removeprefix("已用时 ").split(":"))
    assert hours * 3600 + minutes * 60 + seconds >= 100
    recording.stop()
    await task
    # The originals recorded on: one run each, consecutive, no gap.
    for source in ("a", "b"):
        sealed = watch.of("segment_sealed", source=source)
        assert watch.of("gap", source=source) == [] and len({e.data["run"] for e in sealed}) == 1
        assert [e.data["index"] for e in sealed] == list(range(len(sealed)))
    assert len({e.data["run"] for e in watch.of("segment_sealed", source="composite")}) == 2
    assert closed.data["from"] == opened.data["from"] < closed.data["to"]


async def test_the_overlay_shows_a_changed_case_number_and_the_extra_line(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    recording = _recording(store, pipeline, _config(COMPOSITE), _session())
    task = asyncio.create_task(recording.run())
    await watch.until(lambda: len(watch.of("segment_sealed", source="composite")) >= 1, timeout_s=90)
    composite = recording.composite
    assert composite is not None and composite.overlay is not None
    info = composite.overlay.info_path
    assert composite.overlay.clock_path.read_text(encoding="utf-8") == CLOCK_TEXT
    assert "案件编号 A3301062026000123" in info.read_text(encoding="utf-8")
    recording.set_overlay_line("温度 22.5℃ 湿度 45%")
    assert info.read_text(encoding="utf-8").splitlines()[-1] == "温度 22.5℃ 湿度 45%"
    recording.session = _session("B2026")  # what the service does at a session_changed
    async with asyncio.timeout(10):
        while "案件编号 B2026" not in info.read_text(encoding="utf-8"):
            await asyncio.sleep(0.1)
    # The composite reads the new text as it runs (reload at every frame): it keeps recording.
    before = len(watch.of("segment_sealed", source="composite"))
    await watch.until(lambda: len(watch.of("segment_sealed", source="composite")) > before + 1)
    recording.stop()
    await task
    assert watch.of("gap") == []
    assert not info.parent.exists() or not list(info.parent.glob(".*.tmp"))


def test_replace_text_leaves_the_old_file_or_the_new(tmp_path: Path) -> None:
    path = tmp_path / "info.txt"
    replace_text(path, "one")
    inode = path.stat().st_ino
    replace_text(path, "two")
    assert path.read_text() == "two" and path.stat().st_ino != inode  # renamed over, never rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["info.txt"]
