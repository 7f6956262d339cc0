"""Kernel mounts for simulated recorder volumes: mount(2)/umount2(2), lookups in the mount table, and
the reaper that takes bind mounts down when the process that made them dies.

A FUSE volume dies with its process (its lifeline), but a bind mount belongs to the kernel and
would outlive a simulator killed with SIGKILL, as a recorder outlives nothing. So the first bind mount
of a process starts one small reaper process (`python -m simulators.recorder.mount_reaper`) that
holds the read end of a pipe: every mount and unmount is announced on it, and when the pipe reaches
EOF (the simulator is gone, however it died) the reaper lazily unmounts what is still announced,
if the mount at that place is still the one it was told about.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from drivers.usb.mountinfo import MountEntry, MountTable, parse_mountinfo

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                                ctypes.c_void_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


def mount_syscall(source: Path | None, target: Path, flags: int) -> None:
    """mount(2) without a filesystem type or data: binds and remounts. Raises OSError."""
    if _lib().mount(None if source is None else os.fsencode(source), os.fsencode(target), None, flags, None):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


def umount_syscall(target: Path, *, lazy: bool) -> None:
    """umount2(2); `lazy` detaches now and lets the kernel finish when the last file is closed."""
    if _lib().umount2(os.fsencode(target), MNT_DETACH if lazy else 0):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


def absolute(path: Path) -> Path:
    # Resolve the parent only: the mount point itself may be a dead FUSE mount that cannot be stat'ed.
    return Path(os.path.realpath(path.parent)) / path.name


def mount_table() -> MountTable:
    return parse_mountinfo(MOUNTINFO.read_bytes())


def mount_at(path: Path) -> MountEntry | None:
    """The mount visible at `path` per /proc/self/mountinfo (also a dead FUSE mount), or None."""
    return mount_table().at(str(absolute(path)))


def is_mounted(path: Path) -> bool:
    """True if `path` is a mount point per /proc/self/mountinfo (also for a dead FUSE mount)."""
    return mount_at(path) is not None


def reaper_line(sign: str, path: Path, identity: tuple[int, int, int] | None = None) -> bytes:
    """One announcement to the reaper (pure): `+ PATHHEX ID MAJOR MINOR` or `- PATHHEX`."""
    tail = "" if identity is None else " " + " ".join(str(n) for n in identity)
    return f"{sign} {os.fsencode(path).hex()}{tail}\n".encode("ascii")


class _Reaper:
    """This process's reaper: started with the first bind mount, told of every mount and unmount."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def _start(self) -> IO[bytes]:
        if self._pipe is None or self._process is None or self._process.poll() is not None:
            env = dict(os.environ)
            project_root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
            # Its own session: a signal to our process group must not take the reaper with it.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "simulators.recorder.mount_reaper"], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, env=env, start_new_session=True,
            )
            assert self._process.stdin is not None
            self._pipe = self._process.stdin
            atexit.register(self.close)
        return self._pipe

    def close(self) -> None:
        """At a normal exit: EOF now (whatever is still mounted is taken down), and reap the process."""
        with self._lock:
            pipe, process, self._pipe, self._process = self._pipe, self._process, None, None
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
        if process is not None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("mount reaper %d still busy at exit", process.pid)

    def announce(self, line: bytes) -> None:
        with self._lock:
            try:
                pipe = self._start()
                pipe.write(line)
                pipe.flush()
            except OSError as exc:
                log.error("mount reaper unreachable (%s): a killed simulator may leave mounts behind", exc)


REAPER = _Reaper()


def mounted(path: Path, entry: MountEntry) -> None:
    REAPER.announce(reaper_line("+", absolute(path), (entry.mount_id, entry.major, entry.minor)))


def unmounted(path: Path) -> None:
    REAPER.announce(reaper_line("-", absolute(path)))
