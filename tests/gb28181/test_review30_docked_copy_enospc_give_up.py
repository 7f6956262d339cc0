"""Review 30: since review 29 a `disk-full` copy counts toward MAX_INTERRUPTED_ATTEMPTS (`stuck_disk_full`)
when its write was refused with room showing (`refused_with_room`): EDQUOT, or ENOSPC while the statvfs the
receiver reads in `_finish`, after the refusal, shows at least FLUSH_BYTES free. But an ENOSPC on a disk a
neighbour filled shows room a moment later whenever that neighbour's own write was refused too and its
partial file removed: a body camera docking copies into the store on the same disk, its copy is refused by
the same full disk, and the pipeline unlinks its `.part` (edge.ingest.pipeline, `part.unlink` on any
failure of the copy). The statvfs after the fact reads the neighbour's room back, the copy is taken for a
quota's repeat, and after MAX_INTERRUPTED_ATTEMPTS such passes (each short of the first guard cut, a
high-water mark) the recording is given up for good though the disk is roomy and idle at the next pass.

Real media receiver with its guard, RTP over a real TCP connection, real pipeline, ffmpeg and store. The
disk is one model behind the seams that read it (`_write_and_measure`, `_free_bytes_of`, the downloads'
`free_bytes`): a level, less what the spool's files hold, less what a neighbour holds. In each busy retry
the neighbour arrives once the retry has written a few flushes (a different point each pass) and takes the
disk's last byte; the receiver's next write is refused ENOSPC, and so is the neighbour's, whose partial copy
is removed. Review 30's fix read the free space in the worker call that was refused and tried the write once
more after a short pause. Review 33 removed that retry (it sealed holes on NFS and overflowed fast UDP
downloads): a refused write ends the copy `disk-full`. The neighbour's copy, running in its own thread, is
refused on its own next write and removed after the receiver's refused call has read the disk (full); the
model now has the room come back once the session ends, not inside the refused call (a neighbour that
gives its room back within that call is taken for a quota: README, known limits). What must hold is the
same: the busy retries do not count toward a give-up, and the recording is received whole at the first
pass without the neighbour. Control: the same passes without the neighbour, the first retry receives the
recording whole with no refusal at all."""

from __future__ import annotations

import errno
import os
from dataclasses import replace
from pathlib import Path

import pytest

from edge.gb28181.media import FLUSH_BYTES, EndReason
from edge.sources.gb28181 import RecordingRef
from edge.sources.gb28181.downloads import MAX_INTERRUPTED_ATTEMPTS, ROOM_PER_BYTE_DOWNLOADED
from tests.gb28181.disk_rig import RESERVE, HonestDevice, ModelDisk, long_stream, new_spool, station_downloads
from tests.gb28181.test_review24_disk_full_give_up import RECORDING

SSRC = 1100000430
PORTS = (35000, 35999)
BUSY_PASSES = MAX_INTERRUPTED_ATTEMPTS  # retries a docked camera's copy fills the disk during


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[bytes]]:
    return long_stream(tmp_path_factory.mktemp("src"), SSRC)


class SharedDisk(ModelDisk):
    """The spool's disk, which a docked camera's copy into the store fills to its last byte once a retry has
    written `arrives_after` bytes; a write that does not fit then is refused ENOSPC."""

    def __init__(self, spool: Path, level: int) -> None:
        super().__init__(spool, level)
        self.arrives_after: int | None = None  # bytes the retry has written when the neighbour fills it
        self.arrived = 0  # times the neighbour filled the disk
        self.refusals = 0  # writes refused ENOSPC

    def write_and_measure(self, fd: int, data: bytes | bytearray) -> int:
        if self.arrives_after is not None and self.held() >= self.arrives_after:
            self.neighbour += self.free()  # the camera's copy takes the disk's last byte
            self.arrives_after = None
            self.arrived += 1
        if self.free() < len(data):
            # Its copy is refused by the same full disk on its own next write, in its own thread, and the
            # pipeline unlinks its .part: after this refused call has read the disk (the session's end here).
            self.refusals += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write_and_measure(fd, data)


class DockingDevice(HonestDevice):
    """The honest device; during the retries named in `arrivals`, a camera docks and fills the disk."""

    def __init__(self, packets: list[bytes], disk: SharedDisk) -> None:
        super().__init__(packets, ssrc=SSRC, ports=PORTS, max_buffered_bytes=2 * FLUSH_BYTES)
        self.disk = disk
        self.arrivals: list[int] = []  # per busy retry, the written bytes at which the neighbour fills it
        self.met: list[tuple[int, int]] = []  # per pass: (neighbour arrivals, writes refused ENOSPC)

    def session_started(self) -> None:
        self.disk.arrives_after = self.arrivals.pop(0) if self.arrivals else None
        self.disk.arrived = self.disk.refusals = 0

    def session_ended(self) -> None:
        self.disk.neighbour, self.disk.arrives_after = 0, None
        self.met.append((self.disk.arrived, self.disk.refusals))


async def _passes(tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
                  busy: bool) -> tuple[DockingDevice, list[RecordingRef]]:
    """One pass on a disk with room for half the recording (the guard cuts it); BUSY_PASSES passes with
    room for the whole recording as `_tight_for` reckons it, a docked camera's copy filling the disk during
    each when `busy`; then one pass with the same room and no neighbour. Returns the device and what the
    last pass gave up."""
    size, packets = stream
    spool = new_spool(tmp_path)
    disk = SharedDisk(spool, RESERVE + 2 * size)
    disk.install(monkeypatch)
    recording = replace(RECORDING, file_size_bytes=size)  # honest: the stream's size
    device = DockingDevice(packets, disk)
    async with station_downloads(tmp_path, spool, device.start_download) as downloads:
        await downloads.download([recording])
        assert device.ended == [EndReason.DISK_FULL] and device.received[0] < size
        assert device.refused[0] == (None, None), "the first cut is the guard's"
        disk.level = RESERVE + ROOM_PER_BYTE_DOWNLOADED * size + 2 * FLUSH_BYTES  # `_tight_for`'s room
        if busy:  # the camera docks a few flushes into each retry, at another point each time
            device.arrivals = [(2 + n % 4) * FLUSH_BYTES for n in range(BUSY_PASSES)]
        for _ in range(BUSY_PASSES):
            await downloads.download([recording])
        last = await downloads.download([recording])
    return device, last.given_up


async def test_a_docked_copy_filling_the_disk_does_not_give_up_a_recording_that_could_be_had(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    device, given_up = await _passes(tmp_path, stream, monkeypatch, busy=True)
    first, busy = device.received[0], device.written[1:1 + BUSY_PASSES]
    # the fault as modelled: the first busy retry met the docked camera's copy filling the disk, and a write
    # of it was refused ENOSPC (the neighbour's copy refused too, its partial file removed)
    assert device.met[1][0] == 1 and device.met[1][1] >= 1, device.met
    assert given_up == [] and device.received[-1] == size, (
        f"an honest device's recording of {size} bytes was cut by the station's own guard at {first} bytes, "
        f"then refused ENOSPC at {busy} written while a docked camera's copy filled the disk (refused too, "
        f"its partial file removed; ended {[e.value for e in device.ended]}): the statvfs read after each "
        f"refusal showed the camera's room ({[free for _r, free in device.refused[1:1 + BUSY_PASSES]]}), "
        f"each copy counted as a quota's repeat, and after {BUSY_PASSES} passes it was given up for good "
        f"({len(given_up)} given up at the last pass, with the disk roomy and idle; tries: "
        f"{device.received})")
    # each busy retry ended disk-full at its refusal, with the disk full as read in the refused call: no
    # quota's mark, so none counted toward the give-up; the pass after them received the recording whole
    busy_ended = device.ended[1:1 + BUSY_PASSES]
    assert busy_ended == [EndReason.DISK_FULL] * BUSY_PASSES, busy_ended
    assert all(refused == "ENOSPC" and free is not None and free < FLUSH_BYTES
               for refused, free in device.refused[1:1 + BUSY_PASSES]), device.refused
    assert device.ended[-1] is EndReason.CLOSED and device.written[-1] == size, (device.ended, device.written)


async def test_control_without_the_docked_copy_the_first_retry_receives_it_whole(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    size, _packets = stream
    device, given_up = await _passes(tmp_path, stream, monkeypatch, busy=False)
    assert device.ended[1] is EndReason.CLOSED and device.received[1] == size, device.ended
    assert device.met[1] == (0, 0), device.met
    assert given_up == [], given_up
