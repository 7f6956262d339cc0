"""The EE-ZFY recorder driver: discovery and the vendor control protocol over pyusb.

Synchronous, like pyusb: the service runs these calls in worker threads, one driver per docked
recorder. The transport is whatever pyusb backend it is given (libusb on a station, the simulator's
socket backend in tests); this module never knows which.

    for handle in find_recorders(backend):
        if handle.mode is RecorderMode.CONTROL:
            with RecorderDriver(handle, backend) as recorder:
                recorder.login(password)
                info, sample = recorder.info(), recorder.clock_sample()
                recorder.switch_to_mass_storage()
"""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Self

import usb.core
import usb.util

from drivers.usb.protocol import (
    CLASS_MASS_STORAGE,
    CLASS_VENDOR_SPECIFIC,
    DEFAULT_VENDOR_ID,
    PRODUCT_ID_CONTROL,
    PRODUCT_ID_MASS_STORAGE,
    PRODUCT_ID_MASS_STORAGE_ONLY,
    REQUEST_SPECS,
    REQUEST_TYPE_VENDOR_IN,
    REQUEST_TYPE_VENDOR_OUT,
    DeviceClock,
    DeviceStatus,
    LastResult,
    RecorderError,
    RecorderInfo,
    RecorderMode,
    RecorderProtocolError,
    RecorderSettings,
    ResultCode,
    VendorRequest,
    decode_firmware_version,
    decode_id_code,
    encode_password,
)

__all__ = [
    "DEFAULT_IDS",
    "ClockSample",
    "RecorderAuthError",
    "RecorderDriver",
    "RecorderError",
    "RecorderGoneError",
    "RecorderHandle",
    "RecorderLockedError",
    "RecorderMode",
    "RecorderProtocolError",
    "RecorderRejectedError",
    "RecorderTimeoutError",
    "UsbLocation",
    "UsbSerialsRead",
    "find_recorders",
    "usb_serial_claim",
]

logger = logging.getLogger(__name__)

DEFAULT_IDS: tuple[tuple[int, int], ...] = (
    (DEFAULT_VENDOR_ID, PRODUCT_ID_CONTROL),
    (DEFAULT_VENDOR_ID, PRODUCT_ID_MASS_STORAGE),
    (DEFAULT_VENDOR_ID, PRODUCT_ID_MASS_STORAGE_ONLY),
)

# Real recorders use 12..20 character serials; anything else in an identity string is refused,
# because the serial ends up in ledger entries and paths.
_USB_SERIAL_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_INTERFACE = 0


class RecorderGoneError(RecorderError):
    """The device is no longer there (unplugged, re-enumerated, or another device took its port)."""


class RecorderTimeoutError(RecorderError):
    """The device did not complete a transfer in time."""


class RecorderRejectedError(RecorderError):
    """The device STALLed a request; `result` is what GET_RESULT said about it."""

    def __init__(self, message: str, *, request: VendorRequest, result: ResultCode | None,
                 attempts_left: int | None = None) -> None:
        super().__init__(message)
        self.request = request
        self.result = result
        self.attempts_left = attempts_left


class RecorderAuthError(RecorderRejectedError):
    """Wrong password, or a request that needs LOGIN without one."""


class RecorderLockedError(RecorderRejectedError):
    """Too many wrong passwords: the device refuses everything until it is re-plugged."""


@dataclass(frozen=True)
class UsbLocation:
    """Where a device is plugged: the bus and the sysfs-style port path ("1-1.3"). Stable per bay."""

    bus: int
    port_path: str

    @classmethod
    def of(cls, bus: int | None, port_numbers: Iterable[int] | None,
           address: int | None = None) -> UsbLocation:
        bus_no = int(bus or 0)
        ports = tuple(port_numbers or ())
        if ports:
            return cls(bus_no, f"{bus_no}-" + ".".join(str(p) for p in ports))
        # Without port numbers (old libusb) only the address is left: unique, but not stable per bay.
        return cls(bus_no, f"{bus_no}-@{int(address or 0)}")


def usb_serial_claim(serial: object) -> tuple[str, str | None]:
    """The USB serial a device claims, as a handle keeps it, and what is wrong with it (None: nothing).

    Cheap recorders ship with no serial string or an empty one, so a missing serial is no reason to
    ignore a device: it is kept as "" with the problem in words, and the station decides (a device
    without a serial cannot be pinned by the allow-list). A serial that is not a plain identifier (it
    would end up in ledger entries) is kept as "" too, its problem naming it in escaped form."""
    if serial is None:
        return "", "missing (no serial string descriptor)"
    if serial == "":
        return "", "empty"
    if not isinstance(serial, str) or not _USB_SERIAL_RE.fullmatch(serial):
        return "", f"not an identifier ({ascii(serial)[:80]})"
    return serial, None


@dataclass(frozen=True)
class RecorderHandle:
    """One recorder as discovered: a claim of identity (the USB serial) at a place, in a mode.

    The place (`location`: bus and port path, i.e. the bay) is what tells two docked recorders apart:
    serials are claims that two devices can share (identical factory serials, none at all, or a
    hostile copy). `usb_serial` is "" when the device claims none usable; `serial_problem` says why."""

    location: UsbLocation
    usb_serial: str
    mode: RecorderMode
    vendor_id: int
    product_id: int
    serial_problem: str | None = None

    @property
    def mass_storage_only(self) -> bool:
        return self.product_id == PRODUCT_ID_MASS_STORAGE_ONLY


class ClockSample(NamedTuple):
    """The device clock read between two host clock reads, all ms since the Unix epoch (UTC)."""

    host_before_ms: int
    device_ms: int
    host_after_ms: int

    @property
    def offset_ms(self) -> float:
        """Device minus host, assuming the device read its clock mid-way through the transfer."""
        return self.device_ms - (self.host_before_ms + self.host_after_ms) / 2

    @property
    def uncertainty_ms(self) -> float:
        """Half the round trip: the true offset is within offset_ms ± this (plus device rounding)."""
        return (self.host_after_ms - self.host_before_ms) / 2


def _host_utc_ms() -> int:
    return time.time_ns() // 1_000_000


def _usb_mode(dev: Any) -> RecorderMode | None:
    """Tell the personality from the descriptors, not the product id: ids are configurable."""
    classes: set[int] = set()
    for config in dev:
        for interface in config:
            classes.add(int(interface.bInterfaceClass))
    if CLASS_MASS_STORAGE in classes:
        return RecorderMode.MASS_STORAGE
    if CLASS_VENDOR_SPECIFIC in classes or int(dev.bDeviceClass) == CLASS_VENDOR_SPECIFIC:
        return RecorderMode.CONTROL
    return None


def _is_gone(exc: usb.core.USBError) -> bool:
    return exc.errno in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN)


def _read_usb_serial(dev: Any) -> tuple[str, str | None]:
    """The USB serial a device claims and what is wrong with it, as `usb_serial_claim` says.

    Reading it is a request to the device, which cheap devices fail while naming a serial string all
    the same: they STALL it (EPIPE), time out, or have no LANGID table (pyusb raises ValueError). Such
    a device is still a device in a bay: it is kept with no usable serial ("unreadable"), so the
    station refuses it on the record (or serves it by its port) instead of never seeing it. Only a
    device that is gone (USBError naming it gone) raises, and is left out."""
    try:
        serial = dev.serial_number
    except usb.core.USBError as exc:
        if _is_gone(exc):
            raise
        # Named by its errno alone (EPIPE: a STALL, ETIMEDOUT, EIO...): the same words for the same
        # fault whatever the backend, and nothing of the message on the record.
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return "", f"unreadable (USB error {name})"
    except UnicodeDecodeError:
        return "", "unreadable (not UTF-16 text)"
    except ValueError:
        # pyusb found no LANGID (string descriptor 0 failed or is empty): no string can be asked for.
        return "", "unreadable (no LANGID table)"
    return usb_serial_claim(serial)


class UsbSerialsRead:
    """The USB serial each enumerated device claimed when it was first read, kept while the device
    stays enumerated (same bus, address, port, vendor and product id); pass one to `find_recorders`
    from poll to poll.

    The kernel reads a device's strings once, when it enumerates it; a poller that asks again at every
    poll lets a hostile device answer a new serial each time (a new docking, a removal and a session at
    every poll) and a slow one cost a transfer timeout at every poll. Read once per enumeration, a
    serial (or its being unreadable) stands for the whole attachment; a re-plug or a mode switch
    enumerates the device anew (a new address) and it is read again."""

    def __init__(self) -> None:
        self._read: dict[tuple[int, int, str, int, int], tuple[str, str | None]] = {}

    def get(self, key: tuple[int, int, str, int, int]) -> tuple[str, str | None] | None:
        return self._read.get(key)

    def put(self, key: tuple[int, int, str, int, int], claim: tuple[str, str | None]) -> None:
        self._read[key] = claim

    def keep_only(self, keys: set[tuple[int, int, str, int, int]]) -> None:
        """Forget the devices that are no longer enumerated."""
        for key in self._read.keys() - keys:
            del self._read[key]


def find_recorders(backend: Any | None = None, *,
                   ids: Iterable[tuple[int, int]] = DEFAULT_IDS,
                   serials: UsbSerialsRead | None = None) -> list[RecorderHandle]:
    """Every attached recorder with one of `ids` (vendor, product): control-mode, switched and
    mass-storage-only ones. Devices that vanish while being read are left out with a warning. A
    device whose serial is missing, empty, not a plain identifier or unreadable (the request STALLs,
    times out, or there is no LANGID table) is kept, with usb_serial "" and the problem in
    `serial_problem` (`_read_usb_serial`): the station records and decides. With `serials`, a device
    still enumerated as it was is not asked for its serial again (`UsbSerialsRead`)."""
    wanted = {(int(vid), int(pid)) for vid, pid in ids}
    try:
        devices = list(usb.core.find(
            find_all=True, backend=backend,
            custom_match=lambda d: (int(d.idVendor), int(d.idProduct)) in wanted,
        ))
    except usb.core.NoBackendError as exc:
        raise RecorderError("no USB backend available (is libusb installed?)") from exc
    except usb.core.USBError as exc:
        raise RecorderError(f"USB enumeration failed: {exc}") from exc
    handles: list[RecorderHandle] = []
    enumerated: set[tuple[int, int, str, int, int]] = set()
    for dev in devices:
        location = UsbLocation.of(dev.bus, dev.port_numbers, dev.address)
        key = (location.bus, int(dev.address or 0), location.port_path, int(dev.idVendor), int(dev.idProduct))
        try:
            mode = _usb_mode(dev)
            if mode is None:
                logger.warning("usb %s %04x:%04x: neither vendor nor mass-storage interface, skipped",
                               location.port_path, dev.idVendor, dev.idProduct)
                continue
            known = None if serials is None else serials.get(key)
            usb_serial, problem = known if known is not None else _read_usb_serial(dev)
            enumerated.add(key)
            if serials is not None:
                serials.put(key, (usb_serial, problem))
        except (usb.core.USBError, ValueError) as exc:
            logger.warning("usb %s %04x:%04x: identity unreadable, skipped: %s", location.port_path,
                           dev.idVendor, dev.idProduct, exc)
            continue
        finally:
            usb.util.dispose_resources(dev)
        if problem is not None and known is None:  # (warned of once, when it was read)
            logger.warning("usb %s %04x:%04x: USB serial %s", location.port_path, dev.idVendor,
                           dev.idProduct, problem)
        handles.append(RecorderHandle(location, usb_serial, mode, int(dev.idVendor), int(dev.idProduct),
                                      problem))
    if serials is not None:
        serials.keep_only(enumerated)
    handles.sort(key=lambda h: (h.location.bus, h.location.port_path))
    return handles


class RecorderDriver:
    """One control-mode recorder. Thread-safe (calls are serialised); passwords are never kept."""

    def __init__(self, handle: RecorderHandle, backend: Any | None = None, *, timeout_ms: int = 1000,
                 host_clock_ms: Callable[[], int] = _host_utc_ms) -> None:
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms: expected > 0, got {timeout_ms}")
        self.handle = handle
        self._backend = backend
        self._timeout_ms = timeout_ms
        self._host_clock_ms = host_clock_ms
        self._dev: Any = None
        self._gone = False
        self._lock = threading.RLock()
        self._tag = f"recorder {handle.usb_serial}@{handle.location.port_path}"

    def __repr__(self) -> str:
        state = "open" if self._dev is not None else "closed"
        return f"RecorderDriver({self.handle.usb_serial!r} at {self.handle.location.port_path}, {state})"

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        with self._lock:
            if self._dev is not None:
                return
            if self.handle.mode is not RecorderMode.CONTROL:
                raise RecorderError(f"{self._tag}: in {self.handle.mode} mode, it has no control interface")
            dev = self._find_device()
            self._gone = False
            try:
                try:
                    dev.get_active_configuration()
                except usb.core.USBError as exc:
                    if _is_gone(exc):
                        raise
                    dev.set_configuration()
                usb.util.claim_interface(dev, _INTERFACE)
            except usb.core.USBError as exc:
                usb.util.dispose_resources(dev)
                if _is_gone(exc):
                    raise RecorderGoneError(f"{self._tag}: gone while opening ({exc})") from exc
                raise RecorderError(f"{self._tag}: cannot claim the control interface: {exc}") from exc
            self._dev = dev
            logger.debug("%s: opened", self._tag)

    def _find_device(self) -> Any:
        location = self.handle.location
        try:
            candidates = list(usb.core.find(
                find_all=True, backend=self._backend,
                custom_match=lambda d: UsbLocation.of(d.bus, d.port_numbers, d.address) == location,
            ))
        except usb.core.USBError as exc:
            raise RecorderGoneError(f"{self._tag}: USB enumeration failed: {exc}") from exc
        for dev in candidates:
            if (int(dev.idVendor), int(dev.idProduct)) != (self.handle.vendor_id, self.handle.product_id):
                continue
            try:
                # A device whose serial cannot be read claims "", as it did when it was found.
                serial, problem = _read_usb_serial(dev)
            except usb.core.USBError as exc:
                usb.util.dispose_resources(dev)
                raise RecorderGoneError(f"{self._tag}: gone while its serial was read ({exc})") from exc
            if serial == self.handle.usb_serial:
                return dev
            usb.util.dispose_resources(dev)
            if problem is not None:  # not necessarily another device, but not one that says it is this
                raise RecorderGoneError(f"{self._tag}: the device at the port now gives no usable serial "
                                        f"(serial {problem})")
            raise RecorderGoneError(f"{self._tag}: port now holds another device (serial {serial!r})")
        raise RecorderGoneError(f"{self._tag}: not on the bus in control mode")

    def close(self) -> None:
        with self._lock:
            dev, self._dev = self._dev, None
            if dev is None:
                return
            try:
                usb.util.release_interface(dev, _INTERFACE)
            except usb.core.USBError as exc:
                logger.debug("%s: release on close failed: %s", self._tag, exc)
            usb.util.dispose_resources(dev)
            logger.debug("%s: closed", self._tag)

    # ----------------------------------------------------------------------------- requests

    def id_code(self) -> str:
        """GA/T GetIDCode: 5 characters, maker code + model code. Needs no login."""
        return decode_id_code(self._request_in(VendorRequest.GET_ID_CODE))

    def login(self, password: str) -> None:
        """Raises RecorderAuthError (wrong password; `.attempts_left`) or RecorderLockedError."""
        payload = encode_password(password)
        self._request_out(VendorRequest.LOGIN, payload, expect=ResultCode.CHECK_PWD_SUCCESS)
        logger.info("%s: logged in", self._tag)

    def info(self) -> RecorderInfo:
        return RecorderInfo.from_bytes(self._request_in(VendorRequest.GET_INFO))

    def write_info(self, info: RecorderInfo) -> None:
        """GA/T WriteZFYInfo: bind the recorder to an officer. Needs login."""
        self._request_out(VendorRequest.WRITE_INFO, info.to_bytes(), expect=ResultCode.REQUEST_SUCCESS)
        logger.info("%s: identity written (officer %s)", self._tag, info.officer_no)

    def settings(self) -> RecorderSettings:
        """The recording settings (resolution, pre/post-record, file split). Needs login."""
        return RecorderSettings.from_bytes(self._request_in(VendorRequest.GET_SETTINGS))

    def write_settings(self, settings: RecorderSettings) -> None:
        """Set the recording settings. Needs login; read them back to know they took."""
        self._request_out(VendorRequest.SET_SETTINGS, settings.to_bytes(), expect=ResultCode.REQUEST_SUCCESS)
        logger.info("%s: settings written", self._tag)

    def firmware_version(self) -> str:
        """GET_VERSION: the firmware version, checked printable text of at most 32 bytes. A recorder
        whose firmware predates the request STALLs it (RecorderRejectedError, result BAD_REQUEST)."""
        return decode_firmware_version(self._request_in(VendorRequest.GET_VERSION))

    def clock(self) -> DeviceClock:
        return DeviceClock.from_bytes(self._request_in(VendorRequest.GET_CLOCK))

    def clock_sample(self) -> ClockSample:
        """(host_before_ms, device_ms, host_after_ms): the device clock bracketed by the host's."""
        with self._lock:
            before = self._host_clock_ms()
            device = self.clock()
            after = self._host_clock_ms()
        return ClockSample(before, device.utc_ms, after)

    def set_clock(self, utc_ms: int, tz_offset_min: int) -> None:
        """GA/T SyncDevTime. Only call it when the station's own clock is trusted (DESIGN inv. 8)."""
        clock = DeviceClock(utc_ms=utc_ms, tz_offset_min=tz_offset_min)
        self._request_out(VendorRequest.SET_CLOCK, clock.to_bytes(), expect=ResultCode.SET_SYSTEMTIME_SUCCESS)
        logger.info("%s: clock set to %d ms (UTC%+d min)", self._tag, utc_ms, tz_offset_min)

    def status(self) -> DeviceStatus:
        return DeviceStatus.from_bytes(self._request_in(VendorRequest.GET_STATUS))

    def switch_to_mass_storage(self) -> None:
        """GA/T SetMSDC. The device leaves the bus and comes back as a mass-storage device with the
        same USB serial; this driver is closed afterwards. Find it again with find_recorders."""
        with self._lock:
            self._request_out(VendorRequest.SET_MSDC, b"", expect=None)
            logger.info("%s: switched to mass storage", self._tag)
            self.close()

    # ---------------------------------------------------------------------------- transport

    def _device(self) -> Any:
        if self._dev is None:
            if self._gone:
                raise RecorderGoneError(f"{self._tag}: gone")
            raise RecorderError(f"{self._tag}: driver is not open")
        return self._dev

    def _request_in(self, request: VendorRequest) -> bytes:
        spec = REQUEST_SPECS[request]
        with self._lock:
            reply = self._transfer(request, REQUEST_TYPE_VENDOR_IN, spec.max_bytes)
        assert isinstance(reply, bytes)
        if len(reply) != spec.max_bytes:
            raise RecorderProtocolError(
                f"{self._tag}: {request.name} reply: expected {spec.max_bytes} bytes, got {len(reply)}"
            )
        return reply

    def _request_out(self, request: VendorRequest, payload: bytes, *, expect: ResultCode | None) -> None:
        with self._lock:
            written = self._transfer(request, REQUEST_TYPE_VENDOR_OUT, payload)
            if not isinstance(written, int) or written != len(payload):
                raise RecorderProtocolError(
                    f"{self._tag}: {request.name}: expected {len(payload)} bytes written, got {written!r}"
                )
            if expect is None:
                return
            # GA/T reports success through iRet; a device that ACKs without acting is caught here.
            result = self._last_result(request)
            if result.code is not expect:
                raise RecorderProtocolError(
                    f"{self._tag}: {request.name} acknowledged but result is {result.code.name}, "
                    f"expected {expect.name}"
                )

    def _transfer(self, request: VendorRequest, request_type: int, data: bytes | int) -> bytes | int:
        dev = self._device()
        try:
            reply = dev.ctrl_transfer(request_type, int(request), 0, 0, data, self._timeout_ms)
        except usb.core.USBTimeoutError as exc:
            raise RecorderTimeoutError(
                f"{self._tag}: {request.name} timed out after {self._timeout_ms} ms"
            ) from exc
        except usb.core.USBError as exc:
            if _is_gone(exc):
                self._drop()
                raise RecorderGoneError(f"{self._tag}: gone during {request.name} ({exc})") from exc
            if exc.errno == errno.EPIPE:
                raise self._rejected(request) from exc
            raise RecorderError(f"{self._tag}: {request.name} failed: {exc}") from exc
        if isinstance(reply, int):
            return reply
        return bytes(reply)

    def _last_result(self, request: VendorRequest) -> LastResult:
        try:
            raw = self._transfer(VendorRequest.GET_RESULT, REQUEST_TYPE_VENDOR_IN, LastResult.SIZE_BYTES)
        except RecorderRejectedError as exc:
            raise RecorderProtocolError(f"{self._tag}: GET_RESULT after {request.name} stalled") from exc
        assert isinstance(raw, bytes)
        try:
            return LastResult.from_bytes(raw)
        except RecorderProtocolError as exc:
            raise RecorderProtocolError(f"{self._tag}: GET_RESULT after {request.name}: {exc}") from exc

    def _rejected(self, request: VendorRequest) -> RecorderError:
        # The STALL itself says nothing; GET_RESULT says why.
        result = self._last_result(request)
        message = f"{self._tag}: {request.name} refused: {result.code.name}"
        if result.code is ResultCode.LOCKED:
            logger.warning("%s: locked out after wrong passwords", self._tag)
            return RecorderLockedError(message + " (re-plug to reset)", request=request, result=result.code,
                                       attempts_left=0)
        if result.code in (ResultCode.CHECK_PWD_FAILED, ResultCode.NOT_AUTHENTICATED):
            if request is VendorRequest.LOGIN:
                logger.warning("%s: wrong password, %d attempts left", self._tag, result.attempts_left)
                message += f" ({result.attempts_left} attempts left before lockout)"
            return RecorderAuthError(message, request=request, result=result.code,
                                     attempts_left=result.attempts_left)
        return RecorderRejectedError(message, request=request, result=result.code,
                                     attempts_left=result.attempts_left)

    def _drop(self) -> None:
        self._gone = True
        dev, self._dev = self._dev, None
        if dev is not None:
            usb.util.dispose_resources(dev)
