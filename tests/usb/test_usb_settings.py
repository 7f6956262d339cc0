"""Recording settings (GET_SETTINGS / SET_SETTINGS): the codec against hostile bytes, and the real driver
against the simulated recorder."""

from __future__ import annotations

import struct

import pytest

from drivers.usb.protocol import RecorderProtocolError, RecorderSettings, ResultCode, VendorRequest
from drivers.usb.recorder import RecorderAuthError, RecorderDriver, RecorderRejectedError, find_recorders
from tests.usb.conftest import PASSWORD, SimBus

AGENCY = RecorderSettings(width=1280, height=720, pre_record_s=30, post_record_s=15, split_min=10)


def test_settings_round_trip_in_eight_little_endian_bytes() -> None:
    data = AGENCY.to_bytes()
    assert data == bytes.fromhex("0005 d002 1e 0f 0a 00".replace(" ", ""))
    assert RecorderSettings.from_bytes(data) == AGENCY


@pytest.mark.parametrize(("data", "field"), [
    (struct.pack("<HHBBBB", 0, 720, 10, 10, 30, 0), "width"),
    (struct.pack("<HHBBBB", 1280, 9000, 10, 10, 30, 0), "height"),
    (struct.pack("<HHBBBB", 1280, 720, 61, 10, 30, 0), "pre_record_s"),
    (struct.pack("<HHBBBB", 1280, 720, 10, 200, 30, 0), "post_record_s"),
    (struct.pack("<HHBBBB", 1280, 720, 10, 10, 0, 0), "split_min"),
    (struct.pack("<HHBBBB", 1280, 720, 10, 10, 30, 7), "reserved"),
    (b"\x00" * 7, "expected 8 bytes"),
])
def test_hostile_settings_bytes_are_refused_naming_the_field(data: bytes, field: str) -> None:
    with pytest.raises(RecorderProtocolError, match=field):
        RecorderSettings.from_bytes(data)


def test_settings_written_read_back_show_in_status_and_survive_a_restart(sim: SimBus) -> None:
    spec = sim.add(0)
    [handle] = find_recorders(sim.backend)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        assert recorder.settings() != AGENCY  # factory settings
        recorder.write_settings(AGENCY)
        assert recorder.settings() == AGENCY
        status = recorder.status()
        assert (status.width, status.height) == (1280, 720)
    sim.restart()
    [handle] = find_recorders(sim.backend)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        assert recorder.settings() == AGENCY, f"recorder {spec.device_serial} kept them in its flash"


def test_settings_need_login_and_bad_values_are_refused_by_the_device(sim: SimBus) -> None:
    sim.add(0)
    [handle] = find_recorders(sim.backend)
    with RecorderDriver(handle, sim.backend) as recorder:
        with pytest.raises(RecorderAuthError):
            recorder.settings()
        recorder.login(PASSWORD)
        # What a host with a bug would send: the device checks the content too (BAD_VALUE).
        bad = struct.pack("<HHBBBB", 1280, 720, 99, 10, 30, 0)
        with pytest.raises(RecorderRejectedError) as refused:
            recorder._request_out(VendorRequest.SET_SETTINGS, bad, expect=ResultCode.REQUEST_SUCCESS)
        assert refused.value.result is ResultCode.BAD_VALUE
        assert recorder.settings().pre_record_s == 10  # unchanged
