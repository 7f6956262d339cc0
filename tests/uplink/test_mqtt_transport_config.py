"""Choosing the transport per station: `[uplink] transport = "mqtt"`, or `transports = [...]` with failover;
`edge check-config` names a bad value; the registry builds what the configuration says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.cli import main
from edge.config.station import parse_config
from edge.mqtt.station_settings import client_secret_path
from edge.uplink.failover import FailoverTransport
from edge.uplink.mqtt_transport import MqttTransport
from edge.uplink.transports import transport_for
from edge.uplink.tus_transport import TusTransport
from tests.mqtt.broker import TestPki

BASE = '[station]\nid = "S1"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n'


def texts(tmp_path: Path) -> tuple[str, str, str]:
    bundle = TestPki.create(tmp_path / "pki").client("S1")
    mqtt = f'[mqtt]\nbroker_url = "mqtts://broker.example"\nidentity_dir = "{bundle}"\n'
    identity = f'identity_dir = "{bundle}"\n'
    central = 'central_url = "https://central.example:8443"\n'
    return mqtt, identity, central


@pytest.mark.parametrize(
    ("uplink", "with_mqtt", "named"),
    [
        ('transport = "mqtt"\n{identity}', False, "needs [mqtt] broker_url"),
        ('transport = "pigeon"\n{identity}', True, "uplink.transport"),
        ('transports = ["mqtt", "pigeon"]\n{identity}{central}', True, "uplink.transports"),
        ('transports = ["mqtt", "mqtt"]\n{identity}', True, "names a transport twice"),
        ('transports = ["mqtt", "tus"]\n{identity}', True, "needs central_url"),
        ('transport = "tus"\ntransports = ["mqtt", "tus"]\n{identity}{central}', True, "not both"),
        ('transports = ["mqtt", "tus", "mqtt"]\n{identity}{central}', True, "uplink.transports"),
        ('transport = "mqtt"\n', True, "needs identity_dir"),
        ('transport = "mqtt"\nmqtt_segments_in_flight = 0\n{identity}', True,
         "uplink.mqtt_segments_in_flight"),
        ('transport = "mqtt"\nmqtt_max_packet_kb = 1\n{identity}', True, "uplink.mqtt_max_packet_kb"),
        ('transports = ["mqtt", "tus"]\nfailover_after_failures = 0\n{identity}{central}', True,
         "uplink.failover_after_failures"),
    ],
)
def test_check_config_names_a_bad_transport_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], uplink: str, with_mqtt: bool, named: str
) -> None:
    mqtt, identity, central = texts(tmp_path)
    bad = tmp_path / "station.toml"
    bad.write_text(BASE + "[uplink]\n" + uplink.format(identity=identity, central=central)
                   + (mqtt if with_mqtt else ""))
    assert main(["check-config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert named in err and str(bad) in err, err


@pytest.mark.parametrize(
    ("uplink", "kind", "name"),
    [
        ('transport = "mqtt"\n{identity}', MqttTransport, "mqtt"),  # no central_url: MQTT only
        ('transport = "tus"\n{identity}{central}', TusTransport, "tus"),
        ('transports = ["mqtt", "tus"]\n{identity}{central}', FailoverTransport, "mqtt>tus"),
        ('transports = ["tus", "mqtt"]\n{identity}{central}', FailoverTransport, "tus>mqtt"),
        ('transports = ["mqtt"]\n{identity}', MqttTransport, "mqtt"),
    ],
)
def test_a_good_choice_is_accepted_and_the_registry_builds_it(
    tmp_path: Path, uplink: str, kind: type, name: str
) -> None:
    mqtt, identity, central = texts(tmp_path)
    good = tmp_path / "station.toml"
    good.write_text(BASE + "[uplink]\n" + uplink.format(identity=identity, central=central) + mqtt)
    assert main(["check-config", str(good)]) == 0  # the control of the table above
    config = parse_config(good.read_text())
    assert config.uplink.enabled
    transport = transport_for(config, None)
    assert isinstance(transport, kind) and transport.name == name


def test_the_uplink_connection_has_its_own_client_id_per_purpose(tmp_path: Path) -> None:
    mqtt, identity, _ = texts(tmp_path)
    base = BASE.replace('store_dir = "store"', f'store_dir = "{tmp_path / "store"}"')
    text = base + '[uplink]\ntransport = "mqtt"\n' + identity + mqtt + "session_expiry_s = 86400\n"
    config = parse_config(text)
    uplink = transport_for(config, None)
    verify = transport_for(config, None, purpose="verify")
    assert isinstance(uplink, MqttTransport) and isinstance(verify, MqttTransport)
    # A tool beside the agent: a fresh random id each run (no session anyone can name or take over), a
    # session the broker soon forgets, and it does not make the agent's secret.
    tool_id = verify.settings().client_id
    assert re.fullmatch(r"S1-verify-[0-9a-f]{20}", tool_id) and verify.settings().session_expiry_s == 600
    assert verify.settings().client_id == tool_id  # one id for the whole run (its reconnects resume)
    other = transport_for(config, None, purpose="verify")
    assert isinstance(other, MqttTransport) and other.settings().client_id != tool_id
    assert not client_secret_path(config).exists()
    # The agent's uplink: the station's secret id (made at its first start) and "-uplink".
    uplink_id = uplink.settings().client_id
    secret = client_secret_path(config).read_text().strip()
    assert uplink_id == f"S1-{secret}-uplink" and uplink.settings().session_expiry_s == 86400
    assert uplink.settings().will is None  # availability is the agent's connection's
