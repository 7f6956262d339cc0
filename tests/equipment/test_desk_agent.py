"""The check-out desk in the running station agent: the card reader on a pty served by the agent's supervised
task, an offloaded recorder brought back to control mode by its bay's power cycle (dock protocol 4 PWR, the
simulated bay board unplugging and plugging it on the simulated USB bus), and the local API's check-out by
警号 + PIN with its CSRF guard and rate limit."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drivers.serial.card_reader_protocol import CardFraming
from drivers.serial.dock import BayLed
from drivers.usb.recorder import RecorderMode
from edge.equipment.importing import import_officers
from edge.equipment.officer_csv import parse_officer_csv
from edge.ingest.store import StationStore
from simulators.card_reader import CardReaderSimulator
from tests.station.harness import Station, eventually, simulated_station, spec, station_config

OFFICERS = ("警号,姓名,单位编号,单位名称,状态,卡号,密码\n"
            "110001,张伟,330100000000,杭州市综合行政执法局,正常,01000734E0,2468\n"
            "110002,王芳,330100000000,杭州市综合行政执法局,停用,04A21B7C,1357\n")
CARD_ZHANG = "01000734E0"
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT")
WAIT_S = 90.0


def registry(root: Path) -> None:
    store = StationStore(root / "store", "TEST-STATION")
    try:
        import_officers(store, parse_officer_csv(OFFICERS.encode()), source="officers.csv", by="admin")
    finally:
        store.close()


def leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def never_a_pin(entries: list[dict[str, Any]], pins: set[str]) -> None:
    """No ledger entry holds a PIN typed, as a field of its own or inside a text (a number field, a serial or
    a time stamp may hold the digits by chance: those must only not be the PIN itself)."""
    for data in entries:
        assert "pin" not in data, data
        for value in leaves(data):
            if not isinstance(value, str):
                continue
            if value.isdigit() or ISO_TIME.match(value) or value.isalnum():
                assert value not in pins, data
            else:
                assert not any(pin in value for pin in pins), data


async def outcome_after(station: Station, count: int, present: Any = None, timeout_s: float = WAIT_S
                        ) -> dict[str, Any]:
    """The desk's newest outcome once it has more than `count`; `present()` is called every 2 s meanwhile (the
    reader task opens the pty in its own time: a card shown before it listens is flushed, like a real one)."""
    desk = station.agent.desk
    assert desk is not None
    async with asyncio.timeout(timeout_s):
        while len(desk.outcomes()) <= count:
            if present is not None:
                await asyncio.to_thread(present)
            for _ in range(100):
                if len(desk.outcomes()) > count:
                    break
                await asyncio.sleep(0.02)
    return desk.outcomes()[0]


async def docked_and_back_in_control(station: Station, device_serial: str, bay: int) -> None:
    await station.dock_recorder(device_serial, bay)
    await station.wait_ledger("device_connected", timeout_s=WAIT_S,
                              where=lambda d: d.get("after") == "bay power cycle" and d.get("bay") == bay)
    state = station.bus.recorder_state(device_serial)
    assert state.mode is RecorderMode.CONTROL and not state.mounted, state


async def test_a_card_at_the_reader_issues_an_offloaded_recorder_back_in_control_mode(tmp_path: Path) -> None:
    reader = CardReaderSimulator(CardFraming.STX_FRAME)
    reader.start()
    recorder = spec(0, officer_no="119999", officer_name="李四")
    registry(tmp_path)
    try:
        async with simulated_station(tmp_path, [recorder], equipment={
            "enabled": True, "card_reader": {"port": reader.tty_path, "framing": "stx"},
        }) as station:
            # Nothing docked yet: the card is refused, no recorder ready, and nothing is written anywhere.
            refused = await outcome_after(station, 0, present=lambda: reader.present(CARD_ZHANG))
            assert refused["outcome"] == "refused" and refused["reason"] == "no_recorder_ready", refused
            assert refused["screen_text"].startswith("暂无可领用的记录仪") and refused["method"] == "card"
            desk = station.agent.desk
            assert desk is not None
            assert CARD_ZHANG not in str(desk.outcomes())  # the kiosk's outcomes never name the card

            # Docked: offloaded, wiped, its bay power-cycled once; it comes back in control mode and stays
            # (no second docking session: one offload, one session).
            await docked_and_back_in_control(station, recorder.device_serial, 1)
            assert station.dock.power_cycles(1) == 1
            assert len(station.agent.results) == 1
            assert len(station.bus.recorder_state(recorder.device_serial).files_deleted) == recorder.files
            seen = len(desk.outcomes())

            await asyncio.to_thread(reader.present, CARD_ZHANG)
            issued = await outcome_after(station, seen)
            assert issued["outcome"] == "assigned", issued
            assert (issued["bay"], issued["officer_no"], issued["device_serial"]) == (
                1, "110001", recorder.device_serial)
            # The identity read back from the recorder itself is the officer's, not the one it came with.
            info = station.bus.recorder_state(recorder.device_serial).info
            assert (info.officer_no, info.officer_name) == ("110001", "张伟")
            assert await station.led_shows(1, BayLed.ATTENTION)
            [assigned] = station.ledger("assigned")
            assert assigned["method"] == "card" and assigned["bay"] == 1
            assert len(station.agent.results) == 1, "the issued recorder was docked again"
    finally:
        reader.stop()


async def _post(url: str, body: Any, *, origin: str | None, content_type: str = "application/json"
                ) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": content_type, **({"Origin": origin} if origin else {})}
    async with aiohttp.ClientSession() as session, session.post(
        url + "/api/v1/checkout", data=body if isinstance(body, str) else None,
        json=None if isinstance(body, str) else body, headers=headers,
    ) as response:
        return response.status, await response.json(content_type=None)


@pytest.fixture
def api_dir() -> Any:
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="edge-desk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_pin_check_out_over_the_dock_screen_listener_is_csrf_guarded_and_rate_limited(
    tmp_path: Path, api_dir: Path
) -> None:
    recorder = spec(0)
    registry(tmp_path)
    api = {"socket_path": str(api_dir / "station.sock"), "tcp_port": 0}
    async with simulated_station(tmp_path, [recorder], api=api, equipment={
        "enabled": True, "pin_attempts_per_minute": 4,
    }) as station:
        assert station.agent.api is not None and station.agent.api.tcp_url is not None
        url = station.agent.api.tcp_url
        good = {"officer_no": "110001", "pin": "2468"}
        # A page on another origin, or one with no Origin, or a form post: refused before the desk sees it.
        for origin, content_type in ((None, "application/json"), ("http://evil.example", "application/json"),
                                     (url, "text/plain")):
            body: Any = good if content_type == "application/json" else '{"officer_no":"110001","pin":"2468"}'
            status, answer = await _post(url, body, origin=origin, content_type=content_type)
            assert status == 403 and "error" in answer, (origin, content_type, answer)
        assert station.agent.desk is not None and station.agent.desk.outcomes() == []
        for bad in ({"officer_no": "110001"}, {"officer_no": 110001, "pin": "2468"}, ["110001", "2468"],
                    {"officer_no": "110001", "pin": "2468", "extra": 1}):
            status, answer = await _post(url, bad, origin=url)
            assert status == 400, (bad, answer)

        # The station's own page: refusals with their screen text (suspended, wrong PIN), never the PIN.
        status, answer = await _post(url, {"officer_no": "110002", "pin": "1357"}, origin=url)
        assert (status, answer["reason"]) == (403, "suspended"), answer
        assert answer["screen_text"].startswith("该警员已停用")
        status, answer = await _post(url, {"officer_no": "110001", "pin": "9999"}, origin=url)
        assert (status, answer["reason"]) == (403, "wrong_pin"), answer
        # The control: the right PIN of an active officer with a recorder ready is issued one.
        await docked_and_back_in_control(station, recorder.device_serial, 1)
        status, answer = await _post(url, good, origin=url)
        assert status == 200 and answer["outcome"] == "assigned" and answer["bay"] == 1, answer
        assert station.bus.recorder_state(recorder.device_serial).info.officer_no == "110001"
        # Past the rate (4 a minute over every 警号): 429 with Retry-After, whatever the PIN.
        status, answer = await _post(url, {"officer_no": "110003", "pin": "8642"}, origin=url)
        assert status == 403, answer  # the 4th attempt is still taken (unknown officer)
        status, answer = await _post(url, good, origin=url)
        assert status == 429 and answer["reason"] == "rate_limited", answer
        limited = [d for d in station.ledger("refused") if d.get("reason") == "rate_limited"]
        assert len(limited) == 1
        never_a_pin(station.ledger("refused") + station.ledger("assigned"), {"2468", "9999", "1357", "8642"})
        outcomes = station.agent.desk.outcomes()
        assert [o["reason"] if o["outcome"] == "refused" else "assigned" for o in outcomes] == [
            "rate_limited", "wrong_pin", "assigned", "wrong_pin", "suspended"]  # an unknown 警号: wrong_pin
        # The ledger keeps the true reason of the 4th attempt.
        refusals = station.ledger("refused")
        unknown = [d.get("officer_no") for d in refusals if d.get("reason") == "unknown_officer"]
        assert unknown == ["110003"]
        await eventually(lambda: station.dock.led(1) is BayLed.ATTENTION, WAIT_S)


async def test_an_older_bay_board_cannot_power_cycle_so_the_offloaded_recorder_is_not_issued(
    tmp_path: Path
) -> None:
    # A protocol 3 board has no PWR: the recorder stays in mass-storage mode, an error entry says why, and the
    # desk refuses (no recorder ready) rather than issue a recorder it cannot reach in control mode.
    reader = CardReaderSimulator(CardFraming.HEX_LINE)
    reader.start()
    recorder = spec(0)
    registry(tmp_path)
    try:
        async with simulated_station(tmp_path, [recorder], dock_protocol=3, equipment={
            "enabled": True, "card_reader": {"port": reader.tty_path},
        }) as station:
            await station.dock_recorder(recorder.device_serial, 1)
            [error] = await station.wait_ledger("error", timeout_s=WAIT_S,
                                                where=lambda d: d.get("stage") == "equipment")
            assert "protocol 3 board cannot power-cycle" in error["reason"] and error["bay"] == 1
            assert station.bus.recorder_state(recorder.device_serial).mode is RecorderMode.MASS_STORAGE
            assert station.dock.power_cycles(1) == 0
            refused = await outcome_after(station, 0, present=lambda: reader.present(CARD_ZHANG))
            assert refused["reason"] == "no_recorder_ready", refused
            assert station.ledger("assigned") == []
    finally:
        reader.stop()


async def test_a_card_reader_that_is_not_there_is_on_the_record_and_costs_nothing_else(tmp_path: Path,
                                                                                       api_dir: Path) -> None:
    recorder = spec(0)
    registry(tmp_path)
    api = {"socket_path": str(api_dir / "station.sock"), "tcp_port": 0}
    async with simulated_station(tmp_path, [recorder], api=api, equipment={
        "enabled": True, "card_reader": {"port": "/dev/serial/by-id/usb-no-such-reader-if00"},
    }) as station:
        [error] = await station.wait_ledger("error", timeout_s=WAIT_S,
                                            where=lambda d: d.get("stage") == "card-reader")
        assert error["reason"].startswith("card reader unavailable: cannot open card reader at")
        # The rest of the desk goes on: a docking, back in control mode, and a check-out by PIN.
        await docked_and_back_in_control(station, recorder.device_serial, 1)
        assert station.agent.api is not None and station.agent.api.tcp_url is not None
        url = station.agent.api.tcp_url
        status, answer = await _post(url, {"officer_no": "110001", "pin": "2468"}, origin=url)
        assert status == 200 and answer["bay"] == 1, answer
        assert station.agent.supervisor is not None
        # The supervisor keeps trying it (with back-off), and says why it fails.
        health = station.agent.supervisor.health()["card-reader"]
        assert "cannot open card reader" in str(health["last_error"])


async def test_a_recorder_taken_off_the_allow_list_by_a_reload_is_not_issued(tmp_path: Path) -> None:
    recorder = spec(0)
    registry(tmp_path)
    async with simulated_station(tmp_path, [recorder], equipment={"enabled": True}) as station:
        await docked_and_back_in_control(station, recorder.device_serial, 1)
        desk = station.agent.desk
        assert desk is not None
        # [recorders] is reloaded live (SIGHUP): the desk follows the allow-list as it is now.
        station.agent.apply_config(station_config(tmp_path, [], station.dock.tty_path,
                                                  equipment={"enabled": True}))
        refused = await desk.check_out_by_pin("110001", "2468")
        assert (refused.assignment, refused.reason) == (None, "no_recorder_ready")
        [entry] = [d for d in station.ledger("refused") if d.get("what") == "check-out"]
        assert "pinned by no allow-list entry: the password was not sent" in entry["detail"], entry
        station.agent.apply_config(station.config)  # the control: back on the list, it is issued
        issued = await desk.check_out_by_pin("110001", "2468")
        assert issued.assignment is not None and issued.assignment.device_serial == recorder.device_serial
