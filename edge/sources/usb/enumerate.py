"""Enumerate the files of a recorder volume without trusting anything the volume says.

The volume is a hostile file system: names may be non-UTF-8, contain separators or `..` (a FUSE or
corrupt FAT driver can return anything from readdir), entries may be symlinks, FIFOs or device nodes,
and directories may loop. Every directory is opened relative to its parent's descriptor with
O_NOFOLLOW, so nothing outside the volume is ever reached; rejected entries are reported, not skipped
silently, so each becomes a ledger event.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
MAX_NAME_BYTES = 255


@dataclass(frozen=True)
class VolumeFile:
    """A regular file on the volume, addressed by its path components (raw bytes, never joined)."""

    parts: tuple[bytes, ...]
    size: int
    mtime_ns: int

    @property
    def display_path(self) -> str:
        """A printable relative path for logs and manifests (never used to open anything)."""
        return "/".join(_display(p) for p in self.parts)

    @property
    def key(self) -> str:
        """Stable text key: the UTF-8 path, or `hex:` + hex bytes of the raw path when not UTF-8."""
        raw = b"/".join(self.parts)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "hex:" + raw.hex()

    @property
    def name(self) -> str:
        return _display(self.parts[-1])

    @property
    def name_is_utf8(self) -> bool:
        try:
            self.parts[-1].decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True


@dataclass(frozen=True)
class Rejected:
    path: str
    reason: str


MAX_REJECTED = 1000


@dataclass
class Listing:
    files: list[VolumeFile] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    rejected_not_listed: int = 0  # beyond MAX_REJECTED a hostile volume only gets counted

    def reject(self, path: str, reason: str) -> None:
        if len(self.rejected) < MAX_REJECTED:
            self.rejected.append(Rejected(path, reason))
        else:
            self.rejected_not_listed += 1


def _display(raw: bytes) -> str:
    for encoding in ("utf-8", "gbk"):  # recorders with a Chinese code page write GBK names on FAT
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="backslashreplace")


def name_problem(raw: bytes) -> str | None:
    """Why a directory entry name cannot be a single path component, or None when it can."""
    if raw in (b"", b".", b".."):
        return f"entry name {raw!r} is not a file name"
    if b"/" in raw:
        return "entry name contains '/' (absolute or multi-component path from the device)"
    if b"\x00" in raw:
        return "entry name contains a NUL byte"
    if len(raw) > MAX_NAME_BYTES:
        return f"entry name is {len(raw)} bytes long (limit {MAX_NAME_BYTES})"
    return None


def list_volume(root: Path, *, max_files: int, max_depth: int) -> Listing:
    """All regular files under `root`, with every entry that was refused and why."""
    listing = Listing()
    root_fd = os.open(root, DIR_FLAGS)
    try:
        root_stat = os.fstat(root_fd)
        seen = {(root_stat.st_dev, root_stat.st_ino)}
        _walk(root_fd, (), listing, seen, max_files=max_files, max_depth=max_depth)
    finally:
        os.close(root_fd)
    listing.files.sort(key=lambda f: f.parts)
    return listing


def _walk(
    dir_fd: int,
    prefix: tuple[bytes, ...],
    listing: Listing,
    seen: set[tuple[int, int]],
    *,
    max_files: int,
    max_depth: int,
) -> None:
    try:
        # listdir on a descriptor yields str with surrogate escapes; fsencode restores the exact bytes.
        names = sorted(os.fsencode(name) for name in os.listdir(dir_fd))
    except OSError as exc:
        # The kernel refuses impossible names from a (FUSE) file system with EIO; a failing card too.
        where = "/".join(_display(p) for p in prefix) or "."
        if not prefix:
            raise  # the volume root itself cannot be read: the caller treats the volume as gone
        listing.reject(where, f"cannot list directory: {exc.strerror or exc}")
        return
    for raw in names:
        where = "/".join(_display(p) for p in (*prefix, raw))
        problem = name_problem(raw)
        if problem:
            listing.reject(where, problem)
            continue
        try:
            info = os.stat(raw, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            listing.reject(where, f"cannot stat: {exc.strerror}")
            continue
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            listing.reject(where, "symbolic link (never followed)")
        elif stat.S_ISDIR(mode):
            if len(prefix) + 1 >= max_depth:
                listing.reject(where, f"directory deeper than {max_depth} levels")
                continue
            if (info.st_dev, info.st_ino) in seen:
                listing.reject(where, "directory loop (same directory seen before)")
                continue
            seen.add((info.st_dev, info.st_ino))
            try:
                child = os.open(raw, DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                listing.reject(where, f"cannot open directory: {exc.strerror}")
                continue
            try:
                _walk(child, (*prefix, raw), listing, seen, max_files=max_files, max_depth=max_depth)
            finally:
                os.close(child)
        elif stat.S_ISREG(mode):
            if len(listing.files) >= max_files:
                listing.reject(where, f"more than {max_files} files on the volume")
                continue
            listing.files.append(VolumeFile((*prefix, raw), info.st_size, info.st_mtime_ns))
        else:
            listing.reject(where, f"not a regular file ({_kind(mode)})")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return f"mode {mode:o}"


def _open_parent(root: Path, file: VolumeFile) -> int:
    """The directory holding `file`, reached component by component with O_NOFOLLOW from the root."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for part in file.parts[:-1]:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_volume_file(root: Path, file: VolumeFile) -> int:
    """Open a listed file read-only, never following a symlink anywhere on the way.

    Raises FileNotFoundError when it vanished, and OSError(ELOOP) if a component became a symlink
    since listing; the returned descriptor is checked to be a regular file.
    """
    parent = _open_parent(root, file)
    try:
        leaf = os.open(file.parts[-1], FILE_FLAGS, dir_fd=parent)
    finally:
        os.close(parent)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        raise OSError(errno.EINVAL, "no longer a regular file")
    os.set_blocking(leaf, True)
    return leaf


def unlink_volume_file(root: Path, file: VolumeFile) -> None:
    parent = _open_parent(root, file)
    try:
        os.unlink(file.parts[-1], dir_fd=parent)
        # The erasure is recorded as done only once the recorder's directory says so durably; a
        # FAT volume pulled right after an unsynced unlink can bring the file back.
        os.fsync(parent)
    finally:
        os.close(parent)
