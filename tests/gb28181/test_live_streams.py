"""Live Play as a recordable stream (edge.gb28181.live) over real sockets: the real platform and media
receiver, the real device simulator streaming PS over RTP, real ffmpeg reading the channel's Unix socket.

One Play per channel shared by its consumers; each consumer starts at a key frame; a slow consumer is cut
off and the others go on; the device dying mid-stream or going offline is an interruption (event and
ledger) and the stream resumes on a new INVITE; the last consumer leaving ends the Play with a BYE the
device sees; the socket is 0600 in a 0700 directory; ids that are not 20 digits are refused."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from edge.gb28181.live import LiveError, LiveEventKind, key_pack_at
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import CHANNEL, DEVICE, PACK_HEADER, live_env, make_recording, next_event, read_at_least


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("live"), bitrate="1500k")


def frames_of(path: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=nb_read_frames,codec_name", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout
    stream = json.loads(out)["streams"][0]
    assert stream["codec_name"] == "h264"
    return int(stream["nb_read_frames"])


def starts_at_key_frame(data: bytes) -> bool:
    at, _ = key_pack_at(data)
    return at == 0

# Tests of a steady stream: a loaded machine may pause the simulator's pacing for more than a second,
# which the default 1 s idle timeout of the rig would take for the device going away.
STEADY_IDLE_S = 8.0


async def test_ffmpeg_reads_the_channel_socket_into_an_mp4_segment(media: Path, tmp_path: Path) -> None:
    async with live_env(media, idle_timeout_s=STEADY_IDLE_S) as env:
        await env.device()
        async with env.open() as handle:
            path = handle.socket_path
            assert path == env.socket_dir / f"{DEVICE}-{CHANNEL}.sock"
            assert not handle.streaming
            await handle.wait_streaming()  # as a recorder would, before it starts ffmpeg
            out = tmp_path / "segments"
            out.mkdir()
            ffmpeg = await asyncio.create_subprocess_exec(
                "ffmpeg", "-v", "error", "-nostdin", "-f", "mpeg", "-i", f"unix:{path}", "-t", "3",
                "-map", "0:v", "-c", "copy", "-f", "segment", "-segment_time", "10", "-segment_format", "mp4",
                "-reset_timestamps", "1", str(out / "seg%03d.mp4"), stderr=asyncio.subprocess.PIPE)
            async with asyncio.timeout(60):
                _, err = await ffmpeg.communicate()
            assert ffmpeg.returncode == 0, err.decode(errors="replace")
            assert handle.state == "streaming"
        segments = sorted(out.glob("seg*.mp4"))
        assert segments, "ffmpeg wrote no segment"
        assert frames_of(segments[0]) >= 15  # 3 s at 10 frames/s, give or take the join at a key frame
        (started,) = env.ledger_live("started")
        assert (started["device_id"], started["channel_id"]) == (DEVICE, CHANNEL)
        assert started["source"] == "gb28181"


async def test_two_consumers_get_the_same_bytes_from_one_play(media: Path) -> None:
    async with live_env(media, idle_timeout_s=STEADY_IDLE_S) as env:
        device = await env.device()
        async with env.open() as handle:
            first_reader, first_writer = await asyncio.open_unix_connection(str(handle.socket_path))
            second_reader, second_writer = await asyncio.open_unix_connection(str(handle.socket_path))
            in_process = handle.reader()
            first, second = await asyncio.gather(read_at_least(first_reader, 200_000),
                                                 read_at_least(second_reader, 200_000))
            third = bytearray()
            async with asyncio.timeout(30):
                while len(third) < 100_000:
                    third += await in_process.read()
            view = env.live.snapshot()[DEVICE][0]
            assert view["channel_id"] == CHANNEL and view["state"] == "streaming"
            assert view["consumers"] == 3 and view["connections"] == 2 and view["holders"] == 3
            assert view["interruptions"] == 0 and view["since"] and view["streaming_since"]
            # One Play for three consumers: the device has one session.
            assert len(device.sessions) == 1
            for writer in (first_writer, second_writer):
                writer.close()
        for data in (first, second, bytes(third)):
            assert starts_at_key_frame(data), data[:32].hex()
        # Each joined at a key frame; from where the later one joined, the bytes are the same.
        shorter, longer = sorted((first, second), key=len)
        at = longer.find(shorter[:4096])
        assert at >= 0
        overlap = min(len(shorter), len(longer) - at)
        assert overlap > 100_000 and longer[at:at + overlap] == shorter[:overlap]
        at = first.find(bytes(third[:4096]))
        if at < 0:  # the in-process reader joined later than the first socket: the other way round
            assert bytes(third).find(first[:4096]) >= 0
        else:
            overlap = min(len(third), len(first) - at)
            assert first[at:at + overlap] == bytes(third[:overlap])


async def test_a_slow_consumer_is_cut_off_and_the_others_go_on(media: Path) -> None:
    async with live_env(media, consumer_buffer_bytes=64 * 1024) as env:
        await env.device()
        async with env.open() as handle:
            # The slow consumer: connected, never reads (its kernel buffer and ours fill up).
            slow_reader, slow_writer = await asyncio.open_unix_connection(str(handle.socket_path))
            normal_reader, normal_writer = await asyncio.open_unix_connection(str(handle.socket_path))
            received = bytearray()

            async def keep_reading() -> None:
                while chunk := await normal_reader.read(65536):
                    received.extend(chunk)

            normal = asyncio.ensure_future(keep_reading())
            cut = await next_event(handle, LiveEventKind.CONSUMER_CUT_OFF)
            assert "socket connection was cut off: more than 65536 bytes behind" in cut.reason
            at_cut = len(received)
            # The control: the normal consumer keeps receiving after the cut-off, from the same Play.
            async with asyncio.timeout(20):
                while len(received) < at_cut + 200_000:
                    await asyncio.sleep(0.05)
            assert not normal.done()
            # The slow one's connection was closed: what it did not read ends (reset or end of file).
            async with asyncio.timeout(20):
                try:
                    while await slow_reader.read(1 << 20):
                        pass
                except ConnectionError:
                    pass
            view = env.live.snapshot()[DEVICE][0]
            assert view["consumers_cut_off"] == 1 and view["connections"] == 1
            normal.cancel()
            for writer in (slow_writer, normal_writer):
                writer.close()
        (entry,) = [data for kind, data in env.ledger.entries
                    if kind == "error" and data.get("stage") == "gb28181-live"]
        assert entry["consumer"] == "socket connection" and "behind" in entry["reason"]


async def test_a_reader_that_does_not_read_is_cut_off_without_growing(media: Path) -> None:
    async with live_env(media) as env:
        await env.device()
        async with env.open() as handle:
            idle = handle.reader(buffer_bytes=32 * 1024)
            control = handle.reader(buffer_bytes=32 * 1024)
            taken = 0
            async with asyncio.timeout(30):
                while not idle.cut_off:
                    taken += len(await control.read())  # keeps up: never cut off
                    assert idle.buffered_bytes <= 32 * 1024
            assert idle.ended is not None and "behind" in idle.ended and idle.buffered_bytes == 0
            assert await idle.read() == b""
            assert control.ended is None and not control.cut_off and taken > 0


async def test_the_device_dying_mid_stream_is_an_interruption_and_the_stream_resumes(
        media: Path) -> None:
    async with live_env(media) as env:
        await env.device("die-mid-stream")
        async with env.open() as handle:
            first = handle.reader()
            await next_event(handle, LiveEventKind.STARTED)
            before = bytearray()
            while chunk := await first.read():  # the first stretch, to the interruption
                before += chunk
            assert first.ended is not None and first.ended.startswith("interrupted: the media ended (idle")
            interrupted = await next_event(handle, LiveEventKind.INTERRUPTED)
            assert interrupted.interruption is not None and interrupted.interruption.ended_at is None
            assert "idle" in interrupted.reason
            resumed = await next_event(handle, LiveEventKind.RESUMED)
            gap = resumed.interruption
            assert gap is not None and gap.ended_at is not None
            assert gap.began_at == interrupted.interruption.began_at and gap.began_at < gap.ended_at
            assert gap.reason == interrupted.reason
            await handle.wait_streaming()
            second = handle.reader()
            after = await second.read()
            assert starts_at_key_frame(bytes(before)) and len(before) > 10_000
            # The device's next stream: our new consumer starts at its first key frame.
            while not starts_at_key_frame(after) and not after.startswith(PACK_HEADER):
                after += await second.read()
            assert starts_at_key_frame(after)
            assert handle.interruptions[0].ended_at == gap.ended_at
        (gap_entry, *_) = env.ledger_live("interrupted")
        assert gap_entry["from"] == gap.began_at and "idle" in gap_entry["reason"]
        (resumed_entry, *_) = env.ledger_live("resumed")
        assert (resumed_entry["from"], resumed_entry["to"]) == (gap.began_at, gap.ended_at)
        # A new Play each time: the device saw more than one INVITE.
        assert len(env.devices[0].finished_sessions) >= 1


async def test_the_device_going_offline_and_back_interrupts_and_resumes_at_once(media: Path) -> None:
    # The media idle timeout is longer than the device takes to unregister, and the first retry is later
    # than the test waits: only the device coming online again can start the Play again in time.
    async with live_env(media, idle_timeout_s=20.0, retry_min_s=60.0, retry_max_s=60.0) as env:
        device = await env.device()
        async with env.open() as handle:
            await next_event(handle, LiveEventKind.STARTED)
            await device.close()  # unregisters (Expires: 0): the platform takes it offline
            interrupted = await next_event(handle, LiveEventKind.INTERRUPTED, timeout_s=10)
            assert interrupted.reason == "the device went offline"
            await env.device()  # the same device registers again
            resumed = await next_event(handle, LiveEventKind.RESUMED, timeout_s=15)
            assert resumed.interruption is not None
            assert resumed.interruption.reason == "the device went offline"
            reader = handle.reader()
            assert len(await reader.read()) > 0


async def test_the_last_consumer_leaving_stops_the_play_with_a_bye(media: Path) -> None:
    async with live_env(media) as env:
        device = await env.device()
        async with env.open() as handle:
            await next_event(handle, LiveEventKind.STARTED)
            _, writer = await asyncio.open_unix_connection(str(handle.socket_path))
            async with asyncio.timeout(10):
                while env.live.snapshot()[DEVICE][0]["connections"] != 1:
                    await asyncio.sleep(0.01)
            socket_path = handle.socket_path
        # The handle left, the connection still holds the channel: the Play goes on (no linger began).
        view = env.live.snapshot()[DEVICE][0]
        assert view["state"] == "streaming" and view["holders"] == 1
        assert len(device.sessions) == 1
        (session,) = device.sessions.values()
        writer.close()
        async with asyncio.timeout(20):
            await session.ended.wait()
        assert session.bye_received  # the device saw the platform's BYE
        async with asyncio.timeout(10):
            while env.live.snapshot():
                await asyncio.sleep(0.01)
        assert not socket_path.exists()
        (stopped,) = env.ledger_live("stopped")
        assert stopped["reason"] == "no consumer left" and stopped["started"] is True
        stop_events = [e for e in env.events if e.kind is LiveEventKind.STOPPED]
        assert [e.reason for e in stop_events] == ["no consumer left"]


async def test_the_socket_is_the_agents_alone(media: Path) -> None:
    async with live_env(media) as env, env.open() as handle:
        facts = os.lstat(handle.socket_path)
        assert stat.S_ISSOCK(facts.st_mode) and stat.S_IMODE(facts.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(env.socket_dir).st_mode) == 0o700  # made by the agent
        assert facts.st_uid == os.geteuid()


async def test_an_open_socket_directory_the_agent_did_not_make_is_refused_not_chmoded(media: Path) -> None:
    """Review 19: it may be the runtime directory, whose 0755 lets the operators reach the API socket."""
    async with live_env(media) as env:
        env.socket_dir.mkdir(mode=0o755)
        os.chmod(env.socket_dir, 0o755)  # as an operator may have made it
        with pytest.raises(LiveError, match=r"is open to other users \(mode 0755\)"):
            async with env.open():
                pass
        assert stat.S_IMODE(os.stat(env.socket_dir).st_mode) == 0o755 and env.live.snapshot() == {}
        # The control: the same directory made 0700 by the operator is used as it is.
        os.chmod(env.socket_dir, 0o700)
        async with env.open() as handle:
            assert stat.S_ISSOCK(os.lstat(handle.socket_path).st_mode)


async def test_something_else_at_the_socket_path_is_refused_a_stale_socket_replaced(media: Path) -> None:
    async with live_env(media) as env:
        path = env.live.socket_path(DEVICE, CHANNEL)
        env.socket_dir.mkdir(mode=0o700)
        path.write_text("not a socket")
        with pytest.raises(LiveError, match="exists and is not a socket"):
            async with env.open():
                pass
        assert path.read_text() == "not a socket" and env.live.snapshot() == {}
        # The control: a socket a stopped agent left behind is replaced.
        path.unlink()
        import socket as socket_module
        stale = socket_module.socket(socket_module.AF_UNIX)
        stale.bind(str(path))
        stale.close()
        async with env.open() as handle:
            _, writer = await asyncio.open_unix_connection(str(handle.socket_path))
            writer.close()


@pytest.mark.parametrize("device_id", [
    "3402000000132000005",  # 19 digits
    "340200000013200000511",  # 21
    "../../../../tmp/x00000",
    "3402000000132000005\n",
    "３４０２００００００１３２００００５１",  # full-width digits are digits to str.isdigit, not to us
    "",
])
async def test_a_device_id_that_is_not_20_digits_is_refused(media: Path, device_id: str) -> None:
    async with live_env(media) as env:
        with pytest.raises(LiveError, match=r"device id .* is not 20 digits"):
            env.live.open(device_id, CHANNEL)
        with pytest.raises(LiveError, match=r"channel id .* is not 20 digits"):
            env.live.open(DEVICE, device_id)
        assert not env.socket_dir.exists() and env.live.snapshot() == {}
        # The control: the same call with valid ids opens the channel and its socket.
        async with env.live.open(DEVICE, CHANNEL) as handle:
            assert handle.socket_path.exists()


async def test_a_consumer_back_within_the_linger_keeps_the_same_play(media: Path) -> None:
    async with live_env(media, linger_s=30.0) as env:
        device = await env.device()
        async with env.open() as handle:
            await next_event(handle, LiveEventKind.STARTED)
            (call_id,) = device.sessions
        # Left: the Play lingers (a recorder restarting its ffmpeg) and a new holder gets it, no new INVITE.
        assert env.live.snapshot()[DEVICE][0]["holders"] == 0
        async with env.open() as again:
            assert again.streaming  # joined a Play that is up: no `started` event for it, the state says so
            await again.wait_streaming()
            reader = again.reader()
            assert len(await reader.read()) > 0
            assert list(device.sessions) == [call_id] and len(device.finished_sessions) == 0
        assert env.ledger_live("stopped") == [] and len(env.ledger_live("started")) == 1


async def test_an_unknown_media_transport_is_refused(media: Path) -> None:
    async with live_env(media) as env:
        with pytest.raises(LiveError, match="media transport 'rtsp' is not one of"):
            env.live.open(DEVICE, CHANNEL, transport="rtsp")
        async with env.live.open(DEVICE, CHANNEL, transport="tcp-active") as handle:  # the control
            assert handle.transport == "tcp-active"


async def ffmpeg_segments(socket_path: Path, out: Path) -> tuple[int, str]:
    """ffmpeg recording the socket into 10 s MP4 segments until its input ends (as the rooms' capture)."""
    out.mkdir()
    ffmpeg = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-nostdin", "-f", "mpeg", "-i", f"unix:{socket_path}", "-map", "0:v",
        "-c", "copy", "-f", "segment", "-segment_time", "10", "-segment_format", "mp4", "-reset_timestamps",
        "1", str(out / "seg%03d.mp4"), stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        _, err = await ffmpeg.communicate()
    assert ffmpeg.returncode is not None
    return ffmpeg.returncode, err.decode(errors="replace")


async def test_ffmpeg_on_the_socket_ends_its_segment_cleanly_at_an_interruption_and_records_again(
        media: Path, tmp_path: Path) -> None:
    async with live_env(media) as env:
        await env.device("die-mid-stream")
        async with env.open() as handle:
            await handle.wait_streaming()
            code, err = await ffmpeg_segments(handle.socket_path, tmp_path / "before")
            assert code == 0, err  # the connection closed at the interruption: the end of its input
            interrupted = await next_event(handle, LiveEventKind.INTERRUPTED)
            await handle.wait_streaming()  # resumed: the recorder starts ffmpeg again
            code, err = await ffmpeg_segments(handle.socket_path, tmp_path / "after")
            assert code == 0, err
            resumed = await next_event(handle, LiveEventKind.RESUMED)
            assert resumed.interruption is not None and interrupted.interruption is not None
            assert resumed.interruption.began_at == interrupted.interruption.began_at
        for run in ("before", "after"):
            (segment,) = sorted((tmp_path / run).glob("seg*.mp4"))
            assert frames_of(segment) >= 5, run  # the device dies after about 2 s of 10 frames/s
