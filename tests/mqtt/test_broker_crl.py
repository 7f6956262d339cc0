"""What the shipped Mosquitto (2.0.11 here) does with its `crlfile`, as README "Broker setup" says it:
it reads the CRL at start and on SIGHUP, and checks it at the TLS handshake only: a new CRL left in place
changes nothing until then; after a SIGHUP a certificate it names is refused on its next connection, while
a connection already open with it stays open; a restart ends that connection too. A CRL past its next
update makes the broker refuse every client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.mqtt.client import ConnectionState, ConnectionStatus, MqttClient
from edge.pki.bundle import BUNDLE_CLIENT_CERT
from edge.pki.certs import load_cert, utc_now
from edge.pki.crl import build_crl, write_crl
from edge.uplink.policy import Backoff
from tests.mqtt.broker import MosquittoBroker, TestPki, require_mosquitto

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


async def _attempt(broker: MosquittoBroker, bundle: Path, client_id: str) -> ConnectionStatus:
    client = MqttClient(broker.client_settings(bundle, client_id=client_id), backoff=Backoff(5.0, 5.0))
    task = asyncio.create_task(client.run())
    try:
        await client.wait_for(lambda s: s.state in (ConnectionState.CONNECTED, ConnectionState.REFUSED),
                              WAIT_S)
        return client.status
    finally:
        await client.close()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_broker_reads_a_new_crl_on_sighup_for_new_connections_and_a_restart_ends_open_ones(
    broker: tuple[MosquittoBroker, TestPki],
) -> None:
    mosquitto, pki = broker
    station = pki.client("st-a")
    assert (await _attempt(mosquitto, station, "st-a-probe")).state is ConnectionState.CONNECTED
    held = MqttClient(mosquitto.client_settings(station, client_id="st-a-held"), backoff=Backoff(0.05, 0.5))
    held_task = asyncio.create_task(held.run())
    try:
        await held.wait_for(lambda s: s.state is ConnectionState.CONNECTED, WAIT_S)
        pki.revoke(load_cert(station / BUNDLE_CLIENT_CERT))
        # Written, but not read: the broker still accepts the certificate.
        assert (await _attempt(mosquitto, station, "st-a-probe")).state is ConnectionState.CONNECTED
        await mosquitto.reload()
        refused = await _attempt(mosquitto, station, "st-a-probe")
        assert refused.state is ConnectionState.REFUSED and "CERTIFICATE_REVOKED" in refused.reason
        # Control: a certificate the CRL does not name still connects.
        assert (await _attempt(mosquitto, pki.client("st-b"), "st-b")).state is ConnectionState.CONNECTED
        # The connection opened before the reload is still there (the CRL is checked at handshakes).
        assert held.status.state is ConnectionState.CONNECTED and held.status.connections == 1
        connections = held.status.connections
        await mosquitto.restart()
        await held.wait_for(lambda s: s.state is not ConnectionState.CONNECTED, WAIT_S)
        await held.wait_for(lambda s: s.state is ConnectionState.REFUSED, WAIT_S)
        assert held.status.connections == connections and "CERTIFICATE_REVOKED" in held.status.reason
    finally:
        await held.close()
        await asyncio.gather(held_task, return_exceptions=True)


async def test_a_crl_past_its_next_update_makes_the_broker_refuse_every_client(
    broker: tuple[MosquittoBroker, TestPki],
) -> None:
    mosquitto, pki = broker
    # Control: with the fresh (empty) CRL the client connects.
    assert (await _attempt(mosquitto, pki.client("st-b"), "st-b")).state is ConnectionState.CONNECTED
    issued = utc_now() - dt.timedelta(days=40)
    expired = build_crl(pki.ca_cert, pki.ca_key, [], now=issued, validity=dt.timedelta(days=30))
    write_crl(pki.crl_file, expired)
    await mosquitto.reload()
    status = await _attempt(mosquitto, pki.client("st-b"), "st-b")
    assert status.state is ConnectionState.REFUSED and "EXPIRED" in status.reason, status.reason
