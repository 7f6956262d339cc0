"""Review 9 finding 10: the salt of the device ids telemetry publishes is 32 random bytes made once and kept
beside the client secret (<store_dir>/mqtt-telemetry.salt, 0600), not the station key's signature: the ids
stay the same across restarts and key rotations (a key rotated after a compromise used to renumber every
recorder on every dashboard), differ between stations, and the salt is private.

These run the real station agent against a real Mosquitto and read the salt its telemetry publisher uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.ingest.key_rotation import rotate_station_key
from edge.mqtt.client_ids import load_or_create_hex_secret
from edge.mqtt.station_settings import TELEMETRY_SALT_FILE
from edge.mqtt.telemetry import device_id
from edge.pki.names import IdentityError
from tests.mqtt.broker import MosquittoBroker, TestPki
from tests.station.harness import simulated_station

STATION = "TEST-STATION"
SERIAL = "3300001"


def mqtt_section(broker: MosquittoBroker, pki: TestPki) -> dict[str, object]:
    return {"broker_url": f"mqtts://127.0.0.1:{broker.port}", "identity_dir": str(pki.client(STATION)),
            "backoff_base_s": 0.05, "backoff_max_s": 0.5}


async def salt_of_a_run(root: Path, broker: MosquittoBroker, pki: TestPki) -> tuple[bytes, Path]:
    """The device salt the agent's telemetry publisher used in one run of a station under ``root``, and
    its store directory."""
    async with simulated_station(root, [], mqtt=mqtt_section(broker, pki)) as station:
        telemetry = station.agent.telemetry
        assert telemetry is not None, "the agent runs no telemetry"
        return telemetry.settings.device_salt, station.config.station.store_dir


async def test_the_device_id_salt_is_kept_private_and_survives_restarts_and_key_rotation(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    first, store = await salt_of_a_run(tmp_path / "a", broker, pki)
    salt_file = store / TELEMETRY_SALT_FILE
    assert len(first) == 32 and salt_file.read_text().strip() == first.hex()
    assert salt_file.stat().st_mode & 0o777 == 0o600
    # A restart: the same salt, so the same published ids.
    again, _ = await salt_of_a_run(tmp_path / "a", broker, pki)
    assert again == first
    # A key rotation (the old key compromised, say): the ids do not change with the key.
    rotated = rotate_station_key(store, STATION, reason="test")
    assert rotated.old_key_id != rotated.new_key_id
    after_rotation, _ = await salt_of_a_run(tmp_path / "a", broker, pki)
    assert after_rotation == first and device_id(SERIAL, after_rotation) == device_id(SERIAL, first)
    # Control: another station (another store) has its own salt, so its ids of the same recorder differ.
    other, other_store = await salt_of_a_run(tmp_path / "b", broker, pki)
    assert other_store != store and other != first
    assert device_id(SERIAL, other) != device_id(SERIAL, first)


async def test_a_salt_file_that_is_no_salt_is_refused_not_replaced(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    """A damaged or exposed salt is never silently replaced (that would renumber every recorder):
    telemetry is off (only telemetry: review 10, tests/mqtt/test_review10_telemetry_salt.py) and the
    ledger says why; the file stays as it was."""
    _salt, store = await salt_of_a_run(tmp_path / "a", broker, pki)
    salt_file = store / TELEMETRY_SALT_FILE
    salt_file.write_text("not a salt\n")
    async with simulated_station(tmp_path / "a", [], mqtt=mqtt_section(broker, pki)) as station:
        assert station.agent.telemetry is None
        reasons = [e.get("reason", "") for e in station.ledger("error")]
        assert any("mqtt telemetry disabled" in r and "telemetry salt" in r for r in reasons), reasons
        assert station.agent.mqtt is not None and station.agent.supervisor is not None
        assert "mqtt" in station.agent.supervisor.health()
    assert salt_file.read_text() == "not a salt\n"
    # The same for a salt readable by others.
    salt_file.write_text("ab" * 32 + "\n")
    salt_file.chmod(0o644)
    with pytest.raises(IdentityError):
        load_or_create_hex_secret(salt_file, hex_digits=64, what="MQTT telemetry salt", if_removed="")
