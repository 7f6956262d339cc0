"""The station's [mqtt] section: validation (`edge check-config` names bad keys), the client settings made
from it, and the station agent keeping its broker connection as a supervised task against a real broker."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge.cli import main
from edge.config.station import load_config, parse_config
from edge.mqtt.client import ConnectionState, ProtocolVersion
from edge.mqtt.station_settings import client_secret_path, station_mqtt_settings
from tests.mqtt.broker import MosquittoBroker, TestPki, password_broker, require_mosquitto
from tests.mqtt.test_client import WAIT_S, running
from tests.station.harness import simulated_station

MINIMAL = '[station]\nid = "S1"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n'


@pytest.mark.parametrize(
    ("mqtt", "named"),
    [
        ('broker_url = "mqtt://broker.example"\n', "mqtt.broker_url"),  # TLS only
        ('broker_url = "mqtts://broker.example"\nprotocl = "5"\n', "mqtt.protocl"),
        ('broker_url = "mqtts://broker.example"\nprotocol = "4"\n', "mqtt.protocol"),
        ('broker_url = "mqtts://broker.example:70000"\n', "broker_url port"),
        ('topic_prefix = "evidence/#"\n', "mqtt.topic_prefix"),
        ('topic_prefix = "$SYS"\n', "mqtt.topic_prefix"),
        ('session_expiry_s = 0\n', "mqtt.session_expiry_s"),
        ('username = "station"\n', "username and password go together"),
        ('username = "station"\npassword = "hunter2"\n', "mqtt.password"),  # a literal, not a reference
        ('broker_url = "mqtts://broker.example"\n', "mqtt.broker_url needs a client certificate"),
    ],
)
def test_check_config_names_the_bad_mqtt_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mqtt: str, named: str
) -> None:
    bad = tmp_path / "station.toml"
    bad.write_text(MINIMAL + "[mqtt]\n" + mqtt)
    assert main(["check-config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert named in err and str(bad) in err
    assert "hunter2" not in err


def test_check_config_says_when_the_mqtt_certificate_cannot_be_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = TestPki.create(tmp_path / "pki").client("S1")
    (bundle / "client.key").unlink()
    bad = tmp_path / "station.toml"
    bad.write_text(MINIMAL + f'[mqtt]\nbroker_url = "mqtts://broker.example"\nidentity_dir = "{bundle}"\n')
    assert main(["check-config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "[mqtt]" in err and "client.key" in err


def test_check_config_accepts_a_good_mqtt_section_and_settings_follow_it(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path / "pki")
    bundle = pki.client("S1")
    good = tmp_path / "station.toml"
    good.write_text(
        MINIMAL + f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:18883"\nidentity_dir = "{bundle}"\n'
        'protocol = "3.1.1"\nkeepalive_s = 30\n'
    )
    assert main(["check-config", str(good)]) == 0  # control of the test above
    loaded = load_config(good)
    secret_file = client_secret_path(loaded)
    assert not secret_file.exists(), "check-config made the station's client secret (the agent's to make)"
    settings = station_mqtt_settings(loaded)
    # The default client id: the station id and the secret made now (edge.mqtt.client_ids), kept for
    # every later start, private, and never in the settings' repr or in log names.
    secret = secret_file.read_text().strip()
    assert len(secret) == 20 and int(secret, 16) >= 0 and secret_file.stat().st_mode & 0o777 == 0o600
    assert (settings.host, settings.port, settings.client_id) == ("127.0.0.1", 18883, f"S1-{secret}")
    assert station_mqtt_settings(load_config(good)).client_id == settings.client_id
    assert secret not in repr(settings) and secret not in settings.log_id
    assert settings.log_id.startswith("S1-")
    assert settings.protocol is ProtocolVersion.V311 and settings.keepalive_s == 30
    # The default port, an explicit client id, and IPv6 brackets.
    config = parse_config(
        MINIMAL + f'[mqtt]\nbroker_url = "mqtts://[::1]"\nclient_id = "dock-7"\nidentity_dir = "{bundle}"\n'
    )
    settings = station_mqtt_settings(config)
    assert (settings.host, settings.port, settings.client_id) == ("::1", 8883, "dock-7")


async def test_a_password_login_resolves_its_reference_at_connection_and_never_shows_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    secret = "correct horse battery staple"
    broker = await password_broker(tmp_path / "broker", pki, {"S1": secret})
    password_file = tmp_path / "mqtt-password"
    password_file.write_text("Tr0ub4dor&3\n")
    password_file.chmod(0o600)
    config = parse_config(
        MINIMAL.replace('"store"', f'"{tmp_path / "store"}"')  # the client secret is made in the store
        + f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:{broker.port}"\nusername = "S1"\n'
        f'password = "file:{password_file}"\nca_file = "{pki.ca_file}"\nbackoff_base_s = 0.05\n'
        "backoff_max_s = 0.2\n"
    )
    settings = station_mqtt_settings(config)
    assert str(password_file) in repr(config.mqtt) and "Tr0ub4dor" not in repr(settings)
    caplog.set_level(logging.DEBUG)
    try:
        async with running(settings) as (client, _):
            refused = await client.wait_for(lambda s: s.state is ConnectionState.REFUSED, WAIT_S)
            assert refused.reason_code == 0x87
            # The file is read again at each connection: fixing it needs no restart.
            password_file.write_text(secret + "\n")
            await client.wait_connected(WAIT_S)
            assert secret not in repr(client) and secret not in repr(client.settings)
    finally:
        await broker.stop()
    assert caplog.text and secret not in caplog.text and "Tr0ub4dor" not in caplog.text


async def test_the_station_agent_keeps_its_broker_connection_as_a_supervised_task(tmp_path: Path) -> None:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", pki)
    await broker.start()
    try:
        mqtt = {
            "broker_url": f"mqtts://127.0.0.1:{broker.port}",
            "identity_dir": str(pki.client("TEST-STATION")),
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.5,
        }
        async with simulated_station(tmp_path, [], mqtt=mqtt) as station:
            client = station.agent.mqtt
            assert client is not None
            status = await client.wait_connected(WAIT_S)
            assert status.connections == 1
            ack = await client.publish("evidence/stations/TEST-STATION/state", b"{}")
            assert ack.reason_code in (0, 0x10)
            assert station.agent.supervisor is not None
            assert station.agent.supervisor.health()["mqtt"]["state"] == "running"
            # The broker goes away and comes back: the station reconnects on its own.
            await broker.restart(graceful=False)
            await client.wait_for(lambda s: s.connections == 2, WAIT_S)
            assert station.agent.supervisor.health()["mqtt"]["restarts"] == 0  # the client's own back-off
        assert client.status.state is ConnectionState.CLOSED
    finally:
        await broker.stop()
