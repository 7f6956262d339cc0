"""The status board with a real central (mutual TLS on a real port) and with refusals: a bay waits
for receipts in `awaiting_receipt`, upload and receipt times reach the histograms, the central shows
reachable and the spool drains; a central that is down shows unreachable with its breaker open; refused
recorders show their error class and count as refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edge.central.embedded import EmbeddedCentral
from tests.observe.test_station_status import metric_samples, sse_events, unix_client
from tests.station.harness import Station, eventually, simulated_station, spec
from tests.uplink.test_uplink_station import FAST_RETRY, STATION, enrolled_central


async def _metrics(station: Station) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert station.agent.api is not None and station.agent.api.socket_path is not None
    async with unix_client(station.agent.api.socket_path) as client, client.get(
        "http://station/metrics"
    ) as response:
        return metric_samples(await response.text())


async def test_awaiting_receipt_upload_and_receipt_times_and_a_reachable_central(
    tmp_path: Path, api_dir: Path
) -> None:
    central = await EmbeddedCentral.start(tmp_path, STATION, tmp_path / "store")
    s = spec(0, files=2)
    try:
        async with simulated_station(
            tmp_path, [s], uplink={**central.uplink_config(), **FAST_RETRY},
            wipe={"policy": "after-receipt", "receipt_wait_s": 60},
            api={"socket_path": str(api_dir / "station.sock"), "tcp_port": 0},
        ) as station:
            assert station.agent.api is not None and station.agent.api.tcp_url is not None
            url = station.agent.api.tcp_url
            states: list[str] = []

            async def follow() -> None:
                async for kind, data in sse_events(url + "/api/v1/events"):
                    if kind == "snapshot" and not states:
                        states.append("snapshot")
                        await station.dock_recorder(s.device_serial, 1)
                    elif kind == "bay" and data["bay"] == "1":
                        states.append(data["state"])
                        if data["state"] == "done":
                            return

            await asyncio.wait_for(follow(), 60)
            assert "awaiting_receipt" in states, states
            assert states.index("awaiting_receipt") < states.index("done"), states
            await station.wait_results(1)
            uploaded = station.ledger("uploaded")
            receipts = station.ledger("receipt")
            assert len(receipts) == 2

            def settled() -> bool:
                now = station.agent.status.station()
                return now["spool"]["items"] == 0 and now["central"]["last_receipt_at"] is not None

            await eventually(settled)
            central_json = station.agent.status.station()["central"]
            assert (central_json["reachable"], central_json["breaker"]) == (True, "closed")
            assert central_json["last_contact_at"] is not None
            samples = await _metrics(station)
            assert samples[("edge_station_upload_seconds_count", ())] == len(uploaded) == 2
            assert samples[("edge_station_receipt_seconds_count", ())] == len(receipts)
            assert samples[("edge_station_central_reachable", ())] == 1
            assert samples[("edge_station_central_breaker", (("state", "closed"),))] == 1
            assert samples[("edge_station_spool_items", ())] == 0
    finally:
        await central.stop()


async def test_a_central_that_is_down_shows_unreachable_with_its_breaker_open(
    tmp_path: Path, api_dir: Path
) -> None:
    _config, uplink = enrolled_central(tmp_path, **FAST_RETRY)  # enrolled, never started
    s = spec(0, files=1)
    async with simulated_station(
        tmp_path, [s], uplink=uplink, wipe={"policy": "after-receipt", "receipt_wait_s": 1},
        api={"socket_path": str(api_dir / "station.sock")},
    ) as station:
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)

        def down() -> bool:
            central = station.agent.status.station()["central"]
            return central["reachable"] is False and central["breaker"] in ("open", "half_open")

        await eventually(down)
        bay = station.agent.status.bay("1")
        assert bay is not None and bay["state"] == "awaiting_receipt"
        await eventually(lambda: station.agent.status.station()["spool"]["items"] == 1)
        samples = await _metrics(station)
        assert samples[("edge_station_central_reachable", ())] == 0
        assert samples[("edge_station_dockings_total", (("outcome", "awaiting_receipt"),))] == 1


async def test_refused_recorders_show_their_error_class_and_count_as_refusals(
    tmp_path: Path, api_dir: Path
) -> None:
    stranger = spec(0)  # on no allow-list entry: refused before the password is sent
    wrong = spec(1, password="000000")  # pinned, but its password is not the station's
    allow: dict[str, Any] = {
        "allow": [{"device_serial": wrong.device_serial, "usb_serial": wrong.usb_serial}]
    }
    async with simulated_station(
        tmp_path, [stranger, wrong], recorders=allow, api={"socket_path": str(api_dir / "station.sock")}
    ) as station:
        await station.dock_recorder(stranger.device_serial, 1)
        await station.dock_recorder(wrong.device_serial, 2)
        await station.wait_ledger("refused", 2)
        await station.agent.idle()

        def shown() -> bool:
            bays = {b["bay"]: b for b in station.agent.status.bays()}
            return (bays["1"]["error_class"], bays["2"]["error_class"]) == ("not_allowed", "wrong_password")

        await eventually(shown)
        assert station.agent.status.station()["counts"]["refusals"] == {"not_allowed": 1, "wrong_password": 1}
        samples = await _metrics(station)
        assert samples[("edge_station_refusals_total", (("class", "not_allowed"),))] == 1
        assert samples[("edge_station_refusals_total", (("class", "wrong_password"),))] == 1
