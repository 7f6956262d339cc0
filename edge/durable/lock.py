"""One process per store: an exclusive lock on `<store>/store.lock`, held for the life of the process.

The lock is `flock(2)` on an open file description, taken without waiting. The kernel releases it when
the description is closed, and so when the process dies in any way (kill -9 included): a lock file left
behind by a crashed process never blocks the next start. Once it holds the lock, a process writes who it
is (pid, command line, start time, host) into the file, so that a second process refused the lock can
name the holder instead of saying only "busy". Those words are read back as untrusted text: they are
length-bounded and escaped before they reach a terminal or the journal.

The lock is advisory: it keeps our own processes (the station agent, `edge tag`, `edge keys rotate`,
two agents started by mistake, a second central on the same store) from writing one store at once. It
is no defence against another program, which is what the ledger's hash chain and signatures are for.
The file descriptor is close-on-exec, so children (ffmpeg) never inherit the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import stat
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_FILE_NAME", "LockHolder", "StoreBusy", "StoreLock"]

LOCK_FILE_NAME = "store.lock"
_MAX_HOLDER_BYTES = 4096
_MAX_FIELD_CHARS = 300


def _shown(text: object) -> str:
    """Untrusted text for one line of a message: control, format and bidi characters escaped."""
    value = str(text)[:_MAX_FIELD_CHARS]
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in value)


@dataclass(frozen=True)
class LockHolder:
    """Who holds a store, as it wrote itself into the lock file."""

    pid: int | None
    command: str
    started: str
    host: str

    @classmethod
    def current(cls, purpose: str) -> LockHolder:
        argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
        command = f"{purpose}: {shlex.join(argv)}" if argv else purpose
        started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(os.getpid(), command, started, socket.gethostname())

    def to_bytes(self) -> bytes:
        doc = {"pid": self.pid, "command": self.command, "started": self.started, "host": self.host}
        return (json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> LockHolder | None:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        pid = doc.get("pid")
        return cls(
            pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            _shown(doc.get("command", "?")),
            _shown(doc.get("started", "?")),
            _shown(doc.get("host", "?")),
        )

    def describe(self) -> str:
        pid = "an unknown pid" if self.pid is None else f"pid {self.pid}"
        return f"{pid} ({self.command}; started {self.started} on {self.host})"


class StoreBusy(Exception):
    """Another process holds the store's lock; the message names it."""

    def __init__(self, store_dir: Path, holder: LockHolder | None, *, advice: str = "") -> None:
        who = (
            holder.describe()
            if holder is not None
            else "another process (it has not written its name into the lock file yet)"
        )
        message = f"store {_shown(store_dir)} is in use by {who}; only one process may write a store"
        super().__init__(f"{message}. {advice}" if advice else message)
        self.store_dir = store_dir
        self.holder = holder


class StoreLock:
    """The held lock of one store. Release it with :meth:`release` (or leave the ``with`` block)."""

    def __init__(self, store_dir: Path, fd: int) -> None:
        self.store_dir = store_dir
        self.path = store_dir / LOCK_FILE_NAME
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"StoreLock(path={str(self.path)!r}, held={self._fd is not None})"

    @classmethod
    def acquire(cls, store_dir: Path, *, purpose: str, advice: str = "") -> StoreLock:
        """Take the lock of ``store_dir`` (which must exist) or raise :class:`StoreBusy` at once.

        ``purpose`` says what this process is ("station agent", "edge tag") to whoever is refused
        later; ``advice`` is added to the refusal we give when someone else holds it. Raises
        :class:`OSError` when the lock file cannot be opened (a symlink or other non-file planted
        there is refused, never followed).
        """
        path = store_dir / LOCK_FILE_NAME
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(exc.errno, f"{path} is a symbolic link, not the store's lock file") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{path} is not a regular file; it cannot be the store's lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreBusy(store_dir, _read_holder(fd), advice=advice) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, LockHolder.current(purpose).to_bytes(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(store_dir, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Forget the holder's name and let go of the lock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> LockHolder | None:
    try:
        data = os.pread(fd, _MAX_HOLDER_BYTES, 0)
    except OSError:
        return None
    return LockHolder.from_bytes(data) if data else None
