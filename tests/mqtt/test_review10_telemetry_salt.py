"""Review 10 (4b): a telemetry salt file (<store_dir>/mqtt-telemetry.salt) that cannot be used (wrong size,
garbage, readable by others, not a file) turns off telemetry ALONE: the station's broker connection and the
central's commands go on (evidence over MQTT has a connection of its own, edge/uplink/mqtt_transport.py),
and the ledger says, naming the file, why telemetry is off. Real Mosquitto, the real station agent."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge.custody.keys import StationKey
from edge.mqtt.commands import (
    Command,
    CommandOp,
    command_request_topic,
    new_request_id,
    parse_reply,
    sign_command,
    utc_rfc3339,
)
from edge.mqtt.station_settings import TELEMETRY_SALT_FILE
from edge.observe.terminal import _station_and_platform_lines
from edge.pki.bundle import BUNDLE_CENTRAL_SIGNING_PUB
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki, free_port
from tests.mqtt.test_client import WAIT_S, Inbox, running
from tests.mqtt.test_commands_broker import STATION, subscribed
from tests.station.harness import simulated_station


def _wrong_size(path: Path) -> None:
    path.write_text("ab" * 10 + "\n")
    os.chmod(path, 0o600)


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff-not-hex-" * 8)
    os.chmod(path, 0o600)


def _readable_by_others(path: Path) -> None:
    path.write_text("ab" * 32 + "\n")
    os.chmod(path, 0o644)


def _a_directory(path: Path) -> None:
    path.mkdir()


def _good(path: Path) -> None:
    path.write_text("ab" * 32 + "\n")
    os.chmod(path, 0o600)


@pytest.mark.parametrize("damage", [_wrong_size, _garbage, _readable_by_others, _a_directory, _good],
                         ids=["wrong-size", "garbage", "readable-by-others", "a-directory", "control-good"])
async def test_a_bad_telemetry_salt_turns_off_telemetry_only(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = pki.client(STATION)
    central_key = StationKey.generate()
    (bundle / BUNDLE_CENTRAL_SIGNING_PUB).write_bytes(central_key.public_pem())
    store_dir = tmp_path / "store"
    store_dir.mkdir(mode=0o700)
    salt = store_dir / TELEMETRY_SALT_FILE
    damage(salt)
    good = damage is _good
    mqtt = {"broker_url": f"mqtts://127.0.0.1:{broker.port}", "identity_dir": str(bundle),
            "backoff_base_s": 0.05, "backoff_max_s": 0.5}
    uplink = {"central_url": f"https://127.0.0.1:{free_port()}", "identity_dir": str(bundle)}
    async with running(broker.client_settings(pki.client(CENTRAL_ID))) as (central, _):
        await central.wait_connected(WAIT_S)
        replies, availability = Inbox(), Inbox()
        await central.subscribe(f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/#", replies)
        await central.subscribe(f"{TOPIC_PREFIX}/stations/{STATION}/status/availability", availability)
        async with simulated_station(tmp_path, [], mqtt=mqtt, uplink=uplink) as station:
            client = station.agent.mqtt
            assert client is not None, "the station's broker connection was turned off"
            assert station.agent.commands is not None, "the central's commands were turned off"
            await subscribed(client)
            status = Command(new_request_id(), CommandOp.STATUS, STATION, utc_rfc3339(datetime.now(UTC)), {})
            await central.publish(command_request_topic(TOPIC_PREFIX, STATION, CommandOp.STATUS),
                                  sign_command(status, central_key.sign))
            reply = parse_reply((await replies.next()).payload)
            assert reply.ok and reply.result is not None and reply.result["station"]["id"] == STATION
            errors = [e["reason"] for e in station.ledger("error") if "telemetry" in e.get("reason", "")]
            if good:
                assert station.agent.telemetry is not None and errors == []
                assert (await availability.next()).payload == b"online"
                assert "mqtt_telemetry" not in reply.result
            else:
                assert station.agent.telemetry is None
                # The status model says telemetry is off, and why (edge status shows it as a line).
                off = reply.result["mqtt_telemetry"]
                assert off["enabled"] is False and TELEMETRY_SALT_FILE in off["reason"], off
                assert str(store_dir) not in off["reason"]
                lines = _station_and_platform_lines(reply.result)
                assert any(line.startswith("mqtt telemetry: OFF") for line in lines), lines
                assert len(errors) == 1 and TELEMETRY_SALT_FILE in errors[0], errors
                assert errors[0].startswith("mqtt telemetry disabled")
                assert f"the telemetry salt {salt} cannot be used" in caplog.text  # the log: the full path
                assert station.agent.supervisor is not None
                assert station.agent.supervisor.health()["mqtt"]["state"] == "running"
    # Nothing replaced the bad salt (the ids it keys must never change behind the operator's back).
    if damage is _a_directory:
        assert salt.is_dir()
    elif not good:
        assert salt.stat().st_size > 0 and salt.read_bytes() != b""
