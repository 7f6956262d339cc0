"""A GB/T 28181 channel as a room source (edge.rooms.gb_source) over real sockets: the real platform and
live streams (edge.gb28181.live), the real device simulator (simulators.gb28181) streaming H.264 with
G.711A audio as PS over RTP, real ffmpeg reading the channel's feed (edge.rooms.gb_feed: video and sound)
beside a lavfi source, the real pipeline and store. The room records both; the device stalling is one
room gap with its reason and times (the live layer's own gap entry is not a second room gap), and the
other source goes on untouched; the device's stream dying is one room gap per interruption, closed by the
first segment after it; a channel nobody can open is a gap with the reason while the other source
records."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.ps import Codec
from edge.config.base import ConfigError
from edge.config.rooms import RoomsSection
from edge.demo import GB_PLATFORM_ID, demo_config
from edge.demo_room import GB_IPC_ID, gb_live_section, room_section
from edge.gb28181.live import LiveStreams
from edge.gb28181.registry import wall_text
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms.argv import SegmentPlan, gb_plan, segment_argv
from edge.rooms.gb_feed import audio_input, video_input
from edge.rooms.gb_source import ns_from_wall_text
from edge.rooms.recording import SessionRecording
from edge.rooms.session import RoomSession, new_session
from edge.rooms.state import SessionFiles
from edge.verify.station import verify_store
from simulators.gb28181.media import generate_recordings
from tests.gb28181.live_env import CHANNEL, DEVICE, live_env
from tests.prerequisites import require
from tests.rooms.conftest import HAVE_FFMPEG, STATION, LedgerWatch, ffprobe_json, lavfi_source, rooms_config

GB_SOURCE = {"id": "gb", "name": "IPC 特写", "gb28181": {"device_id": DEVICE, "channel_id": CHANNEL}}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One recording the simulated camera loops for its live Play: H.264 with audio (sent as G.711A)."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    directory = tmp_path_factory.mktemp("gb-room") / "media"
    device_now = (datetime.now(UTC) + timedelta(hours=8)).replace(tzinfo=None, microsecond=0)
    generate_recordings(directory, 1, start=device_now - timedelta(minutes=5), seconds=4.0, size="320x240",
                        rate=10, audio=True)
    return directory


def _session() -> RoomSession:
    return new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                       fields={"case_number": "A3301062026000123", "collector": "张三", "subject": "询问过程",
                               "persons": [{"name": "李四", "role": "被询问人"}]},
                       started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")


def _recording(store: StationStore, pipeline: IngestPipeline, live: LiveStreams | None,
               *sources: dict[str, Any], **settings: object) -> SessionRecording:
    config = rooms_config(*sources, **settings)
    files = SessionFiles(store.layout.root)
    files.prepare()
    return SessionRecording(_session(), config.room[0], config, pipeline, files, station_id=STATION,
                            live=live)


# -- configuration and argv (pure) -------------------------------------------------------------------------


def test_a_gb28181_source_names_a_channel_and_no_inputs() -> None:
    config = rooms_config(GB_SOURCE, lavfi_source("a"))  # control: accepted
    source = config.room[0].source[0]
    assert source.gb28181 is not None and source.gb28181.device_id == DEVICE and source.input == []
    bad: list[tuple[dict[str, Any], str]] = [
        ({**GB_SOURCE, "input": lavfi_source("x")["input"]}, "has no input"),
        ({"id": "gb", "name": "x"}, "at least one input, or a gb28181 channel"),
        ({**GB_SOURCE, "gb28181": {"device_id": "3402000000132000005", "channel_id": CHANNEL}}, "device_id"),
        ({**GB_SOURCE, "gb28181": {"device_id": DEVICE, "channel_id": CHANNEL + "0"}}, "channel_id"),
        ({**GB_SOURCE, "gb28181": {"device_id": DEVICE, "channel_id": "../../../etc/passwd0000"}},
         "channel_id"),
        ({**GB_SOURCE, "gb28181": {"device_id": DEVICE, "channel_id": CHANNEL, "url": "x"}}, "url"),
    ]
    for spec, named in bad:
        with pytest.raises((ValueError, ConfigError)) as caught:
            RoomsSection.model_validate(
                {"room": [{"id": "xw-1", "name": "n", "address": "a", "source": [spec]}]})
        assert named in str(caught.value), (spec, caught.value)


def test_a_station_with_a_gb28181_room_source_needs_its_platform_and_the_device(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("secret\n")
    live = Path("/run/evidence-edge-test/live")  # only validated: a socket path must be short
    rooms = room_section(5.0)
    config = demo_config(tmp_path, [], "", password, gb28181=gb_live_section(password, live, GB_PLATFORM_ID),
                         rooms=rooms)  # control: accepted
    assert config.rooms.room[0].source[0].gb28181 is not None
    with pytest.raises((ValueError, ConfigError)) as caught:
        demo_config(tmp_path, [], "", password, rooms=rooms)
    assert "rooms.room xw-demo source ipc" in str(caught.value) and "[gb28181] enabled" in str(caught.value)
    section = gb_live_section(password, live, GB_PLATFORM_ID)
    section["devices"] = {"33010000001320000099": section["devices"][GB_IPC_ID]}
    with pytest.raises((ValueError, ConfigError)) as caught:
        demo_config(tmp_path, [], "", password, gb28181=section, rooms=rooms)
    assert f"device {GB_IPC_ID} is not in [gb28181.devices]" in str(caught.value)


def test_the_gb28181_run_copies_the_program_stream_s_video_and_encodes_the_raw_g711_beside_it(
    tmp_path: Path,
) -> None:
    metadata = {"gb28181_device": DEVICE}
    plan = gb_plan(2.0, "fragmented", metadata, audio=True)
    argv = segment_argv("ffmpeg", [video_input(7), audio_input(8, Codec.G711A)], plan, tmp_path)
    first, second = argv.index("-i"), argv.index("-i", argv.index("-i") + 1)
    assert argv[first - 8:first + 2] == ["-f", "mpeg", "-probesize", "2000000", "-analyzeduration", "2000000",
                                         "-fflags", "+discardcorrupt", "-i", "pipe:7"]
    assert argv[second - 6:second + 2] == ["-f", "alaw", "-ar", "8000", "-ac", "1", "-i", "pipe:8"]
    assert argv[second + 2:second + 12] == ["-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac",
                                            "-b:a", "32k"]
    assert "0:a?" not in argv and "-an" not in argv  # the program stream's own audio stream is never mapped
    mulaw = segment_argv("ffmpeg", [video_input(7), audio_input(8, Codec.G711U)], plan, tmp_path)
    assert mulaw[mulaw.index("pipe:8") - 7:mulaw.index("pipe:8") - 5] == ["-f", "mulaw"]
    # Control: a camera without sound maps the video only, and says no audio.
    mute = segment_argv("ffmpeg", [video_input(7)], gb_plan(2.0, "fragmented", metadata, audio=False),
                        tmp_path)
    at = mute.index("-i")
    assert mute[at + 2:at + 6] == ["-map", "0:v:0", "-c:v", "copy"] and "-an" in mute and "-c:a" not in mute
    # An ordinary source maps every stream of each input, audio included.
    ordinary = segment_argv("ffmpeg", [video_input(7)], SegmentPlan(2.0), tmp_path)
    first_map = ordinary.index("-map")
    assert ordinary[first_map:first_map + 4] == ["-map", "0:v?", "-map", "0:a?"]
    for bad in ({"maps": ("0:v:0", "1:a:0; rm")}, {"audio_bitrate": "32k -y"},
                {"maps": ("0:v:0",), "video_only": True}):
        with pytest.raises(ValueError):
            SegmentPlan(2.0, **bad)


def test_live_event_times_are_read_and_hostile_ones_refused() -> None:
    # The live layer's own formatting of a time (wall_text) is read back to the microsecond.
    moment = 1_796_464_801.5
    assert ns_from_wall_text(wall_text(moment)) == 1_796_464_801_500_000_000
    for text in (None, "", "2026-12-05 10:00:01", "2026-13-05T10:00:01.500000Z", "x" * 1000):
        assert ns_from_wall_text(text) is None


# -- over real sockets ---------------------------------------------------------------------------------------


def _gb_segments(watch: LedgerWatch) -> list[Any]:
    return [e for e in watch.of("segment_sealed", source="gb") if "partial" not in e.data]


@pytest.mark.usefixtures("ffmpeg")
async def test_a_room_records_a_gb_channel_beside_a_test_source_and_a_stall_is_one_gap(
    media: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    # The Play's idle timeout (10 s) outlasts the stall (3 s): media stops and comes again in the same Play.
    async with live_env(media, idle_timeout_s=10.0) as env:
        await env.device("stall=3")
        recording = _recording(store, pipeline, env.live, GB_SOURCE, lavfi_source("b"), stale_margin_s=8.0)
        task = asyncio.create_task(recording.run())
        try:
            gap = (await watch.until(lambda: watch.of("gap", source="gb", state="closed"), 60))[0]
            before = len(_gb_segments(watch))
            await watch.until(lambda: len(_gb_segments(watch)) >= before + 3, 60)
        finally:
            recording.stop()
            await task
        live_stalls = [data for _, data in env.ledger.entries if data.get("live") == "stalled"]
    # The room's gap: the stall, with its reason and the live layer's times; one gap, opened and closed.
    assert len(live_stalls) == 1
    room_gaps = watch.of("gap", source="gb")
    assert [e.data["state"] for e in room_gaps] == ["open", "closed"]
    data = gap.data
    assert data["live"] == "stalled" and "stalled" in data["reason"] and "no media for" in data["reason"]
    assert (data["from"], data["to"]) == (live_stalls[0]["from"], live_stalls[0]["to"])
    assert 2.5 <= data["duration_s"] <= 6, data
    assert data["room_session"] == recording.session.session
    # ffmpeg went on through the stall: one run, consecutive whole segments, sealed as they closed.
    gb = _gb_segments(watch)
    assert len({e.data["run"] for e in gb}) == 1 and len(gb) >= 4
    assert [e.data["index"] for e in gb] == list(range(len(gb)))
    # In order and never overlapping. ffmpeg's list may leave a fraction of a second between two copied
    # segments (its end is the last packet's time when PS gives no duration): seen around the stall.
    for one, two in itertools.pairwise(gb):
        assert one.data["start_utc"] < one.data["end_utc"] <= two.data["start_utc"]
        end, start = ns_from_wall_text(one.data["end_utc"]), ns_from_wall_text(two.data["start_utc"])
        assert end is not None and start is not None and start - end < 500_000_000
    # H.264 stream-copied, the camera's G.711A as AAC beside it (the stall is no gap in the sound: its
    # timestamps run on), the camera named in the file.
    item = IngestRepository(store).item(str(gb[1].item))
    assert item is not None and item.path is not None
    probed = ffprobe_json(store.layout.root / item.path)
    assert [s["codec_type"] for s in probed["streams"]] == ["video", "audio"]
    assert probed["format"]["tags"]["gb28181_device"] == DEVICE
    assert probed["format"]["tags"]["gb28181_channel"] == CHANNEL
    assert probed["format"]["tags"]["gb28181_audio"] == "g711a"
    assert recording.sources["gb"].coding == ("copy", "encode")
    # The other source was untouched: no gap, one run, consecutive segments.
    b = watch.of("segment_sealed", source="b")
    assert watch.of("gap", source="b") == [] and len({e.data["run"] for e in b}) == 1 and len(b) >= 4
    assert [e.data["index"] for e in b] == list(range(len(b)))
    assert verify_store(store.layout.root).ok


@pytest.mark.usefixtures("ffmpeg")
async def test_an_interrupted_channel_is_one_room_gap_with_the_live_reason_closed_when_it_resumes(
    media: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    # The camera's stream dies halfway through each Play (no more RTP): after the 1 s idle timeout the Play
    # is over, the live layer interrupts the channel and INVITEs again, and media flows once more.
    async with live_env(media, idle_timeout_s=1.0) as env:
        await env.device("die-mid-stream")
        recording = _recording(store, pipeline, env.live, GB_SOURCE, lavfi_source("b"), stale_margin_s=8.0)
        task = asyncio.create_task(recording.run())
        try:
            closed = (await watch.until(lambda: watch.of("gap", source="gb", state="closed"), 60))[0]
            await watch.until(lambda: [e for e in _gb_segments(watch) if e.seq > closed.seq], 60)
        finally:
            recording.stop()
            await task
        live_interruptions = [data for _, data in env.ledger.entries if data.get("live") == "interrupted"]
    opened = watch.of("gap", source="gb", state="open")[0]
    data = closed.data
    assert opened.data["reason"] == data["reason"]
    # The live layer's reason, not the consequence ("ffmpeg exited with status 0").
    assert data["reason"].startswith("GB/T 28181 live stream interrupted: ")
    assert "ffmpeg" not in data["reason"]
    assert data["live"] == "interrupted" and data["live_from"] == live_interruptions[0]["from"]
    # The gap runs from the end of what was recorded to the first segment after it: no overlap, no hole.
    before = [e for e in _gb_segments(watch) if e.seq < opened.seq]
    after = [e for e in _gb_segments(watch) if e.seq > closed.seq]
    assert before and before[-1].data["end_utc"] <= data["from"] < data["to"]
    assert after[0].data["start_utc"] == data["to"] and after[0].data["run"] != before[-1].data["run"]
    # One room gap per outage: the open/closed pairs alternate, never two open at once.
    states = [e.data["state"] for e in watch.of("gap", source="gb")]
    assert states[:2] == ["open", "closed"] and all(a != b for a, b in itertools.pairwise(states))
    assert watch.of("gap", source="b") == []
    assert verify_store(store.layout.root).ok


@pytest.mark.usefixtures("ffmpeg")
async def test_rtp_loss_is_a_room_gap_naming_the_count_and_recording_goes_on(
    media: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    async with live_env(media, idle_timeout_s=10.0) as env:
        await env.device("loss=0.05")
        recording = _recording(store, pipeline, env.live, GB_SOURCE, lavfi_source("b"), stale_margin_s=8.0)
        task = asyncio.create_task(recording.run())
        try:
            gap = (await watch.until(lambda: watch.of("gap", source="gb", state="closed"), 60))[0]
            await watch.until(lambda: [e for e in _gb_segments(watch) if e.seq > gap.seq], 60)
        finally:
            recording.stop()
            await task
        live_losses = [data for _, data in env.ledger.entries if data.get("live") == "lost"]
    assert live_losses and gap.data["live"] == "lost"
    assert f"{live_losses[0]['lost_packets']} RTP packet(s) lost" in gap.data["reason"]
    assert gap.data["from"] == gap.data["to"] and gap.data["duration_s"] == 0
    # Loss costs bytes, not the run: one ffmpeg run throughout, and the other source has no gap.
    assert len({e.data["run"] for e in _gb_segments(watch)}) == 1
    assert watch.of("gap", source="b") == [] and len(watch.of("segment_sealed", source="b")) >= 2


@pytest.mark.usefixtures("ffmpeg")
async def test_a_gb_source_without_live_streams_is_a_gap_with_the_reason_and_the_other_records(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    recording = _recording(store, pipeline, None, GB_SOURCE, lavfi_source("b"))
    task = asyncio.create_task(recording.run())
    try:
        opened = (await watch.until(lambda: watch.of("gap", source="gb", state="open"), 30))[0]
        await watch.until(lambda: len(watch.of("segment_sealed", source="b")) >= 2)
    finally:
        recording.stop()
        await task
    assert "GB/T 28181 live streams are not running" in opened.data["reason"]
    closed = watch.of("gap", source="gb", state="closed")
    assert len(closed) == 1 and closed[0].data["to_stop"] is True and closed[0].data["attempts"] >= 1
    assert watch.of("segment_sealed", source="gb") == [] and watch.of("gap", source="b") == []
