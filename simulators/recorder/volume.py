"""Recorder volumes: the files a body-worn recorder shows when it turns into a USB disk.

`populate_volume` writes what a real recorder holds: `PARAM.INI` (GBK, CRLF) with its identity, video
under `DCIM/100MEDIA/`, photos under `PHOTO/`, audio under `AUDIO/`, named
`{警号}_{设备号}_{YYYYMMDDHHMMSS}_{seq:04d}[_IMP].{EXT}` with mtimes at the recording time.

`mount_volume` mounts a populated folder at a mount point the way production does (systemd-mount, run
by the udev rule): a real mount in the kernel's table, over a directory that exists before the docking
and stays after the unmount, so that the next docking in the same bay mounts the same directory
again. The mount is a bind mount of the backing folder when the simulator runs as root (deletions by
the station persist in the folder), else, or when faults or a rate limit are wanted, a FUSE filesystem
served by a subprocess (`simulators.recorder.faultfs_main`) that passes reads through to the backing
folder while injecting faults and throttling. `MountedVolume.unmount()` is the recorder pulled out: a
clean unmount, or a lazy one while the station still holds files open.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import random
import re
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO

from drivers.usb.mountinfo import MountEntry
from simulators.recorder import mounts
from simulators.recorder.faultfs import FUSE_FSNAME, FUSE_SUBTYPE, VolumeFaults, fusermount_unmount
from simulators.recorder.media import make_jpg, make_mp4, make_wav
from simulators.recorder.mounts import absolute, is_mounted, mount_at

log = logging.getLogger(__name__)

__all__ = [
    "MountKind",
    "MountedVolume",
    "VolumeError",
    "VolumeFaults",
    "VolumeMountError",
    "is_mounted",
    "mount_at",
    "mount_volume",
    "populate_volume",
    "recorder_file_name",
]

VIDEO_DIR = Path("DCIM/100MEDIA")
PHOTO_DIR = Path("PHOTO")
AUDIO_DIR = Path("AUDIO")
PARAM_INI = "PARAM.INI"
MIB = 1024 * 1024
# Where a volume's content starts when the caller gives no start: fixed so a seed alone decides the bytes.
DEFAULT_START = datetime(2024, 6, 3, 8, 0, 0)

FUSE_DEVICE = Path("/dev/fuse")
FUSERMOUNT = "fusermount3"
MOUNT_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0

_IDENT_RE = re.compile(r"[A-Za-z0-9-]{1,32}")
_EXT_RE = re.compile(r"[A-Za-z0-9]{1,5}")
_TEXT_MAX_CHARS = 64


class VolumeError(Exception):
    """A volume could not be populated, mounted or unmounted; says what was expected and what came."""


class VolumeMountError(VolumeError):
    """The mount could not be made (no privilege for a bind mount, missing /dev/fuse or fusermount3, a
    FUSE process that did not start...)."""


def recorder_file_name(officer_no: str, device_serial: str, recorded_at: datetime, seq: int,
                       important: bool, ext: str) -> str:
    """`{警号}_{设备号}_{YYYYMMDDHHMMSS}_{seq:04d}[_IMP].{EXT}`.

    E.g. `123456_1234567_20240603080000_0001.MP4`; `ext` may carry a dot and any case.
    """
    for role, value in (("officer number", officer_no), ("device serial", device_serial)):
        if not _IDENT_RE.fullmatch(value):
            raise VolumeError(f"{role} must match [A-Za-z0-9-]{{1,32}}, got {value!r}")
    if not 0 <= seq <= 9999:
        raise VolumeError(f"sequence number must be 0..9999, got {seq}")
    bare_ext = ext.removeprefix(".")
    if not _EXT_RE.fullmatch(bare_ext):
        raise VolumeError(f"extension must be 1-5 letters/digits, got {ext!r}")
    imp = "_IMP" if important else ""
    return f"{officer_no}_{device_serial}_{recorded_at:%Y%m%d%H%M%S}_{seq:04d}{imp}.{bare_ext.upper()}"


def _check_text(role: str, value: str) -> None:
    if len(value) > _TEXT_MAX_CHARS or any(ord(c) < 0x20 or c in "\x7f=[]" for c in value):
        raise VolumeError(f"{role} must be <= {_TEXT_MAX_CHARS} printable chars without '=[]', got {value!r}")
    try:
        value.encode("gbk")
    except UnicodeEncodeError as exc:
        raise VolumeError(f"{role} {value!r} cannot be written in GBK as a recorder would") from exc


def param_ini_bytes(*, device_serial: str, officer_no: str, officer_name: str, unit_code: str,
                    unit_name: str) -> bytes:
    """PARAM.INI as recorders write it: a [ZFY] section, GBK text, CRLF line ends."""
    lines = [
        "[ZFY]",
        f"DevNo={device_serial}",
        f"PolNo={officer_no}",
        f"UserName={officer_name}",
        f"UnitNo={unit_code}",
        f"CorpName={unit_name}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("gbk")


def _file_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "big")


def _plan_kinds(files: int, rng: random.Random) -> list[str]:
    """About 70% video, the rest photos and audio; at least one video, and video first."""
    if files <= 0:
        return []
    videos = max(1, round(files * 0.7))
    others = files - videos
    photos = (others + 1) // 2
    rest = ["JPG"] * photos + ["WAV"] * (others - photos)
    kinds = ["MP4"] * (videos - 1) + rest
    rng.shuffle(kinds)
    return ["MP4", *kinds]


def populate_volume(volume_dir: Path, *, device_serial: str, officer_no: str, officer_name: str,
                    unit_code: str, unit_name: str, files: int, file_mb: float, seed: int,
                    start: datetime | None = None, spacing_s: int | None = None,
                    first_index: int = 0) -> list[Path]:
    """Fill `volume_dir` like a recorder after a shift; returns the media files in recording order.

    `file_mb` is each MP4's size in MiB (exact); photos (~100 KB) and audio (1-4 s WAV) are small.
    Every 4th video is marked important (`_IMP`). The same arguments give the same bytes.
    `start` is the first recording's device-local time (naive), default DEFAULT_START. `spacing_s`: the
    recordings start this far apart (default: 1-30 min, seeded). `first_index`: recordings already on the
    volume (a recorder that records again numbers on, and its new files get seeds of their own).
    """
    for role, value in (("device serial", device_serial), ("officer number", officer_no)):
        if not _IDENT_RE.fullmatch(value):
            raise VolumeError(f"{role} must match [A-Za-z0-9-]{{1,32}}, got {value!r}")
    if unit_code and not _IDENT_RE.fullmatch(unit_code):
        raise VolumeError(f"unit code must match [A-Za-z0-9-]{{0,32}}, got {unit_code!r}")
    _check_text("officer name", officer_name)
    _check_text("unit name", unit_name)
    if files < 0 or files > 9999:
        raise VolumeError(f"files must be 0..9999, got {files}")
    mp4_bytes = round(file_mb * MIB)
    if files and mp4_bytes <= 0:
        raise VolumeError(f"file_mb must be > 0, got {file_mb}")

    volume_dir.mkdir(parents=True, exist_ok=True)
    (volume_dir / PARAM_INI).write_bytes(param_ini_bytes(
        device_serial=device_serial, officer_no=officer_no, officer_name=officer_name,
        unit_code=unit_code, unit_name=unit_name))
    rng = random.Random(f"volume:{seed}")
    recorded_at = start or DEFAULT_START
    made: list[Path] = []
    videos = 0
    for index, kind in enumerate(_plan_kinds(files, rng), start=first_index):
        file_seed = _file_seed(seed, index)
        important = kind == "MP4" and videos % 4 == 3
        name = recorder_file_name(officer_no, device_serial, recorded_at, index + 1, important, kind)
        if kind == "MP4":
            videos += 1
            path = volume_dir / VIDEO_DIR / name
            make_mp4(path, size_bytes=mp4_bytes, seed=file_seed, creation_time=recorded_at)
        elif kind == "JPG":
            path = volume_dir / PHOTO_DIR / name
            make_jpg(path, seed=file_seed)
        else:
            path = volume_dir / AUDIO_DIR / name
            make_wav(path, seconds=1 + rng.randrange(4), seed=file_seed)
        # FAT keeps the recorder's wall-clock time with no zone; the station mounts vfat with tz=UTC
        # (systemd/99-evidence-edge.rules), so the mtime read as UTC is that wall time unchanged.
        moment = recorded_at.replace(tzinfo=UTC).timestamp()
        os.utime(path, (moment, moment))
        made.append(path)
        recorded_at += timedelta(seconds=spacing_s if spacing_s is not None else rng.randint(60, 1800))
    log.info("populated %s for recorder %s: %d files", volume_dir, device_serial, len(made))
    return made


# -- mounting --------------------------------------------------------------------------------------------


class MountKind(StrEnum):
    """How a volume is mounted. Both are real mounts in the kernel's table, over a directory that
    exists before and stays after, as systemd-mount does it in production."""

    # `mount --bind` of the backing folder, remounted nosuid,nodev,noexec: the kernel serves the files
    # (page cache and all) like a vfat mount. Needs root (CAP_SYS_ADMIN).
    BIND = "bind"
    # A FUSE filesystem in its own process (`faultfs_main`): any user with /dev/fuse and fusermount3;
    # injects faults, throttles, and can make the mount appear before its content is readable.
    FUSE = "fuse"


def default_mount_kind() -> MountKind:
    """Bind mounts where the kernel lets us (root), else FUSE, which any user can mount."""
    return MountKind.BIND if os.geteuid() == 0 else MountKind.FUSE


def is_simulator_fuse(entry: MountEntry) -> bool:
    """A FUSE volume of this simulator (see faultfs._mount_options)."""
    return entry.fs_type == f"fuse.{FUSE_SUBTYPE}" and entry.source == FUSE_FSNAME


class MountedVolume:
    """A recorder volume mounted at `mount_point` until `unmount()`, which leaves the directory."""

    def __init__(self, mount_point: Path, backing_dir: Path, kind: MountKind, *,
                 process: subprocess.Popen[bytes] | None = None, lifeline_fd: int | None = None,
                 stderr_log: IO[bytes] | None = None) -> None:
        self.mount_point = mount_point
        self.backing_dir = backing_dir
        self.kind = kind
        self.identity: tuple[int, int, int, str, str, str] | None = None  # set once mounted
        self._process = process
        self._lifeline_fd = lifeline_fd
        self._stderr_log = stderr_log
        self._lock = threading.Lock()
        self._unmounted = False

    @property
    def uses_fuse(self) -> bool:
        return self.kind is MountKind.FUSE

    def _ours_on_top(self) -> bool:
        entry = mount_at(self.mount_point)
        return entry is not None and entry.identity == self.identity

    @property
    def alive(self) -> bool:
        """Mounted and serving: False after unmount, an unplug fault, or the FUSE process dying."""
        if self._unmounted:
            return False
        if self._process is not None and self._process.poll() is not None:
            return False
        return self._ours_on_top()

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines the FUSE process wrote to stderr (for failure reports)."""
        if self._stderr_log is None or self._stderr_log.closed:
            return ""
        self._stderr_log.seek(0)
        return "\n".join(self._stderr_log.read().decode("utf-8", "replace").splitlines()[-lines:])

    def unmount(self) -> None:
        """Take the volume away, as pulling the recorder out does: a clean unmount, or a lazy one while
        files are open (the kernel's answer to a USB disk that is gone). Idempotent; the mount point
        directory stays, as systemd leaves it."""
        with self._lock:
            if self._unmounted:
                return
            if self.kind is MountKind.BIND:
                self._unmount_bind()
            else:
                self._unmount_fuse()
            self._unmounted = True
        log.info("unmounted %s", self.mount_point)

    def _unmount_bind(self) -> None:
        if self._ours_on_top():
            try:
                mounts.umount_syscall(self.mount_point, lazy=False)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise VolumeError(f"cannot unmount {self.mount_point}: {exc.strerror}") from exc
                try:
                    mounts.umount_syscall(self.mount_point, lazy=True)
                except OSError as again:
                    raise VolumeError(f"cannot unmount {self.mount_point}: {again.strerror}") from again
        mounts.unmounted(self.mount_point)

    def _unmount_fuse(self) -> None:
        assert self._process is not None
        clean = not self._ours_on_top() or fusermount_unmount(self.mount_point)
        # If busy (the station still holds a file open), detach now; the process is stopped below, so
        # reads through descriptors still open fail as they do on a disk that is gone.
        if not clean and not fusermount_unmount(self.mount_point, lazy=True) and self._ours_on_top():
            raise VolumeError(f"cannot unmount {self.mount_point}: fusermount3 -u and -uz both failed")
        # After a clean unmount the process ends by itself; a detached one may wait for open files.
        _stop_process(self._process, grace_s=STOP_TIMEOUT_S if clean else 0.0)
        if self._lifeline_fd is not None:
            # Only now: closing it earlier would make the process try to unmount a second time.
            os.close(self._lifeline_fd)
            self._lifeline_fd = None
        if self._stderr_log is not None:
            self._stderr_log.close()

    def __enter__(self) -> MountedVolume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def __repr__(self) -> str:
        return f"MountedVolume({str(self.mount_point)!r}, {self.kind}, alive={self.alive})"


def unmount_stale(mount_point: Path) -> None:
    """Unmount whatever is mounted at `mount_point` (a volume a killed bus left behind), lazily."""
    entry = mount_at(mount_point)
    if entry is None:
        return
    if entry.fs_type.startswith("fuse"):
        if not fusermount_unmount(mount_point):
            fusermount_unmount(mount_point, lazy=True)
        return
    try:
        mounts.umount_syscall(mount_point, lazy=True)
    except OSError as exc:
        raise VolumeError(f"cannot unmount the stale volume at {mount_point}: {exc.strerror}") from exc
    mounts.unmounted(mount_point)


def _is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except NotADirectoryError:
        return False


def _stop_process(process: subprocess.Popen[bytes], *, grace_s: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("FUSE process %d ignored SIGTERM; killing it", process.pid)
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


def mount_volume(backing_dir: Path, mount_point: Path, *, faults: VolumeFaults | None = None,
                 rate_limit_bytes_per_s: int | None = None, unplug_marker: Path | None = None,
                 kind: MountKind | None = None) -> MountedVolume:
    """Mount `backing_dir`'s files at `mount_point`, an empty directory (made if absent, as
    systemd-mount does at a bay's first docking; it is left in place by `unmount()`).

    `kind` None: FUSE when faults or a rate limit are wanted, else `default_mount_kind()`. Raises
    VolumeError / VolumeMountError saying what is wrong or missing.
    """
    st = _lstat_or_none(backing_dir)
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise VolumeError(f"backing dir {backing_dir} must be an existing directory (not a symlink)")
    if rate_limit_bytes_per_s is not None and rate_limit_bytes_per_s <= 0:
        raise VolumeError(f"rate limit must be > 0 bytes/s, got {rate_limit_bytes_per_s}")
    wants_fuse = (faults is not None and faults.any) or rate_limit_bytes_per_s is not None
    if kind is None:
        kind = MountKind.FUSE if wants_fuse else default_mount_kind()
    elif kind is MountKind.BIND and wants_fuse:
        raise VolumeError("faults and rate limits need a FUSE mount, not a bind mount")
    if is_mounted(mount_point):
        raise VolumeError(f"{mount_point} is already a mount point: unmount the old volume first")
    mount_st = _lstat_or_none(mount_point)
    if mount_st is not None and (not stat.S_ISDIR(mount_st.st_mode) or not _is_empty_dir(mount_point)):
        raise VolumeError(f"mount point {mount_point} must be absent or an empty directory")
    if kind is MountKind.FUSE:
        check_fuse_available()
    mount_point.mkdir(parents=True, exist_ok=True)
    if kind is MountKind.BIND:
        return _mount_bind(backing_dir, mount_point)
    return _mount_fuse(backing_dir, mount_point, faults or VolumeFaults(), rate_limit_bytes_per_s,
                       unplug_marker)


def _lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _mount_bind(backing_dir: Path, mount_point: Path) -> MountedVolume:
    try:
        mounts.mount_syscall(backing_dir, mount_point, mounts.MS_BIND)
    except OSError as exc:
        hint = " (bind mounts need root; as another user volumes are FUSE mounts)" \
            if exc.errno == errno.EPERM else ""
        raise VolumeMountError(f"cannot bind-mount {backing_dir} at {mount_point}: {exc.strerror}{hint}") \
            from exc
    volume = MountedVolume(mount_point, backing_dir, MountKind.BIND)
    try:
        # The options the udev rule gives a recorder volume (a bind mount takes them on a remount).
        options = mounts.MS_REMOUNT | mounts.MS_BIND | mounts.MS_NOSUID | mounts.MS_NODEV | mounts.MS_NOEXEC
        mounts.mount_syscall(None, mount_point, options)
        entry = mount_at(mount_point)
        if entry is None:
            raise VolumeMountError(f"{mount_point} is not in the mount table after mounting it")
        mounts.mounted(mount_point, entry)
    except BaseException:
        with contextlib.suppress(OSError):
            mounts.umount_syscall(mount_point, lazy=True)
        raise
    volume.identity = entry.identity
    log.info("mounted %s at %s (bind, mount id %d)", backing_dir, mount_point, entry.mount_id)
    return volume


def check_fuse_available() -> None:
    """Raise VolumeMountError naming what is missing for FUSE volumes."""
    if not FUSE_DEVICE.exists():
        raise VolumeMountError(
            f"FUSE volumes need {FUSE_DEVICE}, which does not exist (load the fuse module; in a container "
            "run with --device /dev/fuse --cap-add SYS_ADMIN)"
        )
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        raise VolumeMountError(f"FUSE volumes need read/write access to {FUSE_DEVICE} (uid {os.geteuid()})")
    if shutil.which(FUSERMOUNT) is None:
        raise VolumeMountError(f"FUSE volumes need {FUSERMOUNT} on PATH (Debian: apt-get install fuse3)")


def fuse_command(backing_dir: Path, mount_point: Path, faults: VolumeFaults,
                 rate_limit_bytes_per_s: int | None, unplug_marker: Path | None, *,
                 ready_fd: int, lifeline_fd: int) -> list[str]:
    """argv of the filesystem process (pure)."""
    argv = [sys.executable, "-m", "simulators.recorder.faultfs_main",
            "--backing", str(backing_dir), "--mount-point", str(mount_point), *faults.to_args(),
            "--ready-fd", str(ready_fd), "--lifeline-fd", str(lifeline_fd)]
    if rate_limit_bytes_per_s is not None:
        argv += ["--rate-limit-bytes-per-s", str(rate_limit_bytes_per_s)]
    if unplug_marker is not None:
        argv += ["--unplug-marker", str(unplug_marker)]
    return argv


def _mount_fuse(backing_dir: Path, mount_point: Path, faults: VolumeFaults,
                rate_limit_bytes_per_s: int | None, unplug_marker: Path | None) -> MountedVolume:
    ready_r, ready_w = os.pipe()
    lifeline_r, lifeline_w = os.pipe()
    # Append mode: the child shares the file offset, and reading the tail must not make it overwrite.
    # Owned by the MountedVolume from here on, closed in its unmount().
    stderr_log = tempfile.TemporaryFile(mode="a+b", prefix="faultfs-")  # noqa: SIM115
    argv = fuse_command(backing_dir.resolve(), absolute(mount_point), faults, rate_limit_bytes_per_s,
                        unplug_marker.resolve() if unplug_marker else None,
                        ready_fd=ready_w, lifeline_fd=lifeline_r)
    env = dict(os.environ)
    # The child must import this very checkout of `simulators`, wherever the caller's cwd is.
    project_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr_log, stderr=stderr_log,
                                   pass_fds=(ready_w, lifeline_r), env=env, start_new_session=True)
    except OSError as exc:
        for fd in (ready_r, ready_w, lifeline_r, lifeline_w):
            os.close(fd)
        stderr_log.close()
        raise VolumeMountError(f"cannot start the FUSE process for {mount_point}: {exc}") from exc
    os.close(ready_w)
    os.close(lifeline_r)
    volume = MountedVolume(mount_point, backing_dir, MountKind.FUSE, process=process,
                           lifeline_fd=lifeline_w, stderr_log=stderr_log)
    try:
        volume.identity = _await_ready(ready_r, process, mount_point).identity
    except BaseException as exc:
        tail = volume.stderr_tail()
        try:
            volume.unmount()
        except VolumeError:
            log.exception("cleanup after a failed mount of %s", mount_point)
        if isinstance(exc, VolumeMountError):
            raise VolumeMountError(f"{exc}\nFUSE process stderr:\n{tail}") from None
        raise
    finally:
        os.close(ready_r)
    log.info("mounted %s at %s (FUSE pid %d, faults %s, rate %s B/s)", backing_dir, mount_point, process.pid,
             faults.to_cli_string() or "none", rate_limit_bytes_per_s)
    return volume


def _await_ready(ready_fd: int, process: subprocess.Popen[bytes], mount_point: Path) -> MountEntry:
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    # The child writes "R" from the FUSE init callback; EOF means it died before getting there.
    readable, _, _ = select.select([ready_fd], [], [], MOUNT_TIMEOUT_S)
    if not readable:
        raise VolumeMountError(f"FUSE process for {mount_point} not ready after {MOUNT_TIMEOUT_S:.0f} s")
    if os.read(ready_fd, 1) != b"R":
        try:
            code: int | str | None = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = "no status"
        raise VolumeMountError(f"FUSE process for {mount_point} exited ({code}) before mounting")
    # The mount is in the table before the kernel sends FUSE_INIT, so this loop rarely turns. Only the
    # table is read: the filesystem itself may not answer yet (the ready_delay_ms fault).
    while (entry := mount_at(mount_point)) is None or not entry.fs_type.startswith("fuse"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise VolumeMountError(f"{mount_point} did not appear as a mount point")
        time.sleep(0.005)
    return entry
