"""A descriptor that becomes readable when entries appear in or leave one directory (inotify(7)).

The volume watcher uses it only as a wake-up: what changed is read from the directory itself, so no
event record is parsed and an overflowing queue loses nothing. The two libc calls go through ctypes;
nothing else is needed from inotify (the station's seccomp filter, `@system-service`, allows them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
ENTRY_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
_DRAIN_BYTES = 64 * 1024

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.inotify_init1.argtypes = [ctypes.c_int]
        _libc.inotify_init1.restype = ctypes.c_int
        _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc.inotify_add_watch.restype = ctypes.c_int
    return _libc


class DirectoryChanges:
    """`fileno()` is readable after an entry of `directory` was created, deleted or renamed (or the
    directory itself was); `drain()` empties it. Close it when done."""

    def __init__(self, directory: Path) -> None:
        lib = _lib()
        fd: int = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self._fd: int = fd
        try:
            self.watch(directory)
        except BaseException:
            os.close(fd)
            raise

    def watch(self, directory: Path) -> None:
        """(Re)start watching `directory`, e.g. after it was replaced."""
        if _lib().inotify_add_watch(self._fd, os.fsencode(directory), ENTRY_EVENTS | IN_ONLYDIR) < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_add_watch: {os.strerror(code)}", str(directory))

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> None:
        while True:
            try:
                if not os.read(self._fd, _DRAIN_BYTES):
                    return
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
