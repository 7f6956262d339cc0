"""One docking's recorder volume, bound to the one mount it was found on.

A bay's recorder is mounted at the same directory every time, so the path alone says nothing about
*which* recorder is there: an officer can pull recorder A out in the middle of its offload and dock
recorder B in the same bay within a second, and B's volume is then mounted where A's session works.
Whatever that session did by path would then happen to B: a "not found" for each of A's files (recorded
as erased, or as vanished for good), and an erasure of B's file where B holds one at A's path with A's
size and mtime.

So a session opens the volume root once, checks that the descriptor is on the very mount it was
offered (the mount id of the descriptor in `/proc/self/fdinfo`, and the device number of the root
against the mount table's), and does every listing, open and unlink relative to that descriptor
(openat with O_NOFOLLOW, never a path). The volume is reachable only while the mount table still
shows that mount, by its identity, at its directory, and until the station is told it went away
(`lose`); after that every open fails with ENODEV, and the session ends as device-gone, everything it
had not finished resumable at the recorder's next docking.

Before a file is unlinked, the file the name now leads to is opened (without following a symlink)
and must be the one whose bytes were hashed in this docking: the same (st_dev, st_ino) as every open
of it in this docking, and the size and mtime it was listed with.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

from drivers.usb.mountinfo import parse_mountinfo
from edge.sources.usb.enumerate import DIR_FLAGS, VolumeFile, open_volume_file, unlink_volume_file
from edge.sources.usb.volumes import MAX_MOUNTINFO_BYTES, MOUNTINFO, VolumeMount, display_name

log = logging.getLogger(__name__)

# What tells one file from another on a mounted volume: device, inode, size, mtime.
FileIdentity = tuple[int, int, int, int]


class VolumeGoneError(OSError):
    """The volume this session was bound to is no longer mounted (or was replaced)."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.ENODEV, what)


def read_mount_table_bytes() -> bytes:
    """The current mount table of this namespace, bounded (it is not ours to trust)."""
    with open(MOUNTINFO, "rb") as table:
        data = table.read(MAX_MOUNTINFO_BYTES + 1)
    if len(data) > MAX_MOUNTINFO_BYTES:
        raise OSError(errno.EFBIG, f"mount table longer than {MAX_MOUNTINFO_BYTES} bytes")
    return data


def mount_now_at(path: Path) -> VolumeMount | None:
    """The mount the table shows at `path` now (None: nothing mounted there)."""
    entry = parse_mountinfo(read_mount_table_bytes()).at(os.path.realpath(path))
    return None if entry is None else VolumeMount.from_entry(entry)


def descriptor_mount_id(fd: int) -> int:
    """The mount a descriptor is on (`mnt_id` in /proc/self/fdinfo, Linux >= 3.15)."""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
        for line in info.read(64 * 1024).splitlines():
            if line.startswith(b"mnt_id:"):
                return int(line.split(b":", 1)[1])
    raise OSError(errno.ENOTSUP, "no mnt_id in /proc/self/fdinfo: cannot tell which mount a descriptor is on")


def _device_number(device: str) -> int:
    major, minor = device.split(":")
    return os.makedev(int(major), int(minor))


class VolumeRoot:
    """A recorder volume's root directory, opened once; `mount` None for a plain directory that is no
    mount point (tools and tests offloading a folder), which is bound to that directory only."""

    def __init__(self, path: Path, fd: int, mount: VolumeMount | None) -> None:
        self.path = path
        self.fd = fd
        self.mount = mount
        self._lost = threading.Event()
        self._lost_reason = ""
        self._lock = threading.Lock()
        self._opened: dict[tuple[bytes, ...], set[FileIdentity]] = {}
        # Who closes it, once handed over (a control session that was expecting this volume).
        self.owner: str | None = None

    @classmethod
    def open(cls, path: Path, mount: VolumeMount | None = None) -> VolumeRoot:
        """Open `path` bound to `mount` (default: whatever is mounted there now, if anything).

        Raises VolumeGoneError when the directory is no longer on that mount, OSError when it cannot
        be opened (or is a symlink)."""
        fd = os.open(path, DIR_FLAGS)
        try:
            if mount is None:
                mount = mount_now_at(path)
            if mount is not None:
                on = descriptor_mount_id(fd)
                if on != mount.mount_id:
                    raise VolumeGoneError(
                        f"volume {display_name(path)}: mount {mount.mount_id} is gone "
                        f"(the directory is on mount {on} now)"
                    )
                device = os.fstat(fd).st_dev
                if device != _device_number(mount.device):
                    raise VolumeGoneError(
                        f"volume {display_name(path)}: its root is on device "
                        f"{os.major(device)}:{os.minor(device)}, the mount table says {mount.device}"
                    )
            return cls(path, fd, mount)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        with self._lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> VolumeRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- presence ---------------------------------------------------------------------------------

    def lose(self, reason: str) -> None:
        """The station saw this mount go: from now on nothing is read from or done to the volume."""
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()
            log.info("volume %s: session unbound: %s", display_name(self.path), reason)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def reachable(self) -> bool:
        """Still the volume this session was bound to, and still mounted where it was."""
        if self._lost.is_set() or self.fd < 0:
            return False
        try:
            bound = os.fstat(self.fd)  # a FUSE volume whose daemon died answers ENOTCONN
            if self.mount is None:
                # A plain directory: still the one opened at this path. Not os.listdir(self.fd): it
                # reads through the descriptor's shared offset, so two threads asking at once can each
                # see a partial (or empty) listing and call a present volume gone.
                now_at_path = os.stat(self.path, follow_symlinks=False)
                return (now_at_path.st_dev, now_at_path.st_ino) == (bound.st_dev, bound.st_ino)
            now = mount_now_at(self.path)
        except (OSError, ValueError):
            return False
        return now is not None and now.identity == self.mount.identity

    def check(self) -> None:
        """Raise VolumeGoneError unless the volume is still reachable."""
        if not self.reachable():
            raise VolumeGoneError(
                f"volume {display_name(self.path)} is gone"
                + (f" ({self._lost_reason})" if self._lost_reason else " or was replaced")
            )

    def check_not_lost(self) -> None:
        """The cheap check (no mount table read), for every chunk read."""
        if self._lost.is_set():
            raise VolumeGoneError(f"volume {display_name(self.path)} is gone ({self._lost_reason})")

    # -- files ------------------------------------------------------------------------------------

    def open_file(self, file: VolumeFile) -> int:
        """Open a listed file relative to the bound root; remembers which file it was."""
        self.check()
        fd = open_volume_file(self.fd, file)
        try:
            info = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            self._opened.setdefault(file.parts, set()).add(_identity(info))
        return fd

    def erase(self, file: VolumeFile) -> bool:
        """Unlink `file` if it is still the very file this docking hashed; False if it is absent.

        Raises VolumeGoneError when the volume went away, OSError(EBUSY) when the name now leads to
        another file (or the file changed), and nothing is erased then."""
        self.check()
        with self._lock:
            hashed = set(self._opened.get(file.parts, ()))
        if len(hashed) != 1:
            why = "it was not read in this docking" if not hashed else "its opens found different files"
            raise OSError(errno.EBUSY, f"not erased: {why}")
        (expected,) = hashed
        listed = (file.size, file.mtime_ns)

        def same_file(info: os.stat_result) -> None:
            found = _identity(info)
            if found != expected or found[2:] != listed:
                raise OSError(
                    errno.EBUSY,
                    "the name leads to another file than the one copied and verified "
                    f"(device/inode {found[0]}/{found[1]}, was {expected[0]}/{expected[1]}), "
                    "or it changed since",
                )

        try:
            unlink_volume_file(self.fd, file, check=same_file, still_there=self.check)
        except FileNotFoundError:
            return False
        return True


def _identity(info: os.stat_result) -> FileIdentity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class BoundVolumes:
    """The volumes the station's sessions are bound to, so that a mount's UNMOUNTED event unbinds
    every session working on it at once (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: set[VolumeRoot] = set()

    def open(self, path: Path, mount: VolumeMount | None) -> VolumeRoot:
        root = VolumeRoot.open(path, mount)
        with self._lock:
            self._roots = {r for r in self._roots if not r.closed}  # closed by their session
            self._roots.add(root)
        return root

    def close(self, root: VolumeRoot) -> None:
        with self._lock:
            self._roots.discard(root)
        root.close()

    def unmounted(self, mount: VolumeMount, reason: str = "its mount left the mount table") -> int:
        """Unbind every session on `mount`; how many there were."""
        with self._lock:
            hit = [
                r for r in self._roots
                if not r.closed and r.mount is not None and r.mount.identity == mount.identity
            ]
        for root in hit:
            root.lose(reason)
        return len(hit)
