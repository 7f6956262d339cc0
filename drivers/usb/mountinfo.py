"""The kernel's mount table, `/proc/self/mountinfo` (proc(5)), parsed as a pure function on bytes.

A recorder volume reaches the host as a mount, so the mount table is the truth about which volumes are
attached, and it is the same interface for a kernel vfat mount made by systemd-mount, a FUSE mount
and a bind mount. One line per mount:

    36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)         (6)       (7)    (8) (9)   (10)       (11)

mount id, parent id, major:minor of the filesystem's device, root of the mount inside its filesystem,
mount point, per-mount options, zero or more optional fields (`shared:N`, `master:N`, ...), a lone
`-`, filesystem type, source, per-superblock options. The kernel escapes space, tab, newline and
backslash in paths and names as three-digit octal (`\\040`); paths are bytes, not necessarily UTF-8.

Everything else that reaches this table is chosen by someone else (a FUSE daemon names its own source
and subtype; a mount point may be any path), so a line that does not have this shape is reported as
malformed, never guessed at, and parsing goes on with the next line. Mount ids are reused by the
kernel as soon as a mount is gone, so a mount id is an identity only together with what else the line
says (see `MountEntry.identity`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["MountEntry", "MountTable", "parse_mountinfo", "unescape"]

# Beyond these, a line is not one the kernel wrote: ids are ints, paths are at most PATH_MAX (4096)
# before escaping, so four times that after.
MAX_ID_DIGITS = 10
MAX_FIELD_BYTES = 4 * 4096 + 64
_ESCAPE = re.compile(rb"\\([0-3][0-7]{2})")
_DEVICE = re.compile(rb"([0-9]{1,10}):([0-9]{1,10})")
_FIXED_FIELDS = 6  # before the optional fields
_TAIL_FIELDS = 3  # after the separator


@dataclass(frozen=True)
class MountEntry:
    """One mount. Paths and names are decoded with the file system encoding (surrogate escapes keep
    non-UTF-8 bytes), so `Path(entry.mount_point)` names exactly the directory the kernel means."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    mount_options: str
    optional_fields: tuple[str, ...]
    fs_type: str
    source: str
    super_options: str

    @property
    def device(self) -> str:
        """`MAJOR:MINOR` of the mounted filesystem (the block device for vfat; anonymous for FUSE)."""
        return f"{self.major}:{self.minor}"

    @property
    def identity(self) -> tuple[int, int, int, str, str, str]:
        """What tells one mount from the next one at the same place, as far as this table can: the
        kernel hands a freed mount id to the next mount, so the id alone would make a re-mount of the
        same bay look like the mount before it."""
        return (self.mount_id, self.major, self.minor, self.root, self.fs_type, self.source)


@dataclass(frozen=True)
class MountTable:
    entries: tuple[MountEntry, ...]
    # (line number from 1, why) for every line that was not a mount line; never fatal.
    malformed: tuple[tuple[int, str], ...] = ()

    def at(self, mount_point: str) -> MountEntry | None:
        """The mount visible at `mount_point`: the last one mounted there (mounts stacked on one
        directory appear parent first, and only the top one is seen through the path)."""
        found = [e for e in self.entries if e.mount_point == mount_point]
        if not found:
            return None
        stacked = {e.parent_id for e in found}
        on_top = [e for e in found if e.mount_id not in stacked]
        return (on_top or found)[-1]


def unescape(field: bytes) -> bytes:
    """Undo the kernel's `\\ooo` octal escapes; anything else is left as it is."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field)


def _decode(field: bytes) -> str:
    return os.fsdecode(unescape(field))


def _number(field: bytes, what: str) -> int:
    # bytes.isdigit() is ASCII-only, unlike int() on text (which takes "١٢", "+1", " 1", "1_0").
    if not field.isdigit() or len(field) > MAX_ID_DIGITS:
        raise ValueError(f"{what} {field[:20]!r} is not a decimal number")
    return int(field)


def _parse_line(line: bytes) -> MountEntry:
    fields = line.split(b" ")
    if any(len(f) > MAX_FIELD_BYTES for f in fields):
        raise ValueError("a field is longer than any path")
    try:
        separator = fields.index(b"-", _FIXED_FIELDS)
    except ValueError:
        raise ValueError("no ' - ' separator after the six fixed fields") from None
    if len(fields) - separator - 1 < _TAIL_FIELDS:
        raise ValueError(f"{len(fields) - separator - 1} fields after the separator, expected 3")
    device = _DEVICE.fullmatch(fields[2])
    if device is None:
        raise ValueError(f"device {fields[2][:20]!r} is not MAJOR:MINOR")
    mount_point = _decode(fields[4])
    if not mount_point.startswith("/"):
        raise ValueError("mount point is not an absolute path")
    fs_type = _decode(fields[separator + 1])
    if not fs_type:
        raise ValueError("empty filesystem type")
    return MountEntry(
        mount_id=_number(fields[0], "mount id"),
        parent_id=_number(fields[1], "parent id"),
        major=int(device.group(1)),
        minor=int(device.group(2)),
        # Not always a path: nsfs mounts show `net:[4026531840]`.
        root=_decode(fields[3]),
        mount_point=mount_point,
        mount_options=_decode(fields[5]),
        optional_fields=tuple(_decode(f) for f in fields[_FIXED_FIELDS:separator]),
        fs_type=fs_type,
        source=_decode(fields[separator + 2]),
        # Superblock options with a space in them would have been escaped; keep any extra field.
        super_options=_decode(b" ".join(fields[separator + 3 :])),
    )


def parse_mountinfo(data: bytes) -> MountTable:
    """All mount lines of a mountinfo text, in the kernel's order, and the lines that were not."""
    entries: list[MountEntry] = []
    malformed: list[tuple[int, str]] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line:
            continue
        try:
            entries.append(_parse_line(line))
        except ValueError as exc:
            malformed.append((number, str(exc)))
    return MountTable(tuple(entries), tuple(malformed))
