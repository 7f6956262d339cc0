"""The simulated EE-ZFY body-worn recorder: endpoint-0 logic of one device.

It answers the standard requests pyusb and libusb issue (GET_DESCRIPTOR for device, configuration,
LANGID and string descriptors; GET/SET_CONFIGURATION; GET_STATUS), the mass-storage class requests in
MSC mode, and the vendor protocol of drivers/usb/PROTOCOL.md in control mode: password with lockout,
identity, a drifting clock, battery and storage status, and the switch to mass storage.

No I/O: the bus (bus.py) owns plugging, persistence and volumes, and tells the device about its
volume through `volume_stats`.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from drivers.usb.protocol import (
    CLASS_MASS_STORAGE,
    CLASS_VENDOR_SPECIFIC,
    DEFAULT_VENDOR_ID,
    FIRMWARE_VERSION_BYTES,
    MAX_LOGIN_ATTEMPTS,
    MSC_PROTOCOL_BULK_ONLY,
    MSC_SUBCLASS_SCSI,
    PRODUCT_ID_CONTROL,
    PRODUCT_ID_MASS_STORAGE,
    PRODUCT_ID_MASS_STORAGE_ONLY,
    REQUEST_SPECS,
    DeviceClock,
    DeviceStatus,
    Direction,
    LastResult,
    RecorderInfo,
    RecorderMode,
    RecorderProtocolError,
    RecorderSettings,
    ResultCode,
    VendorRequest,
    encode_firmware_version,
    encode_id_code,
)
from simulators.recorder.descriptors import (
    LANGID_EN_US,
    ConfigurationDescriptor,
    DescriptorType,
    DeviceDescriptor,
    EndpointDescriptor,
    InterfaceDescriptor,
    langid_descriptor,
    string_descriptor,
)

logger = logging.getLogger(__name__)

MANUFACTURER = "EE Simulated Devices"
PRODUCT_CONTROL = "EE-ZFY Body-Worn Recorder"
PRODUCT_MASS_STORAGE = "EE-ZFY Recorder Storage"
STRING_MANUFACTURER, STRING_PRODUCT, STRING_SERIAL = 1, 2, 3

# Standard requests (USB 2.0 table 9-4) and mass-storage class requests (BOT 1.0 §3).
REQ_GET_STATUS = 0x00
REQ_GET_DESCRIPTOR = 0x06
REQ_GET_CONFIGURATION = 0x08
REQ_SET_CONFIGURATION = 0x09
REQ_SET_INTERFACE = 0x0B
REQ_MSC_RESET = 0xFF
REQ_MSC_GET_MAX_LUN = 0xFE

TYPE_MASK = 0x60
TYPE_STANDARD, TYPE_CLASS, TYPE_VENDOR = 0x00, 0x20, 0x40
RECIPIENT_MASK = 0x1F
RECIPIENT_DEVICE, RECIPIENT_INTERFACE = 0, 1
DIR_IN = 0x80

DEFAULT_STORAGE_TOTAL_BYTES = 32 * 1024**3
DEFAULT_FIRMWARE_VERSION = "V2.4.1_20260301"


class UsbSerialFault(StrEnum):
    """How a device fails to give one serial although its device descriptor names a serial string
    (iSerialNumber != 0): the commonest field faults of cheap devices, as libusb and pyusb report them,
    and a hostile one."""

    STALL = "stall"  # the serial string request STALLs (libusb LIBUSB_ERROR_PIPE, pyusb errno EPIPE)
    # String descriptor 0 (the LANGID table) STALLs: pyusb finds no language to ask for the serial in
    # and raises ValueError("The device has no langid ...") before any serial request.
    NO_LANGIDS = "no-langids"
    # A hostile device: every serial request answers another (well-formed) serial.
    CHANGES = "changes"
    # The serial request is never answered (NAKed): the host's transfer times out (ETIMEDOUT).
    SLOW = "slow"


class FirmwareFault(StrEnum):
    """What a recorder's GET_VERSION gives instead of its version: hostile or broken firmware strings."""

    CONTROL_CHARS = "control-chars"  # terminal escapes, a bell, CR LF: a version that would forge log lines
    NOT_GBK = "not-gbk"  # bytes no text encoding the protocol knows
    OVERLONG = "overlong"  # 10 kB of text for a 32-byte request (libusb reports an overflow)
    UNSUPPORTED = "unsupported"  # firmware older than the request: it STALLs, BAD_REQUEST

    def reply(self) -> bytes:
        if self is FirmwareFault.CONTROL_CHARS:
            return b"V9\x1b[2J\x07\r\nERROR forged".ljust(FIRMWARE_VERSION_BYTES, b"\x00")
        if self is FirmwareFault.NOT_GBK:
            return b"V2.4\xff\xfe\x80\x81\xff".ljust(FIRMWARE_VERSION_BYTES, b"\x00")
        return b"V" * 10_240


class NoAnswerError(Exception):
    """The device NAKs the request until the host gives up: the transfer times out (libusb
    LIBUSB_ERROR_TIMEOUT), after the host's whole timeout."""


class StallError(Exception):
    """The device STALLs endpoint 0 (libusb reports LIBUSB_ERROR_PIPE, pyusb errno EPIPE)."""


@dataclass(frozen=True)
class SetupPacket:
    bmRequestType: int
    bRequest: int
    wValue: int
    wIndex: int
    wLength: int

    def __post_init__(self) -> None:
        for name, limit in (("bmRequestType", 0xFF), ("bRequest", 0xFF), ("wValue", 0xFFFF),
                            ("wIndex", 0xFFFF), ("wLength", 0xFFFF)):
            value: int = getattr(self, name)
            if not 0 <= value <= limit:
                raise ValueError(f"setup packet {name}: expected 0..{limit}, got {value}")

    @property
    def is_in(self) -> bool:
        return bool(self.bmRequestType & DIR_IN)


@dataclass(frozen=True)
class ClockReference:
    """The device clock read `device_ms` when the host wall clock read `host_ms`; it has run at
    (1 + drift_ppm·1e-6) of host speed since. Persisted so a restarted bus keeps the same clock."""

    device_ms: float
    host_ms: float
    tz_offset_min: int


@dataclass(frozen=True)
class VolumeStats:
    file_count: int
    used_bytes: int


class _Secret:
    """Keeps the device password out of reprs, logs and tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def matches(self, candidate: bytes) -> bool:
        return hmac.compare_digest(self._value.encode("ascii"), candidate)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"


def wall_clock_ms() -> float:
    return time.time_ns() / 1e6


def check_usb_serial(usb_serial: str) -> None:
    """A simulated recorder's USB serial: 16 characters A-Za-z0-9 as the EE-ZFY ships them, or "" for a
    cheap recorder shipped without one (no serial string descriptor). Nothing keeps two recorders from
    sharing one: identical factory serials and copied ones happen in the field."""
    if usb_serial and not (len(usb_serial) == 16 and usb_serial.isascii() and usb_serial.isalnum()):
        raise ValueError(f"usb_serial: expected 16 characters A-Za-z0-9 or none, got {usb_serial!r}")


class SimulatedRecorder:
    """One recorder's endpoint 0. Not thread-safe: the bus serialises transfers per device."""

    def __init__(
        self,
        *,
        info: RecorderInfo,
        usb_serial: str,
        password: str,
        id_code: str = "EEZ01",
        msc_only: bool = False,
        vendor_id: int = DEFAULT_VENDOR_ID,
        usb_serial_string: str | None = None,
        usb_serial_fault: UsbSerialFault | None = None,
        clock: ClockReference | None = None,
        clock_offset_s: float = 0.0,
        clock_drift_ppm: float = 0.0,
        tz_offset_min: int = 480,
        battery_percent: int = 80,
        storage_total_bytes: int = DEFAULT_STORAGE_TOTAL_BYTES,
        settings: RecorderSettings | None = None,
        firmware_version: str = DEFAULT_FIRMWARE_VERSION,
        firmware_fault: FirmwareFault | None = None,
        volume_stats: Callable[[], VolumeStats] = lambda: VolumeStats(0, 0),
        host_ms: Callable[[], float] = wall_clock_ms,
    ) -> None:
        encode_id_code(id_code)
        check_usb_serial(usb_serial)
        if usb_serial_string is not None:
            string_descriptor(usb_serial_string)  # it must fit in a descriptor
        self.info = info
        self.usb_serial = usb_serial
        # Fault: the exact serial string the device presents instead of `usb_serial` ("" for an empty
        # string descriptor, or hostile text); None presents `usb_serial` (none at all when it is "").
        self.usb_serial_string = usb_serial_string
        # Fault: the descriptor names a serial string, but reading it fails (`UsbSerialFault`).
        self.usb_serial_fault = usb_serial_fault
        self.usb_serial_reads = 0  # serial string requests seen (the CHANGES and SLOW faults count them)
        self._password = _Secret(password)
        self.id_code = id_code
        self.msc_only = msc_only
        self.vendor_id = vendor_id
        self.clock_drift_ppm = clock_drift_ppm
        self.battery_percent = battery_percent
        self.storage_total_bytes = storage_total_bytes
        # What the station's SET_SETTINGS leaves (kept in state.json like the identity).
        self.settings = settings or RecorderSettings(width=1920, height=1080, pre_record_s=10,
                                                     post_record_s=10, split_min=30)
        self.firmware_version = firmware_version
        encode_firmware_version(firmware_version)
        # Fault: what GET_VERSION gives instead of the version (`FirmwareFault`).
        self.firmware_fault = firmware_fault
        self._volume_stats = volume_stats
        self._host_ms = host_ms
        now = host_ms()
        self.clock_reference = clock or ClockReference(now + clock_offset_s * 1000.0, now, tz_offset_min)
        # Hostile-device fault: the next replies to these requests are replaced by these bytes.
        self.reply_faults: dict[VendorRequest, bytes] = {}
        # Faults: firmware that acknowledges WRITE_INFO / SET_SETTINGS (REQUEST_SUCCESS) and keeps the old.
        self.ignore_identity_writes = False
        self.ignore_settings_writes = False
        self.mode = RecorderMode.MASS_STORAGE if msc_only else RecorderMode.CONTROL
        self.authenticated = False
        self.failed_logins = 0
        self.last_login_failed = False
        self.last_result = ResultCode.CONNECT_SUCCESS
        self.configuration = 1
        # Every password any host sent to this device, right or wrong, kept across re-plugs: what a
        # hostile device posing as a recorder would harvest (kept out of reprs and logs).
        self.passwords_received: list[_Secret] = []

    def __repr__(self) -> str:
        return (f"SimulatedRecorder(serial={self.info.device_serial!r}, usb_serial={self.usb_serial!r}, "
                f"mode={self.mode})")

    @property
    def password(self) -> str:
        return self._password.reveal()

    @property
    def locked(self) -> bool:
        return self.failed_logins >= MAX_LOGIN_ATTEMPTS

    def power_on(self) -> None:
        """Plugged in: a fresh session. The lockout lasts only until re-plug, like the real devices."""
        self.mode = RecorderMode.MASS_STORAGE if self.msc_only else RecorderMode.CONTROL
        self.authenticated = False
        self.failed_logins = 0
        self.last_login_failed = False
        self.last_result = ResultCode.CONNECT_SUCCESS
        self.configuration = 1

    # ----------------------------------------------------------------------------------- clock

    def clock_now(self) -> DeviceClock:
        ref = self.clock_reference
        elapsed_ms = self._host_ms() - ref.host_ms
        device_ms = ref.device_ms + elapsed_ms * (1.0 + self.clock_drift_ppm * 1e-6)
        return DeviceClock(utc_ms=int(device_ms), tz_offset_min=ref.tz_offset_min)

    def set_clock(self, clock: DeviceClock) -> None:
        self.clock_reference = ClockReference(float(clock.utc_ms), self._host_ms(), clock.tz_offset_min)

    # ------------------------------------------------------------------------------ descriptors

    @property
    def product_id(self) -> int:
        if self.mode is RecorderMode.CONTROL:
            return PRODUCT_ID_CONTROL
        return PRODUCT_ID_MASS_STORAGE_ONLY if self.msc_only else PRODUCT_ID_MASS_STORAGE

    def device_descriptor(self) -> DeviceDescriptor:
        control = self.mode is RecorderMode.CONTROL
        return DeviceDescriptor(
            bcdUSB=0x0200,
            bDeviceClass=CLASS_VENDOR_SPECIFIC if control else 0x00,
            bDeviceSubClass=0,
            bDeviceProtocol=0,
            bMaxPacketSize0=64,
            idVendor=self.vendor_id,
            idProduct=self.product_id,
            bcdDevice=0x0100,
            iManufacturer=STRING_MANUFACTURER,
            iProduct=STRING_PRODUCT,
            # A recorder shipped without a serial has no serial string at all (index 0).
            # A device with a serial fault names one all the same: reading it is what fails.
            iSerialNumber=STRING_SERIAL if self.usb_serial or self.usb_serial_string is not None
            or self.usb_serial_fault is not None else 0,
            bNumConfigurations=1,
        )

    def configuration_descriptor(self) -> ConfigurationDescriptor:
        if self.mode is RecorderMode.CONTROL:
            interface = InterfaceDescriptor(0, 0, CLASS_VENDOR_SPECIFIC, 0, 0, 0)
        else:
            interface = InterfaceDescriptor(
                0, 0, CLASS_MASS_STORAGE, MSC_SUBCLASS_SCSI, MSC_PROTOCOL_BULK_ONLY, 0,
                (EndpointDescriptor(0x81, 0x02, 512, 0), EndpointDescriptor(0x02, 0x02, 512, 0)),
            )
        # Self-declared 500 mA: the dock charges the recorder while it is docked.
        return ConfigurationDescriptor(1, 0, 0x80, 250, ((interface,),))

    def string(self, index: int) -> str | None:
        product = PRODUCT_CONTROL if self.mode is RecorderMode.CONTROL else PRODUCT_MASS_STORAGE
        strings = {STRING_MANUFACTURER: MANUFACTURER, STRING_PRODUCT: product}
        if self.usb_serial_string is not None:
            strings[STRING_SERIAL] = self.usb_serial_string
        elif self.usb_serial:
            strings[STRING_SERIAL] = self.usb_serial
        return strings.get(index)

    # ---------------------------------------------------------------------------- endpoint 0

    def control_transfer(self, setup: SetupPacket, data_out: bytes = b"") -> bytes:
        """One control transfer. Returns the IN data stage (at most wLength bytes) or b"" for OUT.
        Raises StallError when the device STALLs."""
        if not setup.is_in and len(data_out) != setup.wLength:
            raise StallError(f"OUT data stage of {len(data_out)} bytes, wLength {setup.wLength}")
        request_type = setup.bmRequestType & TYPE_MASK
        if request_type == TYPE_STANDARD:
            return self._standard(setup)
        if request_type == TYPE_CLASS and self.mode is RecorderMode.MASS_STORAGE:
            return self._mass_storage_class(setup)
        if request_type == TYPE_VENDOR and self.mode is RecorderMode.CONTROL:
            return self._vendor(setup, data_out)
        raise StallError(f"request type {setup.bmRequestType:#04x} not supported in {self.mode} mode")

    def _standard(self, setup: SetupPacket) -> bytes:
        recipient = setup.bmRequestType & RECIPIENT_MASK
        key = (setup.bmRequestType, setup.bRequest)
        if key == (DIR_IN | RECIPIENT_DEVICE, REQ_GET_DESCRIPTOR):
            return self._descriptor(setup)[: setup.wLength]
        if key == (DIR_IN | RECIPIENT_DEVICE, REQ_GET_CONFIGURATION):
            return bytes((self.configuration,))[: setup.wLength]
        if key == (RECIPIENT_DEVICE, REQ_SET_CONFIGURATION) and setup.wValue in (0, 1):
            self.configuration = setup.wValue
            return b""
        if setup.bRequest == REQ_GET_STATUS and setup.is_in and recipient <= 2:
            return b"\x00\x00"[: setup.wLength]
        if key == (RECIPIENT_INTERFACE, REQ_SET_INTERFACE) and setup.wValue == 0 and setup.wIndex == 0:
            return b""
        raise StallError(f"standard request {setup.bmRequestType:#04x}/{setup.bRequest:#04x} not supported")

    def _descriptor(self, setup: SetupPacket) -> bytes:
        kind, index = setup.wValue >> 8, setup.wValue & 0xFF
        if kind == DescriptorType.DEVICE and index == 0:
            return self.device_descriptor().to_bytes()
        if kind == DescriptorType.CONFIGURATION and index == 0:
            return self.configuration_descriptor().to_bytes()
        if kind == DescriptorType.STRING:
            if index == 0 and self.usb_serial_fault is not UsbSerialFault.NO_LANGIDS:
                return langid_descriptor((LANGID_EN_US,))
            if index == STRING_SERIAL and self.usb_serial_fault is UsbSerialFault.STALL:
                raise StallError(f"serial string {index}: the device STALLs its request (fault)")
            if index == STRING_SERIAL and self.usb_serial_fault is UsbSerialFault.SLOW:
                self.usb_serial_reads += 1
                raise NoAnswerError(f"serial string {index}: the device never answers (fault)")
            if index == STRING_SERIAL and self.usb_serial_fault is UsbSerialFault.CHANGES:
                self.usb_serial_reads += 1
                return string_descriptor(f"EEZ01CHG{self.usb_serial_reads:08d}")
            text = self.string(index)
            if text is not None and setup.wIndex == LANGID_EN_US:
                return string_descriptor(text)
        raise StallError(f"no descriptor type {kind} index {index} langid {setup.wIndex:#06x}")

    def _mass_storage_class(self, setup: SetupPacket) -> bytes:
        if (setup.bmRequestType, setup.bRequest) == (0xA1, REQ_MSC_GET_MAX_LUN) and setup.wLength >= 1:
            return b"\x00"
        if (setup.bmRequestType, setup.bRequest) == (0x21, REQ_MSC_RESET) and setup.wLength == 0:
            return b""
        raise StallError(f"class request {setup.bmRequestType:#04x}/{setup.bRequest:#04x} not supported")

    def _fail(self, result: ResultCode, why: str) -> StallError:
        self.last_result = result
        return StallError(f"{result.name}: {why}")

    def _vendor(self, setup: SetupPacket, data_out: bytes) -> bytes:
        try:
            request = VendorRequest(setup.bRequest)
        except ValueError:
            raise self._fail(ResultCode.BAD_REQUEST, f"unknown vendor request {setup.bRequest:#04x}") \
                from None
        spec = REQUEST_SPECS[request]
        if setup.bmRequestType != int(spec.direction) or setup.bmRequestType & RECIPIENT_MASK:
            raise self._fail(ResultCode.BAD_REQUEST,
                             f"{request.name} with bmRequestType {setup.bmRequestType:#04x}")
        if setup.wValue or setup.wIndex:
            raise self._fail(ResultCode.BAD_REQUEST, f"{request.name} with wValue/wIndex not 0")
        if not spec.min_bytes <= setup.wLength <= spec.max_bytes:
            raise self._fail(
                ResultCode.BAD_LENGTH,
                f"{request.name} expects {spec.min_bytes}..{spec.max_bytes} bytes, wLength {setup.wLength}",
            )
        if request is VendorRequest.GET_RESULT:
            # Reading the result must not overwrite it.
            attempts_left = max(0, MAX_LOGIN_ATTEMPTS - self.failed_logins)
            return self._reply(request, LastResult(self.last_result, attempts_left).to_bytes())
        if self.locked and request is not VendorRequest.GET_ID_CODE:
            raise self._fail(ResultCode.LOCKED,
                             f"{request.name} refused: locked after {self.failed_logins} wrong passwords")
        if spec.needs_login and not self.authenticated:
            result = ResultCode.CHECK_PWD_FAILED if self.last_login_failed else ResultCode.NOT_AUTHENTICATED
            raise self._fail(result, f"{request.name} needs LOGIN")
        reply = self._dispatch(request, data_out)
        return self._reply(request, reply) if spec.direction is Direction.IN else b""

    def _reply(self, request: VendorRequest, reply: bytes) -> bytes:
        return self.reply_faults.pop(request, reply)

    def _dispatch(self, request: VendorRequest, data: bytes) -> bytes:
        if request is VendorRequest.GET_ID_CODE:
            self.last_result = ResultCode.CONNECT_SUCCESS
            return encode_id_code(self.id_code)
        if request is VendorRequest.LOGIN:
            return self._login(data)
        if request is VendorRequest.GET_INFO:
            self.last_result = ResultCode.REQUEST_SUCCESS
            return self.info.to_bytes()
        if request is VendorRequest.WRITE_INFO:
            try:
                written = RecorderInfo.from_bytes(data)
            except RecorderProtocolError as exc:
                raise self._fail(ResultCode.BAD_VALUE, str(exc)) from None
            if not self.ignore_identity_writes:
                self.info = written
            self.last_result = ResultCode.REQUEST_SUCCESS
            return b""
        if request is VendorRequest.GET_SETTINGS:
            self.last_result = ResultCode.REQUEST_SUCCESS
            return self.settings.to_bytes()
        if request is VendorRequest.SET_SETTINGS:
            try:
                settings = RecorderSettings.from_bytes(data)
            except RecorderProtocolError as exc:
                raise self._fail(ResultCode.BAD_VALUE, str(exc)) from None
            if not self.ignore_settings_writes:
                self.settings = settings
            self.last_result = ResultCode.REQUEST_SUCCESS
            return b""
        if request is VendorRequest.GET_CLOCK:
            self.last_result = ResultCode.REQUEST_SUCCESS
            return self.clock_now().to_bytes()
        if request is VendorRequest.SET_CLOCK:
            try:
                self.set_clock(DeviceClock.from_bytes(data))
            except RecorderProtocolError as exc:
                raise self._fail(ResultCode.SET_SYSTEMTIME_FAILED, str(exc)) from None
            self.last_result = ResultCode.SET_SYSTEMTIME_SUCCESS
            return b""
        if request is VendorRequest.GET_STATUS:
            self.last_result = ResultCode.REQUEST_SUCCESS
            return self.status().to_bytes()
        if request is VendorRequest.GET_VERSION:
            if self.firmware_fault is FirmwareFault.UNSUPPORTED:
                raise self._fail(ResultCode.BAD_REQUEST, "GET_VERSION: this firmware predates the request")
            self.last_result = ResultCode.REQUEST_SUCCESS
            if self.firmware_fault is not None:
                return self.firmware_fault.reply()
            return encode_firmware_version(self.firmware_version)
        if request is VendorRequest.SET_MSDC:
            # The bus sees the mode change and re-enumerates the device in MSC mode.
            self.mode = RecorderMode.MASS_STORAGE
            self.authenticated = False
            self.last_result = ResultCode.MSDC_SUCCESS
            return b""
        raise self._fail(ResultCode.BAD_REQUEST, f"{request.name} not implemented")  # pragma: no cover

    def _login(self, candidate: bytes) -> bytes:
        self.passwords_received.append(_Secret(candidate.decode("ascii", errors="replace")))
        if self._password.matches(candidate):
            self.authenticated = True
            self.failed_logins = 0
            self.last_login_failed = False
            self.last_result = ResultCode.CHECK_PWD_SUCCESS
            logger.info("recorder %s: login ok", self.info.device_serial)
            return b""
        self.authenticated = False
        self.failed_logins += 1
        self.last_login_failed = True
        logger.info("recorder %s: wrong password (%d/%d)", self.info.device_serial, self.failed_logins,
                    MAX_LOGIN_ATTEMPTS)
        if self.locked:
            raise self._fail(ResultCode.LOCKED, "wrong password; locked until re-plug")
        raise self._fail(ResultCode.CHECK_PWD_FAILED, "wrong password")

    def status(self) -> DeviceStatus:
        stats = self._volume_stats()
        total = max(self.storage_total_bytes, stats.used_bytes)
        return DeviceStatus(
            battery_percent=self.battery_percent,
            storage_total_bytes=total,
            storage_free_bytes=total - stats.used_bytes,
            width=self.settings.width,
            height=self.settings.height,
            file_count=stats.file_count,
        )
