"""The whole station over MQTT: the real agent (`edge run`'s StationAgent) with `[uplink] transport = "mqtt"`
offloads a docked recorder (simulated bus, real mounts), sends the evidence through a real Mosquitto to a
real central's MQTT receiver, gets the receipts and the witnessed head back over MQTT, and only then
erases the recorder (wipe policy after-witness, the default). Its own MQTT connection (telemetry,
commands) stays up beside the uplink's."""

from __future__ import annotations

from pathlib import Path

from edge.central.config import CentralConfig
from edge.central.embedded import free_port
from edge.central.service import start_central
from edge.config.station import WipeSection
from edge.custody.keys import StationKey
from edge.ingest.store import StationStore
from edge.mqtt.client import ConnectionState
from edge.sources.usb.offload import OffloadOutcome
from tests.mqtt.broker import CENTRAL_ID, MosquittoBroker, TestPki, require_mosquitto
from tests.station.harness import Station, eventually, simulated_station, spec

STATION = "TEST-STATION"  # the harness's station id


def on_recorder(station: Station, device_serial: str) -> dict[str, str]:
    files = station.bus.volume_files(device_serial)
    return {name: digest for name, digest in files.items() if name.lower().endswith((".mp4", ".jpg", ".wav"))}


async def test_a_docked_recorder_is_offloaded_sent_over_mqtt_witnessed_and_only_then_erased(
    tmp_path: Path,
) -> None:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", pki)
    await broker.start()
    central_config = CentralConfig.model_validate({
        "central": {"id": CENTRAL_ID, "store_dir": str(tmp_path / "central-store")},
        "server": {"listen": "127.0.0.1", "port": free_port(), "insecure_plain_http": True},
        "mqtt": {"broker_url": f"mqtts://127.0.0.1:{broker.port}", "ca_file": str(pki.ca_file),
                 "client_bundle_dir": str(pki.client(CENTRAL_ID)), "keepalive_s": 10,
                 "transfers_dir": str(tmp_path / "mqtt-transfers")},
    })
    central_key = StationKey.generate()
    (tmp_path / "central-signing.pub").write_bytes(central_key.public_pem())
    store = StationStore(tmp_path / "store", STATION)  # the station's key, as enrollment takes it
    station_key = store.key.public_key_b64
    store.close()
    central = await start_central(central_config, signing_key=central_key)
    central.parts.index.enroll_station(STATION, station_key, "0" * 64)
    bundle = pki.client(STATION)
    uplink = {"transport": "mqtt", "central_signing_key": str(tmp_path / "central-signing.pub"),
              "backoff_base_s": 0.05, "backoff_max_s": 0.5, "request_timeout_s": 10.0,
              "mqtt_segment_kb": 256, "ledger_push_delay_s": 0.1}
    mqtt = {"broker_url": f"mqtts://127.0.0.1:{broker.port}", "identity_dir": str(bundle),
            "backoff_base_s": 0.05, "backoff_max_s": 0.5}
    s = spec(0)
    try:
        async with simulated_station(tmp_path, [s], uplink=uplink, mqtt=mqtt,
                                     wipe=WipeSection().model_dump()) as station:
            assert station.config.uplink.transport_order == ["mqtt"]
            assert not station.config.uplink.central_url  # no HTTPS to the central at all
            before = on_recorder(station, s.device_serial)
            assert len(before) == 3
            await station.dock_recorder(s.device_serial, 1)
            await station.wait_results(1, timeout_s=120)
            result = station.agent.results[0]
            assert result.outcome is OffloadOutcome.DONE, result
            # Erased once a head the central signed (it came back over MQTT) covers the sealed entries.
            assert on_recorder(station, s.device_serial) == {}
            wiped = station.ledger("wiped")
            assert len(wiped) == 3
            uplink_service = station.agent.uplink
            assert uplink_service is not None
            assert uplink_service.witness.verified_witnessed_seq() > 0
            # And the receipts come over MQTT too.
            await eventually(lambda: len(station.ledger("receipt")) == 3, 60)
            assert all(r["verified"] is True for r in station.ledger("receipt"))
            uploads = [e["upload"] for e in station.ledger("uploaded")]
            assert len(uploads) == 3 and all(u.startswith("mqtt:") for u in uploads), uploads
            assert uplink_service.transport.name == "mqtt"
            assert central.parts.merkle.size() == 3
            # The agent's own connection (client id = station id) was never taken over by the uplink's.
            agent_client = station.agent.mqtt
            assert agent_client is not None and agent_client.status.state is ConnectionState.CONNECTED
            assert agent_client.status.connections == 1
    finally:
        await central.stop()
        await broker.stop()
