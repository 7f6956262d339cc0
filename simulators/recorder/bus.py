"""The simulated USB bus (and the systemd-mount that mounts recorder volumes), plus its socket server.

`RecorderBus` owns the recorders: their device logic (device.py), which port each is plugged into,
the address each enumeration got, their volumes and their persisted state. `RecorderBusServer`
serves it as JSON lines on a UNIX socket; `backend.SimulatorBackend` is the pyusb side of that
socket, so the real driver code talks to these recorders exactly as it would through libusb.

State lives under `state_dir/recorders/<device_serial>/`: `state.json` (written atomically; it holds
the device password, as the device's own flash would, so it is created 0600), `volume/` (the backing
folder of the recorder's storage) and, when the fault volume reports an unplug, `UNPLUGGED`.

Volumes are mounted as production mounts them: at `mount_root/<bay directory>`, one directory per USB
port named like udev's ID_PATH_TAG for a disk on that port (`bay_directory_name`), made when the bus
starts for the usual hub ports (and at a port's first docking otherwise) and left in place when the
recorder is pulled out. The next docking in that port mounts the same directory again.
A restart of the bus is a power cycle of the hub: every recorder that was plugged comes back in its
initial mode with a fresh session (no login, lockout cleared), keeping identity, clock and files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import socketserver
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from drivers.usb.mass_storage import parse_recorder_file_name
from drivers.usb.protocol import (
    DEFAULT_VENDOR_ID,
    RecorderInfo,
    RecorderMode,
    RecorderProtocolError,
    RecorderSettings,
    VendorRequest,
    encode_firmware_version,
    encode_id_code,
    encode_password,
)
from simulators.recorder.device import (
    DEFAULT_FIRMWARE_VERSION,
    DEFAULT_STORAGE_TOTAL_BYTES,
    ClockReference,
    FirmwareFault,
    NoAnswerError,
    SetupPacket,
    SimulatedRecorder,
    StallError,
    UsbSerialFault,
    VolumeStats,
    check_usb_serial,
)

if TYPE_CHECKING:
    from simulators.recorder.faultfs import VolumeFaults
    from simulators.recorder.volume import MountedVolume

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
SPEED_HIGH = 3  # libusb_speed LIBUSB_SPEED_HIGH: USB 2.0, 480 Mbit/s
MAX_RPC_LINE_BYTES = 1 << 20
_PORT_PATH_RE = re.compile(r"([1-9][0-9]{0,2})-([1-9][0-9]{0,2}(?:\.[1-9][0-9]{0,2}){0,6})")
# The eight ports of the station's hub: their bay directories exist before any recorder docks.
DEFAULT_BAY_PORTS = tuple(f"1-1.{i}" for i in range(1, 9))


class BusError(Exception):
    """Base of the bus errors; `kind` is the wire name the backend maps to a libusb error."""

    kind = "internal"


class NoDeviceError(BusError):
    kind = "no_device"


class TransferStallError(BusError):
    kind = "stall"


class TransferTimeoutError(BusError):
    kind = "timeout"


class TransferOverflowError(BusError):
    kind = "overflow"


class InvalidRequestError(BusError):
    kind = "invalid"


class UnknownRecorderError(BusError):
    kind = "not_found"


def parse_port_path(port_path: str) -> tuple[int, tuple[int, ...]]:
    """"1-1.3" → (bus 1, port numbers (1, 3)), the sysfs spelling of a USB port."""
    match = _PORT_PATH_RE.fullmatch(port_path)
    if not match:
        raise InvalidRequestError(f"port path: expected BUS-PORT[.PORT...] like '1-1.3', got {port_path!r}")
    bus = int(match.group(1))
    ports = tuple(int(p) for p in match.group(2).split("."))
    if bus > 127 or any(p > 255 for p in ports):
        raise InvalidRequestError(f"port path {port_path!r}: bus must be <= 127 and ports <= 255")
    return bus, ports


def bay_directory_name(port_path: str) -> str:
    """The directory systemd-mount would use for a recorder volume on this port: udev's ID_PATH_TAG of
    the disk (here as the kernel's dummy_hcd host controller names it) plus the partition, e.g.
    "1-1.3" → "platform-dummy_hcd_0-usb-0_1_3_1_0-scsi-0_0_0_0-part1". Stable per port, never chosen
    by the device."""
    bus, ports = parse_port_path(port_path)
    devpath = "_".join(str(p) for p in ports)
    return f"platform-dummy_hcd_{bus - 1}-usb-0_{devpath}_1_0-scsi-0_0_0_0-part1"


@dataclass
class RecorderSpec:
    """Everything that makes one simulated recorder; `add_recorder` turns it into a device + volume."""

    device_serial: str
    usb_serial: str
    officer_no: str
    officer_name: str
    unit_code: str
    unit_name: str
    password: str = field(default="000000", repr=False)
    id_code: str = "EEZ01"
    msc_only: bool = False
    clock_offset_s: float = 0.0
    clock_drift_ppm: float = 0.0
    battery_percent: int = 80
    files: int = 5
    file_mb: float = 1.0
    seed: int = 0
    faults: VolumeFaults | None = None
    rate_limit_bytes_per_s: int | None = None
    tz_offset_min: int = 480
    storage_total_bytes: int = DEFAULT_STORAGE_TOTAL_BYTES
    vendor_id: int = DEFAULT_VENDOR_ID
    # The recorder's files carry its own (offset, drifting) clock instead of a fixed 2024 shift, and it
    # was recording when docked: at plug-in it closes its newest recording, whose mtime becomes the
    # device clock's wall time then (in FAT's 2 s steps). The newest recording starts 5 min to
    # (files - 1) x 29 min + 5 min before the recorder is created.
    recording_until_docked: bool = False
    # An attacker's stick posing as another recorder: its PARAM.INI and file names name this serial
    # instead of its own `device_serial` (which only tells the bus's recorders apart). A stick has no
    # control protocol, so it is mass-storage only.
    claims_device_serial: str = ""
    # A fault of the USB serial: the exact serial string descriptor the device presents instead of
    # `usb_serial` ("" for an empty one, or text that is no identifier). `usb_serial` "" with this None:
    # no serial string at all, as cheap recorders ship. Several recorders may share one `usb_serial`.
    usb_serial_string: str | None = None
    # A fault of the USB serial read: the descriptor names a serial string, but the request STALLs or
    # the device has no LANGID table (`UsbSerialFault`; the text form is kept across a restart).
    usb_serial_fault: UsbSerialFault | None = None
    # What its GET_VERSION says, and a fault of it (`FirmwareFault`: a hostile or broken version string,
    # or firmware that predates the request).
    firmware_version: str = DEFAULT_FIRMWARE_VERSION
    firmware_fault: FirmwareFault | None = None

    def __post_init__(self) -> None:
        if self.usb_serial_fault is not None:
            self.usb_serial_fault = UsbSerialFault(self.usb_serial_fault)
        if self.firmware_fault is not None:
            self.firmware_fault = FirmwareFault(self.firmware_fault)
        encode_firmware_version(self.firmware_version)
        self.info()  # validates serial, officer number, text fields
        if self.claims_device_serial:
            RecorderInfo(self.claims_device_serial, self.officer_no, self.officer_name, self.unit_code,
                         self.unit_name)
            if not self.msc_only:
                raise ValueError("claims_device_serial: a stick posing as a recorder is msc_only")
        encode_password(self.password)
        encode_id_code(self.id_code)
        check_usb_serial(self.usb_serial)
        if not 0 <= self.battery_percent <= 100:
            raise ValueError(f"battery_percent: expected 0..100, got {self.battery_percent}")
        if self.files < 0 or self.file_mb < 0:
            raise ValueError(f"files/file_mb: expected >= 0, got {self.files}/{self.file_mb}")
        if self.rate_limit_bytes_per_s is not None and self.rate_limit_bytes_per_s <= 0:
            raise ValueError(f"rate_limit_bytes_per_s: expected > 0, got {self.rate_limit_bytes_per_s}")

    def info(self) -> RecorderInfo:
        return RecorderInfo(
            device_serial=self.device_serial,
            officer_no=self.officer_no,
            officer_name=self.officer_name,
            unit_code=self.unit_code,
            unit_name=self.unit_name,
        )


@dataclass(frozen=True)
class EnumeratedDevice:
    """What a host sees of one attached device: where it is and its descriptor bytes."""

    key: str
    bus: int
    address: int
    port_numbers: tuple[int, ...]
    speed: int
    device_descriptor: bytes
    configuration_descriptor: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "bus": self.bus,
            "address": self.address,
            "port_numbers": list(self.port_numbers),
            "speed": self.speed,
            "device_descriptor": self.device_descriptor.hex(),
            "configuration_descriptor": self.configuration_descriptor.hex(),
        }


@dataclass(frozen=True)
class RecorderState:
    """A test's view of one recorder, beyond what USB shows."""

    device_serial: str
    usb_serial: str
    msc_only: bool
    plugged: bool
    port_path: str | None
    address: int | None
    mode: RecorderMode | None  # None while unplugged
    authenticated: bool
    locked: bool
    failed_logins: int
    clock_utc_ms: int
    tz_offset_min: int
    mounted: bool
    mount_point: str | None  # the bay directory while plugged
    mount_error: str | None
    info: RecorderInfo
    files_present: tuple[str, ...]
    files_deleted: tuple[str, ...]  # populated at creation, gone now (erased by the station)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mode"] = None if self.mode is None else str(self.mode)
        data["files_present"] = list(self.files_present)
        data["files_deleted"] = list(self.files_deleted)
        return data


@dataclass(eq=False)
class _Slot:
    spec: RecorderSpec
    device: SimulatedRecorder
    directory: Path
    populated: dict[str, int]
    lock: threading.Lock = field(default_factory=threading.Lock)
    port_path: str | None = None
    address: int | None = None
    volume: MountedVolume | None = None
    mount_error: str | None = None
    mount_held: bool = False  # fault: mass-storage mode without its mount until released

    @property
    def serial(self) -> str:
        return self.spec.device_serial

    @property
    def backing_dir(self) -> Path:
        return self.directory / "volume"

    @property
    def unplug_marker(self) -> Path:
        return self.directory / "UNPLUGGED"


def _atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _same_directory(a: Path, b: Path) -> bool:
    """Both name the same directory (a bind mount shows its source's device and inode)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Regular files under root as (posix relative path, path), sorted; symlinks are not followed."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path.relative_to(root).as_posix(), path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _faults_to_json(faults: VolumeFaults | None) -> str | None:
    return None if faults is None else faults.to_cli_string()


def _faults_from_json(text: object) -> VolumeFaults | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"faults: expected a fault string, got {text!r}")
    from simulators.recorder.faultfs import VolumeFaults

    return VolumeFaults.from_cli_string(text)


def _device_wall_time(utc_ms: float, tz_offset_min: int) -> datetime:
    """The recorder's wall clock (naive, as it writes file names and FAT times)."""
    return datetime(1970, 1, 1) + timedelta(milliseconds=utc_ms + tz_offset_min * 60_000)


def _shift_start(spec: RecorderSpec) -> datetime:
    # populate_volume spaces recordings 1-30 min apart: the newest then starts 5 min to
    # (files - 1) x 29 min + 5 min before now, on the recorder's clock.
    now = _device_wall_time(time.time() * 1000 + spec.clock_offset_s * 1000, spec.tz_offset_min)
    return now - timedelta(seconds=max(spec.files - 1, 0) * 1800 + 300)


def _close_newest_recording(slot: _Slot) -> None:
    """Recording when docked: the recorder closes its newest recording at plug-in, so its last write
    (mtime) is the device clock's wall time at docking. FAT keeps even seconds only."""
    newest: tuple[datetime, int, Path] | None = None
    for _rel, path in _walk_files(slot.backing_dir):
        parsed = parse_recorder_file_name(path.name)
        if parsed is not None and (newest is None or (parsed.recorded_at, parsed.seq) > newest[:2]):
            newest = (parsed.recorded_at, parsed.seq, path)
    if newest is None:
        return
    clock = slot.device.clock_now()
    wall = _device_wall_time(clock.utc_ms, clock.tz_offset_min)
    seconds = int(wall.replace(tzinfo=UTC).timestamp()) // 2 * 2
    os.utime(newest[2], (seconds, seconds))


class RecorderBus:
    """The simulated bus. Thread-safe: transfers are serialised per recorder, not across recorders."""

    def __init__(self, state_dir: Path, mount_root: Path, *,
                 bay_ports: tuple[str, ...] = DEFAULT_BAY_PORTS) -> None:
        self.state_dir = Path(state_dir)
        self.mount_root = Path(mount_root)
        # A fresh id per bus life: handles from before a restart must not reach the new devices.
        self.boot_id = secrets.token_hex(4)
        self._lock = threading.RLock()
        self._slots: dict[str, _Slot] = {}
        self._next_address: dict[int, int] = {}
        self._closed = False
        # Enumerations served to the host: tests await "the host looked N more times" instead of a delay.
        self._enumerations = 0
        self._enumerated = threading.Condition(self._lock)
        (self.state_dir / "recorders").mkdir(parents=True, exist_ok=True)
        self.mount_root.mkdir(parents=True, exist_ok=True)
        for port_path in bay_ports:
            # As on a station that has docked before: the directories are there, nothing mounted.
            self.bay_directory(port_path).mkdir(exist_ok=True)
        self._load()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RecorderBus(state_dir={str(self.state_dir)!r}, recorders={len(self._slots)})"

    # ------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Unmount every volume. Plug state stays persisted: the next bus re-plugs the recorders."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            slots = list(self._slots.values())
        for slot in slots:
            with slot.lock:
                self._unmount(slot)
                with self._lock:
                    slot.address = None

    def _load(self) -> None:
        for state_file in sorted((self.state_dir / "recorders").glob("*/state.json")):
            try:
                slot = self._slot_from_state(state_file)
            except (OSError, ValueError, KeyError, TypeError, RecorderProtocolError) as exc:
                logger.error("recorder state %s unreadable, skipped: %s", state_file, exc)
                continue
            self._recover_volume(slot)
            self._slots[slot.serial] = slot
            logger.info("recorder %s: loaded from %s", slot.serial, state_file)
        for slot in list(self._slots.values()):
            if slot.port_path is not None:
                port_path, slot.port_path = slot.port_path, None
                try:
                    self.plug(slot.serial, port_path)
                except BusError as exc:
                    logger.error("recorder %s: could not re-plug on %s: %s", slot.serial, port_path, exc)

    def _slot_from_state(self, state_file: Path) -> _Slot:
        data = json.loads(state_file.read_text("utf-8"))
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"state format: expected {STATE_FORMAT}, got {data.get('format')!r}")
        spec_data = dict(data["spec"])
        spec_data["faults"] = _faults_from_json(spec_data.get("faults"))
        spec = RecorderSpec(**spec_data)
        info = RecorderInfo(**data["info"])
        clock = ClockReference(**data["clock"])
        # State written before recorders had settings has none: the factory settings then.
        settings = RecorderSettings(**data["settings"]) if data.get("settings") else None
        populated = {str(k): int(v) for k, v in data["populated"].items()}
        slot = self._make_slot(spec, state_file.parent, populated, info=info, clock=clock, settings=settings)
        port_path = data.get("port_path")
        slot.port_path = None if port_path is None else str(port_path)
        return slot

    def _make_slot(self, spec: RecorderSpec, directory: Path, populated: dict[str, int], *,
                   info: RecorderInfo | None = None, clock: ClockReference | None = None,
                   settings: RecorderSettings | None = None) -> _Slot:
        slot_ref: list[_Slot] = []
        device = SimulatedRecorder(
            info=info or spec.info(),
            usb_serial=spec.usb_serial,
            usb_serial_string=spec.usb_serial_string,
            usb_serial_fault=spec.usb_serial_fault,
            password=spec.password,
            id_code=spec.id_code,
            msc_only=spec.msc_only,
            vendor_id=spec.vendor_id,
            clock=clock,
            clock_offset_s=spec.clock_offset_s,
            clock_drift_ppm=spec.clock_drift_ppm,
            tz_offset_min=spec.tz_offset_min,
            battery_percent=spec.battery_percent,
            storage_total_bytes=spec.storage_total_bytes,
            settings=settings,
            firmware_version=spec.firmware_version,
            firmware_fault=spec.firmware_fault,
            volume_stats=lambda: self._volume_stats(slot_ref[0]),
        )
        slot = _Slot(spec=spec, device=device, directory=directory, populated=populated)
        slot_ref.append(slot)
        return slot

    def _save(self, slot: _Slot) -> None:
        spec = asdict(slot.spec)
        spec["faults"] = _faults_to_json(slot.spec.faults)
        state = {
            "format": STATE_FORMAT,
            "spec": spec,
            "info": asdict(slot.device.info),
            "clock": asdict(slot.device.clock_reference),
            "settings": asdict(slot.device.settings),
            "populated": slot.populated,
            "port_path": slot.port_path,
        }
        _atomic_write(slot.directory / "state.json", json.dumps(state, ensure_ascii=False, indent=1).encode())

    def bay_directory(self, port_path: str) -> Path:
        """Where a volume on `port_path` is mounted (the directory may not exist yet)."""
        return self.mount_root / bay_directory_name(port_path)

    def _mount_point(self, slot: _Slot) -> Path | None:
        return None if slot.port_path is None else self.bay_directory(slot.port_path)

    def mount_point(self, device_serial: str) -> Path | None:
        """The directory the recorder's volume is (or would be) mounted at; None while unplugged."""
        slot = self._slot(device_serial)
        with self._lock:
            return self._mount_point(slot)

    def _recover_volume(self, slot: _Slot) -> None:
        """A bus killed while a volume was mounted leaves the mount behind: a FUSE volume unmounts
        itself when its process loses the bus, a bind mount stays. Take it down before re-plugging,
        as a hub power cycle would; a mount that is not this recorder's is left alone."""
        from simulators.recorder.volume import VolumeError, is_simulator_fuse, mount_at, unmount_stale

        mount_point = self._mount_point(slot)
        if mount_point is None:
            return
        entry = mount_at(mount_point)
        if entry is None:
            return
        if not (is_simulator_fuse(entry) or _same_directory(mount_point, slot.backing_dir)):
            logger.warning("recorder %s: %s holds a mount that is not its volume; left alone", slot.serial,
                           mount_point)
            return
        logger.warning("recorder %s: stale mount at %s, unmounting", slot.serial, mount_point)
        try:
            unmount_stale(mount_point)
        except (VolumeError, OSError, subprocess.SubprocessError) as exc:
            logger.error("recorder %s: stale mount at %s not unmounted: %s", slot.serial, mount_point, exc)

    # -------------------------------------------------------------------- control API

    def add_recorder(self, spec: RecorderSpec) -> None:
        """Create a recorder, unplugged, with a freshly populated volume."""
        from simulators.recorder.volume import populate_volume

        with self._lock:
            if spec.device_serial in self._slots:
                raise ValueError(f"recorder {spec.device_serial} already exists")
        directory = self.state_dir / "recorders" / spec.device_serial
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / "volume.populating"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        populate_volume(
            staging,
            device_serial=spec.claims_device_serial or spec.device_serial,
            officer_no=spec.officer_no,
            officer_name=spec.officer_name,
            unit_code=spec.unit_code,
            unit_name=spec.unit_name,
            files=spec.files,
            file_mb=spec.file_mb,
            seed=spec.seed,
            start=_shift_start(spec) if spec.recording_until_docked else None,
        )
        populated = {rel: path.stat().st_size for rel, path in _walk_files(staging)}
        if (directory / "volume").exists():
            shutil.rmtree(directory / "volume")
        os.rename(staging, directory / "volume")
        slot = self._make_slot(spec, directory, populated)
        with self._lock:
            if spec.device_serial in self._slots:
                raise ValueError(f"recorder {spec.device_serial} already exists")
            self._slots[spec.device_serial] = slot
        self._save(slot)
        logger.info("recorder %s: created with %d files", spec.device_serial, len(populated))

    def has_recorder(self, device_serial: str) -> bool:
        with self._lock:
            return device_serial in self._slots

    def plug(self, device_serial: str, port_path: str = "1-1.1") -> None:
        """Attach the recorder to a port: it enumerates in its initial mode (MSC-only ones mounted)."""
        bus_no, _ = parse_port_path(port_path)
        slot = self._slot(device_serial)
        with slot.lock:
            with self._lock:
                if slot.port_path is not None:
                    raise InvalidRequestError(
                        f"recorder {device_serial} is already plugged on {slot.port_path}"
                    )
                taken = {s.port_path for s in self._slots.values()}
                if port_path in taken:
                    raise InvalidRequestError(f"port {port_path} is taken")
                slot.port_path = port_path
            with contextlib.suppress(FileNotFoundError):
                slot.unplug_marker.unlink()
            slot.device.power_on()
            if slot.spec.recording_until_docked:
                _close_newest_recording(slot)
            if slot.device.mode is RecorderMode.MASS_STORAGE and not slot.mount_held:
                self._mount(slot)
            with self._lock:
                slot.address = self._allocate_address(bus_no)
            self._save(slot)
        logger.info("recorder %s: plugged on %s in %s mode", device_serial, port_path, slot.device.mode)

    def unplug(self, device_serial: str) -> None:
        slot = self._slot(device_serial)
        with slot.lock:
            self._unplug_locked(slot)

    def _unplug_locked(self, slot: _Slot) -> None:
        with self._lock:
            was = slot.port_path
            slot.address = None
            slot.port_path = None
        self._unmount(slot)
        self._save(slot)
        if was is not None:
            logger.info("recorder %s: unplugged from %s", slot.serial, was)

    def swap(self, out_serial: str, in_serial: str, *, impersonate: str | None = None) -> None:
        """The unkind swap an officer can do: pull recorder `out_serial` out of its bay (a lazy
        unmount if the station still holds the volume open, as the kernel does for a disk that is
        gone) and dock `in_serial` in the very same port at once, so that its volume is mounted at
        the same bay directory within milliseconds, while the station may still be working on the
        first one.

        `impersonate`: a relative path on the first recorder. The second one then holds a different
        recording at that path with the same size and mtime (fixed-size segments; FAT keeps mtime to
        2 s), as two recorders of one unit can. Only what tells files apart for real (device and
        inode, the bytes) differs.
        """
        out_slot, in_slot = self._slot(out_serial), self._slot(in_serial)
        with self._lock:
            port_path = out_slot.port_path
            if port_path is None:
                raise InvalidRequestError(f"recorder {out_serial} is not plugged")
            if in_slot.port_path is not None:
                raise InvalidRequestError(f"recorder {in_serial} is already plugged on {in_slot.port_path}")
        if impersonate is not None:
            self._impersonate(out_slot, in_slot, impersonate)
        with out_slot.lock:
            self._unplug_locked(out_slot)
        self.plug(in_serial, port_path)
        logger.info("recorder %s swapped for %s on %s", out_serial, in_serial, port_path)

    def _impersonate(self, original: _Slot, twin: _Slot, rel: str) -> None:
        from simulators.recorder.media import make_mp4

        source = original.backing_dir / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise InvalidRequestError(f"impersonate: expected a relative path on the volume, got {rel!r}")
        try:
            info = source.stat()
        except FileNotFoundError:
            raise InvalidRequestError(f"impersonate: recorder {original.serial} has no {rel}") from None
        target = twin.backing_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        make_mp4(target, size_bytes=info.st_size, seed=0x5EED ^ info.st_size)
        if _sha256_file(target) == _sha256_file(source):
            raise InvalidRequestError(f"impersonate: the twin of {rel} came out identical")
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        with twin.lock:
            twin.populated[rel] = info.st_size
            self._save(twin)

    def recorders(self) -> list[RecorderState]:
        self.reap_unplugged()
        with self._lock:
            serials = sorted(self._slots)
        return [self.recorder_state(serial) for serial in serials]

    def recorder_state(self, device_serial: str) -> RecorderState:
        slot = self._slot(device_serial)
        with slot.lock:
            present = {rel for rel, _ in _walk_files(self._volume_root(slot))}
            clock = slot.device.clock_now()
            with self._lock:
                plugged = slot.port_path is not None
                plugged_at = self._mount_point(slot)
                return RecorderState(
                    device_serial=slot.serial,
                    usb_serial=slot.spec.usb_serial,
                    msc_only=slot.spec.msc_only,
                    plugged=plugged,
                    port_path=slot.port_path,
                    address=slot.address,
                    mode=slot.device.mode if plugged else None,
                    authenticated=slot.device.authenticated,
                    locked=slot.device.locked,
                    failed_logins=slot.device.failed_logins,
                    clock_utc_ms=clock.utc_ms,
                    tz_offset_min=clock.tz_offset_min,
                    mounted=slot.volume is not None and slot.volume.alive,
                    mount_point=None if plugged_at is None else str(plugged_at),
                    mount_error=slot.mount_error,
                    info=slot.device.info,
                    files_present=tuple(sorted(present)),
                    files_deleted=tuple(sorted(set(slot.populated) - present)),
                )

    def volume_files(self, device_serial: str) -> dict[str, str]:
        """What is on the recorder's storage now: relative path → SHA-256 hex, read from the backing
        store (not through the fault volume, so a test's look does not trip the faults)."""
        slot = self._slot(device_serial)
        files: dict[str, str] = {}
        with slot.lock:
            for rel, path in _walk_files(self._volume_root(slot)):
                with contextlib.suppress(FileNotFoundError):  # the station may be erasing right now
                    files[rel] = _sha256_file(path)
        return files

    def usb_serial_requests(self, device_serial: str) -> int:
        """How many serial string requests a recorder with a CHANGES or SLOW serial fault has seen."""
        slot = self._slot(device_serial)
        with slot.lock:
            return slot.device.usb_serial_reads

    def passwords_received(self, device_serial: str) -> list[str]:
        """Every password a host sent this recorder (LOGIN requests), in order."""
        slot = self._slot(device_serial)
        with slot.lock:
            return [secret.reveal() for secret in slot.device.passwords_received]

    def inject_reply(self, device_serial: str, request: VendorRequest, payload: bytes | None) -> None:
        """Hostile-device fault: the next reply to `request` is `payload` instead of the real one."""
        slot = self._slot(device_serial)
        with slot.lock:
            if payload is None:
                slot.device.reply_faults.pop(request, None)
            else:
                slot.device.reply_faults[request] = payload

    def record(self, device_serial: str, *, files: int, file_mb: float = 0.05,
               spacing_s: int = 2) -> list[str]:
        """The recorder, out on a shift (unplugged), records `files` files now: named with the identity it
        holds (what the station's WriteZFYInfo left there), timed by its own clock, `spacing_s` apart and
        ending at its present time. Returns their paths on the volume."""
        from simulators.recorder.volume import populate_volume

        slot = self._slot(device_serial)
        with slot.lock:
            if slot.port_path is not None:
                raise ValueError(f"recorder {device_serial} is docked: it records only while out")
            clock = slot.device.clock_now()
            now = _device_wall_time(clock.utc_ms, clock.tz_offset_min)
            info = slot.device.info
            before = {rel for rel, _ in _walk_files(slot.backing_dir)}
            recorded = sum(1 for rel in before if parse_recorder_file_name(rel.rsplit("/", 1)[-1]))
            made = populate_volume(
                slot.backing_dir, device_serial=info.device_serial, officer_no=info.officer_no,
                officer_name=info.officer_name, unit_code=info.unit_code, unit_name=info.unit_name,
                files=files, file_mb=file_mb, seed=slot.spec.seed + 7919 * (recorded + 1),
                start=now - timedelta(seconds=spacing_s * files), spacing_s=spacing_s, first_index=recorded,
            )
            for rel, path in _walk_files(slot.backing_dir):
                if rel not in before:
                    slot.populated[rel] = path.stat().st_size
            self._save(slot)
        logger.info("recorder %s: recorded %d files as officer %s", device_serial, len(made), info.officer_no)
        return [path.relative_to(slot.backing_dir).as_posix() for path in made]

    def ignore_identity_writes(self, device_serial: str, ignore: bool = True) -> None:
        """Hostile-firmware fault: WRITE_INFO is acknowledged and the old identity kept."""
        slot = self._slot(device_serial)
        with slot.lock:
            slot.device.ignore_identity_writes = ignore

    def ignore_settings_writes(self, device_serial: str, ignore: bool = True) -> None:
        """Firmware fault: SET_SETTINGS is acknowledged and the old settings kept."""
        slot = self._slot(device_serial)
        with slot.lock:
            slot.device.ignore_settings_writes = ignore

    def hold_volume_mount(self, device_serial: str) -> None:
        """Fault: the recorder's volume is not mounted when it enters mass-storage mode (at plug-in or
        at the switch), only at `release_volume_mount`. Real hardware acknowledges the switch and
        mounts seconds later; meanwhile anything else (a stick in another bay) can be mounted."""
        slot = self._slot(device_serial)
        with slot.lock:
            slot.mount_held = True

    def release_volume_mount(self, device_serial: str) -> None:
        """End `hold_volume_mount`: a recorder plugged in mass-storage mode is mounted now."""
        slot = self._slot(device_serial)
        with slot.lock:
            slot.mount_held = False
            if slot.port_path is not None and slot.device.mode is RecorderMode.MASS_STORAGE:
                self._mount(slot)

    @contextlib.contextmanager
    def hold_device(self, device_serial: str) -> Iterator[None]:
        """Fault: the device stops answering while the block runs (transfers time out)."""
        slot = self._slot(device_serial)
        with slot.lock:
            yield

    def reap_unplugged(self) -> list[str]:
        """Unplug recorders whose fault volume reported a yank (the UNPLUGGED marker)."""
        with self._lock:
            yanked = [s for s in self._slots.values() if s.port_path is not None and s.unplug_marker.exists()]
        for slot in yanked:
            logger.warning("recorder %s: fault volume reported an unplug", slot.serial)
            with slot.lock:
                if slot.port_path is not None:
                    self._unplug_locked(slot)
        return [slot.serial for slot in yanked]

    # ---------------------------------------------------------------------- USB host side

    def enumerate(self) -> list[EnumeratedDevice]:
        self.reap_unplugged()
        devices: list[EnumeratedDevice] = []
        with self._lock:
            for slot in self._slots.values():
                if slot.port_path is None or slot.address is None:
                    continue
                bus_no, ports = parse_port_path(slot.port_path)
                devices.append(
                    EnumeratedDevice(
                        key=self._key(bus_no, slot.address),
                        bus=bus_no,
                        address=slot.address,
                        port_numbers=ports,
                        speed=SPEED_HIGH,
                        device_descriptor=slot.device.device_descriptor().to_bytes(),
                        configuration_descriptor=slot.device.configuration_descriptor().to_bytes(),
                    )
                )
            self._enumerations += 1
            self._enumerated.notify_all()
        devices.sort(key=lambda d: (d.bus, d.address))
        return devices

    @property
    def enumerations(self) -> int:
        """How many times the host has enumerated the bus."""
        with self._lock:
            return self._enumerations

    def wait_for_enumerations(self, count: int, timeout_s: float) -> bool:
        """Block until the host has enumerated the bus `count` times in all (True), or `timeout_s` passes."""
        with self._enumerated:
            return self._enumerated.wait_for(lambda: self._enumerations >= count, timeout_s)

    def open(self, key: str) -> None:
        self._slot_for_key(key)

    def reset_device(self, key: str, timeout_ms: int = 1000) -> None:
        """USB port reset: the session is lost (login, lockout), the personality stays."""
        slot = self._acquire(key, timeout_ms)
        try:
            mode = slot.device.mode
            slot.device.power_on()
            slot.device.mode = mode
        finally:
            slot.lock.release()

    def control_transfer(self, key: str, setup: SetupPacket, data_out: bytes = b"",
                         timeout_ms: int = 1000) -> bytes:
        """One control transfer on the device at `key`: the IN data or b"" for OUT."""
        slot = self._acquire(key, timeout_ms)
        try:
            if slot.unplug_marker.exists():
                self._unplug_locked(slot)
                raise NoDeviceError(f"device {key} is gone")
            mode_before = slot.device.mode
            remembered = (slot.device.info, slot.device.clock_reference, slot.device.settings)
            try:
                reply = slot.device.control_transfer(setup, data_out)
            except StallError as exc:
                raise TransferStallError(str(exc)) from None
            except NoAnswerError as exc:
                # The host waits out its whole timeout, and the device is busy meanwhile (the lock).
                time.sleep(timeout_ms / 1000.0 if timeout_ms > 0 else 60.0)
                raise TransferTimeoutError(str(exc)) from None
            if setup.is_in and len(reply) > setup.wLength:
                raise TransferOverflowError(f"device sent {len(reply)} bytes for wLength {setup.wLength}")
            if (slot.device.info, slot.device.clock_reference, slot.device.settings) != remembered:
                self._save(slot)  # WRITE_INFO / SET_CLOCK / SET_SETTINGS: flash and RTC keep them
            if mode_before is RecorderMode.CONTROL and slot.device.mode is RecorderMode.MASS_STORAGE:
                self._reenumerate_as_mass_storage(slot)
            return reply
        finally:
            slot.lock.release()

    def _reenumerate_as_mass_storage(self, slot: _Slot) -> None:
        # The device drops off the bus, comes back with the MSC personality, and "udisks" mounts it.
        # Both finish before the SET_MSDC status stage here; real hardware acknowledges first and
        # mounts later, so the service must wait for the mount either way.
        with self._lock:
            slot.address = None
        if not slot.mount_held:
            self._mount(slot)
        assert slot.port_path is not None
        bus_no, _ = parse_port_path(slot.port_path)
        with self._lock:
            slot.address = self._allocate_address(bus_no)
        logger.info("recorder %s: re-enumerated in mass-storage mode at address %s", slot.serial,
                    slot.address)

    # ----------------------------------------------------------------------------- helpers

    def _slot(self, device_serial: str) -> _Slot:
        with self._lock:
            try:
                return self._slots[device_serial]
            except KeyError:
                raise UnknownRecorderError(f"no recorder {device_serial!r} on this bus") from None

    def _key(self, bus_no: int, address: int) -> str:
        return f"{self.boot_id}:{bus_no}:{address}"

    def _slot_for_key(self, key: str) -> _Slot:
        parts = key.split(":")
        if len(parts) != 3 or parts[0] != self.boot_id or not all(p.isdigit() for p in parts[1:]):
            raise NoDeviceError(f"device {key} is gone")
        bus_no, address = int(parts[1]), int(parts[2])
        with self._lock:
            for slot in self._slots.values():
                if slot.address == address and slot.port_path is not None \
                        and parse_port_path(slot.port_path)[0] == bus_no:
                    return slot
        raise NoDeviceError(f"device {key} is gone")

    def _acquire(self, key: str, timeout_ms: int) -> _Slot:
        slot = self._slot_for_key(key)
        timeout_s = -1.0 if timeout_ms <= 0 else timeout_ms / 1000.0
        if not slot.lock.acquire(timeout=timeout_s):
            raise TransferTimeoutError(f"device {key} busy for {timeout_ms} ms")
        try:
            if self._slot_for_key(key) is not slot:
                raise NoDeviceError(f"device {key} is gone")
        except BaseException:
            slot.lock.release()
            raise
        return slot

    def _allocate_address(self, bus_no: int) -> int:
        used = {
            s.address for s in self._slots.values()
            if s.address is not None and s.port_path is not None and parse_port_path(s.port_path)[0] == bus_no
        }
        candidate = self._next_address.get(bus_no, 2)
        for _ in range(126):
            if candidate > 127:
                candidate = 2
            if candidate not in used:
                self._next_address[bus_no] = candidate + 1
                return candidate
            candidate += 1
        raise InvalidRequestError(f"bus {bus_no} has no free address")

    @staticmethod
    def _volume_root(slot: _Slot) -> Path:
        # The recorder's storage itself; the mount at the bay directory shows (or serves) it.
        return slot.backing_dir

    def _volume_stats(self, slot: _Slot) -> VolumeStats:
        count = used = 0
        for _, path in _walk_files(self._volume_root(slot)):
            with contextlib.suppress(FileNotFoundError):
                used += path.stat().st_size
                count += 1
        return VolumeStats(file_count=count, used_bytes=used)

    def _mount(self, slot: _Slot) -> None:
        from simulators.recorder.volume import mount_volume

        if slot.volume is not None and slot.volume.alive:
            return
        slot.mount_error = None
        mount_point = self._mount_point(slot)
        assert mount_point is not None, "only a plugged recorder is mounted"
        try:
            slot.volume = mount_volume(
                slot.backing_dir,
                mount_point,
                faults=slot.spec.faults,
                rate_limit_bytes_per_s=slot.spec.rate_limit_bytes_per_s,
                unplug_marker=slot.unplug_marker,
            )
        except Exception as exc:  # the device is fine; the host failed to mount it, as udisks can
            slot.volume = None
            slot.mount_error = f"{type(exc).__name__}: {exc}"
            logger.error("recorder %s: mount at %s failed: %s", slot.serial, mount_point, exc)
            return
        logger.info("recorder %s: volume mounted at %s", slot.serial, mount_point)

    def _unmount(self, slot: _Slot) -> None:
        volume, slot.volume = slot.volume, None
        if volume is None:
            return
        try:
            volume.unmount()
        except Exception as exc:
            logger.error("recorder %s: unmount of %s failed: %s", slot.serial, volume.mount_point, exc)
        else:
            logger.info("recorder %s: volume unmounted", slot.serial)


# =============================================================================== the server


def _to_int(request: dict[str, Any], name: str, limit: int) -> int:
    value = request.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise InvalidRequestError(f"{name}: expected integer 0..{limit}, got {value!r}")
    return value


def _to_str(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidRequestError(f"{name}: expected a non-empty string, got {value!r}")
    return value


class _RpcHandler(socketserver.StreamRequestHandler):
    server: _ThreadingServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        self.server.track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        while True:
            try:
                line = self.rfile.readline(MAX_RPC_LINE_BYTES + 1)
            except OSError:
                return
            if not line:
                return
            if len(line) > MAX_RPC_LINE_BYTES:
                self._send({"ok": False, "error": "invalid", "message": "request line too long"})
                return
            response = self.server.rpc.handle_line(line)
            if not self._send(response):
                return

    def _send(self, response: dict[str, Any]) -> bool:
        try:
            self.wfile.write(json.dumps(response).encode() + b"\n")
            self.wfile.flush()
        except OSError:
            return False
        return True


class _ThreadingServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, rpc: _Rpc) -> None:
        self.rpc = rpc
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(path, _RpcHandler)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Rpc:
    """JSON-lines operations of the bus socket; see PROTOCOL.md §Simulator."""

    def __init__(self, bus: RecorderBus) -> None:
        self.bus = bus

    def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            return {"ok": False, "error": "invalid", "message": "expected one JSON object per line"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "invalid", "message": "expected a JSON object"}
        op = request.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) and op.isidentifier() else None
        if handler is None:
            return {"ok": False, "error": "invalid", "message": f"unknown op {op!r}"}
        try:
            return {"ok": True, "result": handler(request)}
        except BusError as exc:
            return {"ok": False, "error": exc.kind, "message": str(exc)}
        except (ValueError, RecorderProtocolError) as exc:
            return {"ok": False, "error": "invalid", "message": str(exc)}
        except Exception as exc:
            logger.exception("bus rpc %s failed", op)
            return {"ok": False, "error": "internal", "message": f"{type(exc).__name__}: {exc}"}

    def op_hello(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"boot_id": self.bus.boot_id, "state_dir": str(self.bus.state_dir),
                "mount_root": str(self.bus.mount_root)}

    def op_enumerate(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        return [device.to_json() for device in self.bus.enumerate()]

    def op_open(self, request: dict[str, Any]) -> None:
        self.bus.open(_to_str(request, "key"))

    def op_reset(self, request: dict[str, Any]) -> None:
        self.bus.reset_device(_to_str(request, "key"), _to_int(request, "timeout_ms", 3_600_000))

    def op_ctrl(self, request: dict[str, Any]) -> dict[str, Any]:
        key = _to_str(request, "key")
        bm_request_type = _to_int(request, "bmRequestType", 0xFF)
        data_hex = request.get("data")
        if bm_request_type & 0x80:
            w_length = _to_int(request, "wLength", 0xFFFF)
            data = b""
        else:
            if not isinstance(data_hex, str) or len(data_hex) > 2 * 0xFFFF:
                raise InvalidRequestError("data: expected hex string of at most 65535 bytes")
            data = bytes.fromhex(data_hex)
            w_length = len(data)
        setup = SetupPacket(bm_request_type, _to_int(request, "bRequest", 0xFF),
                            _to_int(request, "wValue", 0xFFFF), _to_int(request, "wIndex", 0xFFFF), w_length)
        reply = self.bus.control_transfer(key, setup, data, _to_int(request, "timeout_ms", 3_600_000))
        return {"data": reply.hex()} if setup.is_in else {"written": len(data)}

    def op_recorders(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        return [state.to_json() for state in self.bus.recorders()]

    def op_state(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.bus.recorder_state(_to_str(request, "serial")).to_json()

    def op_plug(self, request: dict[str, Any]) -> dict[str, Any]:
        serial = _to_str(request, "serial")
        port_path = request.get("port_path", "1-1.1")
        if not isinstance(port_path, str):
            raise InvalidRequestError(f"port_path: expected a string, got {port_path!r}")
        self.bus.plug(serial, port_path)
        return self.bus.recorder_state(serial).to_json()

    def op_unplug(self, request: dict[str, Any]) -> dict[str, Any]:
        serial = _to_str(request, "serial")
        self.bus.unplug(serial)
        return self.bus.recorder_state(serial).to_json()

    def op_volume_files(self, request: dict[str, Any]) -> dict[str, str]:
        return self.bus.volume_files(_to_str(request, "serial"))


class RecorderBusServer:
    """Serves a RecorderBus on a UNIX socket, one thread per connection, JSON lines both ways."""

    def __init__(self, bus: RecorderBus, socket_path: Path, *, reap_interval_s: float = 0.2) -> None:
        self.bus = bus
        self.socket_path = Path(socket_path)
        self._reap_interval_s = reap_interval_s
        self._server: _ThreadingServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._remove_stale_socket()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        old_umask = os.umask(0o077)  # only the owner may drive the simulated hardware
        try:
            self._server = _ThreadingServer(str(self.socket_path), _Rpc(self.bus))
        finally:
            os.umask(old_umask)
        self._stop.clear()
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                 name="recorder-bus-server", daemon=True)
        reap = threading.Thread(target=self._reap_loop, name="recorder-bus-reaper", daemon=True)
        self._threads = [serve, reap]
        for thread in self._threads:
            thread.start()
        logger.info("recorder bus serving on %s", self.socket_path)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stop.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        logger.info("recorder bus on %s stopped", self.socket_path)

    def _reap_loop(self) -> None:
        while not self._stop.wait(self._reap_interval_s):
            try:
                self.bus.reap_unplugged()
            except Exception:
                logger.exception("reaping unplugged recorders failed")

    def _remove_stale_socket(self) -> None:
        try:
            mode = self.socket_path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise RuntimeError(f"{self.socket_path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket_path))
        except OSError:
            self.socket_path.unlink()  # nobody listens: left over from a killed server
            return
        finally:
            probe.close()
        raise RuntimeError(f"another recorder bus is already serving on {self.socket_path}")


class BusClientError(Exception):
    """The bus refused a control operation, or could not be reached; `kind` as in the RPC reply."""

    def __init__(self, message: str, kind: str = "io") -> None:
        super().__init__(message)
        self.kind = kind


class BusClient:
    """Control operations on a running bus server (plug, unplug, recorders, state, volume_files)."""

    def __init__(self, socket_path: Path, *, timeout_s: float = 60.0) -> None:
        self.socket_path = Path(socket_path)
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def call(self, op: str, **params: Any) -> Any:
        line = json.dumps({"op": op, **params}).encode() + b"\n"
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(self._timeout_s)
                    try:
                        sock.connect(str(self.socket_path))
                    except OSError:
                        sock.close()
                        raise
                    self._sock = sock
                self._sock.sendall(line)
                raw = self._read_line(self._sock)
            except OSError as exc:
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                raise BusClientError(f"recorder bus at {self.socket_path}: {exc}") from exc
        try:
            response = json.loads(raw)
        except ValueError as exc:
            raise BusClientError(f"recorder bus sent a malformed reply to {op}") from exc
        if not isinstance(response, dict):
            raise BusClientError(f"recorder bus sent a malformed reply to {op}")
        if not response.get("ok"):
            raise BusClientError(str(response.get("message")), str(response.get("error")))
        return response.get("result")

    @staticmethod
    def _read_line(sock: socket.socket) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("connection closed before the reply ended")
            chunks.append(chunk)
            size += len(chunk)
            if chunk.endswith(b"\n"):
                return b"".join(chunks)
            if size > 1 << 26:
                raise ConnectionResetError("reply too long")
