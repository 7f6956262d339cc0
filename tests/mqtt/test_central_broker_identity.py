"""The central's broker identity, the production path: `edge central init`, `enroll`, `mqtt-identity` and
`broker-cert` make every certificate, and the shipped broker configuration (edge.mqtt.local_broker) runs
with them. The central's certificate reads every station's topics; a station's own certificate, the
central's HTTPS server certificate and a station enrolled under the central's id cannot be the central."""

from __future__ import annotations

import asyncio
import random
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID

from edge.central.config import load_central_config
from edge.central.sqlite import SqliteIndex
from edge.cli import main
from edge.custody.keys import StationKey
from edge.mqtt.client import (
    ConnectionState,
    ConnectionStatus,
    InboundMessage,
    MqttClient,
    MqttSettings,
    PublishRefused,
)
from edge.mqtt.local_broker import BrokerTls, LocalBroker
from edge.pki.bundle import BUNDLE_CA_CERT, BUNDLE_CLIENT_CERT, BUNDLE_CLIENT_KEY
from edge.pki.certs import load_cert
from edge.pki.tls import broker_ssl_context
from edge.uplink.policy import Backoff
from tests.mqtt.broker import require_mosquitto

CENTRAL_ID = "AGENCY-CENTRAL"
WAIT_S = 20.0


@dataclass
class Agency:
    root: Path
    config: Path
    broker: LocalBroker
    central_identity: Path

    def station(self, station_id: str) -> Path:
        """A station enrolled as an agency does it: its ledger key, then `edge central enroll`."""
        key = StationKey.load_or_create(self.root / f"{station_id}.key")
        bundle = self.root / f"bundle-{station_id}"
        assert key.public_path is not None
        code = main(["central", "enroll", station_id, "--config", str(self.config),
                     "--signing-key", str(key.public_path), "--out", str(bundle)])
        assert code == 0
        return bundle

    def settings(self, bundle: Path, client_id: str) -> MqttSettings:
        return MqttSettings(
            host=self.broker.host, port=self.broker.port, client_id=client_id,
            tls=broker_ssl_context(ca_file=bundle / BUNDLE_CA_CERT, bundle_dir=bundle),
            keepalive_s=10, connect_timeout_s=5.0, publish_timeout_s=10.0,
        )


def write_central_config(root: Path) -> Path:
    config = root / "central.toml"
    config.write_text(
        f'[central]\nid = "{CENTRAL_ID}"\nstore_dir = "{root / "central-store"}"\n'
        '[server]\nlisten = "127.0.0.1"\nport = 8443\nnames = ["localhost", "127.0.0.1"]\n'
    )
    return config


@pytest.fixture
async def agency(tmp_path: Path) -> AsyncIterator[Agency]:
    require_mosquitto()
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    identity, broker_dir = tmp_path / "central-mqtt", tmp_path / "broker-tls"
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(identity)]) == 0
    assert main(["central", "broker-cert", "--config", str(config), "--name", "127.0.0.1",
                 "--name", "localhost", "--out", str(broker_dir)]) == 0
    tls = BrokerTls(broker_dir / "ca.crt", broker_dir / "server.crt", broker_dir / "server.key",
                    broker_dir / "ca.crl")
    async with LocalBroker(tmp_path / "broker", tls, central_id=CENTRAL_ID) as broker:
        yield Agency(tmp_path, config, broker, identity)


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[InboundMessage] = asyncio.Queue()

    async def __call__(self, message: InboundMessage) -> None:
        self.queue.put_nowait(message)

    async def next(self) -> InboundMessage:
        async with asyncio.timeout(WAIT_S):
            return await self.queue.get()


@asynccontextmanager
async def running(settings: MqttSettings) -> AsyncIterator[tuple[MqttClient, list[ConnectionStatus]]]:
    history: list[ConnectionStatus] = []
    client = MqttClient(settings, backoff=Backoff(0.05, 0.5, rng=random.Random(7)), on_status=history.append)
    task = asyncio.create_task(client.run())
    try:
        yield client, history
    finally:
        await client.close()
        async with asyncio.timeout(WAIT_S):
            await task


def status_topic(station: str) -> str:
    return f"evidence/stations/{station}/status/station"


def test_the_identity_and_broker_files_are_what_their_users_expect(tmp_path: Path) -> None:
    config_file = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config_file)]) == 0
    identity, broker_dir = tmp_path / "central-mqtt", tmp_path / "broker-tls"
    assert main(["central", "mqtt-identity", "--config", str(config_file), "--out", str(identity)]) == 0
    assert main(["central", "broker-cert", "--config", str(config_file), "--name", "broker.example.org",
                 "--out", str(broker_dir)]) == 0
    for secret in (identity / BUNDLE_CLIENT_KEY, broker_dir / "server.key"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    config = load_central_config(config_file)
    central_ca = load_cert(config.layout.ca_cert)
    client, server = load_cert(identity / BUNDLE_CLIENT_CERT), load_cert(broker_dir / "server.crt")
    for cert in (client, server):
        cert.verify_directly_issued_by(central_ca)
    assert load_cert(identity / BUNDLE_CA_CERT) == central_ca
    assert client.subject.rfc4514_string() == f"CN={CENTRAL_ID},OU=central,O=evidence-edge"
    assert "broker.example.org" in str(server.extensions)
    # A bundle is never written over another.
    assert main(["central", "mqtt-identity", "--config", str(config_file), "--out", str(identity)]) == 1


def test_a_broker_name_that_is_no_host_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["central", "broker-cert", "--config", str(config), "--name", "*.example.org",
                 "--out", str(tmp_path / "b")]) == 1
    assert "expected a DNS name or an IP address, found '*.example.org'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


async def test_the_central_identity_reads_every_station_and_answers_on_its_result_topic(
    agency: Agency,
) -> None:
    s1 = agency.station("S1")
    async with (
        running(agency.settings(agency.central_identity, CENTRAL_ID)) as (central, _),
        running(agency.settings(s1, "S1")) as (station, _),
    ):
        await central.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        telemetry, results = Inbox(), Inbox()
        await central.subscribe("$share/edge-central/evidence/stations/+/status/#", telemetry)
        await station.subscribe("$file-response/S1", results)
        assert (await station.publish(status_topic("S1"), b'{"state":"idle"}')).reason_code == 0
        got = await telemetry.next()
        assert (got.topic, got.payload) == (status_topic("S1"), b'{"state":"idle"}')
        assert (await central.publish("$file-response/S1", b'{"ok":true}')).reason_code == 0
        assert (await results.next()).payload == b'{"ok":true}'


async def test_a_station_certificate_cannot_act_as_the_central(agency: Agency) -> None:
    """The client id is no identity: a station connecting with the central's client id is still that
    station to the ACL. Refused publishes say so (MQTT 5); a read the ACL refuses is detected by order:
    over one connection the central publishes another station's message, then one the station may read."""
    s1 = agency.station("S1")
    agency.station("S2")
    async with (
        running(agency.settings(agency.central_identity, CENTRAL_ID)) as (central, _),
        running(agency.settings(s1, CENTRAL_ID + "-as-S1")) as (impostor, _),
    ):
        await central.wait_connected(WAIT_S)
        await impostor.wait_connected(WAIT_S)
        seen = Inbox()
        await impostor.subscribe("evidence/stations/#", seen)
        with pytest.raises(PublishRefused) as refused:
            await impostor.publish("$file-response/S2", b'{"ok":true}')
        assert refused.value.reason_code == 0x87
        with pytest.raises(PublishRefused):
            await impostor.publish(status_topic("S2"), b"forged")
        # Control: the central's identity may do both.
        assert (await central.publish(status_topic("S2"), b"for S2 only")).reason_code == 0
        assert (await central.publish(status_topic("S1"), b"for S1")).reason_code == 0
        first = await seen.next()
        assert (first.topic, first.payload) == (status_topic("S1"), b"for S1")
        assert seen.queue.empty()


async def test_the_central_https_server_certificate_is_not_the_central_on_the_broker(
    agency: Agency, tmp_path: Path
) -> None:
    """The central's HTTPS certificate also names the central id (CN), but it is for server auth only: the
    broker refuses it as a client certificate, so only `mqtt-identity` makes the central."""
    layout = load_central_config(agency.config).layout
    bundle = tmp_path / "server-as-client"
    bundle.mkdir(mode=0o700)
    (bundle / BUNDLE_CLIENT_CERT).write_bytes(layout.server_cert.read_bytes())
    (bundle / BUNDLE_CLIENT_KEY).write_bytes(layout.server_key.read_bytes())
    (bundle / BUNDLE_CLIENT_KEY).chmod(0o600)
    (bundle / BUNDLE_CA_CERT).write_bytes(layout.ca_cert.read_bytes())
    names = load_cert(bundle / BUNDLE_CLIENT_CERT).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [n.value for n in names] == [CENTRAL_ID]
    async with running(agency.settings(bundle, CENTRAL_ID)) as (client, history):
        status = await client.wait_for(lambda s: s.failed_attempts >= 2, WAIT_S)
        assert status.state is ConnectionState.REFUSED, status
        assert all(s.state is not ConnectionState.CONNECTED for s in history)
    # Control: the central's MQTT identity connects to the same broker.
    async with running(agency.settings(agency.central_identity, CENTRAL_ID)) as (client, _):
        await client.wait_connected(WAIT_S)


def test_nothing_is_enrolled_under_the_central_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config_file)]) == 0
    key = StationKey.load_or_create(tmp_path / "station.key")
    assert key.public_path is not None
    capsys.readouterr()
    enroll = ["central", "enroll", CENTRAL_ID, "--config", str(config_file), "--signing-key",
              str(key.public_path), "--out", str(tmp_path / "as-central")]
    assert main(enroll) == 1
    assert "the central's own id" in capsys.readouterr().err
    assert main(["central", "enroll-reader", CENTRAL_ID, "--config", str(config_file),
                 "--out", str(tmp_path / "reader-as-central")]) == 1
    assert "the central's own id" in capsys.readouterr().err
    # Control: the same station key under its own name.
    assert main([*enroll[:2], "S1", *enroll[3:-1], str(tmp_path / "s1")]) == 0


def test_no_central_identity_while_a_station_holds_the_central_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A station enrolled under the central's id by an earlier release would share the central's broker user
    name: the central's identity is not issued until that station is revoked."""
    config_file = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config_file)]) == 0
    index = SqliteIndex.open(load_central_config(config_file).layout.index_db)
    try:
        index.enroll_station(CENTRAL_ID, "A" * 43 + "=", "0" * 64)
    finally:
        index.close()
    out = tmp_path / "central-mqtt"
    capsys.readouterr()
    assert main(["central", "mqtt-identity", "--config", str(config_file), "--out", str(out)]) == 1
    assert f"station '{CENTRAL_ID}' is enrolled under the central's own id" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(["central", "revoke", CENTRAL_ID, "--config", str(config_file), "--reason", "renamed"]) == 0
    # Revoked, it is issued, with a warning: the broker does not read revocations and still takes the
    # station's certificate for the central's until it expires.
    assert main(["central", "mqtt-identity", "--config", str(config_file), "--out", str(out)]) == 0
    assert "warning: revoked station 'AGENCY-CENTRAL' has a certificate (sha256 " + "0" * 64 in (
        capsys.readouterr().err
    )


def test_a_station_and_an_auditor_never_share_a_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the broker a certificate's CN is the user name whatever its OU: an auditor named like a station
    would be that station there (its replies, its transfer results, its telemetry)."""
    config = str(write_central_config(tmp_path))
    assert main(["central", "init", "--config", config]) == 0
    key = StationKey.load_or_create(tmp_path / "station.key")
    assert key.public_path is not None
    enroll = ["central", "enroll", "S1", "--config", config, "--signing-key", str(key.public_path), "--out"]
    assert main([*enroll, str(tmp_path / "s1")]) == 0
    capsys.readouterr()
    assert main(["central", "enroll-reader", "S1", "--config", config, "--out", str(tmp_path / "r1")]) == 1
    assert "station 'S1' is enrolled under that name (active)" in capsys.readouterr().err
    reader = ["central", "enroll-reader", "auditor.li", "--config", config, "--out"]
    assert main([*reader, str(tmp_path / "r2")]) == 0
    assert main([*enroll[:2], "auditor.li", *enroll[3:], str(tmp_path / "s2")]) == 1
    assert "auditor 'auditor.li' is enrolled under that name" in capsys.readouterr().err
    # Revoked does not free the name: the broker would still take the old certificate.
    assert main(["central", "revoke", "S1", "--config", config, "--reason", "decommissioned"]) == 0
    assert main(["central", "enroll-reader", "S1", "--config", config, "--out", str(tmp_path / "r3")]) == 1
    # Control: a station enrolled again under its own name gets a new certificate.
    assert main([*enroll, str(tmp_path / "s1-again")]) == 0
