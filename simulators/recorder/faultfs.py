"""A fault-injecting pass-through filesystem for simulated recorder volumes (FUSE, via mfusepy).

It presents a backing directory read-only, except that unlink is allowed (recorders let the station
erase files), and injects the faults of a real USB recorder: read errors at an offset, a transient bit
flip, the cable pulled after N bytes, a file that keeps growing, a file that disappears. Reads can be
throttled to USB 2.0 speed by a token bucket.

The filesystem runs in its own process (`python -m simulators.recorder.faultfs_main ...`, started by
`simulators.recorder.volume.mount_volume`) so a test or a bus can kill it like a device dying. mfusepy
is imported only in that process: it loads libfuse when imported, and this module's `VolumeFaults` is
also needed where libfuse is absent.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import json
import logging
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Bytes appended to a file matching `grow` after its first read: a recorder still writing.
GROW_BYTES = 64 * 1024
# Mount options: big reads keep Python per-request overhead small; zero attribute/entry timeouts make
# grow and vanish visible to the station at once, as on a device it stats again.
MAX_READ_BYTES = 1024 * 1024
_BIT_FLIP_MASK = 0x10
# How the mount shows in the mount table: type `fuse.zfy`, source `evidence-edge-sim`.
FUSE_FSNAME = "evidence-edge-sim"
# The kernel waits for FUSE_INIT without a timeout; a simulated slow start stays well short of forever.
MAX_READY_DELAY_MS = 60_000
FUSE_SUBTYPE = "zfy"


class VolumeFaultsError(ValueError):
    """A fault specification that cannot be parsed; says which part and why."""


@dataclass(frozen=True)
class VolumeFaults:
    """Faults a simulated recorder volume injects; every field None means no fault.

    read_error: (file name glob, byte offset): every read covering that byte fails with EIO.
    bit_flip: (glob, byte offset): the FIRST read covering it returns one bit flipped; later reads
        are correct (a transient fault: only a re-read that bypasses the page cache sees the truth).
    unplug_after_bytes: once more than this many bytes would have been delivered in total, the read
        fails with EIO, every later operation fails with EIO/ENODEV, the unplug marker file is written
        and the filesystem lazily unmounts itself: the cable was pulled.
    grow: glob: after the first read of a matching file, GROW_BYTES are appended to it.
    vanish: glob: after the first read of a matching file it is deleted; reads through handles
        still open fail with EIO.
    repeat_entry: glob: every matching directory entry is listed twice by readdir, as a damaged FAT
        directory or a buggy FUSE driver does (both names open the same file).
    ready_delay_ms: the mount is in the mount table this long before the filesystem answers (its
        reply to the kernel's FUSE_INIT is held back): every access meanwhile blocks in the kernel,
        as on a volume whose driver is still starting.
    Globs match the file's base name, or its path relative to the volume root if they contain "/".
    """

    read_error: tuple[str, int] | None = None
    bit_flip: tuple[str, int] | None = None
    unplug_after_bytes: int | None = None
    grow: str | None = None
    vanish: str | None = None
    repeat_entry: str | None = None
    ready_delay_ms: int | None = None

    def __post_init__(self) -> None:
        for name in ("read_error", "bit_flip"):
            value = getattr(self, name)
            if value is None:
                continue
            if not (isinstance(value, tuple) and len(value) == 2):
                raise VolumeFaultsError(f"{name} must be (glob, offset), got {value!r}")
            glob, offset = value
            _check_glob(name, glob)
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise VolumeFaultsError(f"{name} offset must be an int >= 0, got {offset!r}")
        for name in ("unplug_after_bytes", "ready_delay_ms"):
            n = getattr(self, name)
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
                raise VolumeFaultsError(f"{name} must be an int >= 0, got {n!r}")
        delay = self.ready_delay_ms
        if delay is not None and delay > MAX_READY_DELAY_MS:
            raise VolumeFaultsError(f"ready_delay_ms must be <= {MAX_READY_DELAY_MS}, got {delay}")
        for name in ("grow", "vanish", "repeat_entry"):
            value = getattr(self, name)
            if value is not None:
                _check_glob(name, value)

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def to_cli_string(self) -> str:
        """"read_error=*.MP4@1048576,unplug_after_bytes=5000000" (inverse of from_cli_string)."""
        parts: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                parts.append(f"{f.name}={value[0]}@{value[1]}")
            else:
                parts.append(f"{f.name}={value}")
        return ",".join(parts)

    @classmethod
    def from_cli_string(cls, text: str) -> VolumeFaults:
        """Parse "read_error=GLOB@OFFSET,bit_flip=GLOB@OFFSET,unplug_after_bytes=N,grow=GLOB,vanish=GLOB,
        repeat_entry=GLOB,ready_delay_ms=N".

        Globs cannot contain "," or "@" in this form.
        """
        values: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for raw in text.split(","):
            part = raw.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise VolumeFaultsError(f"fault {part!r}: expected NAME=VALUE")
            if key not in known:
                raise VolumeFaultsError(
                    f"fault {part!r}: unknown name {key!r}, expected one of {sorted(known)}"
                )
            if key in values:
                raise VolumeFaultsError(f"fault {key!r} given twice")
            values[key] = _parse_value(key, value.strip())
        return cls(**values)

    def to_args(self) -> list[str]:
        """Command-line arguments for the filesystem subprocess (inverse of from_args)."""
        spec = self.to_cli_string()
        return ["--faults", spec] if spec else []

    @classmethod
    def from_args(cls, args: Sequence[str]) -> VolumeFaults:
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--faults", default="")
        ns, rest = parser.parse_known_args(list(args))
        if rest:
            raise VolumeFaultsError(f"unexpected fault arguments {rest!r}")
        return cls.from_cli_string(ns.faults)


def _check_glob(name: str, glob: object) -> None:
    if not isinstance(glob, str) or not glob or len(glob) > 255:
        raise VolumeFaultsError(f"{name} glob must be a non-empty string of <= 255 chars, got {glob!r}")
    if any(c in glob for c in ",@\n\r\0"):
        raise VolumeFaultsError(f"{name} glob {glob!r} must not contain ',', '@' or control characters")


def _parse_value(key: str, value: str) -> object:
    if key in ("read_error", "bit_flip"):
        glob, sep, offset = value.rpartition("@")
        if not sep or not offset.isdigit():
            raise VolumeFaultsError(f"fault {key}={value!r}: expected GLOB@OFFSET with a decimal offset")
        return (glob, int(offset))
    if key in ("unplug_after_bytes", "ready_delay_ms"):
        if not value.isdigit():
            raise VolumeFaultsError(f"fault {key}={value!r}: expected a decimal byte count")
        return int(value)
    return value


class TokenBucket:
    """Paces reads to `rate_bytes_per_s` across all threads, allowing a burst of `burst_bytes`: the credit
    it starts with and the most idle time banks.

    By default none: a USB link saves nothing while it is idle (the station hashing, syncing, re-reading
    and sealing between two files), so every read waits for its own bytes at the rate, the first one after
    a pause too. A burst of 50 ms of the rate, refilled at every pause, delivered files no larger than it
    almost free, one after the other: the demo's offload was that of a faster link (review revs13a). A read
    larger than the burst is allowed; it waits the longer."""

    def __init__(self, rate_bytes_per_s: int, burst_bytes: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError(f"rate must be > 0 bytes/s, got {rate_bytes_per_s}")
        if burst_bytes < 0:
            raise ValueError(f"burst must be >= 0 bytes, got {burst_bytes}")
        self.rate_bytes_per_s = rate_bytes_per_s
        self.burst_bytes = burst_bytes
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_free = clock() - self.burst_bytes / rate_bytes_per_s  # starts with a full burst

    def delay_for(self, size_bytes: int) -> float:
        """Reserve `size_bytes` and return how long the caller must wait before delivering them."""
        with self._lock:
            now = self._clock()
            # The schedule may lag at most one burst behind now: idle time banks no more credit.
            self._next_free = max(self._next_free, now - self.burst_bytes / self.rate_bytes_per_s)
            self._next_free += size_bytes / self.rate_bytes_per_s
            return max(0.0, self._next_free - now)

    def acquire(self, size_bytes: int) -> None:
        wait_s = self.delay_for(size_bytes)
        if wait_s > 0:
            self._sleep(wait_s)


def _oserror(code: int, what: str) -> OSError:
    return OSError(code, os.strerror(code), what)


class FaultFS:
    """The filesystem operations, pure Python over the backing directory (mfusepy calls them).

    Not a subclass of mfusepy.Operations on purpose: that would import libfuse wherever this module
    is imported; mfusepy only looks the operations up by name.
    """

    use_ns = True  # st_*time as integer nanoseconds

    def __init__(self, backing_dir: Path, faults: VolumeFaults | None = None, *,
                 rate_limit_bytes_per_s: int | None = None, unplug_marker: Path | None = None,
                 on_unplug: Callable[[], None] | None = None,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.backing_dir = backing_dir.resolve()
        self.faults = faults or VolumeFaults()
        self.bucket = TokenBucket(rate_limit_bytes_per_s) if rate_limit_bytes_per_s else None
        self.unplug_marker = unplug_marker
        self._on_unplug = on_unplug
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self.bytes_delivered = 0
        self.unplugged = False
        self._flipped: set[str] = set()
        self._grown: set[str] = set()
        self._vanished: set[str] = set()

    # -- helpers --------------------------------------------------------------------------------------

    def _real(self, path: str) -> str:
        rel = path.lstrip("/")
        if any(part in ("..", ".") for part in rel.split("/")):
            raise _oserror(errno.EINVAL, path)
        return os.path.join(self.backing_dir, rel)

    @staticmethod
    def _matches(glob: str, path: str) -> bool:
        rel = path.lstrip("/")
        target = rel if "/" in glob else rel.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(target, glob)

    def _check_plugged(self, path: str) -> None:
        if self.unplugged:
            raise _oserror(errno.ENODEV, path)

    def _unplug(self, reason: str) -> None:
        """Called with the lock held: from now on the device is gone."""
        if self.unplugged:
            return
        log.warning("simulated unplug of %s: %s after %d bytes delivered", self.backing_dir, reason,
                    self.bytes_delivered)
        if self.unplug_marker is not None:
            try:
                _write_marker(self.unplug_marker, {"reason": reason, "bytes_delivered": self.bytes_delivered,
                                                   "time_unix_s": time.time()})
            except OSError:
                log.exception("cannot write unplug marker %s", self.unplug_marker)
        # Only now: operations that check without the lock (getattr, open) fail from here on, and whoever
        # sees the device gone must already find the marker.
        self.unplugged = True
        if self._on_unplug is not None:
            self._on_unplug()

    # -- FUSE operations ------------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            # Let the kernel read ahead in big chunks: fewer round trips through Python per MB.
            conn.max_readahead = MAX_READ_BYTES
        if self._on_ready is not None:
            self._on_ready()
        if self.faults.ready_delay_ms:
            # The mount is in the table already; until this returns, the kernel holds every access.
            time.sleep(self.faults.ready_delay_ms / 1000)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        self._check_plugged(path)
        st = os.lstat(self._real(path))
        return {
            "st_mode": st.st_mode, "st_nlink": st.st_nlink, "st_size": st.st_size,
            "st_uid": st.st_uid, "st_gid": st.st_gid, "st_blocks": st.st_blocks,
            "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns,
        }  # fmt: skip

    def access(self, path: str, amode: int) -> int:
        self._check_plugged(path)
        # Existence only: write access to directories must pass, or the kernel would refuse unlink.
        os.lstat(self._real(path))
        return 0

    def readlink(self, path: str) -> str:
        self._check_plugged(path)
        return os.readlink(self._real(path))

    def opendir(self, path: str) -> int:
        self._check_plugged(path)
        if not stat.S_ISDIR(os.lstat(self._real(path)).st_mode):
            raise _oserror(errno.ENOTDIR, path)
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        self._check_plugged(path)
        names = sorted(os.listdir(self._real(path)))
        glob = self.faults.repeat_entry
        if glob is not None:
            base = path.rstrip("/")
            repeated = {name for name in names if self._matches(glob, f"{base}/{name}")}
            names = [n for name in names for n in ([name, name] if name in repeated else [name])]
        return [".", "..", *names]

    def statfs(self, path: str) -> dict[str, int]:
        self._check_plugged(path)
        sv = os.statvfs(self.backing_dir)
        return {
            "f_bsize": sv.f_bsize, "f_frsize": sv.f_frsize, "f_blocks": sv.f_blocks, "f_bfree": sv.f_bfree,
            "f_bavail": sv.f_bavail, "f_files": sv.f_files, "f_ffree": sv.f_ffree, "f_favail": sv.f_favail,
            "f_namemax": sv.f_namemax,
        }  # fmt: skip

    def open(self, path: str, flags: int) -> int:
        self._check_plugged(path)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise _oserror(errno.EROFS, path)
        with self._lock:
            if path in self._vanished:
                raise _oserror(errno.ENOENT, path)
        return os.open(self._real(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._lock:
            if self.unplugged:
                raise _oserror(errno.EIO, path)
            if path in self._vanished:
                raise _oserror(errno.EIO, path)
        if self.bucket is not None:
            self.bucket.acquire(size)
        data = os.pread(fh, size, offset)
        end = offset + len(data)
        f = self.faults
        with self._lock:
            if self.unplugged or path in self._vanished:
                raise _oserror(errno.EIO, path)
            limit = f.unplug_after_bytes
            if limit is not None and self.bytes_delivered + len(data) > limit:
                self._unplug("unplug_after_bytes")
                raise _oserror(errno.EIO, path)
            if f.read_error is not None and self._matches(f.read_error[0], path) \
                    and offset <= f.read_error[1] < end:
                log.info("injected read error in %s at byte %d", path, f.read_error[1])
                raise _oserror(errno.EIO, path)
            self.bytes_delivered += len(data)
            if f.bit_flip is not None and path not in self._flipped and self._matches(f.bit_flip[0], path) \
                    and offset <= f.bit_flip[1] < end:
                self._flipped.add(path)
                flipped = bytearray(data)
                flipped[f.bit_flip[1] - offset] ^= _BIT_FLIP_MASK
                data = bytes(flipped)
                log.info("injected bit flip in %s at byte %d", path, f.bit_flip[1])
            if f.grow is not None and path not in self._grown and self._matches(f.grow, path):
                self._grown.add(path)
                self._grow(path)
            if f.vanish is not None and path not in self._vanished and self._matches(f.vanish, path):
                self._vanished.add(path)
                os.unlink(self._real(path))
                log.info("injected vanish of %s", path)
        return data

    def _grow(self, path: str) -> None:
        fd = os.open(self._real(path), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, random.Random(f"grow:{path}").randbytes(GROW_BYTES))
        finally:
            os.close(fd)
        log.info("injected growth of %s by %d bytes", path, GROW_BYTES)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def unlink(self, path: str) -> int:
        self._check_plugged(path)
        os.unlink(self._real(path))
        with self._lock:
            self._vanished.discard(path)
        return 0

    # Everything else that would change the volume is refused: the station may only erase.
    def _read_only(self, path: str, *args: object) -> int:
        raise _oserror(errno.EROFS, path)

    create = write = truncate = mkdir = rmdir = chmod = chown = utimens = _read_only
    mknod = setxattr = removexattr = _read_only

    def rename(self, old: str, new: str, *args: object) -> int:
        raise _oserror(errno.EROFS, old)

    def symlink(self, target: str, source: str) -> int:
        raise _oserror(errno.EROFS, target)

    def link(self, target: str, source: str) -> int:
        raise _oserror(errno.EROFS, target)


def _write_marker(path: Path, payload: dict[str, object]) -> None:
    """Atomically, so whoever polls for the marker never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fusermount_unmount(mount_point: Path, *, lazy: bool = False) -> bool:
    """`fusermount3 -u` (or `-uz`); True if it succeeded."""
    binary = shutil.which("fusermount3")
    if binary is None:
        log.error("fusermount3 not found; cannot unmount %s", mount_point)
        return False
    try:
        done = subprocess.run([binary, "-uz" if lazy else "-u", str(mount_point)],
                              capture_output=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("fusermount3 on %s failed: %s", mount_point, exc)
        return False
    if done.returncode != 0:
        log.debug("fusermount3 %s %s: %s", "-uz" if lazy else "-u", mount_point,
                  done.stderr.decode("utf-8", "replace").strip())
    return done.returncode == 0


def _mount_options() -> dict[str, Any]:
    options: dict[str, Any] = {
        "fsname": FUSE_FSNAME,
        "subtype": FUSE_SUBTYPE,
        "attr_timeout": 0,
        "entry_timeout": 0,
        "negative_timeout": 0,
    }
    if os.geteuid() == 0:
        # The station may run as another user than the simulator.
        options["allow_other"] = True
    return options


def serve(backing_dir: Path, mount_point: Path, faults: VolumeFaults, *,
          rate_limit_bytes_per_s: int | None, unplug_marker: Path | None,
          ready_fd: int | None, lifeline_fd: int | None) -> int:
    """Mount and serve until unmounted (blocking). Runs in the filesystem subprocess."""
    import mfusepy  # libfuse is loaded here, only in the filesystem process

    def lazy_unmount() -> None:
        threading.Thread(target=fusermount_unmount, args=(mount_point,), kwargs={"lazy": True},
                         name="unplug-unmount", daemon=True).start()

    def signal_ready() -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"R")
                os.close(ready_fd)
            except OSError:
                log.warning("parent gone before the volume was ready")

    if lifeline_fd is not None:
        def watch_parent() -> None:
            # EOF on the lifeline means the mounting process exited without unmounting: a recorder
            # cannot outlive the bus it hangs on.
            while os.read(lifeline_fd, 64):
                pass
            log.warning("parent of %s gone; unmounting", mount_point)
            if not fusermount_unmount(mount_point):
                fusermount_unmount(mount_point, lazy=True)

        threading.Thread(target=watch_parent, name="lifeline", daemon=True).start()

    ops = FaultFS(backing_dir, faults, rate_limit_bytes_per_s=rate_limit_bytes_per_s,
                  unplug_marker=unplug_marker, on_unplug=lazy_unmount, on_ready=signal_ready)
    mfusepy.FUSE(ops, str(mount_point), foreground=True, **_mount_options())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.recorder.faultfs_main",
        description="Serve a recorder volume through FUSE with injected faults (normally started by "
                    "simulators.recorder.volume.mount_volume).",
    )
    parser.add_argument("--backing", type=Path, required=True, help="directory holding the volume's files")
    parser.add_argument("--mount-point", type=Path, required=True, help="existing empty directory")
    parser.add_argument("--faults", default="",
                        help="e.g. read_error=*.MP4@1048576,bit_flip=*.MP4@4096,unplug_after_bytes=N,"
                             "grow=GLOB,vanish=GLOB,ready_delay_ms=N")
    parser.add_argument("--rate-limit-bytes-per-s", type=int, default=None,
                        help="throttle all reads together (USB 2.0 is about 35000000)")
    parser.add_argument("--unplug-marker", type=Path, default=None,
                        help="file written when the unplug fault fires")
    parser.add_argument("--ready-fd", type=int, default=None, help="inherited fd: 'R' written when serving")
    parser.add_argument("--lifeline-fd", type=int, default=None,
                        help="inherited fd whose EOF (parent exit) unmounts the volume")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="faultfs %(levelname)s %(name)s: %(message)s")
    try:
        faults = VolumeFaults.from_cli_string(args.faults)
    except VolumeFaultsError as exc:
        print(f"faultfs: {exc}", file=sys.stderr)
        return 2
    if args.rate_limit_bytes_per_s is not None and args.rate_limit_bytes_per_s <= 0:
        print("faultfs: --rate-limit-bytes-per-s must be > 0", file=sys.stderr)
        return 2
    return serve(args.backing, args.mount_point, faults, rate_limit_bytes_per_s=args.rate_limit_bytes_per_s,
                 unplug_marker=args.unplug_marker, ready_fd=args.ready_fd, lifeline_fd=args.lifeline_fd)


if __name__ == "__main__":
    sys.exit(main())
