"""Review 29: review 26 made a raw PS write refused for a full disk (ENOSPC, EDQUOT) end the transfer
`disk-full`, "no fault of the recording" (the scheduler's `_interruption` reads the receiver's `ended`,
counted toward no give-up but `stuck_disk_full`'s), and review 28 made `_finish`'s own refused last write
say so too (it sets `ended`). But the write that is *in flight* when the session ends (a device closing
its TCP media connection right after its last packet; a session closed after 121 while the disk is slow)
fails in `MediaReceiver._flushed`, whose `_end(...)` is a no-op once the session has ended: `ended` stays
`closed`, the copy is judged incomplete ("the raw PS holds X of Y") and not interrupted, so it counts
toward MAX_INCOMPLETE_ATTEMPTS (3): three such disk refusals and the recording is given up for good, as if
the recording were at fault, though a refusal by the station's disk is what review 26 said never counts.

Real ffmpeg-made H.264 in PS, RTP over a real TCP connection the device closes after its last packet, a
real receiver; the disk's refusal is the receiver's `_write_and_measure` seam (its first write is slow:
it completes after the device has closed, and the disk is full by then). The classification is the
scheduler's own `_interruption`. Control: the same refusal met by the write `_finish` makes (nothing in
flight) is `disk-full`, an interruption."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import edge.gb28181.media as media_module
from drivers.gb28181.ps import Codec
from edge.gb28181.media import (
    FLUSH_BYTES,
    EndReason,
    MediaOutcome,
    MediaReceiver,
    MediaTransport,
    receiver_keeping_free,
)
from edge.gb28181.sessions import EndReason as SessionEnd
from edge.gb28181.sessions import SessionResult
from edge.sources.gb28181.recordings import INTERRUPTED_DISK_FULL
from edge.sources.gb28181.scheduler import GbDownloadScheduler
from tests.gb28181.media_sender import HAVE_FFMPEG, make_source, ps_packs, rtp_packets, send_tcp
from tests.gb28181.test_source_downloads import DEVICE
from tests.prerequisites import require

SSRC = 1100000291
PORTS = (34000, 34999)


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    packs = ps_packs(make_source(tmp_path_factory.mktemp("src"), Codec.H264, seconds=20, bitrate="4M"))
    assert sum(len(p) for p, _ in packs) > 2 * FLUSH_BYTES, "a write must be in flight while it streams"
    return rtp_packets(packs, ssrc=SSRC)


def _refused() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def _transfer(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch,
                    in_flight: bool) -> MediaOutcome:
    """The device streams the recording and closes its TCP connection. `in_flight`: the receiver's first
    write (handed to its worker thread) completes only after the session ended, refused ENOSPC; else the
    write during the stream is taken once the session ended and the write `_finish` makes is refused."""
    real_write_all = media_module._write_all
    box: list[MediaReceiver] = []

    def slow_then_full(fd: int, data: bytes | bytearray) -> int:
        deadline = time.monotonic() + 120.0
        while box[0]._ended is None and time.monotonic() < deadline:  # the disk is slow ...
            time.sleep(0.01)
        real_write_all(fd, bytes(data[:len(data) // 2]))  # ... and full when it gets there
        raise _refused()

    def taken(fd: int, data: bytes | bytearray) -> int:
        # Held until the stream has ended, so the rest of the stream waits in the buffer and `_finish` makes
        # the last write; without the hold a loaded machine's one late flush could take every byte, leaving
        # `_finish` nothing to write (and this control no refusal to classify).
        deadline = time.monotonic() + 120.0
        while box[0]._ended is None and time.monotonic() < deadline:
            time.sleep(0.01)
        real_write_all(fd, data)
        stats = os.fstatvfs(fd)
        return stats.f_bavail * stats.f_frsize

    def last_write_refused(fd: int, data: bytes | bytearray) -> None:
        real_write_all(fd, bytes(data[:len(data) // 2]))
        raise _refused()

    if in_flight:
        monkeypatch.setattr(media_module, "_write_and_measure", slow_then_full)
    else:
        monkeypatch.setattr(media_module, "_write_and_measure", taken)
        monkeypatch.setattr(media_module, "_write_all", last_write_refused)
    receiver = await receiver_keeping_free(1)(
        MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
        raw_path=tmp_path / "download.ps", idle_timeout_s=60.0, max_bytes=1 << 30, expected_peer_host=None,
        max_media_span_s=None, time_limit_s=None, progress_window_s=None, min_progress_s=None,
        max_buffered_bytes=64 << 20)
    box.append(receiver)
    await send_tcp(packets, receiver.local_port)  # then the device closes its connection
    return await receiver.wait_closed()


def _interruption(outcome: MediaOutcome) -> str | None:
    """The scheduler's own classification, the device still online and the station not stopping."""
    scheduler = SimpleNamespace(platform=SimpleNamespace(registry={DEVICE: SimpleNamespace(online=True)}))
    result = SessionResult(call_id="review29@station", end_reason=SessionEnd.DEVICE_BYE, ssrc_offered=SSRC,
                           ssrc_answered=SSRC, ssrc_answer_text=str(SSRC), ssrc_used=SSRC,
                           file_size_bytes=None, outcome=outcome)
    return GbDownloadScheduler._interruption(scheduler, DEVICE, result)  # type: ignore[arg-type]


async def test_a_write_refused_in_flight_as_the_session_ends_is_disk_full(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await _transfer(tmp_path, packets, monkeypatch, in_flight=True)
    # the fault as modelled: the disk refused a write, the file holds less than came
    assert outcome.bytes_written is not None and outcome.bytes_written < outcome.bytes, outcome
    interrupted = _interruption(outcome)
    assert outcome.ended is EndReason.DISK_FULL and interrupted == INTERRUPTED_DISK_FULL, (
        f"the station's disk refused the raw PS write in flight when the device closed its connection "
        f"(ENOSPC; the file holds {outcome.bytes_written} of {outcome.bytes} bytes), yet the receiver ended "
        f"{outcome.ended.value!r} ({outcome.detail!r}) and the scheduler's `_interruption` says "
        f"{interrupted!r} (the outcome names no refusal at all): the copy counts as the recording's own "
        "incomplete try, and three such refusals give the recording up for good")


async def test_control_the_same_refusal_by_the_last_write_is_disk_full(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await _transfer(tmp_path, packets, monkeypatch, in_flight=False)
    assert outcome.bytes_written is not None and outcome.bytes_written < outcome.bytes, outcome
    assert outcome.ended is EndReason.DISK_FULL and _interruption(outcome) == INTERRUPTED_DISK_FULL, outcome
