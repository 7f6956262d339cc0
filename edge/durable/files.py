"""File-system primitives of the stores: directory fsync (invariant 4), private modes, page-cache
control, free space.

Everything a store creates is private to the service user: directories 0700, files 0600, set
explicitly after creation, so the result does not depend on the umask of whoever runs the program
(the shipped units set UMask=0077; a shell or a test may not).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import threading
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: Path, mode: int = PRIVATE_DIR_MODE) -> list[Path]:
    """Create `path` and its missing parents, each with exactly `mode`, each made durable in its parent.

    A directory entry is durable only once its parent directory is fsynced; `mkdir(parents=True)`
    alone leaves a power loss free to forget a fresh items/YYYY/MM/DD/ together with the evidence
    renamed into it. Levels are created top down and each parent is fsynced before the next level is
    made inside it. Directories that already exist are left as they are. Returns the directories
    created (a concurrent creator may win a level: that level is still fsynced in its parent).
    Raises NotADirectoryError when a component exists and is not a directory.
    """
    missing: list[Path] = []
    probe = path
    while True:
        try:
            info = os.stat(probe)  # an existing ancestor may be a symlink (/var -> /data/var): follow it
        except FileNotFoundError:
            if probe.parent == probe:
                raise
            missing.append(probe)
            probe = probe.parent
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(f"{probe} exists and is not a directory")
        break
    created: list[Path] = []
    for level in reversed(missing):
        try:
            os.mkdir(level, mode)
        except FileExistsError:
            if not level.is_dir():
                raise NotADirectoryError(f"{level} exists and is not a directory") from None
        else:
            os.chmod(level, mode)  # the umask may have removed bits; it never adds any
            created.append(level)
        fsync_dir(level.parent)
    return created


def ensure_private_dir(path: Path) -> None:
    """`path` exists (made durably when new) with no access for group or others, whatever it had."""
    make_dirs_durable(path)
    info = os.stat(path)
    if stat.S_IMODE(info.st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)


def ensure_private_file(path: Path) -> None:
    """An existing file of the store gets mode 0600 (a file made by an older version, or under another
    umask); a missing one is left missing."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_IMODE(os.lstat(path).st_mode) != PRIVATE_FILE_MODE:
            os.chmod(path, PRIVATE_FILE_MODE, follow_symlinks=False)


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (then make it 0600): for files another
    library creates later with the mode it finds (SQLite gives its -wal and -shm the database's mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)


class DirectorySync:
    """fsync of directories shared by the threads that renamed into them.

    Renames into one directory from several threads need one fsync that starts after the last of
    them, not one each: a caller returns once an fsync of the directory has completed that started
    after its call, whether it ran that fsync itself or another thread did.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested: dict[Path, int] = {}
        self._durable: dict[Path, int] = {}
        self._dir_locks: dict[Path, threading.Lock] = {}

    def sync(self, path: Path) -> None:
        with self._lock:
            mine = self._requested[path] = self._requested.get(path, 0) + 1
            dir_lock = self._dir_locks.setdefault(path, threading.Lock())
        with dir_lock:
            with self._lock:
                if self._durable.get(path, 0) >= mine:
                    return  # an fsync that started after our request has completed
                covers = self._requested[path]
            fsync_dir(path)
            with self._lock:
                # One entry per directory ever synced (the store's day directories): small.
                self._durable[path] = max(self._durable.get(path, 0), covers)


def drop_page_cache(fd: int) -> None:
    """Ask the kernel to forget clean cached pages of `fd`, so the next read comes from the disk.

    Only clean pages are dropped, so the caller fsyncs first. This is how the re-read verification
    checks what the disk holds rather than what the page cache remembers writing.
    """
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def write_atomic(
    target: Path, data: bytes, mode: int = PRIVATE_FILE_MODE, *, sync_dir: bool = True
) -> Path:
    """Write `data` to `target` crash-safely with exactly `mode`: temp file, fsync, rename, directory fsync.

    A crash leaves the old file or the new one, never half of either. With `sync_dir=False` the
    rename is durable only once the caller fsyncs `target.parent` (one fsync for several renames).
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits of `mode`
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(target.parent)
    return target


def remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.<pid>.<token>.tmp`` files of dead processes (a crash during an earlier first run).

    A temporary of a live process is left alone: it may be a concurrent first run about to link it.
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid_text = stale.name[len(path.name) + 2:].split(".", 1)[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            stale.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (never replacing one), write `data` with exactly `mode`, fsync; on failure remove it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits we want
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)


class SmallFileError(Exception):
    """`read_small_file` refused a file or could not read it; the message names the path and says why.
    `exposed`: a private file that group or others can access (the caller says what that means)."""

    def __init__(self, message: str, *, exposed: bool = False) -> None:
        super().__init__(message)
        self.exposed = exposed


def read_small_file(path: Path, max_bytes: int, *, expected: str, private: bool = False) -> bytes:
    """The bytes of the small regular file at `path` (a configuration, a key, a certificate).

    Whatever is planted at the path cannot hang or flood the reader: it is opened without blocking
    (a FIFO), checked to be a regular file before anything is read, and at most `max_bytes` are read.
    `private`: a file that group or others can access is refused. `expected` names what should be there
    ("a TOML file"), for the message of `SmallFileError`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SmallFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _file_kind(info.st_mode)
            raise SmallFileError(
                f"{path}: cannot read: expected {expected}, found {kind} (mode {info.st_mode:o}), "
                "not a regular file"
            )
        if private and info.st_mode & 0o077:
            raise SmallFileError(
                f"{path} has mode {stat.S_IMODE(info.st_mode):04o}: it is readable or writable by group or "
                "others; expected 0600 or stricter",
                exposed=True,
            )
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(max_bytes + 1)
    except OSError as exc:
        raise SmallFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SmallFileError(f"{path}: expected {expected} of at most {max_bytes} bytes, found a larger file")
    return data


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "something else"


def adopt_owner(path: Path, owner_of: Path) -> bool:
    """Give ``path`` (not following a symlink) the owner and group of ``owner_of`` when this process runs
    as root and they differ; True when it changed anything.

    A store belongs to the service user; an administrative command run as root (``sudo edge keys
    rotate``, as the README shows) would otherwise leave root-owned 0600 files in it that the service
    can no longer read, and the agent would stay down. Not root: nothing to do (a process can only
    create files it owns, and the store's own modes keep them private).
    """
    if os.geteuid() != 0:
        return False
    want = os.stat(owner_of)
    try:
        have = os.lstat(path)
    except FileNotFoundError:
        return False
    if (have.st_uid, have.st_gid) == (want.st_uid, want.st_gid):
        return False
    os.chown(path, want.st_uid, want.st_gid, follow_symlinks=False)
    return True
