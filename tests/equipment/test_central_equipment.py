"""The agency's officer list and fleet at the central, end to end: the real station uplink service with the
`mqtt` transport, through a real Mosquitto (TLS, client certificates, the shipped ACL), to a real central
(its MQTT API answers `officers` and `fleet-report`; its HTTP API serves `GET /v1/fleet` to auditors),
whose database is the embedded SQLite file or PostgreSQL (the first two tests run on each)."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from edge.central.backends import open_central_database
from edge.central.equipment import EquipmentStore
from edge.central.index import Role
from edge.central.mqtt_command import Broker, send_command
from edge.custody.keys import StationKey
from edge.custody.ledger import EntryType
from edge.equipment.assignments import AssignmentBook
from edge.equipment.fleet import FleetPolicy, FleetRecords, HolderRecord, StatusReading, build_fleet
from edge.equipment.fleet_report import FleetReportError, check_report, fleet_report_v2
from edge.equipment.officer_csv import parse_officer_csv
from edge.equipment.officer_sync import list_in_force
from edge.equipment.officers import OfficerRegistry
from edge.ingest.store import StationStore
from edge.mqtt.command_handler import CommandHandler, CommandSettings
from edge.mqtt.commands import Command, CommandOp, new_request_id, utc_rfc3339
from edge.uplink.service import UplinkService
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX
from tests.mqtt.test_client import running
from tests.mqtt.test_commands_broker import subscribed
from tests.uplink.test_mqtt_end_to_end import E2E, STATION, e2e
from tests.uplink.test_refusals import uplink_running

WAIT_S = 90.0
V1 = ("警号,姓名,单位编号,单位名称,状态,卡号\n"
      "110001,张伟,330100000000,杭州市公安局,正常,04A21B7C\n"
      "110002,王芳,330100000000,杭州市公安局,正常,01000734E0\n")
V2 = V1.replace("110002,王芳,330100000000,杭州市公安局,正常", "110002,王芳,330100000000,杭州市公安局,停用")
FAST = {"officers_interval_s": 0.5, "fleet_report_interval_s": 0.5}


async def until(what: str, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.1)


def issue(rig: E2E, csv_text: str) -> int:
    """What `edge central officers import` does (its own connection to the central's database, beside the
    running receiver), with the key this central signs with."""
    database = open_central_database(rig.central.parts.config)
    try:
        return EquipmentStore(database.equipment).issue(parse_officer_csv(csv_text.encode()),
                                                        key=rig.central_key, central=CENTRAL_ID,
                                                        by="admin").version
    finally:
        database.close()


def synced(store: StationStore) -> list[dict[str, Any]]:
    return [dict(e.data) for e in store.ledger.entries() if e.type == EntryType.OFFICERS_SYNCED]


def statuses(store: StationStore) -> dict[str, str]:
    OfficerRegistry.create_schema(store.conn)
    return {o.officer_no: str(o.status) for o in OfficerRegistry(store.conn).all()}


async def test_the_central_list_reaches_a_station_over_mqtt_and_survives_an_agent_restart(
    tmp_path: Path, central_index: dict[str, Any] | None
) -> None:
    async with e2e(tmp_path, index=central_index) as rig:
        assert issue(rig, V1) == 1
        async with uplink_running(UplinkService(rig.config(**FAST), rig.store)):
            await until("officers_synced version 1", lambda: len(synced(rig.store)) == 1)
        [first] = synced(rig.store)
        assert first["version"] == 1 and first["central"] == CENTRAL_ID and first["added"] == 2
        assert statuses(rig.store) == {"110001": "active", "110002": "active"}

        # The agent restarts: the list is in state.db, before any contact with the central.
        rig.store.close()
        rig.store = StationStore(tmp_path / "store", STATION)
        assert statuses(rig.store) == {"110001": "active", "110002": "active"}
        held = list_in_force(rig.store.conn)
        assert held is not None and held.version == 1 and held.sha256 == first["officers_sha256"]

        # While the station is down the central issues version 2; the restarted agent catches up at once
        # and takes version 1 never again.
        assert issue(rig, V2) == 2
        async with uplink_running(UplinkService(rig.config(**FAST), rig.store)):
            await until("officers_synced version 2", lambda: len(synced(rig.store)) == 2)
            await asyncio.sleep(1.5)  # a few more polls: nothing more to apply
        assert [e["version"] for e in synced(rig.store)] == [1, 2]
        assert statuses(rig.store) == {"110001": "active", "110002": "suspended"}
        assert not [e for e in rig.store.ledger.entries() if e.type == EntryType.REFUSED]


def check_out(store: StationStore, serial: str, officer_no: str, *, returned_bay: int | None) -> None:
    book = AssignmentBook(store.conn)
    AssignmentBook.create_schema(store.conn)
    with store.transaction():
        opened = book.open(officer_no=officer_no, officer_name="张伟", unit_code="330100000000",
                           unit_name="杭州市公安局", device_serial=serial, usb_serial=f"U{serial}", bay=1,
                           method="card", checked_out="2026-12-06T08:00:00.000000Z", seq=1)
        if returned_bay is not None:
            book.close(opened.id, returned="2026-12-06T18:00:00.000000Z", bay=returned_bay, seq=2)


async def test_the_central_fleet_lists_a_stations_checked_out_recorder_and_flags_one_at_two_stations(
    tmp_path: Path, central_index: dict[str, Any] | None
) -> None:
    async with e2e(tmp_path, index=central_index) as rig:
        check_out(rig.store, "ZFY0000A1", "110001", returned_bay=None)
        check_out(rig.store, "ZFY0000B2", "110002", returned_bay=3)
        issue(rig, V1)
        reports = EquipmentStore(rig.central.parts.equipment)
        async with uplink_running(UplinkService(rig.config(**FAST), rig.store)):
            await until("a fleet report of the station holding officer list version 1", lambda: any(
                station == STATION and report["officers_version"] == 1
                for station, _, report in reports.reports()))
        fleet_url = f"{rig.central.url}/v1/fleet"
        async with aiohttp.ClientSession() as http:
            # Authorised: without a reader, no fleet.
            async with http.get(fleet_url) as response:
                assert response.status == 401
            auditor = {DEV_READER_HEADER: "auditor-1"}
            async with http.get(fleet_url, headers=auditor) as response:
                assert response.status == 200
                fleet = await response.json()
            assert fleet["officers_version"] == 1
            assert [(r["station"], r["officers_version"], r["recorders"]) for r in fleet["stations"]] == [
                (STATION, 1, 2)]
            by_serial = {r["device_serial"]: r for r in fleet["recorders"]}
            out = by_serial["ZFY0000A1"]
            assert (out["station"], out["state"], out["officer_no"], out["since"]) == (
                STATION, "out", "110001", "2026-12-06T08:00:00.000000Z")
            back = by_serial["ZFY0000B2"]
            assert (back["state"], back["bay"], back["officer_no"]) == ("in", 3, None)
            assert fleet["flagged"] == []

            # A second station reports the recorder the first has out: flagged at both.
            other = "ST-OTHER"
            rig.central.parts.index.enroll_station(other, StationKey.generate().public_key_b64, "1" * 64)
            report = {"type": "evidence-edge fleet report", "station": other,
                      "at": "2026-12-06T09:00:00.000000Z", "officers_version": 0,
                      "recorders": [{"device_serial": "ZFY0000A1", "state": "in", "since":
                                     "2026-12-06T09:00:00.000000Z", "officer_no": None, "officer_name": None,
                                     "bay": 2}]}
            # A station reports for itself only (control below: its own path).
            async with http.post(f"{rig.central.url}/v1/stations/{STATION}/fleet", json=report,
                                 headers={DEV_STATION_HEADER: other}) as response:
                assert response.status == 403
            async with http.post(f"{rig.central.url}/v1/stations/{other}/fleet", json=report,
                                 headers={DEV_STATION_HEADER: other}) as response:
                assert response.status == 200, await response.text()
            async with http.get(fleet_url, headers=auditor) as response:
                fleet = await response.json()
            # A reader of one unit sees that unit's stations only, yet the flag (counted over all).
            console = rig.central.parts.console
            console.assign_station_unit(other, "EAST", by="admin", reason="its unit")
            console.assign_station_unit(STATION, "WEST", by="admin", reason="its unit")
            console.grant("clerk", Role.READER, ("EAST",), by="admin", reason="test")
            async with http.get(fleet_url, headers={DEV_READER_HEADER: "clerk"}) as response:
                scoped = await response.json()
            assert [r["station"] for r in scoped["stations"]] == [other]
            assert [(r["station"], r["flag"]) for r in scoped["recorders"]] == [
                (other, "seen_at_two_stations")]
        assert fleet["flagged"] == ["ZFY0000A1"]
        flagged = [r for r in fleet["recorders"] if r["device_serial"] == "ZFY0000A1"]
        assert {r["station"] for r in flagged} == {STATION, other}
        assert all(r["at_stations"] == sorted([STATION, other]) for r in flagged)
        assert [r["flag"] for r in fleet["recorders"] if r["device_serial"] == "ZFY0000B2"] == [None]
        # Every read by an auditor is logged.
        assert len(rig.central.parts.index.access_log(reader="auditor-1", what="fleet")) == 2
        assert len(rig.central.parts.index.access_log(reader="clerk", what="fleet")) == 1


async def test_the_https_endpoint_serves_a_station_its_list_only_newer_than_it_has_and_only_its_own(
    tmp_path: Path
) -> None:
    async with e2e(tmp_path) as rig:
        url = f"{rig.central.url}/v1/stations/{STATION}/officers"
        as_station = {DEV_STATION_HEADER: STATION}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}?have=0", headers=as_station) as response:
                assert await response.json() == {"version": 0, "list": None}  # nothing issued yet
            issue(rig, V1)
            async with http.get(f"{url}?have=0", headers=as_station) as response:
                answer = await response.json()
            assert answer["version"] == 1 and answer["list"]["list"]["version"] == 1
            assert "pin" not in answer["list"]["list"]["officers"][0]
            async with http.get(f"{url}?have=1", headers=as_station) as response:
                assert await response.json() == {"version": 1, "list": None}
            for bad in ("have=-1", "have=1&have=2", "have=x", "since=0"):
                async with http.get(f"{url}?{bad}", headers=as_station) as response:
                    assert response.status == 400, bad
            other = "ST-OTHER"
            rig.central.parts.index.enroll_station(other, StationKey.generate().public_key_b64, "1" * 64)
            async with http.get(url, headers={DEV_STATION_HEADER: other}) as response:
                assert response.status == 403
                assert (await response.json())["error"] == "wrong_station"


async def test_the_centrals_officers_sync_command_pushes_a_new_version_without_waiting_for_the_poll(
    tmp_path: Path
) -> None:
    async with e2e(tmp_path) as rig:
        issue(rig, V1)
        service = UplinkService(rig.config(officers_interval_s=3600.0), rig.store)  # polls at start only
        station_client = rig.broker.client_settings(rig.pki.client(STATION), client_id=f"{STATION}-commands")
        async with uplink_running(service), running(station_client) as (client, _):
            handler = CommandHandler(CommandSettings(STATION, TOPIC_PREFIX), store=rig.store,
                                     central_key=rig.central_key.public_key(), client=client,
                                     status=lambda: {}, officers_sync=service.fetch_officer_list_now)
            commands = asyncio.create_task(handler.run())
            try:
                await until("officers_synced version 1", lambda: len(synced(rig.store)) == 1)
                await subscribed(client)
                issue(rig, V2)
                # Control: without the command, version 2 waits for the hourly poll.
                await asyncio.sleep(2.0)
                assert [e["version"] for e in synced(rig.store)] == [1]
                command = Command(new_request_id(), CommandOp.OFFICERS_SYNC, STATION,
                                  utc_rfc3339(datetime.now(UTC)), {})
                reply = await send_command(
                    Broker(rig.broker.client_settings(rig.pki.client(CENTRAL_ID), client_id="central-cmd"),
                           TOPIC_PREFIX),
                    command, rig.central_key, station_keys={rig.store.key.key_id: rig.store.key.public_key()},
                    timeout_s=WAIT_S)
                assert reply.ok and reply.result == {"officers_version": 1, "fetch": "requested"}, reply
                await until("officers_synced version 2", lambda: len(synced(rig.store)) == 2)
            finally:
                commands.cancel()
                await asyncio.gather(commands, return_exceptions=True)
        assert [e["version"] for e in synced(rig.store)] == [1, 2]
        [entry] = [e for e in rig.store.ledger.entries() if e.type == EntryType.COMMAND]
        assert entry.data["op"] == "officers-sync" and entry.data["outcome"] == "executed"


async def test_a_hostile_version_2_report_is_refused_over_https_naming_the_member_and_a_sound_one_kept(
    tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    fleet = build_fleet(
        FleetRecords(["ZFY0000C3"], readings={"ZFY0000C3": StatusReading(now, 80, 10, 20)},
                     open_assignments={"ZFY0000C3": HolderRecord(1, "110001", "张伟", "", "", now)}),
        {}, FleetPolicy(timedelta(hours=14), 50), now)
    sound = fleet_report_v2(fleet, station=STATION)
    hostile = copy.deepcopy(sound)
    hostile["recorders"][0]["battery_percent"] = 250
    async with e2e(tmp_path) as rig, aiohttp.ClientSession() as http:
        url = f"{rig.central.url}/v1/stations/{STATION}/fleet"
        as_station = {DEV_STATION_HEADER: STATION}
        async with http.post(url, json=hostile, headers=as_station) as response:
            assert response.status == 400
            assert "recorders[0].battery_percent" in (await response.json())["detail"]
        reports = EquipmentStore(rig.central.parts.equipment)
        assert reports.reports() == []  # nothing of it kept
        async with http.post(url, json=sound, headers=as_station) as response:
            assert response.status == 200, await response.text()
        [(station, _, kept)] = reports.reports()
        assert station == STATION and kept == sound
        fleet_url = f"{rig.central.url}/v1/fleet"
        async with http.get(fleet_url, headers={DEV_READER_HEADER: "auditor-1"}) as response:
            view = await response.json()
        [row] = view["recorders"]
        assert (row["state"], row["officer_no"], row["battery_percent"], row["overdue"]) == (
            "out", "110001", 80, False)
        assert view["stations"][0]["report_version"] == 2 and view["overdue"] == 0


def older_central_check(doc: object, *, station: str) -> dict[str, Any]:
    """The strict reading of a central that knows version 1 only: any other member is refused."""
    if isinstance(doc, dict) and "version" in doc:
        raise FleetReportError("expected exactly the members ['at', 'officers_version', 'recorders', "
                               "'station', 'type']")
    return check_report(doc, station=station)


async def test_a_central_not_upgraded_gets_version_1_when_it_refuses_version_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    records = FleetRecords(["ZFY0000D4"], open_assignments={
        "ZFY0000D4": HolderRecord(1, "110001", "张伟", "", "", now)})
    fleet = build_fleet(records, {}, FleetPolicy(timedelta(hours=14), 50), now)
    async with e2e(tmp_path) as rig:
        check_out(rig.store, "ZFY0000D4", "110001", returned_bay=None)
        reports = EquipmentStore(rig.central.parts.equipment)

        async def kept_after_run(version: int | None) -> dict[str, Any]:
            service = UplinkService(rig.config(**FAST), rig.store)
            service.follow_fleet()
            service.fleet_changed(fleet)
            async with uplink_running(service):
                await until(f"a fleet report of version {version} kept", lambda: [
                    r.get("version") for _, _, r in reports.reports()] == [version])
            [(_, _, kept)] = reports.reports()
            return kept

        # Control: an upgraded central keeps version 2, from the fleet view.
        upgraded = await kept_after_run(2)
        assert upgraded["recorders"][0]["due_at"] is not None
        # A central of the version before refuses it: the station sends version 1, from the assignments.
        monkeypatch.setattr("edge.central.equipment.check_report", older_central_check)
        older = await kept_after_run(None)
        assert [(r["device_serial"], r["state"], r["officer_no"]) for r in older["recorders"]] == [
            ("ZFY0000D4", "out", "110001")]
