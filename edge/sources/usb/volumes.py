"""Recorder volumes as the kernel's mount table shows them: mounted, unmounted, or not what they claim.

In production each bay's recorder is mounted by systemd-mount at the same directory every time
(`/media/evidence-edge/<USB port path>`), and the directory stays when the recorder leaves. So a new
directory says nothing; a new *mount* at a directory directly under the mount root is a docking, and
its disappearance from the table is the recorder leaving. A mount is told from the one before it at the
same place by its identity in the table (mount id, device, root, type, source: see
`drivers.usb.mountinfo.MountEntry.identity`), so a re-mount in the same bay is a new docking.

The watcher thread sleeps in poll(2) on three descriptors:

* `/proc/self/mountinfo`, which the kernel marks POLLPRI|POLLERR whenever the mount table of this
  namespace changes (it is always readable, so asyncio's `add_reader`, which waits for POLLIN, would
  spin: hence a thread);
* an inotify descriptor on the mount root (`dirwatch.DirectoryChanges`), so that something appearing
  there that is not a directory, such as a symlink posing as a volume, is refused at once;
* a pipe that `stop()` writes to.

On every wake-up, and at the latest every `rescan_interval_s` (the backstop for a notification that
never came: a mount namespace that does not propagate events, a missed wake-up), it reads the whole
table again, compares it with what it saw last, and puts one `VolumeEvent` per difference on an
asyncio queue. What it found at `start()` comes first.

Limit: a mount that is unmounted and replaced by one with the very same table identity between two
reads of the table (the kernel reuses mount ids and anonymous device numbers at once) looks like the
same mount. The table is read within milliseconds of each change; pulling a recorder out and putting it
back takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import stat
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from drivers.usb.mountinfo import MountEntry, MountTable, parse_mountinfo
from edge.sources.usb.dirwatch import DirectoryChanges

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
# A mount table is a few KiB; hundreds of containers make it a few MiB. Beyond this something is wrong.
MAX_MOUNTINFO_BYTES = 32 * 1024 * 1024
_READ_BYTES = 256 * 1024
_POLL_TABLE = select.POLLPRI | select.POLLERR
# Mounts that stand in for a volume without being one: an automount point is in the table before
# anything is mounted on it (the udev rule's systemd-mount uses --automount=no for this reason).
NOT_VOLUMES = frozenset({"autofs"})


class VolumeEventKind(StrEnum):
    MOUNTED = "mounted"
    UNMOUNTED = "unmounted"
    # Something under the mount root posing as a volume (a symlink): never offloaded, put on the record.
    REFUSED = "refused"


def printable(text: str) -> str:
    """Text from the mount table or a directory name, as it can be recorded and printed: bytes that
    are not UTF-8 as `\\xNN`, control and bidi characters as Python escapes, a backslash doubled so
    that no name can pass for an escape (whoever made a mount chose its names)."""
    out: list[str] = []
    for char in text:
        if "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8 (surrogate escape)
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape", errors="backslashreplace").decode("ascii"))
    return "".join(out)


def display_name(path: Path) -> str:
    return printable(path.name)


@dataclass(frozen=True)
class VolumeMount:
    """One mount directly under the mount root, as the mount table described it."""

    path: Path
    mount_id: int
    device: str
    fs_type: str
    source: str
    root: str
    super_options: str = ""  # the filesystem's options (vfat: its codepage); not part of the identity

    @classmethod
    def from_entry(cls, entry: MountEntry) -> VolumeMount:
        return cls(Path(entry.mount_point), entry.mount_id, entry.device, entry.fs_type, entry.source,
                   entry.root, entry.super_options)

    @property
    def identity(self) -> tuple[int, str, str, str, str]:
        return (self.mount_id, self.device, self.root, self.fs_type, self.source)

    def as_record(self) -> dict[str, Any]:
        """For the ledger: where, which mount, which filesystem and device (all printable)."""
        return {
            "volume": display_name(self.path),
            "mount_id": self.mount_id,
            "device": self.device,
            "fs_type": printable(self.fs_type),
            "source": printable(self.source),
        }


@dataclass(frozen=True)
class VolumeEvent:
    kind: VolumeEventKind
    path: Path
    mount: VolumeMount | None = None
    reason: str = ""

    @property
    def present(self) -> bool:
        return self.kind is VolumeEventKind.MOUNTED


def volume_mounts(table: MountTable, mount_root: Path) -> dict[Path, VolumeMount]:
    """The mount visible at each directory directly under `mount_root` (an absolute path without
    symlinks, as the table spells it). Mounts deeper down (inside a volume) are not volumes, nor is
    an automount point with nothing mounted on it yet."""
    found: dict[Path, VolumeMount] = {}
    for mount_point in {e.mount_point for e in table.entries}:
        path = Path(mount_point)
        if path.parent != mount_root or path == mount_root:
            continue
        entry = table.at(mount_point)
        if entry is not None and entry.fs_type not in NOT_VOLUMES:
            found[path] = VolumeMount.from_entry(entry)
    return found


def impostors(mount_root: Path) -> dict[Path, tuple[int, int, int]]:
    """Entries of the mount root that are symlinks, with what tells this symlink from a later one at
    the same name. A mount point is always a real directory; a symlink there would lead the station
    to whatever it points at."""
    found: dict[Path, tuple[int, int, int]] = {}
    with os.scandir(mount_root) as entries:
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode):
                found[Path(entry.path)] = (info.st_dev, info.st_ino, info.st_ctime_ns)
    return found


class Poller(Protocol):
    """What the watcher needs of `select.poll()` (injectable: tests suppress the mount notifications)."""

    def register(self, fd: int, eventmask: int = ..., /) -> None: ...

    def poll(self, timeout: float | None = ..., /) -> list[tuple[int, int]]: ...


class VolumeWatcher:
    """Volumes mounted under, and leaving, the mount root; starting with those already there.

    `start()` must be called from the event loop that reads `queue`; `stop()` ends the thread.
    """

    def __init__(
        self,
        root: Path,
        *,
        rescan_interval_s: float = 5.0,
        poller_factory: Callable[[], Poller] = select.poll,
    ) -> None:
        if rescan_interval_s <= 0:
            raise ValueError(f"rescan interval must be > 0 s, got {rescan_interval_s}")
        self.root = root
        self.rescan_interval_s = rescan_interval_s
        self.queue: asyncio.Queue[VolumeEvent] = asyncio.Queue()
        self.scans = 0  # completed scans, for status and tests
        self._poller_factory = poller_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = -1
        self._real_root = root
        self._table_fd = -1
        self._changes: DirectoryChanges | None = None
        self._stop_r = self._stop_w = -1
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._mounts: dict[Path, VolumeMount] = {}
        self._impostors: dict[Path, tuple[int, int, int]] = {}

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.root.mkdir(parents=True, exist_ok=True)
        # The table spells mount points without symlinks: compare with the real path of the root.
        self._real_root = Path(os.path.realpath(self.root))
        self._table_fd = os.open(MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._changes = DirectoryChanges(self._real_root)
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
            self._scan()
        except BaseException:
            self._close_fds()
            raise
        self._thread = threading.Thread(target=self._run, name="volume-watcher", daemon=True)
        self._thread.start()
        log.info("watching mounts under %s (rescan every %.1f s)", self._real_root, self.rescan_interval_s)

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")
            thread.join(timeout=10)
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._table_fd, self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._table_fd = self._stop_r = self._stop_w = -1
        if self._changes is not None:
            self._changes.close()
            self._changes = None

    def current(self, path: Path) -> VolumeMount | None:
        """The mount the watcher last saw at `path` (thread-safe)."""
        with self._lock:
            return self._mounts.get(path)

    # -- the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._changes is not None
        poller = self._poller_factory()
        poller.register(self._table_fd, _POLL_TABLE)
        poller.register(self._changes.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        timeout_ms = self.rescan_interval_s * 1000
        while True:
            try:
                ready = {fd for fd, _ in poller.poll(timeout_ms)}
            except InterruptedError:
                continue
            if self._stop_r in ready:
                return
            try:
                if self._changes.fileno() in ready:
                    self._changes.drain()
                self._scan()
            except Exception:
                # A bad scan must not end the watching: the next change or rescan tries again.
                log.exception("scanning mounts under %s failed", self._real_root)

    def _read_table(self) -> bytes:
        os.lseek(self._table_fd, 0, os.SEEK_SET)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(self._table_fd, _READ_BYTES):
            size += len(chunk)
            if size > MAX_MOUNTINFO_BYTES:
                raise OSError(errno.EFBIG, f"mount table longer than {MAX_MOUNTINFO_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _scan(self) -> None:
        table = parse_mountinfo(self._read_table())
        for number, why in table.malformed[:5]:
            log.warning("mount table line %d ignored: %s", number, why)
        mounts = volume_mounts(table, self._real_root)
        try:
            found = impostors(self._real_root)
            if self._changes is not None:
                # Adding the same watch again is a no-op; after the root was replaced it watches anew.
                self._changes.watch(self._real_root)
        except OSError as exc:
            log.warning("cannot list the mount root %s: %s", self._real_root, exc)
            found = dict(self._impostors)
        events = list(self._differences(mounts, found))
        with self._lock:
            self._mounts = mounts
            self._impostors = found
            self.scans += 1
        for event in events:
            log.info("volume %s: %s %s", display_name(event.path), event.kind,
                     event.mount.as_record() if event.mount else event.reason)
            self._emit(event)

    def _differences(
        self, mounts: dict[Path, VolumeMount], found: dict[Path, tuple[int, int, int]]
    ) -> Iterable[VolumeEvent]:
        before = self._mounts
        for path, was in sorted(before.items()):
            now = mounts.get(path)
            if now is None or now.identity != was.identity:
                yield VolumeEvent(VolumeEventKind.UNMOUNTED, path, was)
        for path, now in sorted(mounts.items()):
            was_there = before.get(path)
            if was_there is None or was_there.identity != now.identity:
                yield VolumeEvent(VolumeEventKind.MOUNTED, path, now)
        for path, key in sorted(found.items()):
            if self._impostors.get(path) != key:
                yield VolumeEvent(
                    VolumeEventKind.REFUSED, path,
                    reason="volume root is a symlink, not a mounted directory (refused, never followed)",
                )

    def _emit(self, event: VolumeEvent) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:  # the first scan, from start()
            self.queue.put_nowait(event)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while stopping
            self._loop.call_soon_threadsafe(self.queue.put_nowait, event)


async def wait_until_readable(
    path: Path,
    timeout_s: float,
    *,
    executor: Executor | None = None,
    interval_s: float = 0.1,
    still_mounted: Callable[[], bool] = lambda: True,
) -> bool:
    """A mount can be in the table before its content can be read (a FUSE filesystem answers nothing
    until its daemon has started; a disk may still be settling): wait until the volume root lists.

    The listing runs in `executor` because it may block in the kernel until the filesystem answers.
    False when it did not become readable in time, or `still_mounted()` says the mount went away.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0 or not still_mounted():
            return False
        try:
            await asyncio.wait_for(loop.run_in_executor(executor, _lists, path), remaining)
        except TimeoutError:
            return False
        except OSError as exc:
            log.debug("volume %s not readable yet: %s", display_name(path), exc)
        else:
            return True
        await asyncio.sleep(min(interval_s, max(0.0, deadline - loop.time())))


def _lists(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.listdir(fd)
    finally:
        os.close(fd)
