"""The agency's officer list and the stations' fleets on each backend of the central's database (the
embedded SQLite file and PostgreSQL): a version issued by the command (its own connection, beside the
running receiver) is what a station fetches from the receiver; the fleet report the receiver keeps is what
another receiver sharing the database shows, until the station's next report replaces it."""

from __future__ import annotations

from typing import Any

import aiohttp

from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from edge.central.backends import open_central_database
from edge.central.equipment import EquipmentStore, fleet_view, officers_answer
from edge.custody.canonical import parse_json
from edge.custody.keys import StationKey
from edge.equipment.officer_csv import parse_officer_csv
from edge.equipment.officer_list import verify_list
from tests.central.conftest import HttpCentral

STATION = "ST-EQUIP-1"
LIST = "警号,姓名,单位编号,卡号\n110001,张伟,330100000000,04A21B7C\n110002,王芳,330100000000,\n"


def _report(station: str, officers_version: int) -> dict[str, Any]:
    return {"type": "evidence-edge fleet report", "station": station, "at": "2026-12-06T09:00:00.000000Z",
            "officers_version": officers_version,
            "recorders": [{"device_serial": "ZFY0000A1", "state": "out",
                           "since": "2026-12-06T08:00:00.000000Z", "officer_no": "110001",
                           "officer_name": "张伟", "bay": None}]}


async def test_a_list_issued_beside_the_receiver_is_fetched_and_the_fleet_is_shared(
    dev_central_on: HttpCentral,
) -> None:
    central = dev_central_on
    central.store_index.enroll_station(STATION, StationKey.generate().public_key_b64, "1" * 64)
    url = f"{central.url}/v1/stations/{STATION}"
    as_station = {DEV_STATION_HEADER: STATION}
    key = central.running.parts.signing_key
    # The command's own connection to the database (as `edge central officers import` opens it).
    command = open_central_database(central.config)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/officers?have=0", headers=as_station) as response:
                assert response.status == 200 and await response.json() == {"version": 0, "list": None}
            issued = EquipmentStore(command.equipment).issue(parse_officer_csv(LIST.encode()), key=key,
                                                             central="central-test", by="admin")
            assert issued.version == 1
            async with http.get(f"{url}/officers?have=0", headers=as_station) as response:
                answer = await response.json()
            assert answer["version"] == 1
            assert verify_list(answer["list"], key.public_key()).sha256 == issued.sha256
            async with http.get(f"{url}/officers?have=1", headers=as_station) as response:
                assert await response.json() == {"version": 1, "list": None}

            # The station's fleet report, kept by this receiver ...
            async with http.post(f"{url}/fleet", json=_report(STATION, 1), headers=as_station) as response:
                assert response.status == 200, await response.text()
                assert await response.json() == {"station": STATION, "recorders": 1}
            # ... a hostile one refused, and the kept one left as it was.
            bad = {**_report(STATION, 1), "recorders": "all of them"}
            async with http.post(f"{url}/fleet", json=bad, headers=as_station) as response:
                assert response.status == 400
            async with http.get(f"{central.url}/v1/fleet",
                                headers={DEV_READER_HEADER: "auditor-1"}) as response:
                assert response.status == 200
                fleet = await response.json()
        assert [(s["station"], s["officers_version"]) for s in fleet["stations"]] == [(STATION, 1)]
        assert fleet["officers_version"] == 1

        # ... is what another receiver of the same database sees, with the list the command issued.
        other = EquipmentStore(command.equipment)
        shared = fleet_view(other, None)
        assert [(r["station"], r["device_serial"], r["officer_no"]) for r in shared["recorders"]] == [
            (STATION, "ZFY0000A1", "110001")]
        assert shared["officers_version"] == 1
        assert parse_json(issued.envelope) == officers_answer(other, 0)["list"]

        # The station's next report replaces its last one: one row per station, the latest.
        newer = {**_report(STATION, 1), "at": "2026-12-06T10:00:00.000000Z",
                 "recorders": [{"device_serial": "ZFY0000B2", "state": "in", "since":
                                "2026-12-06T09:30:00.000000Z", "officer_no": None, "officer_name": None,
                                "bay": 2}]}
        async with aiohttp.ClientSession() as http, http.post(f"{url}/fleet", json=newer,
                                                               headers=as_station) as response:
            assert response.status == 200, await response.text()
        assert [(station, report["at"]) for station, _, report in other.reports()] == [
            (STATION, "2026-12-06T10:00:00.000000Z")]
        assert [r["device_serial"] for r in fleet_view(other, None)["recorders"]] == ["ZFY0000B2"]
    finally:
        command.close()
