"""Review 8: "Re-enrolment replaces the certificate (the old one stops working)" (edge/central/sqlite/index.py
enroll_station) held over HTTPS (Authenticator compares the presented certificate's SHA-256 with the
enrolled one) but not over MQTT: the receiver never sees the certificate, and the shipped broker had no
CRL (nothing in the project produced one), so the old certificate (a stolen or replaced station) kept
every right of the station there: it read the station's ledger as the central holds it, abandoned its
uploads and transfers, read the commands sent to the new station and could publish their replies.

Now the central keeps a CRL of its CA (edge.central.revocation) naming every certificate a re-enrolment
replaced or `revoke` revoked; `edge central crl --out FILE` installs it where the broker's `crlfile`
points, and the broker refuses those certificates at the TLS handshake once it has read it again
(restart, or SIGHUP for new connections: tests/mqtt/test_broker_crl.py).

This test runs the operator's commands (`edge central init`, `enroll`, `crl`, `revoke`) against a central
whose CA is the broker's, and a real central receiver answering over the shipped Mosquitto config.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.central.config import CentralLayout
from edge.central.verify import verify_central_store
from edge.cli import main
from edge.durable.files import ensure_private_dir
from edge.mqtt.api import ApiOp
from edge.mqtt.client import ConnectionState, ConnectionStatus, MqttClient
from edge.pki.certs import PRIVATE_MODE, cert_pem, install_file, key_pem
from edge.uplink.policy import Backoff
from tests.central.conftest import FakeStation, free_port
from tests.mqtt.broker import CENTRAL_ID, MosquittoBroker, TestPki, require_mosquitto
from tests.mqtt.central_harness import running_mqtt_central, wire_station

WAIT_S = 15.0


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[tuple[MosquittoBroker, TestPki]]:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", pki)
    await broker.start()
    try:
        yield broker, pki
    finally:
        await broker.stop()


def _central_toml(tmp_path: Path, store: Path, pki: TestPki) -> Path:
    """A central store whose CA is the test PKI's (the broker trusts it), initialised by `edge central
    init`, and the TOML file the operator's commands take."""
    layout = CentralLayout(store)
    ensure_private_dir(store)
    ensure_private_dir(layout.identity_dir)
    install_file(layout.ca_key, key_pem(pki.ca_key), PRIVATE_MODE, replace=False)
    install_file(layout.ca_cert, cert_pem(pki.ca_cert), PRIVATE_MODE, replace=False)
    path = tmp_path / "central.toml"
    path.write_text(
        f'[central]\nid = "{CENTRAL_ID}"\nstore_dir = "{store}"\n'
        f'[server]\nlisten = "127.0.0.1"\nport = {free_port()}\nnames = ["localhost", "127.0.0.1"]\n'
    )
    assert main(["central", "init", "--config", str(path)]) == 0
    return path


def _edge(*argv: str) -> int:
    return main(list(argv))


async def _connects(broker: MosquittoBroker, bundle: Path, client_id: str) -> ConnectionStatus:
    client = MqttClient(broker.client_settings(bundle, client_id=client_id), backoff=Backoff(5.0, 5.0))
    task = asyncio.create_task(client.run())
    try:
        await client.wait_for(lambda s: s.state in (ConnectionState.CONNECTED, ConnectionState.REFUSED),
                              WAIT_S)
        return client.status
    finally:
        await client.close()
        await asyncio.gather(task, return_exceptions=True)


async def test_review8_a_replaced_station_certificate_stops_working_over_mqtt_too(
    tmp_path: Path, broker: tuple[MosquittoBroker, TestPki]
) -> None:
    mosquitto, pki = broker
    store = tmp_path / "central"
    toml = str(_central_toml(tmp_path, store, pki))
    station = FakeStation("st-a")
    station_pub = tmp_path / "st-a.pub"
    station_pub.write_bytes(station.key.public_pem())
    old_bundle, new_bundle = tmp_path / "bundle-1", tmp_path / "bundle-2"

    def enroll(bundle: Path) -> int:
        return _edge("central", "enroll", "st-a", "--config", toml, "--signing-key", str(station_pub),
                     "--out", str(bundle))

    assert await asyncio.to_thread(enroll, old_bundle) == 0
    assert await asyncio.to_thread(_edge, "central", "crl", "--config", toml, "--out", str(pki.crl_file)) == 0
    await mosquitto.restart()
    async with running_mqtt_central(store, mosquitto, pki):
        async with wire_station(station, mosquitto, pki, bundle=old_bundle) as old_device:
            # Control: while it is the enrolled certificate, it is the station (and the broker's CRL,
            # written by the central, does not name it).
            assert (await old_device.request(ApiOp.LEDGER_HEAD, {})).status == 200

        # Re-enrolment: a new certificate (and the same key) for st-a; the operator copies the new CRL
        # to the broker and reloads it (SIGHUP; not a restart: Mosquitto 2.0.11 forgets the central's
        # shared subscriptions over a restart while it resumes its session, see the README).
        assert await asyncio.to_thread(enroll, new_bundle) == 0
        assert await asyncio.to_thread(
            _edge, "central", "crl", "--config", toml, "--out", str(pki.crl_file)) == 0
        await mosquitto.reload()

        old = await _connects(mosquitto, old_bundle, "st-a")
        assert old.state is ConnectionState.REFUSED, "the broker still accepts st-a's replaced certificate"
        assert "CERTIFICATE_REVOKED" in old.reason, old.reason
        # Control: the new certificate is st-a, over the same broker and the same central.
        async with wire_station(station, mosquitto, pki, bundle=new_bundle) as new_device:
            assert (await new_device.request(ApiOp.LEDGER_HEAD, {})).status == 200

        # Revocation: the current certificate is listed too once the station is revoked.
        assert await asyncio.to_thread(
            _edge, "central", "revoke", "st-a", "--config", toml, "--reason", "stolen") == 0
        assert await asyncio.to_thread(
            _edge, "central", "crl", "--config", toml, "--out", str(pki.crl_file)) == 0
        await mosquitto.reload()
        revoked = await _connects(mosquitto, new_bundle, "st-a")
        assert revoked.state is ConnectionState.REFUSED and "CERTIFICATE_REVOKED" in revoked.reason
        # Control: another client of the same CA still connects (the CRL names certificates, not the CA).
        assert (await _connects(mosquitto, pki.client("st-b"), "st-b")).state is ConnectionState.CONNECTED
    # What the CRL needs in the store (identity/ca.crl, issued/, the client secret) is the central's own.
    assert [p for p in verify_central_store(store) if p.where.startswith("file ")] == []
