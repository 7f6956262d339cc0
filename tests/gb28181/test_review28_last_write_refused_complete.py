"""Review 28: a Download whose device ended it (MediaStatus 121, or its BYE) is judged complete by the
scheduler (`completeness`: `device_ended` reads the session's end reason first) from what the receiver
*received*: the video span and the bytes (`outcome.bytes`). The receiver writes its last buffered bytes
(up to FLUSH_BYTES, 256 KiB: about a second of video) only when it is closed (`MediaReceiver._finish`),
after the 121; if that write is refused (ENOSPC: the disk filled by something else after the guard's last
look, which the README's known limits allow; or EIO), the receiver's outcome says `disk-full` or `error`
but the session's end reason is still the device's, so the copy is judged and sealed `complete`, never
downloaded again, while its raw PS lacks the recording's end. (A write refused mid-stream ends the
receiver first, and the session `media ended` with it: that is judged incomplete.)

Real ffmpeg-made H.264 muxed into PS, RTP over a real TCP connection into a real receiver, closed as the
session closes it after a 121 (`drain`, then `close`); the disk filling between the guard's last look and
the last write is the receiver's `_write_all` seam (the guard's own writes go through). The verdict is the
scheduler's own `completeness` over the `SessionResult` the platform builds. Control: the same transfer
with the last write taken is complete, its file holding every byte received."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
from edge.gb28181.media import EndReason, MediaOutcome
from tests.gb28181.disk_rig import measured, receive_after_121, short_recording

SSRC = 1100000281
PORTS = (34000, 34999)


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return short_recording(tmp_path_factory.mktemp("src"), SSRC)


async def _after_121(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch,
                     last_write: int | None) -> tuple[MediaOutcome, int, dict[str, object]]:
    """The device sends the recording and keeps its connection (it says 121 over SIP); the session drains
    the receiver and closes it. `last_write`: an errno refusing the write `_finish` makes (None: taken).
    Returns the receiver's outcome, the raw PS's size, and the scheduler's verdict."""
    real_write_all = media_module._write_all

    def last_write_refused(fd: int, data: bytes | bytearray) -> None:
        assert last_write is not None
        real_write_all(fd, bytes(data[:len(data) // 2]))  # what still fitted
        raise OSError(last_write, os.strerror(last_write))

    # the writes the guard looks after: the disk had room
    monkeypatch.setattr(media_module, "_write_and_measure", measured(real_write_all))
    if last_write is not None:
        monkeypatch.setattr(media_module, "_write_all", last_write_refused)
    raw = tmp_path / "download.ps"
    outcome, verdict = await receive_after_121(raw, packets, ssrc=SSRC, ports=PORTS,
                                               call_id="review28@station")
    return outcome, raw.stat().st_size, verdict


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
async def test_a_copy_whose_last_write_was_refused_is_not_sealed_complete(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    outcome, written, verdict = await _after_121(tmp_path, packets, monkeypatch, error)
    assert outcome.ended in (EndReason.DISK_FULL, EndReason.ERROR), outcome.ended
    assert written < outcome.bytes, "the raw PS lacks the bytes the refused write held"
    assert outcome.bytes_written == written  # the outcome says what the file holds, not what came
    assert verdict["complete"] is False, (
        f"the last write of the raw PS was refused ({os.strerror(error)}: receiver ended "
        f"{outcome.ended.value}, {outcome.detail!r}); the file holds {written} of the {outcome.bytes} bytes "
        f"received, yet the scheduler judged the download complete ({verdict}): sealed `complete`, never "
        "downloaded again, its end missing")


async def test_control_with_the_last_write_taken_it_is_complete_and_whole(
        tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, written, verdict = await _after_121(tmp_path, packets, monkeypatch, None)
    assert written == outcome.bytes == outcome.bytes_written and verdict["complete"] is True, (outcome.ended,
                                                                                               verdict)
