"""The recorder's firmware version (GET_VERSION): the codec against hostile bytes, and the real driver over
the pyusb backend against the simulated recorder, with each hostile-firmware fault of the simulator."""

from __future__ import annotations

import pytest

from drivers.usb.protocol import (
    FIRMWARE_VERSION_BYTES,
    RecorderProtocolError,
    ResultCode,
    decode_firmware_version,
    encode_firmware_version,
)
from drivers.usb.recorder import RecorderDriver, RecorderError, RecorderRejectedError, find_recorders
from edge.sources.usb.session import read_firmware_version
from simulators.recorder.device import DEFAULT_FIRMWARE_VERSION, FirmwareFault
from tests.usb.conftest import PASSWORD, SimBus


def test_a_version_round_trips_nul_padded_to_32_bytes() -> None:
    raw = encode_firmware_version("V2.4.1_20260301")
    assert len(raw) == FIRMWARE_VERSION_BYTES and raw.startswith(b"V2.4.1_20260301\x00")
    assert decode_firmware_version(raw) == "V2.4.1_20260301"
    assert decode_firmware_version("固件3.0".encode("gbk").ljust(32, b"\x00")) == "固件3.0"
    assert decode_firmware_version(b"X" * 32) == "X" * 32  # fills its field: no NUL


@pytest.mark.parametrize(("raw", "what"), [
    (b"V9\x1b[2J\r\n".ljust(32, b"\x00"), "printable"),
    (b"V2\xff\xfe\x80".ljust(32, b"\x00"), "GBK"),
    (b"V2\x00junk".ljust(32, b"\x00"), "NUL padding"),
    (b"\x00" * 32, "printable"),  # empty
    (b" V2 ".ljust(32, b"\x00"), "surrounding spaces"),
    (b"V2".ljust(31, b"\x00"), "expected 32 bytes"),
])
def test_hostile_version_bytes_are_refused_naming_what_is_wrong(raw: bytes, what: str) -> None:
    with pytest.raises(RecorderProtocolError, match=what) as refused:
        decode_firmware_version(raw)
    assert "GET_VERSION" in str(refused.value)


def test_the_driver_reads_the_version_without_a_login(sim: SimBus) -> None:
    sim.add(0, firmware_version="V3.1.0 build 7")
    [handle] = find_recorders(sim.backend)
    with RecorderDriver(handle, sim.backend) as recorder:
        assert recorder.firmware_version() == "V3.1.0 build 7"
        recorder.login(PASSWORD)
        assert read_firmware_version(recorder) == ("V3.1.0 build 7", None)


def test_the_simulators_default_version_is_a_version(sim: SimBus) -> None:
    sim.add(0)
    [handle] = find_recorders(sim.backend)
    with RecorderDriver(handle, sim.backend) as recorder:
        assert recorder.firmware_version() == DEFAULT_FIRMWARE_VERSION


@pytest.mark.parametrize(("fault", "error", "said"), [
    (FirmwareFault.CONTROL_CHARS, RecorderProtocolError, "printable"),
    (FirmwareFault.NOT_GBK, RecorderProtocolError, "GBK"),
    (FirmwareFault.OVERLONG, RecorderError, "(?i)overflow"),
    (FirmwareFault.UNSUPPORTED, RecorderRejectedError, "BAD_REQUEST"),
])
def test_hostile_firmware_gives_no_version_and_says_why_on_one_line(
    sim: SimBus, fault: FirmwareFault, error: type[Exception], said: str
) -> None:
    sim.add(0, firmware_fault=fault)
    [handle] = find_recorders(sim.backend)
    with RecorderDriver(handle, sim.backend) as recorder:
        with pytest.raises(error, match=said) as refused:
            recorder.firmware_version()
        if fault is FirmwareFault.UNSUPPORTED:
            assert isinstance(refused.value, RecorderRejectedError)
            assert refused.value.result is ResultCode.BAD_REQUEST
        version, why = read_firmware_version(recorder)
        assert version is None and why is not None
        assert why.isprintable() and len(why) <= 400, why  # no escape, bell or line break reaches a log
        # The recorder keeps answering: the docking goes on.
        recorder.login(PASSWORD)
        assert recorder.status().battery_percent == 80
