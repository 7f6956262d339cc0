"""Enumerate the files of a recorder volume without trusting anything the volume says.

The volume is a hostile file system: names may be non-UTF-8, contain separators or `..` (a FUSE or
corrupt FAT driver can return anything from readdir), entries may be symlinks, FIFOs or device nodes,
and directories may loop. Every directory is opened relative to its parent's descriptor with
O_NOFOLLOW, so nothing outside the volume is ever reached; rejected entries are reported, not skipped
silently, so each becomes a ledger event.

One file is one item: a directory that lists an entry twice, or a second name of a listed file (the
same inode), is refused with a reason naming the first. A name is kept as its exact bytes
(`VolumeFile.parts`, `raw_path`, and the `key` made from them); its readable form (`display_path`:
UTF-8, else GB18030 as Chinese recorders write GB2312/GBK names on FAT, else escaped) is only for
reading, since different byte strings can read alike.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
MAX_NAME_BYTES = 255


KEY_HEX_PREFIX = "hex:"


@dataclass(frozen=True)
class VolumeFile:
    """A regular file on the volume, addressed by its path components (raw bytes, never joined)."""

    parts: tuple[bytes, ...]
    size: int
    mtime_ns: int
    inode: tuple[int, int] = (0, 0)  # (st_dev, st_ino) as listed: tells two names of one file

    @property
    def raw_path(self) -> bytes:
        """The exact bytes of the relative path (for the record; never used to open anything)."""
        return b"/".join(self.parts)

    @property
    def display_path(self) -> str:
        """A readable relative path for manifests and ledger entries (never used to open anything;
        not unique when the path is not UTF-8: `raw_path` is). Shown through `printable`."""
        return "/".join(readable_name(p) for p in self.parts)

    @property
    def key(self) -> str:
        """Stable text key, one per exact path: the UTF-8 path, or `hex:` + the hex of the raw bytes
        when the path is not UTF-8 (or is UTF-8 text that itself starts with `hex:`)."""
        raw = self.raw_path
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return KEY_HEX_PREFIX + raw.hex()
        return KEY_HEX_PREFIX + raw.hex() if text.startswith(KEY_HEX_PREFIX) else text

    @property
    def name(self) -> str:
        return readable_name(self.parts[-1])

    @property
    def path_is_utf8(self) -> bool:
        try:
            self.raw_path.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    @property
    def readable_from(self) -> str:
        """How `display_path` was made from the bytes: utf-8, gb18030, or escaped (\\xNN for bytes
        that decode in neither)."""
        if self.path_is_utf8:
            return "utf-8"
        return "gb18030" if all(_decodes(p, "gb18030") for p in self.parts) else "escaped"


@dataclass(frozen=True)
class Rejected:
    path: str
    reason: str


# A recorder's busiest folder holds a few thousand clips; FAT allows 65,534 entries per directory and
# exFAT about 2.8 million. Names are held per directory to sort them, so these bound the memory a
# hostile volume can make the station spend on listing it (about 100 bytes a name).
MAX_DIR_ENTRIES = 20_000
MAX_VOLUME_ENTRIES = 250_000
MAX_REJECTED = 1000


@dataclass
class Listing:
    files: list[VolumeFile] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    rejected_not_listed: int = 0  # beyond MAX_REJECTED a hostile volume only gets counted
    max_dir_entries: int = MAX_DIR_ENTRIES
    max_entries: int = MAX_VOLUME_ENTRIES
    entries: int = 0  # directory entries looked at, on the whole volume
    stopped: bool = False  # the volume held more than max_entries: the walk ended there
    # What tells a repeated entry or a second name of a listed file (never offered twice).
    listed: set[tuple[bytes, ...]] = field(default_factory=set)
    by_inode: dict[tuple[int, int], VolumeFile] = field(default_factory=dict)

    def reject(self, path: str, reason: str) -> None:
        if len(self.rejected) < MAX_REJECTED:
            self.rejected.append(Rejected(path, reason))
        else:
            self.rejected_not_listed += 1


def readable_name(raw: bytes) -> str:
    """A name component as text: UTF-8, else GB18030 (recorders with a Chinese code page write GB2312
    or GBK names on FAT; GB18030 decodes both, one to one), else UTF-8 with each undecodable byte as
    \\xNN. Several byte strings can give the same text: the exact bytes are kept beside it."""
    for encoding in ("utf-8", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="backslashreplace")


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


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


def _open_root(root: Path | int) -> int:
    """A new descriptor of the volume root: opened from its path, or from a session's bound root
    descriptor (see :mod:`edge.sources.usb.mounted`), so that no path is looked up again."""
    if isinstance(root, int):
        return os.open(".", DIR_FLAGS, dir_fd=root)
    return os.open(root, DIR_FLAGS)


def list_volume(
    root: Path | int,
    *,
    max_files: int,
    max_depth: int,
    max_dir_entries: int = MAX_DIR_ENTRIES,
    max_entries: int = MAX_VOLUME_ENTRIES,
) -> Listing:
    """All regular files under `root` (a path, or an open root descriptor), with every entry that was
    refused and why.

    Directories are read as a stream (never a whole listing in memory at once): beyond
    `max_dir_entries` entries in one directory, or `max_entries` on the whole volume, the rest is not
    looked at, and a refusal says so."""
    listing = Listing(max_dir_entries=max_dir_entries, max_entries=max_entries)
    root_fd = _open_root(root)
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
    if listing.stopped:
        return
    try:
        names = _entry_names(dir_fd, prefix, listing)
    except OSError as exc:
        # The kernel refuses impossible names from a (FUSE) file system with EIO; a failing card too.
        where = "/".join(readable_name(p) for p in prefix) or "."
        if not prefix:
            raise  # the volume root itself cannot be read: the caller treats the volume as gone
        listing.reject(where, f"cannot list directory: {exc.strerror or exc}")
        return
    for raw in names:
        where = "/".join(readable_name(p) for p in (*prefix, raw))
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
            found = VolumeFile((*prefix, raw), info.st_size, info.st_mtime_ns, (info.st_dev, info.st_ino))
            if found.parts in listing.listed:
                # A FUSE or damaged FAT directory that repeats an entry: one path opens one file.
                listing.reject(where, "listed twice in its directory: acquired once")
                continue
            same = _same_file(listing, found)
            if same is not None:
                listing.reject(
                    where,
                    f"another name of the file {same.display_path} (same inode, size and mtime: a hard "
                    "link or an alias): acquired once, under that name",
                )
                continue
            if len(listing.files) >= max_files:
                listing.reject(where, f"more than {max_files} files on the volume")
                continue
            listing.files.append(found)
            listing.listed.add(found.parts)
            if info.st_ino:
                listing.by_inode[found.inode] = found
        else:
            listing.reject(where, f"not a regular file ({_kind(mode)})")


def _entry_names(dir_fd: int, prefix: tuple[bytes, ...], listing: Listing) -> list[bytes]:
    """The names in a directory, sorted, at most `listing.max_dir_entries` of them, read as a stream
    (scandir on a descriptor yields str with surrogate escapes; fsencode restores the exact bytes)."""
    names: list[bytes] = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if listing.entries >= listing.max_entries:
                listing.stopped = True
                listing.reject(
                    ".", f"more than {listing.max_entries} entries on the volume: the rest were not looked at"
                )
                break
            if len(names) >= listing.max_dir_entries:
                where = "/".join(readable_name(p) for p in prefix) or "."
                limit = listing.max_dir_entries
                listing.reject(where, f"directory holds more than {limit} entries: the rest not looked at")
                break
            listing.entries += 1
            names.append(os.fsencode(entry.name))
    names.sort()
    return names


def _same_file(listing: Listing, file: VolumeFile) -> VolumeFile | None:
    """The file already listed that `file` is another name of, if any.

    One file, one item: a hard link, or a FUSE volume that shows one file under two names, reaches the
    same file by another name. The same inode is the same file; size and mtime must agree too, so that
    a file system that numbers inodes carelessly cannot make two different files one (inode 0 never
    counts). Nothing is lost if it lies even so: the second name is not erased with the first, and is
    acquired at the next docking as a file of its own (a `duplicate` when its bytes are the same).
    """
    if not file.inode[1]:
        return None
    same = listing.by_inode.get(file.inode)
    if same is None or (same.size, same.mtime_ns) != (file.size, file.mtime_ns):
        return None
    return same


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


def _open_parent(root: Path | int, file: VolumeFile) -> int:
    """The directory holding `file`, reached component by component with O_NOFOLLOW from the root."""
    fd = _open_root(root)
    try:
        for part in file.parts[:-1]:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_volume_file(root: Path | int, file: VolumeFile) -> int:
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


def unlink_volume_file(
    root: Path | int,
    file: VolumeFile,
    *,
    check: Callable[[os.stat_result], None] | None = None,
    still_there: Callable[[], None] | None = None,
) -> None:
    """Unlink a listed file. With `check`, the file the name leads to is opened first (never
    following a symlink) and `check` sees its fstat; it raises to refuse. `still_there` raises when
    the volume went away meanwhile. (The file is closed before the unlink: a FUSE volume keeps an
    open file that is unlinked as a hidden file on the recorder.)"""
    parent = _open_parent(root, file)
    try:
        if check is not None:
            leaf = os.open(file.parts[-1], FILE_FLAGS, dir_fd=parent)
            try:
                check(os.fstat(leaf))
            finally:
                os.close(leaf)
        if still_there is not None:
            still_there()
        os.unlink(file.parts[-1], dir_fd=parent)
        # The erasure is recorded as done only once the recorder's directory says so durably; a
        # FAT volume pulled right after an unsynced unlink can bring the file back.
        os.fsync(parent)
    finally:
        os.close(parent)
