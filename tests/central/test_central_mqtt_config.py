"""The central's [mqtt] section: validated like the station's (mqtts:// only, absolute CA file and client
bundle, topic prefix, shared group, MQTT 5), and the receiver's broker identity must be the central id."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.central.config import CentralConfig, ConfigError, parse_central_config
from edge.central.mqtt_receiver import central_mqtt_settings
from edge.mqtt.client import ProtocolVersion
from edge.pki.names import STATION_OU, IdentityError
from tests.mqtt.broker import TestPki

CENTRAL = """\
[central]
id = "central-hq"
store_dir = "/srv/central"
"""
MQTT = """\
[mqtt]
broker_url = "mqtts://broker.example.gov.cn"
ca_file = "/etc/central/broker-ca.crt"
client_bundle_dir = "/etc/central/broker-client"
"""


def _parse(text: str) -> CentralConfig:
    return parse_central_config(text, "central.toml")


def _problem(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _parse(text)
    return str(caught.value)


def test_no_mqtt_section_means_no_receiver_and_a_minimal_one_has_the_contract_defaults() -> None:
    assert _parse(CENTRAL).mqtt is None
    mqtt = _parse(CENTRAL + MQTT).mqtt
    assert mqtt is not None
    assert mqtt.host_port == ("broker.example.gov.cn", 8883)
    assert (mqtt.topic_prefix, mqtt.shared_group, mqtt.protocol, mqtt.client_id) == (
        "evidence", "edge-central", "5", "")
    assert _parse(CENTRAL + MQTT).mqtt_transfers_dir == Path("/srv/central/mqtt-transfers")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('broker_url = "mqtt://broker:1883"', "broker_url"),
        ('broker_url = "https://broker"', "broker_url"),
        ('broker_url = "mqtts://broker:70000"', "port must be within"),
        ('ca_file = "broker-ca.crt"', "absolute path"),
        ('client_bundle_dir = "client"', "absolute path"),
        ('topic_prefix = "$SYS/x"', "topic_prefix"),
        ('topic_prefix = "evidence/#"', "topic_prefix"),
        ('shared_group = "a/b"', "shared_group"),
        ('protocol = "3.1.1"', "protocol"),
        ('client_id = "-x"', "client_id"),
        ("max_segment_kb = 0", "max_segment_kb"),
        ("surprise = 1", "surprise"),
    ],
)
def test_wrong_mqtt_settings_name_the_key(line: str, needle: str) -> None:
    key = line.split(" = ")[0]
    text = CENTRAL + "\n".join(
        line if existing.startswith(f"{key} =") else existing for existing in MQTT.splitlines()
    ) + ("\n" + line if key not in MQTT else "") + "\n"
    message = _problem(text)
    assert "central.toml" in message and needle in message, message


def test_the_required_keys_are_required() -> None:
    assert "broker_url" in _problem(CENTRAL + "[mqtt]\nca_file = '/x'\nclient_bundle_dir = '/y'\n")


def _config(pki: TestPki, bundle: Path, central_id: str = "central-hq") -> CentralConfig:
    return CentralConfig.model_validate({
        "central": {"id": central_id, "store_dir": "/srv/central"},
        "mqtt": {"broker_url": "mqtts://127.0.0.1:8883", "ca_file": str(pki.ca_file),
                 "client_bundle_dir": str(bundle), "client_id": "central-hq-2"},
    })


def test_the_receivers_broker_certificate_must_name_the_central(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path / "pki")
    settings = central_mqtt_settings(_config(pki, pki.client("central-hq")))
    assert (settings.client_id, settings.protocol) == ("central-hq-2", ProtocolVersion.V5)
    assert (settings.host, settings.port) == ("127.0.0.1", 8883)
    # A station's certificate (another CN) would give the receiver that station's topics only: refused.
    with pytest.raises(IdentityError, match=r"CN=\['st-0001'\], expected the central id 'central-hq'"):
        central_mqtt_settings(_config(pki, pki.client("st-0001", STATION_OU)))
    with pytest.raises(IdentityError, match="cannot read"):
        central_mqtt_settings(_config(pki, tmp_path / "no-bundle"))


def test_a_worker_needs_an_mqtt_section_and_a_client_id_of_its_own(tmp_path: Path) -> None:
    import argparse

    from edge.central.cli import add_central_parser
    from edge.central.mqtt_receiver import run_mqtt_worker, worker_mqtt_settings

    pki = TestPki.create(tmp_path / "pki")
    config = _config(pki, pki.client("central-hq"))
    # A worker's id is its name under the central's (secret) id: never the central's own session.
    assert worker_mqtt_settings(config, "w1").client_id == "central-hq-2-w-w1"
    assert central_mqtt_settings(config).client_id == "central-hq-2"
    with pytest.raises(ValueError, match="--client-id"):
        run_mqtt_worker(config, client_id="w1/../x")
    plain = tmp_path / "plain.toml"
    plain.write_text(CENTRAL)
    parser = argparse.ArgumentParser(prog="edge")
    add_central_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["central", "mqtt-worker", "--config", str(plain), "--client-id", "w1"])
    assert args.func(args) == 78  # nothing to do without [mqtt]: a configuration error


def test_the_receive_queue_settings_are_validated_and_reach_the_receiver() -> None:
    from edge.central.mqtt_receiver import QueueSettings, queue_settings

    mqtt = _parse(CENTRAL + MQTT + "queue_per_station = 8\nqueue_per_station_kb = 4096\n"
                  "queue_concurrency = 2\n").mqtt
    assert mqtt is not None
    assert queue_settings(mqtt) == QueueSettings(per_station=8, per_station_bytes=4096 << 10, concurrency=2)
    # A largest request must fit a station's share: refused naming both keys; control: equal is fine.
    problem = _problem(CENTRAL + MQTT + "queue_per_station_kb = 1024\nmax_request_kb = 2048\n")
    assert "queue_per_station_kb (1024) must be at least max_request_kb (2048)" in problem
    assert _parse(CENTRAL + MQTT + "queue_per_station_kb = 2048\nmax_request_kb = 2048\n").mqtt is not None
    for line in ("queue_per_station = 0", "queue_concurrency = 0", "queue_per_station_kb = 0"):
        assert line.split(" =")[0] in _problem(CENTRAL + MQTT + line + "\n")
