"""Identity of a recorder that only shows up as a USB disk (mass-storage mode, or MSC-only models).

Such a recorder cannot be asked who it is; its volume says so instead, in order of trust:
`PARAM.INI` at the root (`[ZFY]`/`[ZHY]`: DevNo, PolNo, UserName, UnitNo, CorpName), else
`DCIM/100MEDIA/Info.dat` (first line `devNo;...;polNo`), else the file names
(`{警号}_{设备号}_{time}_{seq}[_IMP].EXT`, or `DCAM_{cam}_{officer}_{date}_{time}[_IMP].EXT`) by majority.

Everything on the volume is hostile input: files are opened without following symlinks, only regular
files are read, reads are capped, every value is validated. The result is a claim for the station to
check against its device whitelist, never proof. See MASS_STORAGE.md.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

MAX_ID_FILE_BYTES = 64 * 1024
MAX_TEXT_CHARS = 64
MAX_DIR_ENTRIES = 4096
MAX_NAMES_FOR_VOTE = 2000
SOURCE_PARAM_INI = "PARAM.INI"
SOURCE_INFO_DAT = "Info.dat"
SOURCE_FILE_NAMES = "file names"
IDENTITY_SECTIONS = ("ZFY", "ZHY")

_IDENT_RE = re.compile(r"[A-Za-z0-9-]{1,32}")
_UNIT_CODE_RE = re.compile(r"[A-Za-z0-9-]{0,32}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NAME_RE = re.compile(
    r"(?P<officer>[A-Za-z0-9-]{1,32})_(?P<serial>[A-Za-z0-9-]{1,32})_(?P<stamp>[0-9]{14})_(?P<seq>[0-9]{1,6})"
    r"(?P<imp>_?IMP)?\.(?P<ext>[A-Za-z0-9]{1,5})",
    re.IGNORECASE | re.ASCII,
)
_DCAM_RE = re.compile(
    r"DCAM_(?P<serial>[A-Za-z0-9-]{1,32})_(?P<officer>[A-Za-z0-9-]{1,32})_(?P<date>[0-9]{8})_(?P<time>[0-9]{6})"
    r"(?P<imp>_?IMP)?\.(?P<ext>[A-Za-z0-9]{1,5})",
    re.IGNORECASE | re.ASCII,
)


class MassStorageError(Exception):
    """The volume gives no usable identity; the message names the file and the problem."""


@dataclass(frozen=True)
class VolumeIdentity:
    """Who a volume claims to belong to. `source`: "PARAM.INI" | "Info.dat" | "file names"."""

    device_serial: str
    officer_no: str
    officer_name: str
    unit_code: str
    unit_name: str
    source: str

    def __post_init__(self) -> None:
        _check_ident("device serial", self.device_serial)
        _check_ident("officer number", self.officer_no)
        if not _UNIT_CODE_RE.fullmatch(self.unit_code):
            raise MassStorageError(f"unit code must match [A-Za-z0-9-]{{0,32}}, got {_clip(self.unit_code)}")
        _check_text("officer name", self.officer_name)
        _check_text("unit name", self.unit_name)
        if self.source not in (SOURCE_PARAM_INI, SOURCE_INFO_DAT, SOURCE_FILE_NAMES):
            raise MassStorageError(f"unknown identity source {self.source!r}")


@dataclass(frozen=True)
class RecorderFileName:
    """A parsed recorder file name. `recorded_at` is naive device-local time; `ext` upper case, no dot."""

    officer_no: str
    device_serial: str
    recorded_at: datetime
    seq: int
    important: bool
    ext: str


def _clip(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _check_ident(role: str, value: str) -> None:
    # Serials and officer numbers end up in paths and ledger keys: no separators, no surprises.
    if not _IDENT_RE.fullmatch(value):
        raise MassStorageError(f"{role} must match [A-Za-z0-9-]{{1,32}}, got {_clip(value)}")


def _check_text(role: str, value: str) -> None:
    if len(value) > MAX_TEXT_CHARS:
        raise MassStorageError(f"{role} must be at most {MAX_TEXT_CHARS} characters, got {len(value)}")
    if _CONTROL_RE.search(value) or "\n" in value or "\r" in value or "\t" in value:
        raise MassStorageError(f"{role} contains control characters: {_clip(value)}")


def _plausibility(text: str) -> float:
    """Share of characters that are ASCII or Chinese: how likely `text` is the intended decoding."""
    if not text:
        return 1.0
    good = sum(1 for c in text if c < "\x80" or "\u4e00" <= c <= "\u9fff" or "\u3000" <= c <= "\u303f"
               or "\uff00" <= c <= "\uffef")
    return good / len(text)


def _decode(data: bytes, what: str) -> str:
    if len(data) > MAX_ID_FILE_BYTES:
        raise MassStorageError(f"{what} is {len(data)} bytes, expected at most {MAX_ID_FILE_BYTES}")
    if data.startswith(b"\xef\xbb\xbf"):
        candidates = [data[3:].decode("utf-8", "replace") if _valid(data[3:], "utf-8") else None]
    else:
        # Devices write GBK, editors UTF-8; a short GBK name can also be valid UTF-8 (as Armenian, say),
        # so when both decode, keep the one that reads as ASCII and Chinese.
        candidates = [data.decode(enc) if _valid(data, enc) else None for enc in ("utf-8", "gbk")]
    texts = [t for t in candidates if t is not None]
    if not texts:
        raise MassStorageError(f"{what} is neither UTF-8 nor GBK text")
    text = max(texts, key=_plausibility)
    if _CONTROL_RE.search(text):
        raise MassStorageError(f"{what} contains binary data (control characters), not text")
    return text


def _valid(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def parse_param_ini(data: bytes) -> VolumeIdentity:
    """Identity from PARAM.INI bytes: section [ZFY] or [ZHY], keys DevNo/PolNo (required),
    UserName/UnitNo/CorpName (optional). Keys and section names are case-insensitive.
    Raises MassStorageError naming the problem (size, encoding, missing or duplicate key, bad value).
    """
    text = _decode(data, SOURCE_PARAM_INI)
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise MassStorageError(f"{SOURCE_PARAM_INI} line {number}: unterminated section header")
            name = line[1:-1].strip().upper()
            if name in IDENTITY_SECTIONS:
                if name in sections:
                    raise MassStorageError(f"{SOURCE_PARAM_INI} line {number}: section [{name}] repeated")
                current = sections[name] = {}
            else:
                current = None
            continue
        if current is None:
            continue  # other vendors' sections are none of our business
        key, sep, value = line.partition("=")
        if not sep:
            raise MassStorageError(f"{SOURCE_PARAM_INI} line {number}: expected KEY=VALUE, got {_clip(line)}")
        key = key.strip().lower()
        if key in current:
            raise MassStorageError(f"{SOURCE_PARAM_INI} line {number}: key {key!r} given twice")
        current[key] = value.strip()
    if not sections:
        raise MassStorageError(f"{SOURCE_PARAM_INI} has no [ZFY] or [ZHY] section")
    if len(sections) > 1:
        raise MassStorageError(f"{SOURCE_PARAM_INI} has both [ZFY] and [ZHY] sections: ambiguous identity")
    (values,) = sections.values()
    for required in ("devno", "polno"):
        if not values.get(required):
            raise MassStorageError(f"{SOURCE_PARAM_INI} lacks {'DevNo' if required == 'devno' else 'PolNo'}")
    return VolumeIdentity(
        device_serial=values["devno"],
        officer_no=values["polno"],
        officer_name=values.get("username", ""),
        unit_code=values.get("unitno", ""),
        unit_name=values.get("corpname", ""),
        source=SOURCE_PARAM_INI,
    )


def parse_info_dat(data: bytes) -> VolumeIdentity:
    """Identity from DCIM/100MEDIA/Info.dat: first line `devNo;...;polNo` (first and last field)."""
    text = _decode(data, SOURCE_INFO_DAT)
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    fields = [f.strip() for f in first.split(";")]
    if len(fields) < 2:
        raise MassStorageError(f"{SOURCE_INFO_DAT} first line must be 'devNo;...;polNo', got {_clip(first)}")
    return VolumeIdentity(device_serial=fields[0], officer_no=fields[-1], officer_name="", unit_code="",
                          unit_name="", source=SOURCE_INFO_DAT)


def parse_recorder_file_name(name: str) -> RecorderFileName | None:
    """Parse a recorder file name; None for anything else (never raises).

    `{officer}_{serial}_{YYYYMMDDHHMMSS}_{seq}[_IMP|IMP].EXT` and
    `DCAM_{cam}_{officer}_{yyyyMMdd}_{HHmmss}[_IMP].EXT` (seq 0: that form has none).
    """
    if not isinstance(name, str) or len(name) > 255:
        return None
    try:
        if name[:5].upper() == "DCAM_" and (match := _DCAM_RE.fullmatch(name)):
            recorded_at = datetime.strptime(match["date"] + match["time"], "%Y%m%d%H%M%S")
            seq = 0
        elif match := _NAME_RE.fullmatch(name):
            recorded_at = datetime.strptime(match["stamp"], "%Y%m%d%H%M%S")
            seq = int(match["seq"])
        else:
            return None
    except ValueError:
        return None  # 14 digits that are not a calendar time
    return RecorderFileName(officer_no=match["officer"], device_serial=match["serial"],
                            recorded_at=recorded_at, seq=seq, important=match["imp"] is not None,
                            ext=match["ext"].upper())


def identity_from_file_names(names: Iterable[str]) -> VolumeIdentity | None:
    """The (officer, device) pair most file names carry; None if no name parses or the vote is tied."""
    votes: Counter[tuple[str, str]] = Counter()
    for name in names:
        parsed = parse_recorder_file_name(name)
        if parsed is not None:
            votes[(parsed.officer_no, parsed.device_serial)] += 1
    ranked = votes.most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    (officer_no, device_serial), _count = ranked[0]
    if len(votes) > 1:
        log.warning("file names on volume disagree on identity: %s", dict(votes.most_common(5)))
    return VolumeIdentity(device_serial=device_serial, officer_no=officer_no, officer_name="",
                          unit_code="", unit_name="", source=SOURCE_FILE_NAMES)


# -- reading a volume ----------------------------------------------------------------------------------

_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_OPEN_DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


def _find_entry(dir_fd: int, wanted: str) -> str | None:
    """The entry named `wanted`, case-insensitively (FAT volumes show either case); bounded scan."""
    if _entry_exists(dir_fd, wanted):
        return wanted
    for count, entry in enumerate(_scan(dir_fd)):
        if count >= MAX_DIR_ENTRIES:
            break
        if entry.casefold() == wanted.casefold():
            return entry
    return None


def _entry_exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def _scan(dir_fd: int) -> Iterator[str]:
    # scandir(fd) works on a dup: it closes what it is given.
    with os.scandir(os.dup(dir_fd)) as entries:
        for entry in entries:
            yield entry.name


def _open_dir(dir_fd: int, name: str) -> int:
    return os.open(name, _OPEN_DIR, dir_fd=dir_fd)


def _read_capped(dir_fd: int, name: str, what: str) -> bytes:
    try:
        fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
    except OSError as exc:
        # ELOOP: the final component is a symlink, refused by O_NOFOLLOW.
        reason = "is a symlink (refused)" if exc.errno == errno.ELOOP else exc.strerror
        raise MassStorageError(f"{what}: {reason}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MassStorageError(f"{what} is not a regular file (mode {oct(st.st_mode)})")
        if st.st_size > MAX_ID_FILE_BYTES:
            raise MassStorageError(f"{what} is {st.st_size} bytes, expected at most {MAX_ID_FILE_BYTES}")
        chunks: list[bytes] = []
        remaining = MAX_ID_FILE_BYTES + 1  # the size may lie (a file still growing): cap what is read
        while remaining > 0 and (chunk := os.read(fd, remaining)):
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise MassStorageError(f"{what}: cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _identity_from_param_ini(root_fd: int) -> VolumeIdentity:
    name = _find_entry(root_fd, "PARAM.INI")
    if name is None:
        raise MassStorageError("PARAM.INI: not present")
    return parse_param_ini(_read_capped(root_fd, name, "PARAM.INI"))


def _identity_from_info_dat(root_fd: int) -> VolumeIdentity:
    fds: list[int] = []
    try:
        current = root_fd
        for component in ("DCIM", "100MEDIA"):
            name = _find_entry(current, component)
            if name is None:
                raise MassStorageError(f"Info.dat: no {component} folder")
            current = _open_dir(current, name)
            fds.append(current)
        name = _find_entry(current, "Info.dat")
        if name is None:
            raise MassStorageError("Info.dat: not present")
        return parse_info_dat(_read_capped(current, name, "DCIM/100MEDIA/Info.dat"))
    except OSError as exc:
        raise MassStorageError(f"Info.dat: cannot open DCIM/100MEDIA: {exc.strerror}") from exc
    finally:
        for fd in fds:
            os.close(fd)


def _media_names(root_fd: int) -> list[str]:
    """Names in DCIM/ and its direct subfolders, without following symlinks, at most MAX_NAMES_FOR_VOTE."""
    names: list[str] = []
    dcim = _find_entry(root_fd, "DCIM")
    if dcim is None:
        return names
    dcim_fd = _open_dir(root_fd, dcim)
    try:
        subdirs: list[str] = []
        for count, entry in enumerate(_scan(dcim_fd)):
            if count >= MAX_DIR_ENTRIES or len(names) >= MAX_NAMES_FOR_VOTE:
                break
            st = os.stat(entry, dir_fd=dcim_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(entry)
            elif stat.S_ISREG(st.st_mode):
                names.append(entry)
        for subdir in sorted(subdirs)[:64]:
            try:
                sub_fd = _open_dir(dcim_fd, subdir)
            except OSError:
                continue
            try:
                for count, entry in enumerate(_scan(sub_fd)):
                    if count >= MAX_DIR_ENTRIES or len(names) >= MAX_NAMES_FOR_VOTE:
                        break
                    names.append(entry)
            finally:
                os.close(sub_fd)
    finally:
        os.close(dcim_fd)
    return names


def read_volume_identity(root: Path | int) -> VolumeIdentity:
    """Identity of the recorder volume mounted at `root` (a path, or an open descriptor of the volume
    root, so that a host that bound itself to one mount reads nothing by path): PARAM.INI, else
    Info.dat, else file names.

    Raises MassStorageError("no identity on volume ...") listing why each source failed.
    """
    try:
        root_fd = os.open(".", _OPEN_DIR, dir_fd=root) if isinstance(root, int) else os.open(root, _OPEN_DIR)
    except OSError as exc:
        where = _where(root)
        raise MassStorageError(f"no identity on volume {where}: cannot open it: {exc.strerror}") from exc
    problems: list[str] = []
    try:
        for reader in (_identity_from_param_ini, _identity_from_info_dat):
            try:
                identity = reader(root_fd)
            except MassStorageError as exc:
                problems.append(str(exc))
                continue
            except OSError as exc:
                problems.append(f"{reader.__name__}: {exc}")
                continue
            _log_skipped(root, problems)
            return identity
        try:
            names = _media_names(root_fd)
        except OSError as exc:
            problems.append(f"file names: cannot list DCIM: {exc.strerror}")
            names = []
        try:
            by_names = identity_from_file_names(names)
        except MassStorageError as exc:
            problems.append(f"file names: {exc}")
            by_names = None
        if by_names is not None:
            _log_skipped(root, problems)
            return by_names
        if names:
            problems.append(f"file names: none of {len(names)} names in DCIM gives a clear identity")
        else:
            problems.append("file names: no files in DCIM")
    finally:
        os.close(root_fd)
    raise MassStorageError(f"no identity on volume {_where(root)}: " + "; ".join(problems))


def _where(root: Path | int) -> str:
    return f"(open root descriptor {root})" if isinstance(root, int) else str(root)


def _log_skipped(root: Path | int, problems: list[str]) -> None:
    if problems:
        log.warning("volume %s: identity from a weaker source because %s", _where(root), "; ".join(problems))
