"""EE-ZFY recorder control protocol: pure codecs for the vendor control transfers on endpoint 0.

No I/O here. Every byte comes from a device the station does not trust, so every decoder checks
lengths, ranges and text encodings and raises `RecorderProtocolError` naming the field, what was
expected and what came. The wire layouts are documented in PROTOCOL.md next to this file.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import ClassVar

# Placeholder vendor id for the simulated "EE-ZFY" recorder family; real deployments configure the
# ids of their recorders (see recorder.DEFAULT_IDS and find_recorders(ids=...)).
DEFAULT_VENDOR_ID = 0x2E3C
PRODUCT_ID_CONTROL = 0x5A01
PRODUCT_ID_MASS_STORAGE = 0x5A02
PRODUCT_ID_MASS_STORAGE_ONLY = 0x5A03

# bmRequestType: vendor request, recipient device, direction IN (device to host) / OUT.
REQUEST_TYPE_VENDOR_IN = 0xC0
REQUEST_TYPE_VENDOR_OUT = 0x40

# USB class codes the station uses to tell the two personalities of a recorder apart.
CLASS_VENDOR_SPECIFIC = 0xFF
CLASS_MASS_STORAGE = 0x08
MSC_SUBCLASS_SCSI = 0x06
MSC_PROTOCOL_BULK_ONLY = 0x50

# Device policy, documented so the station can warn before it locks a recorder out.
MAX_LOGIN_ATTEMPTS = 5

PASSWORD_MIN_BYTES = 6
PASSWORD_MAX_BYTES = 16
ID_CODE_BYTES = 5
# GET_VERSION: the firmware version, GBK text NUL-padded to this width (one more than GA/T's text fields
# carry; real version strings are ASCII like "V2.4.1_20260301").
FIRMWARE_VERSION_BYTES = 32

TEXT_ENCODING = "gbk"

# 0001-01-01 would be legal for int64, but a clock outside 1970..9999 is a device fault, not a time.
CLOCK_MIN_MS = 0
CLOCK_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
TZ_OFFSET_MIN_MIN = -720  # UTC-12:00
TZ_OFFSET_MAX_MIN = 840  # UTC+14:00


class RecorderError(Exception):
    """Base of every error of the USB recorder layer (codec and driver)."""


class RecorderProtocolError(RecorderError):
    """Bytes from (or for) the device do not follow the protocol."""


class RecorderMode(StrEnum):
    """The two USB personalities of a recorder."""

    CONTROL = "control"  # vendor interface, the requests below; files not reachable
    MASS_STORAGE = "mass-storage"  # USB mass storage (MSC/SCSI/bulk-only); vendor requests gone


class VendorRequest(IntEnum):
    """bRequest codes of the vendor control transfers (control mode only)."""

    GET_ID_CODE = 0x01
    LOGIN = 0x02
    GET_INFO = 0x03
    WRITE_INFO = 0x04
    GET_CLOCK = 0x05
    SET_CLOCK = 0x06
    GET_STATUS = 0x07
    SET_MSDC = 0x08
    GET_RESULT = 0x09
    GET_SETTINGS = 0x0A
    SET_SETTINGS = 0x0B
    GET_VERSION = 0x0C


class ResultCode(IntEnum):
    """Last-result codes: 1..8 are the GA/T 947 DLL `iRet` values; 100+ are this protocol's own."""

    CONNECT_SUCCESS = 1
    CONNECT_FAILED = 2
    CHECK_PWD_SUCCESS = 3
    CHECK_PWD_FAILED = 4
    SET_SYSTEMTIME_SUCCESS = 5
    SET_SYSTEMTIME_FAILED = 6
    MSDC_SUCCESS = 7
    MSDC_FAILED = 8
    REQUEST_SUCCESS = 100
    NOT_AUTHENTICATED = 101
    LOCKED = 102
    BAD_REQUEST = 103
    BAD_LENGTH = 104
    BAD_VALUE = 105


class Direction(IntEnum):
    IN = REQUEST_TYPE_VENDOR_IN
    OUT = REQUEST_TYPE_VENDOR_OUT


@dataclass(frozen=True)
class RequestSpec:
    """What the wire says about one request: direction, payload size bounds, whether it needs LOGIN."""

    request: VendorRequest
    direction: Direction
    min_bytes: int
    max_bytes: int
    needs_login: bool


REQUEST_SPECS: dict[VendorRequest, RequestSpec] = {
    spec.request: spec
    for spec in (
        RequestSpec(VendorRequest.GET_ID_CODE, Direction.IN, ID_CODE_BYTES, ID_CODE_BYTES, False),
        RequestSpec(VendorRequest.LOGIN, Direction.OUT, PASSWORD_MIN_BYTES, PASSWORD_MAX_BYTES, False),
        RequestSpec(VendorRequest.GET_INFO, Direction.IN, 89, 89, True),
        RequestSpec(VendorRequest.WRITE_INFO, Direction.OUT, 89, 89, True),
        RequestSpec(VendorRequest.GET_CLOCK, Direction.IN, 10, 10, True),
        RequestSpec(VendorRequest.SET_CLOCK, Direction.OUT, 10, 10, True),
        RequestSpec(VendorRequest.GET_STATUS, Direction.IN, 25, 25, True),
        RequestSpec(VendorRequest.SET_MSDC, Direction.OUT, 0, 0, True),
        RequestSpec(VendorRequest.GET_RESULT, Direction.IN, 2, 2, False),
        RequestSpec(VendorRequest.GET_SETTINGS, Direction.IN, 8, 8, True),
        RequestSpec(VendorRequest.SET_SETTINGS, Direction.OUT, 8, 8, True),
        RequestSpec(VendorRequest.GET_VERSION, Direction.IN, FIRMWARE_VERSION_BYTES, FIRMWARE_VERSION_BYTES,
                    False),
    )
}


def _expect_length(what: str, data: bytes, size: int) -> None:
    if len(data) != size:
        raise RecorderProtocolError(f"{what}: expected {size} bytes, got {len(data)}")


_ID_CODE_RE = re.compile(r"[A-Z0-9]{5}")
_SERIAL_RE = re.compile(r"[A-Za-z0-9]{7}")
_OFFICER_NO_RE = re.compile(r"[0-9]{6}")
_UNIT_CODE_RE = re.compile(r"[A-Za-z0-9]{0,12}")


def decode_id_code(data: bytes) -> str:
    """GET_ID_CODE reply: 5 ASCII characters, maker code + model code (e.g. "EEZ01")."""
    _expect_length("GET_ID_CODE reply", data, ID_CODE_BYTES)
    text = data.decode("ascii", errors="replace")
    if not _ID_CODE_RE.fullmatch(text):
        raise RecorderProtocolError(f"GET_ID_CODE reply: expected 5 characters A-Z0-9, got {data!r}")
    return text


def encode_id_code(id_code: str) -> bytes:
    if not _ID_CODE_RE.fullmatch(id_code):
        raise RecorderProtocolError(f"id code: expected 5 characters A-Z0-9, got {id_code!r}")
    return id_code.encode("ascii")


def encode_password(password: str) -> bytes:
    """LOGIN payload. The error never echoes the password, only its length."""
    if not password.isascii() or not password.isprintable():
        raise RecorderProtocolError("password: expected printable ASCII characters")
    if not PASSWORD_MIN_BYTES <= len(password) <= PASSWORD_MAX_BYTES:
        raise RecorderProtocolError(
            f"password: expected {PASSWORD_MIN_BYTES}..{PASSWORD_MAX_BYTES} characters, got {len(password)}"
        )
    return password.encode("ascii")


def decode_firmware_version(data: bytes) -> str:
    """GET_VERSION reply: the firmware version, 1..32 bytes of printable GBK text NUL-padded to 32.
    Like identity, junk is refused rather than cleaned: a version is what a fleet is audited by (which
    recorders run the firmware with the known fault), and a guessed one would mislead."""
    _expect_length("GET_VERSION reply", data, FIRMWARE_VERSION_BYTES)
    text_bytes, nul, padding = data.partition(b"\x00")
    if nul and padding.strip(b"\x00"):
        raise RecorderProtocolError(f"GET_VERSION reply: expected NUL padding after the text, got {data!r}")
    try:
        text = text_bytes.decode(TEXT_ENCODING)
    except UnicodeDecodeError as exc:
        raise RecorderProtocolError(
            f"GET_VERSION reply: expected GBK text, got {text_bytes!r} ({exc.reason})"
        ) from exc
    if not text or not text.isprintable() or text != text.strip():
        raise RecorderProtocolError(
            f"GET_VERSION reply: expected 1..{FIRMWARE_VERSION_BYTES} bytes of printable text without "
            f"surrounding spaces, got {text_bytes!r}"
        )
    return text


def encode_firmware_version(version: str) -> bytes:
    """The GET_VERSION reply of a device whose firmware is ``version`` (the simulator's)."""
    try:
        raw = version.encode(TEXT_ENCODING)
    except UnicodeEncodeError as exc:
        raise RecorderProtocolError(f"firmware version: expected GBK text, got {version!r}") from exc
    if not 0 < len(raw) <= FIRMWARE_VERSION_BYTES or not version.isprintable() or version != version.strip():
        raise RecorderProtocolError(
            f"firmware version: expected 1..{FIRMWARE_VERSION_BYTES} bytes of printable text, got {version!r}"
        )
    return raw.ljust(FIRMWARE_VERSION_BYTES, b"\x00")


def _decode_text_field(field: str, raw: bytes) -> str:
    """One NUL-padded GBK field. Bytes after the first NUL must all be NUL: a device that leaves
    junk there is either broken or smuggling data, and identity is too important to guess."""
    text_bytes, nul, padding = raw.partition(b"\x00")
    if nul and padding.strip(b"\x00"):
        raise RecorderProtocolError(f"ZFY_INFO {field}: expected NUL padding after the text, got {raw!r}")
    try:
        text = text_bytes.decode(TEXT_ENCODING)
    except UnicodeDecodeError as exc:
        raise RecorderProtocolError(
            f"ZFY_INFO {field}: expected GBK text, got {text_bytes!r} ({exc.reason})"
        ) from exc
    return text


def _check_printable(field: str, text: str) -> None:
    if not text.isprintable():
        raise RecorderProtocolError(f"ZFY_INFO {field}: expected printable text, got {text!r}")


@dataclass(frozen=True)
class RecorderInfo:
    """ZFY_INFO: what the recorder claims about itself and its officer (GA/T 947 layout, 89 bytes).

    serial(7) + officer no 警号(6) + officer name(32) + unit code(12) + unit name(32), GBK, NUL padded.
    These are claims: the station binds them against its whitelist and never trusts them alone.
    """

    device_serial: str
    officer_no: str
    officer_name: str
    unit_code: str
    unit_name: str

    SIZE_BYTES: ClassVar[int] = 89
    # (attribute, width in bytes) in wire order.
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("device_serial", 7),
        ("officer_no", 6),
        ("officer_name", 32),
        ("unit_code", 12),
        ("unit_name", 32),
    )

    def __post_init__(self) -> None:
        if not _SERIAL_RE.fullmatch(self.device_serial):
            raise RecorderProtocolError(
                f"ZFY_INFO device_serial: expected 7 characters A-Za-z0-9, got {self.device_serial!r}"
            )
        if not _OFFICER_NO_RE.fullmatch(self.officer_no):
            raise RecorderProtocolError(f"ZFY_INFO officer_no: expected 6 digits, got {self.officer_no!r}")
        if not _UNIT_CODE_RE.fullmatch(self.unit_code):
            raise RecorderProtocolError(
                f"ZFY_INFO unit_code: expected up to 12 characters A-Za-z0-9, got {self.unit_code!r}"
            )
        for field, width in self.FIELDS:
            value: str = getattr(self, field)
            _check_printable(field, value)
            try:
                encoded = value.encode(TEXT_ENCODING)
            except UnicodeEncodeError as exc:
                raise RecorderProtocolError(
                    f"ZFY_INFO {field}: expected text encodable as GBK, got {value!r}"
                ) from exc
            if len(encoded) > width:
                raise RecorderProtocolError(
                    f"ZFY_INFO {field}: expected at most {width} GBK bytes, got {len(encoded)}"
                )

    @classmethod
    def from_bytes(cls, data: bytes) -> RecorderInfo:
        _expect_length("ZFY_INFO", data, cls.SIZE_BYTES)
        values: dict[str, str] = {}
        offset = 0
        for field, width in cls.FIELDS:
            values[field] = _decode_text_field(field, data[offset : offset + width])
            offset += width
        return cls(**values)

    def to_bytes(self) -> bytes:
        out = bytearray()
        for field, width in self.FIELDS:
            value: str = getattr(self, field)
            out += value.encode(TEXT_ENCODING).ljust(width, b"\x00")
        return bytes(out)


@dataclass(frozen=True)
class DeviceClock:
    """GET_CLOCK / SET_CLOCK: int64 ms since the Unix epoch as the device believes UTC, int16 minutes
    east of UTC of the device's local time zone (both little-endian, 10 bytes)."""

    utc_ms: int
    tz_offset_min: int

    SIZE_BYTES: ClassVar[int] = 10
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<qh")

    def __post_init__(self) -> None:
        if not CLOCK_MIN_MS <= self.utc_ms <= CLOCK_MAX_MS:
            raise RecorderProtocolError(
                f"clock utc_ms: expected {CLOCK_MIN_MS}..{CLOCK_MAX_MS}, got {self.utc_ms}"
            )
        if not TZ_OFFSET_MIN_MIN <= self.tz_offset_min <= TZ_OFFSET_MAX_MIN:
            raise RecorderProtocolError(
                f"clock tz_offset_min: expected {TZ_OFFSET_MIN_MIN}..{TZ_OFFSET_MAX_MIN}, "
                f"got {self.tz_offset_min}"
            )

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceClock:
        _expect_length("clock", data, cls.SIZE_BYTES)
        utc_ms, tz_offset_min = cls._STRUCT.unpack(data)
        return cls(utc_ms=utc_ms, tz_offset_min=tz_offset_min)

    def to_bytes(self) -> bytes:
        return self._STRUCT.pack(self.utc_ms, self.tz_offset_min)


@dataclass(frozen=True)
class DeviceStatus:
    """GET_STATUS: battery %, storage, recording resolution, number of files (25 bytes, little-endian:
    u8 battery, u64 total, u64 free, u16 width, u16 height, u32 file count)."""

    battery_percent: int
    storage_total_bytes: int
    storage_free_bytes: int
    width: int
    height: int
    file_count: int

    SIZE_BYTES: ClassVar[int] = 25
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<BQQHHI")

    def __post_init__(self) -> None:
        if not 0 <= self.battery_percent <= 100:
            raise RecorderProtocolError(
                f"status battery_percent: expected 0..100, got {self.battery_percent}"
            )
        if not 0 <= self.storage_total_bytes < 2**64:
            raise RecorderProtocolError(
                f"status storage_total_bytes: expected 0..2^64-1, got {self.storage_total_bytes}"
            )
        if not 0 <= self.storage_free_bytes <= self.storage_total_bytes:
            raise RecorderProtocolError(
                f"status storage_free_bytes: expected 0..{self.storage_total_bytes} (total), "
                f"got {self.storage_free_bytes}"
            )
        for name in ("width", "height"):
            value: int = getattr(self, name)
            if not 0 <= value <= 0xFFFF:
                raise RecorderProtocolError(f"status {name}: expected 0..65535, got {value}")
        if not 0 <= self.file_count < 2**32:
            raise RecorderProtocolError(f"status file_count: expected 0..2^32-1, got {self.file_count}")

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceStatus:
        _expect_length("status", data, cls.SIZE_BYTES)
        battery, total, free, width, height, count = cls._STRUCT.unpack(data)
        return cls(
            battery_percent=battery,
            storage_total_bytes=total,
            storage_free_bytes=free,
            width=width,
            height=height,
            file_count=count,
        )

    def to_bytes(self) -> bytes:
        return self._STRUCT.pack(
            self.battery_percent,
            self.storage_total_bytes,
            self.storage_free_bytes,
            self.width,
            self.height,
            self.file_count,
        )


# Bounds of the recording settings (RecorderSettings); beyond them a device is broken or a host mistaken.
MAX_FRAME_PIXELS = 8192
MAX_PRE_RECORD_S = 60
MAX_POST_RECORD_S = 60
MAX_SPLIT_MIN = 60


@dataclass(frozen=True)
class RecorderSettings:
    """GET_SETTINGS / SET_SETTINGS: what the agency sets on every recorder it issues (8 bytes,
    little-endian: u16 width, u16 height, u8 pre-record seconds (预录), u8 post-record seconds (延录), u8
    minutes per file (分段), u8 reserved = 0)."""

    width: int
    height: int
    pre_record_s: int
    post_record_s: int
    split_min: int

    SIZE_BYTES: ClassVar[int] = 8
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<HHBBBB")

    def __post_init__(self) -> None:
        bounds = (("width", 1, MAX_FRAME_PIXELS), ("height", 1, MAX_FRAME_PIXELS),
                  ("pre_record_s", 0, MAX_PRE_RECORD_S), ("post_record_s", 0, MAX_POST_RECORD_S),
                  ("split_min", 1, MAX_SPLIT_MIN))
        for name, low, high in bounds:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise RecorderProtocolError(f"settings {name}: expected {low}..{high}, got {value!r}")

    @classmethod
    def from_bytes(cls, data: bytes) -> RecorderSettings:
        _expect_length("settings", data, cls.SIZE_BYTES)
        width, height, pre, post, split, reserved = cls._STRUCT.unpack(data)
        if reserved != 0:
            raise RecorderProtocolError(f"settings reserved byte: expected 0, got {reserved}")
        return cls(width=width, height=height, pre_record_s=pre, post_record_s=post, split_min=split)

    def to_bytes(self) -> bytes:
        return self._STRUCT.pack(self.width, self.height, self.pre_record_s, self.post_record_s,
                                 self.split_min, 0)


@dataclass(frozen=True)
class LastResult:
    """GET_RESULT: u8 result code of the last request, u8 login attempts left before lockout."""

    code: ResultCode
    attempts_left: int

    SIZE_BYTES: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if not 0 <= self.attempts_left <= MAX_LOGIN_ATTEMPTS:
            raise RecorderProtocolError(
                f"result attempts_left: expected 0..{MAX_LOGIN_ATTEMPTS}, got {self.attempts_left}"
            )

    @classmethod
    def from_bytes(cls, data: bytes) -> LastResult:
        _expect_length("result", data, cls.SIZE_BYTES)
        try:
            code = ResultCode(data[0])
        except ValueError as exc:
            known = ", ".join(str(int(c)) for c in ResultCode)
            raise RecorderProtocolError(f"result code: expected one of {known}, got {data[0]}") from exc
        return cls(code=code, attempts_left=data[1])

    def to_bytes(self) -> bytes:
        return bytes((int(self.code), self.attempts_left))
