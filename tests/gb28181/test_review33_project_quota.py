"""Review 33, finding 5: with an XFS project quota on the spool, the receiver's free-space guard cannot see
the quota.

XFS answers statfs(2) with the project's limit and usage only for an inode carrying the project-inherit flag,
which is on directories (`xfs_quota -x -c 'project -s'` sets it on the tree); a regular file answers with the
whole file system's. The receiver measured its raw file (fstatvfs on the file's descriptor): the guard saw the
file system's room, never stopped, and the copy ran into the quota's refusal (ENOSPC), whose reading, of the
file too, showed room: taken for a quota that refuses every try (`refused_with_room`), while the downloads'
`_tight_for` (statvfs on the spool directory) saw the project full. Measured at the spool directory, the
guard stops in time, and the refusal's reading agrees with the guard and with `_tight_for`.

Real ffmpeg-made H.264 muxed into PS, RTP over a real TCP connection, a real receiver; the file system's
answers are modelled at the OS interface the station calls: `os.statvfs` / `os.fstatvfs` answer a directory
in the spool with the project's room and anything else with the file system's, and a write past the
project's limit takes what fits, then fails ENOSPC (the receiver's `_write_all` seam, as write(2) does).
Controls: with room in the project the download is whole; a quota the directory does not report (a user
quota) still reads as room."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

import pytest

import edge.gb28181.media as media_module
from edge.gb28181.media import FLUSH_BYTES, EndReason, MediaOutcome, MediaTransport, receiver_keeping_free
from tests.gb28181.media_sender import send_tcp
from tests.gb28181.test_refused_write_retry import PORTS, SSRC, stream

__all__ = ["stream"]  # the refused-write tests' module fixture: a long recording
RESERVE = 1 << 20  # the store's reserve, which the receiver's guard keeps
FILE_SYSTEM_FREE = 1 << 40  # what the whole file system has free
BLOCK = 4096


class ProjectQuota:
    """An XFS project quota of `limit` bytes on the spool directory (`reported`: its statfs answers with the
    project, as XFS does for a directory with the project-inherit flag; else with the file system, as for a
    user quota)."""

    def __init__(self, spool: Path, limit: int, *, reported: bool = True) -> None:
        self.spool, self.limit, self.reported = spool, limit, reported
        self.real_write_all = media_module._write_all
        self.real_statvfs, self.real_fstatvfs = os.statvfs, os.fstatvfs

    def held(self) -> int:
        return sum(entry.stat(follow_symlinks=False).st_size for entry in os.scandir(self.spool))

    def _answer(self, in_project_directory: bool) -> os.statvfs_result:
        project = in_project_directory and self.reported
        blocks = (max(0, self.limit - self.held()) if project else FILE_SYSTEM_FREE) // BLOCK
        files = 1 << 20
        return os.statvfs_result((BLOCK, BLOCK, 2 * blocks, blocks, blocks, files, files, files, 0, 255))

    def statvfs(self, path: str | os.PathLike[str] | int) -> os.statvfs_result:
        if isinstance(path, int):
            return self.fstatvfs(path)
        resolved = Path(path).resolve()
        return self._answer(resolved.is_dir() and resolved.is_relative_to(self.spool.resolve()))

    def fstatvfs(self, fd: int) -> os.statvfs_result:
        return self._answer(stat.S_ISDIR(os.fstat(fd).st_mode))  # only our spool's descriptors get here

    def write_all(self, fd: int, data: bytes | bytearray) -> None:
        fits = min(len(data), max(0, self.limit - self.held()))
        self.real_write_all(fd, bytes(data[:fits]))
        if fits < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # XFS: a project quota is ENOSPC

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(os, "statvfs", self.statvfs)
        monkeypatch.setattr(os, "fstatvfs", self.fstatvfs)
        monkeypatch.setattr(media_module, "_write_all", self.write_all)


async def _download(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch, *, limit: int,
                    min_free_bytes: int, reported: bool = True) -> MediaOutcome:
    spool = tmp_path / "spool"
    spool.mkdir()
    ProjectQuota(spool, limit, reported=reported).install(monkeypatch)
    receiver = await receiver_keeping_free(min_free_bytes)(
        MediaTransport.TCP_PASSIVE, bind_host="127.0.0.1", port_range=PORTS, ssrc=SSRC,
        raw_path=spool / "rec.ps", idle_timeout_s=30.0, max_bytes=1 << 30, expected_peer_host=None,
        max_media_span_s=None, time_limit_s=None, progress_window_s=None, min_progress_s=None,
        max_buffered_bytes=2 * FLUSH_BYTES)
    with contextlib.suppress(ConnectionError):  # the receiver closes the connection when it stops
        await send_tcp(packets, receiver.local_port)
    return await receiver.wait_closed()


async def test_the_guard_sees_a_project_quota_on_the_spool(
        tmp_path: Path, stream: tuple[bytes, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    ps, packets = stream
    limit = RESERVE + 8 * FLUSH_BYTES
    assert len(ps) > limit
    outcome = await _download(tmp_path, packets, monkeypatch, limit=limit, min_free_bytes=RESERVE)
    assert outcome.write_refused is None, (
        f"the spool's project quota ({limit} bytes) showed in statvfs of the spool directory, yet the "
        f"receiver's guard measured the raw file (the file system's {FILE_SYSTEM_FREE} free) and the copy "
        f"ran into the quota's refusal: {outcome.write_refused}, reading {outcome.write_refused_free_bytes} "
        f"free ({outcome.detail})")
    assert outcome.ended is EndReason.DISK_FULL and "kept free" in outcome.detail, outcome.detail


async def test_control_with_room_in_the_project_the_download_is_whole(
        tmp_path: Path, stream: tuple[bytes, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    ps, packets = stream
    outcome = await _download(tmp_path, packets, monkeypatch, limit=RESERVE + 4 * len(ps) + FLUSH_BYTES,
                              min_free_bytes=RESERVE)
    assert outcome.ended is EndReason.CLOSED and outcome.bytes_written == len(ps), outcome.detail


async def test_the_refusals_reading_is_the_spool_directorys(
        tmp_path: Path, stream: tuple[bytes, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    _ps, packets = stream
    # no guard (min_free_bytes 0): the quota's refusal itself ends the copy
    outcome = await _download(tmp_path, packets, monkeypatch, limit=8 * FLUSH_BYTES, min_free_bytes=0)
    assert outcome.ended is EndReason.DISK_FULL and outcome.write_refused == "ENOSPC", outcome.detail
    assert outcome.write_refused_free_bytes is not None and outcome.write_refused_free_bytes < FLUSH_BYTES, (
        f"the project quota refused a write (ENOSPC) with the spool directory showing the project full, yet "
        f"the refusal read {outcome.write_refused_free_bytes} free, the file system's: taken for a quota "
        "statvfs does not see, refusing every try")


async def test_control_a_quota_the_directory_does_not_report_reads_as_room(
        tmp_path: Path, stream: tuple[bytes, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    _ps, packets = stream
    outcome = await _download(tmp_path, packets, monkeypatch, limit=8 * FLUSH_BYTES, min_free_bytes=0,
                              reported=False)
    assert outcome.write_refused == "ENOSPC" and outcome.write_refused_free_bytes == FILE_SYSTEM_FREE, outcome
