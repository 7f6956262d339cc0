"""The products of a stop (edge.rooms.joined, edge.rooms.statement, edge.rooms.products), with real ffmpeg,
pipeline, store and ledger: one joined MP4 per source from the sealed segments in ledger order, made
with ``-c copy`` and losing no frame at a boundary; a segment altered after sealing is never joined (with
a control source in the same stop); the statement names the case, persons, hashes, gaps, marks and has
lines for signatures; everything is sealed and queued for upload."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms import products
from edge.rooms.joined import concat_list, gaps_in_joined, join_argv, joined_streams_problem, stream_layout
from edge.rooms.service import RoomService
from edge.rooms.statement import session_statement
from edge.verify.station import verify_store
from tests.rooms.conftest import STATION, LedgerWatch, UploadsSeen, lavfi_source, rooms_config
from tests.rooms.rig import original, running

FIELDS: dict[str, Any] = {
    "case_number": "A3301062026000777", "collector": "张三", "collector_no": "012345", "subject": "询问过程",
    "persons": [{"name": "李四", "role": "被询问人"}, {"name": "王五", "role": "询问人"}],
}
RATE = 25


def _probe(path: Path) -> dict[str, Any]:
    entries = "stream=codec_type,nb_read_frames,duration:format_tags"
    done = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries", entries, "-of", "json",
                           str(path)], capture_output=True, text=True, check=True, timeout=60)
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def _video(doc: dict[str, Any]) -> tuple[int, float]:
    """Frames and duration of the video stream (the container's duration is its longest stream's)."""
    (video,) = [s for s in doc["streams"] if s["codec_type"] == "video"]
    return int(video["nb_read_frames"]), float(video["duration"])


def test_the_join_is_a_stream_copy_of_the_listed_files_in_order() -> None:
    parts: list[tuple[Path, float | None]] = [(Path("/s/items/2026/12/05/a.mp4"), 60.04),
                                              (Path("/s/it's/b.mp4"), None)]
    text = concat_list(parts)
    assert text.splitlines() == ["ffconcat version 1.0", "file '/s/items/2026/12/05/a.mp4'",
                                 "duration 60.040000", "file '/s/it'\\''s/b.mp4'"]
    with pytest.raises(ValueError, match="line break"):
        concat_list([(Path("/s/a.mp4\nfile '/etc/passwd'"), None)])
    with pytest.raises(ValueError, match="cannot place"):
        concat_list([(Path("/s/a.mp4"), float("nan"))])
    argv = join_argv("ffmpeg", Path("/w/list.ffconcat"), Path("/w/joined.mp4"), {"case_number": "A-1"})
    assert argv[argv.index("-metadata") + 1] == "case_number=A-1"
    assert argv[argv.index("-f") + 1] == "concat" and argv[argv.index("-c") + 1] == "copy"
    assert argv[argv.index("-protocol_whitelist") + 1] == "file"
    assert argv[argv.index("-i") + 1] == "/w/list.ffconcat" and argv[-2:] == ["-n", "/w/joined.mp4"]
    assert not {"-c:v", "-vf", "-filter_complex", "libx264", "-y"} & set(argv)  # never re-encoded, never over


def test_gaps_are_placed_where_the_joined_file_jumps() -> None:
    segments = [{"start_utc": "2026-12-05T10:00:00.000000Z", "end_utc": "2026-12-05T10:00:01.000000Z"},
                {"start_utc": "2026-12-05T10:00:01.000000Z", "end_utc": "2026-12-05T10:00:02.500000Z"},
                {"start_utc": "2026-12-05T10:00:30.000000Z", "end_utc": "2026-12-05T10:00:31.000000Z"}]
    gap = {"source": "a", "from": "2026-12-05T10:00:02.500000Z", "to": "2026-12-05T10:00:30.000000Z",
           "duration_s": 27.5, "reason": "camera lost", "until_stop": False}
    placed = gaps_in_joined(segments, [gap])
    assert placed[0]["at_s"] == 2.5 and placed[0]["reason"] == "camera lost"
    # With the segments' video durations known, those place it (the ledger times only where unknown).
    assert gaps_in_joined(segments, [gap], [1.04, None, 9.0])[0]["at_s"] == 2.54
    manifest = {"station": STATION, "case": {"case_number": "A1", "collector": "张三", "subject": "s"},
                "persons": [{"name": "李四", "role": "被询问人"}], "room": "xw-1", "room_name": "第一询问室",
                "address": "文三路", "sources": [
                    {"source": "a", "name": "全景", "segments": segments},
                    {"source": "composite", "name": "", "segments": [],
                     "derived": {"kind": "composite", "main": "a", "inset": "b"}}],
                "gaps": [gap], "marks": [{"time_utc": "t", "note": "出示\u202e证据", "by": "op"}]}
    text = session_statement(manifest, [{"source": "a", "gaps": placed, "problems": ["x"]}],
                             manifest_item="m", manifest_sha256="0" * 64, made_utc="now")
    assert "自 2026-12-05T10:00:02.500000Z 至 2026-12-05T10:00:30.000000Z" in text
    assert "位于合并文件 00:00:02.500 处" in text and "原因:camera lost" in text
    assert "信号源 composite (画中画合成画面,主画面 a,辅助画面 b" in text  # derived: said so
    assert "信号源 a 全景:" in text
    assert "\u202e" not in text and "出示\\u202e证据" in text  # operator text cannot reorder a line
    # Control: without the gap, the statement says the recording was not interrupted.
    clean = session_statement({**manifest, "gaps": []}, [], manifest_item="m", manifest_sha256="0" * 64,
                              made_utc="now")
    assert "录制全程未中断" in clean and "录制全程未中断" not in text


@pytest.mark.usefixtures("ffmpeg")
async def test_a_stop_joins_each_source_losing_no_frame_and_seals_a_statement(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, uploads: UploadsSeen, tmp_path: Path
) -> None:
    config = rooms_config(lavfi_source("a", audio=True, rate=RATE), lavfi_source("b", rate=RATE))
    service = RoomService(config, store, pipeline, station_id=STATION)
    service.load()
    async with running(service):
        session = await service.start("xw-1", FIELDS, by="op")
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 3
                          and len(watch.of("segment_sealed", source="b")) >= 3, timeout_s=90)
        await service.mark("xw-1", "出示证据一", by="op")
        stopped = await service.stop("xw-1", by="op")
    joined = {e.data["source"]: e for e in watch.of("joined", room_session=session.session)}
    assert set(joined) == {"a", "b"}
    assert [j["item"] for j in stopped["joined"]] == [joined["a"].item, joined["b"].item]
    for source, entry in joined.items():
        segments = watch.of("segment_sealed", room_session=session.session, source=source)
        # In ledger order, each by hash.
        assert [s["item"] for s in entry.data["segments"]] == [s.item for s in segments]
        assert [s["sha256"] for s in entry.data["segments"]] == [s.data["sha256"] for s in segments]
        joined_doc = _probe(original(store, str(entry.item), tmp_path))
        frames, duration = _video(joined_doc)
        parts = [_video(_probe(original(store, str(s.item), tmp_path))) for s in segments]
        assert frames == sum(f for f, _ in parts)  # no frame lost or added at a boundary
        boundaries = len(segments) - 1
        assert abs(duration - sum(d for _, d in parts)) <= boundaries / RATE + 1 / RATE
        assert abs(duration - entry.data["recorded_s"]) <= (boundaries + 1) / RATE
        assert joined_doc["format"]["tags"]["case_number"] == FIELDS["case_number"]
        assert entry.item in uploads.items and entry.data["sha256"] == stopped["joined"][
            0 if source == "a" else 1]["sha256"]
    audio = [s for s in _probe(original(store, str(joined["a"].item), tmp_path))["streams"]
             if s["codec_type"] == "audio"]
    assert len(audio) == 1  # the audio stream is joined too
    statement_item = stopped["statement_item"]
    assert statement_item in uploads.items
    text = _original_text(store, statement_item)
    assert hashlib.sha256(text.encode()).hexdigest() == stopped["statement_sha256"]
    for expected in (FIELDS["case_number"], "第一询问室", "文三路 100 号", "张三(警号 012345)",
                     "证明对象:询问过程", "李四  被询问人", "王五  询问人", "出示证据一", "录制全程未中断",
                     stopped["manifest_item"], joined["a"].data["sha256"], joined["b"].data["sha256"],
                     "被询问人 李四:______", "拒绝签名"):
        assert expected in text, expected
    for entry in watch.of("segment_sealed", room_session=session.session):
        assert entry.data["sha256"] in text
    assert not (store.layout.root / "rooms" / "products" / session.session).exists()  # work files gone
    report = verify_store(store.layout.root)
    assert report.ok, report.problems


def _original_text(store: StationStore, item: str) -> str:
    record = IngestRepository(store).item(item)
    assert record is not None and record.path is not None
    return (store.layout.root / record.path).read_bytes()[: record.size].decode("utf-8")


@pytest.mark.usefixtures("ffmpeg")
async def test_a_segment_altered_after_sealing_is_not_joined(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    service = RoomService(rooms_config(lavfi_source("a"), lavfi_source("b")), store, pipeline,
                          station_id=STATION)
    service.load()
    async with running(service):
        session = await service.start("xw-1", FIELDS, by="op")
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 2
                          and len(watch.of("segment_sealed", source="b")) >= 2, timeout_s=90)
        altered = watch.of("segment_sealed", source="a")[1]
        record = IngestRepository(store).item(str(altered.item))
        assert record is not None and record.path is not None
        path = store.layout.root / record.path
        data = bytearray(path.read_bytes())
        data[record.size // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        stopped = await service.stop("xw-1", by="op")
    by_source = {j["source"]: j for j in stopped["joined"]}
    assert by_source["a"]["item"] is None and by_source["a"]["problems"] == 1
    errors = watch.of("error", stage="room join", room_session=session.session, source="a")
    assert len(errors) == 1 and str(altered.item) in errors[0].data["reason"]
    assert "altered after sealing" in errors[0].data["reason"]
    assert not watch.of("joined", source="a")
    # Control: the other source of the same stop, untouched, is joined.
    assert by_source["b"]["item"] is not None and len(watch.of("joined", source="b")) == 1
    text = _original_text(store, stopped["statement_item"])
    assert "未生成合并文件" in text and str(altered.item) in text


def test_stream_layouts_are_read_from_ffprobe_and_hostile_answers_refused() -> None:
    doc = {"streams": [{"codec_type": "video", "codec_name": "h264", "width": 160, "height": 120,
                        "duration": "1.000000"},
                       {"codec_type": "audio", "codec_name": "aac", "sample_rate": "48000", "channels": 1}]}
    layout, video_s = stream_layout(doc)
    assert video_s == 1.0 and layout[0][:4] == ("video", "h264", "160", "120")
    wider = {"streams": [{**doc["streams"][0], "width": 320}, doc["streams"][1]]}
    assert stream_layout(wider)[0] != layout  # a camera changed: not the same layout
    hostiles: list[Any] = [[], {"streams": "x"}, {"streams": [1]},
                           {"streams": [{"codec_type": "video", "duration": "soon"}]}]
    for hostile in hostiles:
        with pytest.raises(ValueError):
            stream_layout(hostile)


def test_a_joined_file_must_keep_every_kind_of_stream_its_segments_hold() -> None:
    video = ("video", "h264", "320", "240", "", "")
    sound = ("audio", "aac", "", "", "8000", "1")
    assert joined_streams_problem((video, sound), (video, sound)) is None  # control: kept
    assert joined_streams_problem((video,), (video,)) is None  # a camera without sound: video only
    lost = joined_streams_problem((video, sound), (video,))
    assert lost is not None and "a stream was lost in the join" in lost and "audio aac 8000 1" in lost
    assert joined_streams_problem((video,), (video, sound)) is not None


@pytest.mark.usefixtures("ffmpeg")
@pytest.mark.parametrize("after_restart", ["same camera", "camera changed"])
async def test_a_session_resumed_after_a_gap_is_joined_unless_its_streams_changed(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, after_restart: str, tmp_path: Path
) -> None:
    first = RoomService(rooms_config(lavfi_source("a")), store, pipeline, station_id=STATION)
    first.load()
    async with running(first):
        session = await first.start("xw-1", FIELDS, by="op")
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 2, timeout_s=90)
    # The agent stopped; it starts again with the room's camera as before, or another one.
    size = "160x120" if after_restart == "same camera" else "320x240"
    again = RoomService(rooms_config(lavfi_source("a", size=size)), store, pipeline, station_id=STATION)
    again.load()
    async with running(again):
        await watch.until(lambda: watch.of("gap", state="closed"), timeout_s=90)
        gap_seq = watch.of("gap", state="closed")[0].seq
        await watch.until(lambda: len([e for e in watch.of("segment_sealed", source="a") if e.seq > gap_seq])
                          >= 2, timeout_s=90)
        stopped = await again.stop("xw-1", by="op")
    text = _original_text(store, stopped["statement_item"])
    gap = watch.of("gap", state="closed")[0].data
    assert f"自 {gap['from']} 至 {gap['to']}" in text and gap["reason"] in text
    joined = watch.of("joined", room_session=session.session)
    if after_restart == "same camera":
        assert len(joined) == 1 and stopped["joined"][0]["item"] == joined[0].item
        placed = joined[0].data["gaps"][0]
        before = [e for e in watch.of("segment_sealed", source="a") if e.seq < gap_seq]
        # Where the joined file jumps: after the video of the segments before the gap, as ffprobe reads it.
        content_s = sum(_video(_probe(original(store, str(e.item), tmp_path)))[1] for e in before)
        assert placed["from"] == gap["from"] and placed["at_s"] == pytest.approx(content_s, abs=1e-3)
        assert "位于合并文件 " in text and "合并文件不填补中断" in text
    else:
        assert not joined and stopped["joined"][0]["item"] is None
        reason = watch.of("error", stage="room join", room_session=session.session)[0].data["reason"]
        assert "320 240" in reason and "160 120" in reason and "cannot be joined into one file" in reason
        assert "未生成合并文件" in text and "cannot be joined into one file" in text


@pytest.mark.usefixtures("ffmpeg")
async def test_products_an_agent_stop_interrupted_are_made_at_its_next_start(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = RoomService(rooms_config(lavfi_source("a")), store, pipeline, station_id=STATION)
    service.load()
    joining = asyncio.Event()

    async def stuck(*_args: Any, **_kwargs: Any) -> Any:
        joining.set()
        await asyncio.Event().wait()  # the agent is stopped while it joins

    with monkeypatch.context() as patched:
        patched.setattr(products, "join_source", stuck)
        async with running(service):
            session = await service.start("xw-1", FIELDS, by="op")
            await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 2, timeout_s=90)
            stop = asyncio.create_task(service.stop("xw-1", by="op"))
            await asyncio.wait_for(joining.wait(), 90)
            stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop
    stopped = watch.of("session_stopped", room_session=session.session)
    assert len(stopped) == 1 and stopped[0].data["products"] == "to follow"
    assert not watch.of("room_products")
    # The next start makes them from the manifest the stop sealed; a start after that makes none again.
    again = RoomService(rooms_config(lavfi_source("a")), store, pipeline, station_id=STATION)
    again.load()
    async with running(again):
        await asyncio.sleep(0)  # run() has begun: its finishing tasks are listed
        assert [t.get_name() for t in again.finishing] == [f"room-products-{session.session}"]
        await watch.until(lambda: watch.of("room_products", room_session=session.session), timeout_s=90)
        await asyncio.gather(*again.finishing)
    made = watch.of("room_products", room_session=session.session)[0].data
    assert made["manifest_item"] == stopped[0].data["manifest_item"] and made["statement_item"]
    joined = watch.of("joined", room_session=session.session)
    assert [j["item"] for j in made["joined"]] == [e.item for e in joined] and len(joined) == 1
    assert FIELDS["case_number"] in _original_text(store, made["statement_item"])
    third = RoomService(rooms_config(lavfi_source("a")), store, pipeline, station_id=STATION)
    third.load()
    async with running(third):
        await asyncio.sleep(0)
        assert third.finishing == []  # nothing left to make
    assert len(watch.of("room_products")) == 1
