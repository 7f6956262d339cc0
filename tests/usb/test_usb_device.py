"""The simulated recorder's endpoint 0 and the descriptor codec, without a bus or a socket."""

from __future__ import annotations

import pytest

from drivers.usb.protocol import (
    DeviceClock,
    LastResult,
    RecorderInfo,
    RecorderMode,
    ResultCode,
    VendorRequest,
)
from simulators.recorder.descriptors import (
    ConfigurationDescriptor,
    DescriptorError,
    DeviceDescriptor,
)
from simulators.recorder.device import SetupPacket, SimulatedRecorder, StallError, VolumeStats

INFO = RecorderInfo("1234567", "123456", "张伟", "330100000000", "杭州市公安局")
HOUR_MS = 3_600_000


class FakeHostClock:
    def __init__(self, start_ms: float = 1_717_401_600_000.0) -> None:
        self.now_ms = start_ms

    def __call__(self) -> float:
        return self.now_ms


def make_recorder(clock: FakeHostClock | None = None, **kwargs: object) -> SimulatedRecorder:
    return SimulatedRecorder(info=INFO, usb_serial="EEZ01ABCDEF00001", password="246810",
                             host_ms=clock or FakeHostClock(), **kwargs)  # type: ignore[arg-type]


def vendor_in(rec: SimulatedRecorder, request: VendorRequest, length: int) -> bytes:
    return rec.control_transfer(SetupPacket(0xC0, int(request), 0, 0, length))


def vendor_out(rec: SimulatedRecorder, request: VendorRequest, data: bytes) -> None:
    rec.control_transfer(SetupPacket(0x40, int(request), 0, 0, len(data)), data)


def result(rec: SimulatedRecorder) -> LastResult:
    return LastResult.from_bytes(vendor_in(rec, VendorRequest.GET_RESULT, 2))


def test_clock_offset_and_drift_follow_the_host_clock() -> None:
    host = FakeHostClock()
    rec = make_recorder(host, clock_offset_s=-90.0, clock_drift_ppm=50.0)
    vendor_out(rec, VendorRequest.LOGIN, b"246810")
    first = DeviceClock.from_bytes(vendor_in(rec, VendorRequest.GET_CLOCK, 10))
    assert first.utc_ms == host.now_ms - 90_000
    assert first.tz_offset_min == 480
    host.now_ms += 10 * HOUR_MS
    later = DeviceClock.from_bytes(vendor_in(rec, VendorRequest.GET_CLOCK, 10))
    # 50 ppm over 10 h is 1.8 s gained.
    assert later.utc_ms - first.utc_ms == 10 * HOUR_MS + 1800


def test_set_clock_rebases_and_drift_continues() -> None:
    host = FakeHostClock()
    rec = make_recorder(host, clock_drift_ppm=-100.0)
    vendor_out(rec, VendorRequest.LOGIN, b"246810")
    vendor_out(rec, VendorRequest.SET_CLOCK, DeviceClock(1_000_000_000_000, -300).to_bytes())
    assert result(rec).code is ResultCode.SET_SYSTEMTIME_SUCCESS
    host.now_ms += HOUR_MS
    clock = DeviceClock.from_bytes(vendor_in(rec, VendorRequest.GET_CLOCK, 10))
    assert clock == DeviceClock(1_000_000_000_000 + HOUR_MS - 360, -300)


def test_set_clock_out_of_range_fails_with_gat_code() -> None:
    rec = make_recorder()
    vendor_out(rec, VendorRequest.LOGIN, b"246810")
    with pytest.raises(StallError):
        vendor_out(rec, VendorRequest.SET_CLOCK, b"\xff" * 8 + b"\x00\x00")  # utc_ms = -1
    assert result(rec).code is ResultCode.SET_SYSTEMTIME_FAILED


def test_login_lockout_and_power_cycle() -> None:
    rec = make_recorder()
    with pytest.raises(StallError):
        vendor_in(rec, VendorRequest.GET_INFO, 89)
    assert result(rec).code is ResultCode.NOT_AUTHENTICATED
    for attempt in range(1, 5):
        with pytest.raises(StallError):
            vendor_out(rec, VendorRequest.LOGIN, b"000000")
        assert result(rec) == LastResult(ResultCode.CHECK_PWD_FAILED, 5 - attempt)
    with pytest.raises(StallError):
        vendor_in(rec, VendorRequest.GET_INFO, 89)
    assert result(rec).code is ResultCode.CHECK_PWD_FAILED
    with pytest.raises(StallError):
        vendor_out(rec, VendorRequest.LOGIN, b"111111")
    assert result(rec) == LastResult(ResultCode.LOCKED, 0)
    with pytest.raises(StallError):  # even the right password, until re-plug
        vendor_out(rec, VendorRequest.LOGIN, b"246810")
    assert result(rec).code is ResultCode.LOCKED
    assert vendor_in(rec, VendorRequest.GET_ID_CODE, 5) == b"EEZ01"  # identification still answers
    rec.power_on()
    vendor_out(rec, VendorRequest.LOGIN, b"246810")
    assert RecorderInfo.from_bytes(vendor_in(rec, VendorRequest.GET_INFO, 89)) == INFO


@pytest.mark.parametrize(
    ("setup", "data", "code"),
    [
        (SetupPacket(0xC0, 0x7F, 0, 0, 4), b"", ResultCode.BAD_REQUEST),  # unknown request
        (SetupPacket(0x40, int(VendorRequest.GET_INFO), 0, 0, 0), b"", ResultCode.BAD_REQUEST),  # direction
        (SetupPacket(0xC1, int(VendorRequest.GET_INFO), 0, 0, 89), b"", ResultCode.BAD_REQUEST),  # recipient
        (SetupPacket(0xC0, int(VendorRequest.GET_INFO), 1, 0, 89), b"", ResultCode.BAD_REQUEST),  # wValue
        (SetupPacket(0xC0, int(VendorRequest.GET_INFO), 0, 0, 64), b"", ResultCode.BAD_LENGTH),
        (SetupPacket(0x40, int(VendorRequest.LOGIN), 0, 0, 5), b"24681", ResultCode.BAD_LENGTH),
        (SetupPacket(0x40, int(VendorRequest.LOGIN), 0, 0, 17), b"2" * 17, ResultCode.BAD_LENGTH),
    ],
)
def test_malformed_vendor_requests_stall_and_say_why(setup: SetupPacket, data: bytes,
                                                     code: ResultCode) -> None:
    rec = make_recorder()
    with pytest.raises(StallError):
        rec.control_transfer(setup, data)
    assert result(rec).code is code
    assert rec.failed_logins == 0  # malformed is not a password guess


def test_write_info_validates_content() -> None:
    rec = make_recorder()
    vendor_out(rec, VendorRequest.LOGIN, b"246810")
    bad = bytearray(INFO.to_bytes())
    bad[7:13] = b"12345X"
    with pytest.raises(StallError):
        vendor_out(rec, VendorRequest.WRITE_INFO, bytes(bad))
    assert result(rec).code is ResultCode.BAD_VALUE
    assert rec.info == INFO
    new = RecorderInfo("1234567", "654321", "王芳", "330100000000", "杭州市公安局")
    vendor_out(rec, VendorRequest.WRITE_INFO, new.to_bytes())
    assert rec.info == new


def test_status_reflects_the_volume() -> None:
    rec = make_recorder(volume_stats=lambda: VolumeStats(file_count=3, used_bytes=1000), battery_percent=64,
                        storage_total_bytes=5000)
    vendor_out(rec, VendorRequest.LOGIN, b"246810")
    status = rec.status()
    assert (status.battery_percent, status.file_count) == (64, 3)
    assert (status.storage_total_bytes, status.storage_free_bytes) == (5000, 4000)


def test_descriptors_per_mode_and_vendor_requests_gone_in_msc() -> None:
    rec = make_recorder()
    device = DeviceDescriptor.from_bytes(rec.control_transfer(SetupPacket(0x80, 6, 0x0100, 0, 18)))
    assert (device.idVendor, device.idProduct, device.bDeviceClass) == (0x2E3C, 0x5A01, 0xFF)
    assert device.iSerialNumber == 3
    vendor_out(rec, VendorRequest.LOGIN, b"246810")
    vendor_out(rec, VendorRequest.SET_MSDC, b"")
    assert rec.mode is RecorderMode.MASS_STORAGE
    device = DeviceDescriptor.from_bytes(rec.control_transfer(SetupPacket(0x80, 6, 0x0100, 0, 18)))
    assert device.idProduct == 0x5A02
    config_head = rec.control_transfer(SetupPacket(0x80, 6, 0x0200, 0, 9))
    total = int.from_bytes(config_head[2:4], "little")
    config = ConfigurationDescriptor.from_bytes(rec.control_transfer(SetupPacket(0x80, 6, 0x0200, 0, total)))
    interface = config.interfaces[0][0]
    assert interface.bInterfaceClass == 8
    assert (interface.bInterfaceSubClass, interface.bInterfaceProtocol) == (6, 0x50)
    assert [ep.bEndpointAddress for ep in interface.endpoints] == [0x81, 0x02]
    serial = rec.control_transfer(SetupPacket(0x80, 6, 0x0303, 0x0409, 255))
    assert serial[2:].decode("utf-16-le") == "EEZ01ABCDEF00001"
    with pytest.raises(StallError):
        vendor_in(rec, VendorRequest.GET_ID_CODE, 5)
    assert rec.control_transfer(SetupPacket(0xA1, 0xFE, 0, 0, 1)) == b"\x00"  # GET_MAX_LUN


def test_msc_only_recorder_starts_in_mass_storage() -> None:
    rec = make_recorder(msc_only=True)
    assert rec.mode is RecorderMode.MASS_STORAGE and rec.product_id == 0x5A03
    with pytest.raises(StallError):
        vendor_in(rec, VendorRequest.GET_ID_CODE, 5)


def test_device_repr_hides_the_password() -> None:
    rec = make_recorder()
    assert "246810" not in repr(rec)
    assert "246810" not in repr(vars(rec))


def test_configuration_round_trip_and_hostile_blobs() -> None:
    config = make_recorder(msc_only=True).configuration_descriptor()
    raw = config.to_bytes()
    assert ConfigurationDescriptor.from_bytes(raw) == config
    hostile = [
        raw[:8],  # truncated header
        raw[:-1],  # wTotalLength disagrees
        raw[:9] + b"\x00\x04" + raw[11:],  # bLength 0 would loop forever
        raw[:4] + b"\x02" + raw[5:],  # claims two interfaces
        raw[:13] + b"\x03" + raw[14:],  # claims three endpoints
    ]
    for blob in hostile:
        with pytest.raises(DescriptorError):
            ConfigurationDescriptor.from_bytes(blob)
    with pytest.raises(DescriptorError):
        DeviceDescriptor.from_bytes(b"\x12\x02" + bytes(16))
