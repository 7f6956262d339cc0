"""Check-out and check-in at a station: the desk with the real USB driver against simulated recorders.

Each refusal has a control that goes through the same path without the fault."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.serial.card_reader import CardReaderDriver
from drivers.serial.card_reader_protocol import CardFraming
from drivers.serial.dock import BayLed
from drivers.usb.protocol import RecorderInfo, VendorRequest
from drivers.usb.recorder import RecorderDriver, find_recorders
from edge.config.base import ConfigError
from edge.config.station import parse_config
from edge.custody.ledger import EntryType, station_time_now
from edge.equipment.card_desk import CardOutcome, serve_card_reader
from edge.equipment.checkout import CheckoutDesk, CheckoutPolicy, CheckoutRefused, RefusalReason
from edge.equipment.importing import import_officers, set_officer_pin, set_officer_status
from edge.equipment.officer_csv import parse_officer_csv
from edge.equipment.officers import OfficerStatus
from edge.equipment.policy import checkout_policy
from edge.equipment.usb_recorders import (
    DOCKING_UNDER_WAY,
    RecorderAccess,
    UsbRecorderBench,
    recorder_access_from_config,
)
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from simulators.card_reader import CardReaderSimulator
from tests.usb.conftest import PASSWORD, SimBus

STATION = "TEST-STATION"
BAYS = {"1-1.1": 1, "1-1.2": 2, "1-1.3": 3}
OFFICERS = (
    "警号,姓名,单位编号,单位名称,状态,卡号,密码\n"
    "220001,赵敏,330100000000,杭州市公安局,正常,01000734E0,4321\n"
    "220002,钱进,330100000000,杭州市公安局,停用,100086F444,\n"
    "220003,孙丽,330101000000,上城分局,正常,04A21B7C,8765\n"
)


def open_access(**overrides: Any) -> RecorderAccess:
    values: dict[str, Any] = {
        "refusal_before_login": lambda usb_serial: None,
        "password_for": lambda usb_serial: PASSWORD,
        "refusal_after_login": lambda device_serial, usb_serial: None,
        "bay_for_port": BAYS.get,
    }
    values.update(overrides)
    return RecorderAccess(**values)


class Rig:
    def __init__(self, sim: SimBus, store: StationStore, access: RecorderAccess, trusted: bool,
                 policy: CheckoutPolicy | None = None) -> None:
        self.sim = sim
        self.store = store
        self.leds: list[tuple[int | None, BayLed]] = []
        self.trusted = trusted

        async def set_led(bay: int | None, led: BayLed) -> None:
            self.leds.append((bay, led))

        async def clock_trusted() -> bool:
            return self.trusted

        self.bench = UsbRecorderBench(sim.backend, access, set_led=set_led)
        policy = policy or CheckoutPolicy(min_battery_percent=80, pin_failures_max=3)
        self.desk = CheckoutDesk(store, self.bench, policy, clock_trusted=clock_trusted)

    def dock(self, index: int, port: str, *, outcome: str | None = "done", **overrides: Any) -> str:
        """A recorder in a bay; with `outcome`, the station's record of its docking (as the offload
        session writes it through the ingest repository), None: no docking recorded here."""
        defaults: dict[str, Any] = {"files": 0, "battery_percent": 95}
        spec = self.sim.add(index, port=port, **{**defaults, **overrides})
        if outcome is not None:
            self.docking(spec.device_serial, spec.usb_serial, BAYS[port], outcome)
        return spec.device_serial

    def docking(self, device_serial: str, usb_serial: str, bay: int, outcome: str | None) -> None:
        repository = IngestRepository(self.store)
        session = str(uuid.uuid4())
        repository.start_session(session, device_serial=device_serial, usb_serial=usb_serial, bay=bay,
                                 started=station_time_now(), facts={}, entry={"session": session})
        if outcome is not None:
            repository.end_session(session, ended=station_time_now(), outcome=outcome,
                                   entry={"session": session, "outcome": outcome})

    def device_identity(self, device_serial: str) -> dict[str, str]:
        """What the recorder itself reports now, through a fresh driver session."""
        port = self.sim.bus.recorder_state(device_serial).port_path
        [handle] = [h for h in find_recorders(self.sim.backend) if h.location.port_path == port]
        with RecorderDriver(handle, self.sim.backend) as driver:
            driver.login(PASSWORD)
            info = driver.info()
        return {"officer_no": info.officer_no, "officer_name": info.officer_name, "unit_code": info.unit_code,
                "unit_name": info.unit_name}

    def entries(self, type_: str) -> list[dict[str, Any]]:
        return [dict(e.data) for e in self.store.ledger.entries() if e.type == type_]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    station_store = StationStore(tmp_path / "store", STATION)
    import_officers(station_store, parse_officer_csv(OFFICERS.encode()), source="officers.csv", by="admin")
    yield station_store
    station_store.close()


@pytest.fixture
def rig(sim: SimBus, store: StationStore) -> Rig:
    return Rig(sim, store, open_access(), trusted=False)


async def refused(call: Any) -> CheckoutRefused:
    with pytest.raises(CheckoutRefused) as caught:
        await call
    return caught.value


async def test_a_card_checks_out_the_fullest_ready_recorder_and_writes_the_officer_into_it(rig: Rig) -> None:
    low = rig.dock(0, "1-1.1", battery_percent=85)
    full = rig.dock(1, "1-1.2", battery_percent=99)
    assignment = await rig.desk.check_out_by_card("01:00:07:34:e0")
    assert (assignment.officer_no, assignment.device_serial, assignment.bay, assignment.method) == (
        "220001", full, 2, "card")
    # What the recorder reports afterwards, asked afresh, is the officer the station wrote.
    assert rig.device_identity(full) == {"officer_no": "220001", "officer_name": "赵敏",
                                         "unit_code": "330100000000", "unit_name": "杭州市公安局"}
    assert rig.device_identity(low)["officer_no"] == "110001"  # the other recorder is untouched
    [entry] = rig.entries(EntryType.ASSIGNED)
    assert entry["device_serial"] == full and entry["officer_no"] == "220001" and entry["bay"] == 2
    assert entry["identity_before"]["officer_no"] == "110002"  # what it claimed before: its old officer
    assert entry["identity_written"]["officer_no"] == "220001"
    assert rig.leds == [(2, BayLed.ATTENTION)]
    assert rig.desk.book.open_for_officer("220001") == assignment


async def test_check_out_by_officer_number_and_pin(rig: Rig) -> None:
    serial = rig.dock(0, "1-1.1")
    assignment = await rig.desk.check_out_by_pin("220003", "8765")
    assert (assignment.device_serial, assignment.method) == (serial, "pin")
    assert rig.device_identity(serial)["unit_name"] == "上城分局"


async def test_an_unknown_card_is_refused_and_a_registered_one_is_not(rig: Rig) -> None:
    rig.dock(0, "1-1.1")
    refusal = await refused(rig.desk.check_out_by_card("DEADBEEF"))
    assert refusal.reason is RefusalReason.UNKNOWN_CARD and "card not registered" in refusal.screen_text
    [entry] = rig.entries(EntryType.REFUSED)
    assert (entry["what"], entry["reason"], entry["card_uid"]) == ("check-out", "unknown_card", "DEADBEEF")
    assert rig.entries(EntryType.ASSIGNED) == []
    await rig.desk.check_out_by_card("04A21B7C")  # control


async def test_a_suspended_officer_is_refused_until_reinstated(rig: Rig) -> None:
    rig.dock(0, "1-1.1")
    refusal = await refused(rig.desk.check_out_by_card("100086F444"))
    assert refusal.reason is RefusalReason.SUSPENDED and "suspended" in refusal.screen_text
    set_officer_status(rig.store, "220002", OfficerStatus.ACTIVE, reason="back", by="admin")
    assert (await rig.desk.check_out_by_card("100086F444")).officer_no == "220002"


async def test_no_ready_recorder_says_why_for_each_one(rig: Rig) -> None:
    partial = rig.dock(0, "1-1.1", outcome="partial")
    flat = rig.dock(1, "1-1.2", battery_percent=40)
    new = rig.dock(2, "1-1.3", outcome=None)
    refusal = await refused(rig.desk.check_out_by_card("01000734E0"))
    assert refusal.reason is RefusalReason.NO_RECORDER_READY
    assert f"{partial}: its last docking ended partial: not offloaded and wiped" in refusal.detail
    assert f"{flat}: battery 40% < 80%" in refusal.detail
    assert f"{new}: never offloaded at this station" in refusal.detail
    assert rig.entries(EntryType.REFUSED)[0]["reason"] == "no_recorder_ready"
    # Control: its offload still running, then finished, the new recorder is issued.
    rig.docking(new, rig.sim.bus.recorder_state(new).usb_serial, 3, None)
    assert "not finished" in (await refused(rig.desk.check_out_by_card("01000734E0"))).detail
    rig.docking(new, rig.sim.bus.recorder_state(new).usb_serial, 3, "done")
    assert (await rig.desk.check_out_by_card("01000734E0")).device_serial == new


async def test_an_empty_station_refuses_with_no_recorder_docked(rig: Rig) -> None:
    refusal = await refused(rig.desk.check_out_by_pin("220001", "4321"))
    assert (refusal.reason, refusal.detail) == (RefusalReason.NO_RECORDER_READY, "no recorder docked")


async def test_wrong_pins_lock_the_officer_out_and_never_reach_the_ledger(rig: Rig) -> None:
    rig.dock(0, "1-1.1")
    first = await refused(rig.desk.check_out_by_pin("220001", "0000"))
    assert first.reason is RefusalReason.WRONG_PIN
    # A right PIN before the lockout clears the count (control), and issues a recorder.
    await rig.desk.check_out_by_pin("220001", "4321")
    assert rig.desk.check_in(rig.desk.book.open_assignments()[0].device_serial, bay=1) is not None
    for _ in range(2):
        assert (await refused(rig.desk.check_out_by_pin("220001", "1111"))).reason is RefusalReason.WRONG_PIN
    locked = await refused(rig.desk.check_out_by_pin("220001", "2222"))
    assert locked.reason is RefusalReason.PIN_LOCKED
    # Outside the ledger a lockout reads as a wrong PIN (only a 警号 with a PIN locks: review 3).
    assert locked.public_reason is RefusalReason.WRONG_PIN
    assert "wrong officer number or PIN" in locked.screen_text
    # Locked: even the right PIN is refused now.
    assert (await refused(rig.desk.check_out_by_pin("220001", "4321"))).reason is RefusalReason.PIN_LOCKED
    refusals = rig.entries(EntryType.REFUSED)
    assert [r["reason"] for r in refusals] == [
        "wrong_pin", "wrong_pin", "wrong_pin", "pin_locked", "pin_locked"]
    assert [r.get("failures") for r in refusals[:4]] == [1, 1, 2, 3]
    text = json.dumps(refusals)
    for pin in ("0000", "1111", "2222", "4321"):
        assert pin not in text


async def test_an_unknown_officer_number_is_refused_like_a_wrong_pin(rig: Rig) -> None:
    rig.dock(0, "1-1.1")
    refusal = await refused(rig.desk.check_out_by_pin("999999", "4321"))
    assert refusal.reason is RefusalReason.UNKNOWN_OFFICER
    assert refusal.screen_text == (await refused(rig.desk.check_out_by_pin("220001", "9999"))).screen_text


async def test_an_officer_who_holds_a_recorder_gets_no_second_one(rig: Rig) -> None:
    rig.dock(0, "1-1.1")
    rig.dock(1, "1-1.2")
    await rig.desk.check_out_by_card("01000734E0")
    refusal = await refused(rig.desk.check_out_by_card("01000734E0"))
    assert refusal.reason is RefusalReason.ALREADY_HOLDS
    assert (await rig.desk.check_out_by_card("04A21B7C")).officer_no == "220003"  # control: another officer


async def test_a_recorder_that_does_not_keep_the_identity_is_not_issued(rig: Rig) -> None:
    liar = rig.dock(0, "1-1.1", battery_percent=99)
    rig.sim.bus.ignore_identity_writes(liar)
    refusal = await refused(rig.desk.check_out_by_card("01000734E0"))
    assert refusal.reason is RefusalReason.NO_RECORDER_READY and "identity not written" in refusal.detail
    [error] = rig.entries(EntryType.ERROR)
    assert error["device_serial"] == liar and "reports" in error["reason"]
    honest = rig.dock(1, "1-1.2", battery_percent=90)  # control: the next ready recorder is issued
    assignment = await rig.desk.check_out_by_card("01000734E0")
    assert assignment.device_serial == honest
    assert rig.device_identity(honest)["officer_no"] == "220001"


async def test_the_clock_is_set_only_when_the_station_clock_is_trusted(rig: Rig) -> None:
    serial = rig.dock(0, "1-1.1", clock_offset_s=3600.0)

    def device_offset_s() -> float:
        return abs(rig.sim.bus.recorder_state(serial).clock_utc_ms / 1000 - time.time())

    await rig.desk.check_out_by_card("01000734E0")
    assert rig.entries(EntryType.ASSIGNED)[0]["clock_set"] is False
    assert device_offset_s() > 3000  # untouched: an untrusted station clock sets nothing
    rig.desk.check_in(serial, bay=1)
    rig.trusted = True
    await rig.desk.check_out_by_card("04A21B7C")
    assert rig.entries(EntryType.ASSIGNED)[1]["clock_set"] is True
    assert device_offset_s() < 60  # set (a generous bound: the machine may be loaded)


async def test_check_in_closes_the_assignment_and_the_recorder_can_go_out_again(rig: Rig) -> None:
    serial = rig.dock(0, "1-1.1")
    out = await rig.desk.check_out_by_card("01000734E0")
    assert (await refused(rig.desk.check_out_by_card("04A21B7C"))).reason is RefusalReason.NO_RECORDER_READY
    back = rig.desk.check_in(serial, bay=1)
    assert back is not None and back.id == out.id and back.returned is not None and back.returned_bay == 1
    [returned] = rig.entries(EntryType.RETURNED)
    assert (returned["assignment"], returned["officer_no"]) == (out.id, "220001")
    assert rig.desk.check_in(serial, bay=1) is None  # nothing open any more
    assert (await rig.desk.check_out_by_card("04A21B7C")).device_serial == serial


async def test_a_recorder_the_allow_list_does_not_pin_gets_no_password_and_is_not_issued(
        sim: SimBus, store: StationStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EE_TEST_RECORDER_PASSWORD", PASSWORD)
    pinned = sim.add(0, port="1-1.1", files=0, battery_percent=95)
    stranger = sim.add(1, port="1-1.2", files=0, battery_percent=99)
    config = parse_config(
        '[station]\nid = "TEST-STATION"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n'
        '[recorders]\ndefault_password = "env:EE_TEST_RECORDER_PASSWORD"\n'
        f'[[recorders.allow]]\ndevice_serial = "{pinned.device_serial}"\nusb_serial = "{pinned.usb_serial}"\n'
        '[[bays]]\nnumber = 1\nusb_port = "1-1.1"\n[[bays]]\nnumber = 2\nusb_port = "1-1.2"\n')
    rig = Rig(sim, store, recorder_access_from_config(config), trusted=False)
    rig.docking(pinned.device_serial, pinned.usb_serial, 1, "done")
    docked = {r.usb_serial: r for r in await rig.bench.docked()}
    assert "password was not sent" in (docked[stranger.usb_serial].problem or "")
    assert docked[pinned.usb_serial].problem is None and docked[pinned.usb_serial].bay == 1
    assignment = await rig.desk.check_out_by_card("01000734E0")
    assert assignment.device_serial == pinned.device_serial  # the fuller stranger was passed over


async def test_a_card_at_the_serial_reader_checks_a_recorder_out(rig: Rig) -> None:
    """End to end: the card reader simulator on a pty, the real driver, the desk, the USB recorder."""
    serial = rig.dock(0, "1-1.1")
    outcomes: list[CardOutcome] = []
    got_two = asyncio.Event()

    def on_outcome(outcome: CardOutcome) -> None:
        outcomes.append(outcome)
        if len(outcomes) == 2:
            got_two.set()

    with CardReaderSimulator(CardFraming.STX_FRAME, repeat_interval_s=0.01) as reader_sim:
        async with await CardReaderDriver.open(reader_sim.tty_path) as reader:
            task = asyncio.create_task(serve_card_reader(reader, rig.desk, on_outcome=on_outcome,
                                                         max_age_s=60.0))
            await asyncio.to_thread(reader_sim.present, "0A0B0C0D0E", 4)  # a card no one registered
            await asyncio.sleep(0.1)
            await asyncio.to_thread(reader_sim.present, "01000734E0", 4)  # 赵敏's card, held a moment
            await asyncio.wait_for(got_two.wait(), 60.0)
            await reader.close()
            await asyncio.wait_for(task, 60.0)
    unknown, issued = outcomes
    assert unknown.refused is not None and unknown.refused.reason is RefusalReason.UNKNOWN_CARD
    assert issued.assignment is not None and issued.assignment.device_serial == serial
    assert rig.device_identity(serial)["officer_no"] == "220001"
    assert len(rig.entries(EntryType.ASSIGNED)) == 1  # the card's repeats were one presentation


async def test_a_stale_card_presentation_is_not_honoured(rig: Rig) -> None:
    rig.dock(0, "1-1.1")
    outcomes: list[CardOutcome] = []
    with CardReaderSimulator(CardFraming.HEX_LINE) as reader_sim:
        async with await CardReaderDriver.open(reader_sim.tty_path) as reader:
            await asyncio.to_thread(reader_sim.present, "04A21B7C", 1)
            while reader.stats.presented < 1:
                await asyncio.sleep(0.01)
            # Served as if an hour had gone by since the card was presented.
            task = asyncio.create_task(serve_card_reader(reader, rig.desk, on_outcome=outcomes.append,
                                                         clock=lambda: time.monotonic() + 3600))
            await asyncio.sleep(0.2)
            await reader.close()
            await asyncio.wait_for(task, 60.0)
    assert outcomes == [] and rig.entries(EntryType.ASSIGNED) == []


async def test_a_bus_that_cannot_be_listed_is_a_refusal_not_a_crash(rig: Rig) -> None:
    rig.dock(0, "1-1.1")
    rig.sim.server.stop()  # the USB bus gone (in production: libusb failing)
    refusal = await refused(rig.desk.check_out_by_card("01000734E0"))
    assert refusal.reason is RefusalReason.NO_RECORDER_READY
    assert refusal.detail.startswith("the recorders cannot be listed: USB enumeration failed")
    [entry] = rig.entries(EntryType.REFUSED)
    assert entry["reason"] == "no_recorder_ready" and "/tmp" not in entry["detail"]  # no station path
    assert rig.entries(EntryType.REFUSED)[0]["reason"] == "no_recorder_ready"


MINIMAL = '[station]\nid = "TEST-STATION"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n'
SETTINGS = ("[equipment]\nenabled = true\nmin_battery_percent = 80\n[equipment.settings]\n"
            "width = 1280\nheight = 720\npre_record_s = 30\npost_record_s = 15\nsplit_min = 10\n")


async def test_the_agencys_settings_are_pushed_at_check_out_and_read_back(sim: SimBus,
                                                                          store: StationStore) -> None:
    policy = checkout_policy(parse_config(MINIMAL + SETTINGS).equipment)
    rig = Rig(sim, store, open_access(), trusted=False, policy=policy)
    ignoring = rig.dock(0, "1-1.1", battery_percent=99)
    rig.sim.bus.ignore_settings_writes(ignoring)  # acknowledges, keeps its factory settings
    serial = rig.dock(1, "1-1.2", battery_percent=90)
    assignment = await rig.desk.check_out_by_card("01000734E0")
    assert assignment.device_serial == serial
    [error] = rig.entries(EntryType.ERROR)
    assert error["device_serial"] == ignoring and "settings" in error["reason"]
    [entry] = rig.entries(EntryType.ASSIGNED)
    assert entry["settings_written"] == {"width": 1280, "height": 720, "pre_record_s": 30,
                                         "post_record_s": 15, "split_min": 10}
    assert entry["settings_before"]["width"] == 1920
    [handle] = [h for h in find_recorders(rig.sim.backend) if h.location.port_path == "1-1.2"]
    with RecorderDriver(handle, rig.sim.backend) as driver:
        driver.login(PASSWORD)
        assert (driver.status().width, driver.settings().pre_record_s) == (1280, 30)


def test_recorder_settings_out_of_range_are_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="pre_record_s"):
        parse_config(MINIMAL + SETTINGS.replace("pre_record_s = 30", "pre_record_s = 99"))
    assert checkout_policy(parse_config(MINIMAL).equipment).settings is None  # control: unset, untouched


async def test_a_recorder_answering_garbage_is_not_issued(rig: Rig) -> None:
    hostile = rig.dock(0, "1-1.1", battery_percent=99)
    good = rig.dock(1, "1-1.2", battery_percent=90)
    # Its identity reply: the right length, junk after the 警号's NUL padding (PROTOCOL.md §4.1).
    junk = bytearray(RecorderInfo(hostile, "110001", "张伟", "", "").to_bytes())
    junk[20] = ord("X")
    rig.sim.bus.inject_reply(hostile, VendorRequest.GET_INFO, bytes(junk))
    docked = {r.port: r for r in await rig.bench.docked()}
    assert "cannot be read" in (docked["1-1.1"].problem or "") and docked["1-1.2"].problem is None
    rig.sim.bus.inject_reply(hostile, VendorRequest.GET_STATUS, bytes([101]) + bytes(24))  # battery 101 %
    assignment = await rig.desk.check_out_by_card("01000734E0")
    assert assignment.device_serial == good
    assert rig.entries(EntryType.REFUSED) == []  # the hostile recorder was passed over, not a refusal


async def test_a_new_pin_set_by_the_administrator_lifts_the_lockout(rig: Rig) -> None:
    rig.dock(0, "1-1.1")
    for _ in range(3):
        await refused(rig.desk.check_out_by_pin("220001", "0000"))
    assert (await refused(rig.desk.check_out_by_pin("220001", "4321"))).reason is RefusalReason.PIN_LOCKED
    set_officer_pin(rig.store, "220001", "97531", by="admin")
    assert (await rig.desk.check_out_by_pin("220001", "97531")).officer_no == "220001"


async def test_a_recorder_whose_docking_is_under_way_is_never_logged_in_to_nor_issued(
    sim: SimBus, store: StationStore
) -> None:
    # A recorder docked a moment ago is in control mode until its docking session switches it to mass
    # storage, and its latest *finished* docking may well be `done`: the station's own word that it is not
    # finished with it (the agent's `idle`) keeps the desk away from it.
    docking_under_way = {"1-1.1"}
    rig = Rig(sim, store, open_access(), trusted=False)
    offloaded: dict[str, str] = {}  # port -> the recorder the station finished with there
    rig.bench = UsbRecorderBench(
        sim.backend, open_access(),
        idle=lambda port, usb_serial: None if port in docking_under_way else offloaded.get(port))
    rig.desk.bench = rig.bench
    recorder = rig.dock(0, "1-1.1")
    offloaded["1-1.1"] = recorder
    before = rig.device_identity(recorder)
    logins = len(sim.bus.passwords_received(recorder))
    refusal = await refused(rig.desk.check_out_by_card("01000734E0"))
    assert refusal.reason is RefusalReason.NO_RECORDER_READY
    assert f"port 1-1.1: {DOCKING_UNDER_WAY}" in refusal.detail, refusal.detail
    assert len(sim.bus.passwords_received(recorder)) == logins  # not even logged in to
    assert rig.device_identity(recorder) == before
    docking_under_way.clear()  # the control: its docking over, the same recorder is issued
    assert (await rig.desk.check_out_by_card("01000734E0")).device_serial == recorder
