"""The recorder control codec: round trips, and every way a hostile device's bytes can be wrong."""

from __future__ import annotations

import struct

import pytest

from drivers.usb.protocol import (
    CLOCK_MAX_MS,
    REQUEST_SPECS,
    DeviceClock,
    DeviceStatus,
    Direction,
    LastResult,
    RecorderError,
    RecorderInfo,
    RecorderProtocolError,
    ResultCode,
    VendorRequest,
    decode_id_code,
    encode_id_code,
    encode_password,
)

INFO = RecorderInfo(
    device_serial="1234567",
    officer_no="123456",
    officer_name="张伟",
    unit_code="330100000000",
    unit_name="杭州市公安局西湖分局",
)


def info_bytes(serial: bytes = b"1234567", officer_no: bytes = b"123456", name: bytes = "张伟".encode("gbk"),
               unit_code: bytes = b"330100000000", unit_name: bytes = "杭州市公安局".encode("gbk")) -> bytes:
    return (serial.ljust(7, b"\0") + officer_no.ljust(6, b"\0") + name.ljust(32, b"\0")
            + unit_code.ljust(12, b"\0") + unit_name.ljust(32, b"\0"))


def test_info_round_trip_is_89_gbk_bytes() -> None:
    raw = INFO.to_bytes()
    assert len(raw) == 89
    assert raw[:7] == b"1234567"
    assert raw[13 : 13 + 4] == "张伟".encode("gbk")
    assert raw[13 + 4 : 45] == b"\0" * 28
    assert RecorderInfo.from_bytes(raw) == INFO


def test_info_fields_may_fill_their_width_exactly() -> None:
    full = RecorderInfo("ABC1234", "000001", "名" * 16, "A" * 12, "单" * 16)
    raw = full.to_bytes()
    assert b"\0" not in raw
    assert RecorderInfo.from_bytes(raw) == full


def test_info_optional_fields_may_be_empty() -> None:
    sparse = RecorderInfo("1234567", "123456", "", "", "")
    assert RecorderInfo.from_bytes(sparse.to_bytes()) == sparse


@pytest.mark.parametrize("size", [0, 1, 88, 90, 200])
def test_info_wrong_length_names_expected_and_got(size: int) -> None:
    with pytest.raises(RecorderProtocolError, match=f"expected 89 bytes, got {size}"):
        RecorderInfo.from_bytes(bytes(size))


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (info_bytes(officer_no=b"12345A"), "officer_no"),
        (info_bytes(officer_no=b"12345"), "officer_no"),  # short: NUL inside a fixed-width number
        (info_bytes(officer_no=b""), "officer_no"),  # the officer number may not be empty
        (info_bytes(serial=b"12/4567"), "device_serial"),  # path separator in an identity
        (info_bytes(serial=b""), "device_serial"),
        (info_bytes(name=b"\xff\xfe\xfd"), "officer_name"),  # not GBK
        (info_bytes(name="张".encode("gbk")[:1]), "officer_name"),  # GBK cut mid-character
        (info_bytes(name=b"A\0B"), "officer_name"),  # junk after the terminator
        (info_bytes(name=b"ab\x07cd"), "officer_name"),  # control character
        (info_bytes(unit_code=b"33-100"), "unit_code"),
        (info_bytes(unit_name=b"\x81"), "unit_name"),
    ],
)
def test_info_hostile_fields_are_refused_by_name(raw: bytes, field: str) -> None:
    assert len(raw) == 89
    with pytest.raises(RecorderProtocolError, match=field):
        RecorderInfo.from_bytes(raw)


def test_info_constructor_validates_too() -> None:
    with pytest.raises(RecorderProtocolError, match="officer_name: expected at most 32 GBK bytes, got 34"):
        RecorderInfo("1234567", "123456", "名" * 17, "", "")
    with pytest.raises(RecorderProtocolError, match="officer_name: expected text encodable as GBK"):
        RecorderInfo("1234567", "123456", "\U0001f600", "", "")


def test_protocol_errors_belong_to_the_recorder_hierarchy() -> None:
    assert issubclass(RecorderProtocolError, RecorderError)


def test_clock_layout_and_round_trip() -> None:
    clock = DeviceClock(utc_ms=1_717_401_600_123, tz_offset_min=480)
    raw = clock.to_bytes()
    assert raw == struct.pack("<qh", 1_717_401_600_123, 480)
    assert DeviceClock.from_bytes(raw) == clock
    west = DeviceClock(utc_ms=0, tz_offset_min=-300)
    assert DeviceClock.from_bytes(west.to_bytes()) == west


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\0" * 9, "expected 10 bytes, got 9"),
        (b"\0" * 11, "expected 10 bytes, got 11"),
        (struct.pack("<qh", -1, 0), "utc_ms"),
        (struct.pack("<qh", CLOCK_MAX_MS + 1, 0), "utc_ms"),
        (struct.pack("<qh", 0, 841), "tz_offset_min"),
        (struct.pack("<qh", 0, -721), "tz_offset_min"),
    ],
)
def test_clock_hostile(raw: bytes, match: str) -> None:
    with pytest.raises(RecorderProtocolError, match=match):
        DeviceClock.from_bytes(raw)


def test_status_layout_and_round_trip() -> None:
    status = DeviceStatus(77, 32 * 1024**3, 10 * 1024**3, 1920, 1080, 42)
    raw = status.to_bytes()
    assert len(raw) == 25
    assert raw == struct.pack("<BQQHHI", 77, 32 * 1024**3, 10 * 1024**3, 1920, 1080, 42)
    assert DeviceStatus.from_bytes(raw) == status


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\0" * 24, "expected 25 bytes, got 24"),
        (struct.pack("<BQQHHI", 101, 10, 5, 0, 0, 0), "battery_percent"),
        (struct.pack("<BQQHHI", 50, 10, 11, 0, 0, 0), "storage_free_bytes"),
    ],
)
def test_status_hostile(raw: bytes, match: str) -> None:
    with pytest.raises(RecorderProtocolError, match=match):
        DeviceStatus.from_bytes(raw)


def test_result_codes_follow_gat947_and_extend_from_100() -> None:
    assert [int(c) for c in list(ResultCode)[:8]] == list(range(1, 9))
    assert (int(ResultCode.CHECK_PWD_FAILED), int(ResultCode.MSDC_FAILED)) == (4, 8)
    assert all(int(c) >= 100 for c in list(ResultCode)[8:])
    result = LastResult(ResultCode.CHECK_PWD_FAILED, 3)
    assert LastResult.from_bytes(result.to_bytes()) == result


@pytest.mark.parametrize(
    ("raw", "match"),
    [(b"\x04", "expected 2 bytes, got 1"), (b"\x00\x05", "result code"), (b"\x63\x05", "result code"),
     (b"\x04\x06", "attempts_left")],
)
def test_result_hostile(raw: bytes, match: str) -> None:
    with pytest.raises(RecorderProtocolError, match=match):
        LastResult.from_bytes(raw)


def test_id_code() -> None:
    assert decode_id_code(b"EEZ01") == "EEZ01"
    assert encode_id_code("EEZ01") == b"EEZ01"
    for bad in (b"EEZ0", b"EEZ011", b"eez01", b"EE\x0001", b"EE Z1"):
        with pytest.raises(RecorderProtocolError, match="GET_ID_CODE"):
            decode_id_code(bad)


def test_password_rules_never_echo_the_password() -> None:
    assert encode_password("000000") == b"000000"
    assert encode_password("A" * 16) == b"A" * 16
    for bad in ("12345", "x" * 17, "密码密码密码", "abc\ndef"):
        with pytest.raises(RecorderProtocolError) as info:
            encode_password(bad)
        assert bad not in str(info.value)


def test_request_table_is_complete_and_consistent() -> None:
    assert set(REQUEST_SPECS) == set(VendorRequest)
    for spec in REQUEST_SPECS.values():
        assert spec.min_bytes <= spec.max_bytes
        if spec.direction is Direction.IN:
            assert spec.min_bytes == spec.max_bytes  # replies have one exact size
    unauthenticated = {r for r, s in REQUEST_SPECS.items() if not s.needs_login}
    # GET_VERSION needs no login: the firmware version is read for the fleet before (or without) a login.
    assert unauthenticated == {VendorRequest.GET_ID_CODE, VendorRequest.LOGIN, VendorRequest.GET_RESULT,
                               VendorRequest.GET_VERSION}
