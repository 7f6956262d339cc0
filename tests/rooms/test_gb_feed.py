"""One run's feed from a GB/T 28181 channel (edge.rooms.gb_feed) over real pipes, with a reader in place of
the live layer's (the same interface): the program stream goes to one pipe byte for byte with its audio made
padding, the camera's G.711A to the other as raw samples; a PSM without audio makes one pipe only, as
does sound that is not G.711 (named); an ffmpeg that takes none of the sound ends the run with that
reason and bounded memory (the control: one that reads everything gets it all and the run ends only with
the channel); a reader the live layer cut off ends the run with that reason (control: a plain end has
none). In a session (real ffmpeg, pipeline, store), a camera whose sound is AAC records video only and
says so once on the ledger, however many runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import deque
from collections.abc import Callable

import pytest

from drivers.gb28181.ps import Codec, PsMuxer
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms.gb_audio import AudioGapEvent
from edge.rooms.gb_feed import AUDIO_OVERFLOW_REASON, AUDIO_QUEUE_BYTES, GbRunFeed
from edge.rooms.gb_source import GbRoomChannel
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.prerequisites import require
from tests.rooms.conftest import HAVE_FFMPEG, STATION, LedgerWatch, ffprobe_json, rooms_config

FRAME = 3600
IDR = b"\x00\x00\x00\x01\x65\x88" + b"\x11" * 600
SLICE = b"\x00\x00\x00\x01\x41\x9a" + b"\x22" * 300


class ScriptedReader:
    """A live channel's consumer that gives `chunks`, then its end."""

    def __init__(self, chunks: list[bytes], end: str = "the live stream stopped") -> None:
        self._chunks = deque(chunks)
        self._end = end
        self.ended: str | None = None
        self.cut_off = False
        self.closed = False

    async def read(self) -> bytes:
        await asyncio.sleep(0)
        if not self._chunks:
            self.ended = self._end
            return b""
        return self._chunks.popleft()

    def close(self) -> None:
        self.closed = True

    @property
    def remaining(self) -> int:
        return len(self._chunks)


def _stream(seconds: float, *, audio: bool) -> list[bytes]:
    """A camera's PS, one chunk per 40 ms frame: a key frame a second, 40 ms of G.711A with each."""
    muxer = PsMuxer(Codec.H264, Codec.G711A if audio else None)
    chunks = []
    for frame in range(round(seconds * 25)):
        pts = 90000 + frame * FRAME
        chunk = muxer.video_frame(IDR if frame % 25 == 0 else SLICE, pts, key=frame % 25 == 0)
        if audio:
            chunk += muxer.audio_frame(b"\x2a" * 320, pts)
        chunks.append(chunk)
    return chunks


def _resolve(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _drain(fd: int, into: bytearray, until: asyncio.Event) -> None:
    """What ffmpeg would do: read the pipe to its end."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            if until.is_set():
                return
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _resolve, ready)
            try:
                await asyncio.wait_for(ready, 0.2)
            except TimeoutError:
                pass
            finally:
                loop.remove_reader(fd)
            continue
        if not data:
            return
        into += data


async def pump_both_pipes(feed: GbRunFeed) -> tuple[bytes, bytes]:
    """A prepared feed with sound pumped to its end, both pipes read as ffmpeg would: (video, sound)."""
    assert len(feed.pass_fds) == 2
    video, sound, never = bytearray(), bytearray(), asyncio.Event()
    try:
        readers = [asyncio.create_task(_drain(fd, out, never))
                   for fd, out in zip(feed.pass_fds, (video, sound), strict=True)]
        await asyncio.wait_for(feed.pump(), 60)
        await asyncio.wait_for(asyncio.gather(*readers), 60)
    finally:
        feed.close()
    return bytes(video), bytes(sound)


async def record_a_law_sound(chunks: list[bytes]) -> tuple[bytes, GbRunFeed, list[AudioGapEvent]]:
    """A camera's stream (its PSM lists A-law sound) through a feed to its end: the sound pipe's bytes, the
    feed, and the audio gap events it reported."""
    events: list[AudioGapEvent] = []
    feed = GbRunFeed(ScriptedReader(chunks), what="test channel", on_audio_gap=events.append)
    await feed.prepare()
    assert feed.audio_codec is Codec.G711A and len(feed.pass_fds) == 2
    _, sound = await pump_both_pipes(feed)
    return sound, feed, events


async def test_video_and_sound_go_to_their_own_pipes_and_end_with_the_channel() -> None:
    chunks = _stream(30.0, audio=True)
    reader = ScriptedReader(chunks)
    feed = GbRunFeed(reader, what="test channel")
    await feed.prepare()
    assert feed.audio_codec is Codec.G711A and len(feed.pass_fds) == 2
    assert [i.format for i in feed.inputs] == ["mpeg", "alaw"]
    assert [i.url for i in feed.inputs] == [f"pipe:{fd}" for fd in feed.pass_fds]
    video, sound = await pump_both_pipes(feed)  # both pipes ended: ffmpeg's inputs end
    assert feed.end_reason is None and reader.closed
    assert len(video) == sum(len(c) for c in chunks) and b"\x00\x00\x01\xc0" not in video
    assert bytes(sound) == b"\x2a" * (30 * 8000)  # every sample, none filled
    assert feed.status()["audio_filled_s"] == 0.0 and feed.status()["unlisted_audio_pes"] == 0


async def test_a_camera_without_sound_gets_one_pipe() -> None:
    feed = GbRunFeed(ScriptedReader(_stream(1.0, audio=False)), what="test channel")
    await feed.prepare()
    try:
        assert feed.audio_codec is None and len(feed.pass_fds) == 1 and feed.timeline is None
        assert [i.format for i in feed.inputs] == ["mpeg"]
    finally:
        feed.close()


async def test_sound_that_is_not_g711_is_named_and_the_run_records_video_only() -> None:
    muxer = PsMuxer(Codec.H264, Codec.AAC)  # PSM stream type 0x0f
    chunks = [muxer.video_frame(IDR, 90000, key=True) + muxer.audio_frame(b"\xff\xf1" + b"\x00" * 30, 90000)]
    feed = GbRunFeed(ScriptedReader(chunks), what="test channel")
    await feed.prepare()
    try:
        assert feed.audio_codec is None and feed.unsupported_audio is Codec.AAC
        assert len(feed.pass_fds) == 1 and feed.status()["unsupported_audio"] == "aac"
    finally:
        feed.close()


async def test_a_reader_cut_off_by_the_live_layer_ends_the_run_with_that_reason() -> None:
    too_slow = "cut off: more than 8388608 bytes behind the live stream (a consumer too slow)"
    reader = ScriptedReader(_stream(1.0, audio=True), end=too_slow)
    feed = GbRunFeed(reader, what="test channel")
    await feed.prepare()
    video, sound, never = bytearray(), bytearray(), asyncio.Event()
    readers = [asyncio.create_task(_drain(fd, out, never))
               for fd, out in zip(feed.pass_fds, (video, sound), strict=True)]
    reader.cut_off = True  # what the live layer does to a consumer too far behind
    try:
        await asyncio.wait_for(feed.pump(), 60)
        await asyncio.wait_for(asyncio.gather(*readers), 60)
    finally:
        feed.close()
    assert feed.end_reason == f"the room's ffmpeg fell behind the live stream and was {too_slow}"
    # Control: the same end without a cut-off is the channel's own, no reason of the feed's.
    plain = GbRunFeed(ScriptedReader(_stream(1.0, audio=True)), what="test channel")
    await plain.prepare()
    readers = [asyncio.create_task(_drain(fd, bytearray(), never)) for fd in plain.pass_fds]
    try:
        await asyncio.wait_for(plain.pump(), 60)
        await asyncio.wait_for(asyncio.gather(*readers), 60)
    finally:
        plain.close()
    assert plain.end_reason is None


async def test_sound_ffmpeg_does_not_take_ends_the_run_with_the_reason_and_bounded_memory() -> None:
    reader = ScriptedReader(_stream(60.0, audio=True))
    feed = GbRunFeed(reader, what="test channel")
    await feed.prepare()
    video, never = bytearray(), asyncio.Event()
    try:
        # The picture is read, the sound never (a stalled input of ffmpeg).
        pictures = asyncio.create_task(_drain(feed.pass_fds[0], video, never))
        await asyncio.wait_for(feed.pump(), 60)
        never.set()
        await asyncio.wait_for(pictures, 60)
    finally:
        feed.close()
    assert feed.end_reason is not None and feed.end_reason.startswith(f"{AUDIO_OVERFLOW_REASON}: ")
    assert "took none of the camera's sound" in feed.end_reason
    # It stopped reading the channel once the bound was passed: well before the stream's 60 s.
    assert reader.remaining > 20 * 25
    assert feed.timeline is not None and feed.timeline.seconds() <= (AUDIO_QUEUE_BYTES + 2 * 65536) / 8000 + 1


# -- in a session: sound that is not G.711 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def h264_units(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[bytes, bool]]:
    """3 s of real H.264 (25 fps, a key frame a second) as access units."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    path = tmp_path_factory.mktemp("gb-feed") / "v.h264"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "3",
                    "-c:v", "libx264", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p", "-f", "h264",
                    str(path)], check=True, timeout=120)
    listed = subprocess.run(["ffprobe", "-v", "error", "-f", "h264", "-show_entries", "packet=size,pos,flags",
                             "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True,
                            timeout=60).stdout.split()
    data = path.read_bytes()
    units = []
    for line in listed:
        size, pos, flags = line.split(",")[:3]
        units.append((data[int(pos):int(pos) + int(size)], "K" in flags))
    return units


@pytest.mark.usefixtures("ffmpeg")
async def test_sound_that_is_not_g711_is_one_error_entry_a_session_and_the_picture_records(
    h264_units: list[tuple[bytes, bool]], store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def aac_camera() -> list[bytes]:  # a camera whose PSM says AAC (0x0f): each run reads it anew
        muxer = PsMuxer(Codec.H264, Codec.AAC)
        return [muxer.video_frame(unit, 90000 + i * FRAME, key=key)
                + muxer.audio_frame(b"\xff\xf1" + b"\x00" * 30, 90000 + i * FRAME)
                for i, (unit, key) in enumerate(h264_units)]

    async def ready(channel: GbRoomChannel, on_audio_gap: Callable[[AudioGapEvent], None]) -> GbRunFeed:
        feed = GbRunFeed(ScriptedReader(aac_camera()), what=repr(channel), on_audio_gap=on_audio_gap)
        await feed.prepare()
        return feed

    monkeypatch.setattr(GbRoomChannel, "ready", ready)
    config = rooms_config({"id": "gb", "name": "IPC", "gb28181": {"device_id": "34020000001320000051",
                                                                  "channel_id": "34020000001310000051"}})
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A1", "collector": "张三", "subject": "询问过程",
                                  "persons": [{"name": "李四", "role": "被询问人"}]},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:  # each run's stream ends after 3 s (a gap), the next run reads the camera again
        await watch.until(lambda: recording.sources["gb"].runs >= 2
                          and len(watch.of("segment_sealed", source="gb")) >= 2, 90)
    finally:
        recording.stop()
        await task
    (noted,) = [e for e in watch.of("error") if e.data.get("stage") == "room gb audio"]  # once a session
    assert noted.data["audio_codec"] == "aac" and noted.data["source"] == "gb"
    assert "the camera's sound (aac) is not recorded" in noted.data["reason"]
    assert recording.sources["gb"].coding == ("copy", "none")
    sealed = watch.of("segment_sealed", source="gb")
    record = IngestRepository(store).item(str(sealed[0].item))
    assert record is not None and record.path is not None
    probed = ffprobe_json(store.layout.root / record.path)
    assert [s["codec_type"] for s in probed["streams"]] == ["video"]


async def test_audio_of_a_stream_the_psm_does_not_list_is_counted_and_dropped() -> None:
    muxer = PsMuxer(Codec.H264, Codec.G711A)
    chunks = []
    for frame in range(50):  # 2 s: each picture's sound also sent as stream 0xC1, which the PSM does not list
        pts = 90000 + frame * FRAME
        chunk = muxer.video_frame(IDR if frame % 25 == 0 else SLICE, pts, key=frame % 25 == 0)
        chunk += muxer.audio_frame(b"\x55" * 320, pts).replace(b"\x00\x00\x01\xc0", b"\x00\x00\x01\xc1")
        chunks.append(chunk + muxer.audio_frame(b"\x2a" * 320, pts))
    feed = GbRunFeed(ScriptedReader(chunks), what="test channel")
    await feed.prepare()
    _, sound = await pump_both_pipes(feed)
    assert bytes(sound) == b"\x2a" * (2 * 8000) and feed.status()["unlisted_audio_pes"] == 50
