"""The real driver against the real simulator, through pyusb and the socket backend."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest
import usb.core
import usb.util

from drivers.usb.protocol import RecorderInfo, ResultCode, VendorRequest
from drivers.usb.recorder import (
    RecorderAuthError,
    RecorderDriver,
    RecorderError,
    RecorderGoneError,
    RecorderHandle,
    RecorderLockedError,
    RecorderMode,
    RecorderProtocolError,
    RecorderRejectedError,
    RecorderTimeoutError,
    UsbLocation,
    find_recorders,
)
from simulators.recorder.bus import BusClient, BusClientError
from simulators.recorder.mounts import is_mounted, mount_at, mount_table
from tests.usb.conftest import PASSWORD, SimBus, needs_fuse


def only(handles: list[RecorderHandle], serial: str) -> RecorderHandle:
    matches = [h for h in handles if h.usb_serial == serial]
    assert len(matches) == 1, handles
    return matches[0]


def wait_until(predicate: object, timeout_s: float = 10.0) -> bool:
    """Poll a condition the simulator changes from another thread (no event crosses the socket)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ----------------------------------------------------------------------------------- discovery


def test_find_recorders_reports_place_identity_and_mode(sim: SimBus) -> None:
    control = sim.add(0, port="1-1.1")
    msc_only = sim.add(1, port="1-1.3", msc_only=True)
    handles = find_recorders(sim.backend)
    assert handles == [
        RecorderHandle(UsbLocation(1, "1-1.1"), control.usb_serial, RecorderMode.CONTROL, 0x2E3C, 0x5A01),
        RecorderHandle(UsbLocation(1, "1-1.3"), msc_only.usb_serial, RecorderMode.MASS_STORAGE,
                       0x2E3C, 0x5A03),
    ]
    assert handles[1].mass_storage_only and not handles[0].mass_storage_only
    # pyusb's own code paths (string descriptors via the LANGID table) see the same device.
    dev = usb.core.find(backend=sim.backend, idVendor=0x2E3C, idProduct=0x5A01)
    assert dev is not None
    assert (dev.serial_number, dev.manufacturer, dev.product) == (
        control.usb_serial, "EE Simulated Devices", "EE-ZFY Body-Worn Recorder")
    assert dev.port_numbers == (1, 1) and dev.bus == 1 and dev.speed == 3
    assert dev.langids == (0x0409,)
    usb.util.dispose_resources(dev)


def test_find_recorders_filters_by_ids(sim: SimBus) -> None:
    sim.add(0)
    assert find_recorders(sim.backend, ids=[(0x2E3C, 0x5A02)]) == []
    assert len(find_recorders(sim.backend, ids=[(0x2E3C, 0x5A01)])) == 1


def test_unreachable_bus_is_a_recorder_error(tmp_path: Path) -> None:
    from simulators.recorder.backend import get_backend

    backend = get_backend(tmp_path / "nobody.sock")
    with pytest.raises(RecorderError, match="unreachable"):
        find_recorders(backend)
    backend.close()


# ------------------------------------------------------------------------------- the protocol


def test_login_identity_and_status(sim: SimBus) -> None:
    spec = sim.add(0, battery_percent=64, files=2)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        assert recorder.id_code() == "EEZ01"
        with pytest.raises(RecorderAuthError) as refused:
            recorder.info()
        assert refused.value.result is ResultCode.NOT_AUTHENTICATED
        recorder.login(PASSWORD)
        assert recorder.info() == spec.info()
        status = recorder.status()
    on_volume = sim.bus.volume_files(spec.device_serial)
    assert status.battery_percent == 64
    assert status.file_count == len(on_volume) == 3  # PARAM.INI + two media files
    assert 0 < status.storage_free_bytes < status.storage_total_bytes
    assert (status.width, status.height) == (1920, 1080)


def test_wrong_password_counts_down_then_locks_until_replug(sim: SimBus) -> None:
    spec = sim.add(0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        for left in (4, 3, 2, 1):
            with pytest.raises(RecorderAuthError) as wrong:
                recorder.login("999999")
            assert wrong.value.attempts_left == left
            assert wrong.value.result is ResultCode.CHECK_PWD_FAILED
            assert not isinstance(wrong.value, RecorderLockedError)
        with pytest.raises(RecorderLockedError):
            recorder.login("999999")
        with pytest.raises(RecorderLockedError):
            recorder.login(PASSWORD)  # the right one is refused too while locked
        with pytest.raises(RecorderLockedError):
            recorder.info()
        assert recorder.id_code() == "EEZ01"
    assert sim.bus.recorder_state(spec.device_serial).locked
    sim.bus.unplug(spec.device_serial)
    sim.bus.plug(spec.device_serial, "1-1.1")
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        assert recorder.info().device_serial == spec.device_serial


def test_password_never_reaches_logs_or_reprs(sim: SimBus, caplog: pytest.LogCaptureFixture) -> None:
    spec = sim.add(0)
    caplog.set_level(logging.DEBUG)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        with pytest.raises(RecorderAuthError) as wrong:
            recorder.login("135790")
        recorder.login(PASSWORD)
        text = " ".join([caplog.text, repr(recorder), str(wrong.value), repr(spec), repr(sim.bus)])
    assert "135790" not in text and PASSWORD not in text
    assert "logged in" in caplog.text


def test_clock_offset_is_measured_within_the_round_trip(sim: SimBus) -> None:
    spec = sim.add(0, clock_offset_s=-3600.0, tz_offset_min=-300)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        sample = recorder.clock_sample()
        tz = recorder.clock().tz_offset_min
    assert sample.host_before_ms <= sample.host_after_ms
    assert abs(sample.offset_ms + 3_600_000) <= sample.uncertainty_ms + 2
    assert tz == -300


def test_drifting_clock_is_measured_within_tolerance(sim: SimBus) -> None:
    # 20 % fast: large enough that 200 ms of real time shows it well above the measurement noise.
    spec = sim.add(0, clock_drift_ppm=200_000.0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        first = recorder.clock_sample()
        time.sleep(0.2)  # the elapsed time is what is measured here, there is no event to await
        second = recorder.clock_sample()
    host_elapsed_ms = (second.host_before_ms + second.host_after_ms
                       - first.host_before_ms - first.host_after_ms) / 2
    measured_gain_ms = second.offset_ms - first.offset_ms
    expected_gain_ms = host_elapsed_ms * 0.2
    tolerance_ms = first.uncertainty_ms + second.uncertainty_ms + 2
    assert abs(measured_gain_ms - expected_gain_ms) <= tolerance_ms
    assert measured_gain_ms > 20


def test_set_clock_is_kept_across_a_bus_restart(sim: SimBus) -> None:
    spec = sim.add(0, clock_offset_s=500.0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        assert recorder.clock_sample().offset_ms > 499_000
        recorder.set_clock(time.time_ns() // 1_000_000, 540)
        after = recorder.clock_sample()
    assert abs(after.offset_ms) <= after.uncertainty_ms + 50
    sim.restart()
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        sample = recorder.clock_sample()
        assert abs(sample.offset_ms) <= sample.uncertainty_ms + 50
        assert recorder.clock().tz_offset_min == 540


def test_set_clock_rejects_nonsense_before_sending(sim: SimBus) -> None:
    sim.add(0)
    handle = find_recorders(sim.backend)[0]
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        with pytest.raises(RecorderProtocolError, match="tz_offset_min"):
            recorder.set_clock(0, 5000)


def test_write_info_binds_a_new_officer_and_persists(sim: SimBus) -> None:
    spec = sim.add(0)
    new = RecorderInfo(spec.device_serial, "654321", "李娜", "330106000000", "杭州市公安局西湖分局")
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        recorder.write_info(new)
        assert recorder.info() == new
    sim.restart()
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        assert recorder.info() == new


# ------------------------------------------------------------------------ modes and the volume


def test_switch_to_mass_storage_reenumerates_with_the_same_serial(sim: SimBus) -> None:
    spec = sim.add(0, port="1-1.4", files=2)
    before = sim.bus.volume_files(spec.device_serial)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    recorder = RecorderDriver(handle, sim.backend)
    recorder.open()
    recorder.login(PASSWORD)
    recorder.switch_to_mass_storage()
    with pytest.raises(RecorderError, match="not open"):
        recorder.info()
    msc = only(find_recorders(sim.backend), spec.usb_serial)
    assert msc.mode is RecorderMode.MASS_STORAGE
    assert (msc.location, msc.product_id) == (handle.location, 0x5A02)
    mount = sim.bus.bay_directory("1-1.4")
    assert sim.bus.mount_point(spec.device_serial) == mount and is_mounted(mount)
    on_mount = sorted(p.relative_to(mount).as_posix() for p in mount.rglob("*") if p.is_file())
    assert on_mount == sorted(before)
    assert sim.bus.volume_files(spec.device_serial) == before
    # The control handle is stale: the device at that place is another enumeration now.
    with pytest.raises(RecorderGoneError):
        RecorderDriver(handle, sim.backend).open()
    with pytest.raises(RecorderError, match="mass-storage mode"):
        RecorderDriver(msc, sim.backend).open()
    # Pulled out in MSC mode: the volume goes away, the files stay on the device, and the bay's
    # directory stays behind, empty, as systemd leaves it.
    sim.bus.unplug(spec.device_serial)
    assert not is_mounted(mount) and mount.is_dir() and list(mount.iterdir()) == []
    assert find_recorders(sim.backend) == []
    assert sim.bus.volume_files(spec.device_serial) == before


def test_station_erasures_are_visible_to_tests(sim: SimBus) -> None:
    spec = sim.add(0, files=2)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        recorder.switch_to_mass_storage()
    mount = sim.bus.mount_point(spec.device_serial)
    assert mount is not None
    victim = next(p for p in sorted(mount.rglob("*.MP4")))
    victim.unlink()
    rel = victim.relative_to(mount).as_posix()
    state = sim.bus.recorder_state(spec.device_serial)
    assert state.files_deleted == (rel,)
    assert rel not in state.files_present and "PARAM.INI" in state.files_present
    sim.bus.unplug(spec.device_serial)
    assert rel not in sim.bus.volume_files(spec.device_serial)
    assert sim.bus.recorder_state(spec.device_serial).files_deleted == (rel,)


def test_mass_storage_only_recorder_is_mounted_on_plug(sim: SimBus) -> None:
    spec = sim.add(0, msc_only=True, port="1-1.2")
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    assert handle.mode is RecorderMode.MASS_STORAGE and handle.mass_storage_only
    mount = sim.bus.bay_directory("1-1.2")
    assert (mount / "PARAM.INI").is_file() and is_mounted(mount)
    state = sim.bus.recorder_state(spec.device_serial)
    assert state.mode is RecorderMode.MASS_STORAGE and state.mounted and state.mount_point == str(mount)
    dev = usb.core.find(backend=sim.backend, idProduct=0x5A03)
    assert dev is not None
    with pytest.raises(usb.core.USBError) as stall:  # no vendor firmware behind this personality
        dev.ctrl_transfer(0xC0, int(VendorRequest.GET_ID_CODE), 0, 0, 5)
    assert stall.value.errno == 32  # EPIPE
    usb.util.dispose_resources(dev)


# --------------------------------------------------------------------------- faults and gone


def test_unplug_mid_session_is_recorder_gone(sim: SimBus) -> None:
    spec = sim.add(0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        sim.bus.unplug(spec.device_serial)
        with pytest.raises(RecorderGoneError):
            recorder.info()
        with pytest.raises(RecorderGoneError):
            recorder.status()


def test_replug_elsewhere_needs_a_new_handle(sim: SimBus) -> None:
    spec = sim.add(0, port="1-1.1")
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    sim.bus.unplug(spec.device_serial)
    sim.bus.plug(spec.device_serial, "1-1.5")
    with pytest.raises(RecorderGoneError, match="not on the bus"):
        RecorderDriver(handle, sim.backend).open()
    moved = only(find_recorders(sim.backend), spec.usb_serial)
    assert moved.location == UsbLocation(1, "1-1.5")


def test_another_recorder_on_the_same_port_is_not_mistaken(sim: SimBus) -> None:
    first = sim.add(0, port="1-1.1")
    handle = only(find_recorders(sim.backend), first.usb_serial)
    sim.bus.unplug(first.device_serial)
    sim.add(1, port="1-1.1")
    with pytest.raises(RecorderGoneError, match="another device"):
        RecorderDriver(handle, sim.backend).open()


def test_busy_device_times_out(sim: SimBus) -> None:
    spec = sim.add(0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend, timeout_ms=100) as recorder:
        recorder.login(PASSWORD)
        with sim.bus.hold_device(spec.device_serial), pytest.raises(RecorderTimeoutError, match="GET_INFO"):
            recorder.info()
        assert recorder.info() == spec.info()  # the backend resynchronised on a fresh connection


@pytest.mark.parametrize(
    ("request_code", "payload", "match"),
    [
        (VendorRequest.GET_INFO, b"1234567" + bytes(43), "GET_INFO reply: expected 89 bytes, got 50"),
        (VendorRequest.GET_INFO, b"7654321110001\xff\xff" + bytes(74), "officer_name: expected GBK"),
        (VendorRequest.GET_INFO, b"7654321ABC001" + bytes(76), "officer_no: expected 6 digits"),
        (VendorRequest.GET_STATUS, bytes(3), "GET_STATUS reply: expected 25 bytes, got 3"),
        (VendorRequest.GET_STATUS, bytes([200]) + bytes(24), "battery_percent"),
        (VendorRequest.GET_CLOCK, b"\xff" * 10, "utc_ms"),
        (VendorRequest.GET_ID_CODE, b"EE\x00\x00\x00", "GET_ID_CODE"),
    ],
)
def test_hostile_replies_are_protocol_errors(sim: SimBus, request_code: VendorRequest, payload: bytes,
                                             match: str) -> None:
    spec = sim.add(0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        sim.bus.inject_reply(spec.device_serial, request_code, payload)
        calls = {VendorRequest.GET_INFO: recorder.info, VendorRequest.GET_STATUS: recorder.status,
                 VendorRequest.GET_CLOCK: recorder.clock, VendorRequest.GET_ID_CODE: recorder.id_code}
        call = calls[request_code]
        with pytest.raises(RecorderProtocolError, match=match):
            call()
        assert recorder.info() == spec.info()  # one bad reply does not poison the session


def test_device_that_babbles_past_wlength_is_an_error(sim: SimBus) -> None:
    spec = sim.add(0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        sim.bus.inject_reply(spec.device_serial, VendorRequest.GET_CLOCK, bytes(11))
        with pytest.raises(RecorderError, match="GET_CLOCK failed") as info:
            recorder.clock()
        assert not isinstance(info.value, RecorderProtocolError | RecorderGoneError)


def test_lying_result_after_stall_is_a_protocol_error(sim: SimBus) -> None:
    spec = sim.add(0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        sim.bus.inject_reply(spec.device_serial, VendorRequest.GET_RESULT, b"\x63\x00")
        with pytest.raises(RecorderProtocolError, match="GET_RESULT after LOGIN"):
            recorder.login("999999")
        # A device that ACKs a login without reporting success is not believed either.
        sim.bus.inject_reply(spec.device_serial, VendorRequest.GET_RESULT, b"\x64\x05")
        with pytest.raises(RecorderProtocolError, match="expected CHECK_PWD_SUCCESS"):
            recorder.login(PASSWORD)


def test_unknown_rejection_keeps_the_result_code(sim: SimBus) -> None:
    spec = sim.add(0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        bad = bytearray(spec.info().to_bytes())
        bad[0:7] = b"12/4567"
        dev = recorder._device()
        with pytest.raises(usb.core.USBError):
            dev.ctrl_transfer(0x40, int(VendorRequest.WRITE_INFO), 0, 0, bytes(bad))
        with pytest.raises(RecorderRejectedError) as rejected:
            recorder._request_out(VendorRequest.WRITE_INFO, bytes(bad), expect=ResultCode.REQUEST_SUCCESS)
        assert rejected.value.result is ResultCode.BAD_VALUE


def test_unplug_marker_from_the_volume_layer_unplugs(sim: SimBus) -> None:
    spec = sim.add(0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        recorder.switch_to_mass_storage()
    mount = sim.bus.bay_directory("1-1.1")
    assert is_mounted(mount)
    (sim.state_dir / "recorders" / spec.device_serial / "UNPLUGGED").touch()
    assert find_recorders(sim.backend) == []
    assert not is_mounted(mount) and mount.is_dir()
    assert not sim.bus.recorder_state(spec.device_serial).plugged
    sim.bus.plug(spec.device_serial, "1-1.1")  # re-plug clears the marker
    assert only(find_recorders(sim.backend), spec.usb_serial).mode is RecorderMode.CONTROL


@needs_fuse
def test_fault_volume_unplug_removes_the_recorder(sim: SimBus) -> None:
    from simulators.recorder.faultfs import VolumeFaults

    spec = sim.add(0, file_mb=0.2, faults=VolumeFaults(unplug_after_bytes=64 * 1024))
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        recorder.switch_to_mass_storage()
    mount = sim.bus.mount_point(spec.device_serial)
    assert mount is not None and sim.bus.recorder_state(spec.device_serial).mounted
    video = next(mount.rglob("*.MP4"))
    with pytest.raises(OSError), video.open("rb") as handle_io:
        while handle_io.read(16 * 1024):
            pass
    # The reaper thread notices the marker; enumeration notices it too.
    assert wait_until(lambda: not sim.bus.recorder_state(spec.device_serial).plugged)
    assert find_recorders(sim.backend) == []
    assert sim.bus.volume_files(spec.device_serial)  # the files are still on the device


# ------------------------------------------------------------------------ the socket, restarts


def test_server_restart_backend_reconnects(sim: SimBus) -> None:
    spec = sim.add(0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    recorder = RecorderDriver(handle, sim.backend)
    recorder.open()
    recorder.login(PASSWORD)
    sim.restart()
    with pytest.raises(RecorderGoneError):
        recorder.info()  # the old enumeration did not survive the hub's power cycle
    recorder.close()
    again = only(find_recorders(sim.backend), spec.usb_serial)  # same backend object, new connection
    assert again.location == handle.location
    with RecorderDriver(again, sim.backend) as fresh:
        with pytest.raises(RecorderAuthError):
            fresh.info()  # the session did not survive either
        fresh.login(PASSWORD)
        assert fresh.info() == spec.info()


def test_stopped_server_means_gone_then_back(sim: SimBus) -> None:
    spec = sim.add(0)
    handle = only(find_recorders(sim.backend), spec.usb_serial)
    with RecorderDriver(handle, sim.backend) as recorder:
        recorder.login(PASSWORD)
        sim.server.stop()
        with pytest.raises(RecorderGoneError):
            recorder.info()
    with pytest.raises(RecorderError, match="unreachable"):
        find_recorders(sim.backend)
    sim.server.start()
    assert only(find_recorders(sim.backend), spec.usb_serial).mode is RecorderMode.CONTROL


def test_garbage_on_the_socket_does_not_kill_the_server(sim: SimBus) -> None:
    spec = sim.add(0)
    for garbage in (b"\xff\xfe\x00garbage\n", b"not json\n", b"[1, 2]\n", b'{"op": "__class__"}\n',
                    b'{"op": "ctrl", "key": 5}\n', b'{"op": "ctrl", "key": "x:1:2", "bmRequestType": 999}\n',
                    b'{"op": "plug", "serial": "7654321", "port_path": "../../etc"}\n'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(5)
            raw.connect(str(sim.socket_path))
            raw.sendall(garbage)
            reply = raw.makefile("rb").readline()
            assert b'"ok": false' in reply, (garbage, reply)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # an endless line
        raw.settimeout(5)
        raw.connect(str(sim.socket_path))
        refused = False
        try:
            for _ in range(64):
                raw.sendall(b"x" * 65536)
        except OSError:
            refused = True  # the server hung up after the first MiB
        if not refused:
            reply = raw.makefile("rb").readline()
            assert b"too long" in reply
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # half a request, then vanish
        raw.connect(str(sim.socket_path))
        raw.sendall(b'{"op": "enum')
    assert only(find_recorders(sim.backend), spec.usb_serial).mode is RecorderMode.CONTROL


def test_control_client_plug_unplug_and_errors(sim: SimBus) -> None:
    spec = sim.add(0, port=None)
    with BusClient(sim.socket_path) as client:
        state = client.call("plug", serial=spec.device_serial, port_path="1-1.7")
        assert state["plugged"] and state["port_path"] == "1-1.7" and state["mode"] == "control"
        with pytest.raises(BusClientError, match="already plugged") as taken:
            client.call("plug", serial=spec.device_serial, port_path="1-1.8")
        assert taken.value.kind == "invalid"
        with pytest.raises(BusClientError) as unknown:
            client.call("unplug", serial="0000000")
        assert unknown.value.kind == "not_found"
        listed = client.call("recorders")
        assert [r["device_serial"] for r in listed] == [spec.device_serial]
        assert "password" not in str(listed)
        assert client.call("unplug", serial=spec.device_serial)["plugged"] is False


def test_one_backend_serves_many_bays_from_threads(sim: SimBus) -> None:
    specs = [sim.add(i, port=f"1-1.{i + 1}") for i in range(3)]
    handles = find_recorders(sim.backend)
    errors: list[BaseException] = []
    infos: dict[str, RecorderInfo] = {}

    def bay(handle: RecorderHandle) -> None:
        try:
            with RecorderDriver(handle, sim.backend) as recorder:
                recorder.login(PASSWORD)
                for _ in range(20):
                    infos[handle.usb_serial] = recorder.info()
                    recorder.clock_sample()
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=bay, args=(h,)) for h in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert {s.usb_serial: s.info() for s in specs} == infos


def test_bus_restart_replugs_and_keeps_state(sim: SimBus) -> None:
    control = sim.add(0, port="1-1.1")
    msc_only = sim.add(1, port="1-1.2", msc_only=True)
    unplugged = sim.add(2, port=None)
    sim.restart()
    handles = {h.usb_serial: h for h in find_recorders(sim.backend)}
    assert set(handles) == {control.usb_serial, msc_only.usb_serial}
    assert handles[control.usb_serial].location.port_path == "1-1.1"
    assert (sim.bus.bay_directory("1-1.2") / "PARAM.INI").is_file()
    assert not sim.bus.recorder_state(unplugged.device_serial).plugged


def test_bus_recovers_a_volume_left_mounted_by_a_killed_bus(sim: SimBus) -> None:
    spec = sim.add(0, msc_only=True)
    before = sim.bus.volume_files(spec.device_serial)
    mount = sim.bus.bay_directory("1-1.1")
    stale = mount_at(mount)
    assert stale is not None
    # What `kill -9` leaves: the volume still mounted at its bay directory, the state saying "plugged".
    sim.server.stop()
    sim.bus = type(sim.bus)(sim.state_dir, sim.mount_root)  # no close() of the old one
    sim.server = type(sim.server)(sim.bus, sim.socket_path)
    sim.server.start()
    assert sim.bus.volume_files(spec.device_serial) == before
    assert sim.bus.recorder_state(spec.device_serial).mounted
    # Re-plugged like after a hub power cycle: the stale mount taken down, nothing stacked on it.
    assert sum(1 for e in mount_table().entries if e.mount_point == str(mount.resolve())) == 1


def test_bad_port_paths_and_duplicates_are_refused(sim: SimBus) -> None:
    spec = sim.add(0, port=None)
    for bad in ("", "1", "1-", "0-1", "1-1..2", "1-1.2.3.4.5.6.7.8", "x-1", "1-1/2"):
        with pytest.raises(Exception, match="port path"):
            sim.bus.plug(spec.device_serial, bad)
    with pytest.raises(ValueError, match="already exists"):
        sim.bus.add_recorder(spec)
