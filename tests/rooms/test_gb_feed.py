"""One run's feed from a GB/T 28181 channel (edge.rooms.gb_feed) over real pipes, with a reader in place of
the live layer's (the same interface): the program stream goes to one pipe byte for byte with its audio made
padding, the camera's G.711A to the other as raw samples; a PSM without audio makes one pipe only, as
does sound that is not G.711 (named); an ffmpeg that takes none of the sound ends the run with that
reason and bounded memory (the control: one that reads everything gets it all and the run ends only with
the channel); a reader the live layer cut off ends the run with that reason (control: a plain end has
none)."""

from __future__ import annotations

import asyncio
import os
from collections import deque

from drivers.gb28181.ps import Codec, PsMuxer
from edge.rooms.gb_feed import AUDIO_OVERFLOW_REASON, AUDIO_QUEUE_BYTES, GbRunFeed

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


async def test_video_and_sound_go_to_their_own_pipes_and_end_with_the_channel() -> None:
    chunks = _stream(30.0, audio=True)
    reader = ScriptedReader(chunks)
    feed = GbRunFeed(reader, what="test channel")
    await feed.prepare()
    assert feed.audio_codec is Codec.G711A and len(feed.pass_fds) == 2
    assert [i.format for i in feed.inputs] == ["mpeg", "alaw"]
    assert [i.url for i in feed.inputs] == [f"pipe:{fd}" for fd in feed.pass_fds]
    video, sound, never = bytearray(), bytearray(), asyncio.Event()
    try:
        readers = [asyncio.create_task(_drain(fd, out, never))
                   for fd, out in zip(feed.pass_fds, (video, sound), strict=True)]
        await asyncio.wait_for(feed.pump(), 60)
        await asyncio.wait_for(asyncio.gather(*readers), 60)  # both pipes ended: ffmpeg's inputs end
    finally:
        feed.close()
    assert feed.end_reason is None and reader.closed
    assert len(video) == sum(len(c) for c in chunks) and b"\x00\x00\x01\xc0" not in video
    assert bytes(sound) == b"\x2a" * (30 * 8000)  # every sample, none filled
    assert feed.status()["audio_filled_s"] == 0.0


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
