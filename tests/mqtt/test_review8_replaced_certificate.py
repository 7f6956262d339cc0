"""Review 8: "Re-enrolment replaces the certificate (the old one stops working)" (edge/central/sqlite/index.py
enroll_station) holds over HTTPS (Authenticator compares the presented certificate's SHA-256 with the
enrolled one) but not over MQTT: the receiver never sees the certificate, the shipped broker has no CRL
(nothing in the project produces one, config/mosquitto/mosquitto.conf names none), so the old certificate
(a stolen or replaced station) keeps every right of the station there: it reads the station's ledger as
the central holds it, abandons its uploads and transfers, reads the commands sent to the new station and
can publish their replies (which the central's `edge central command` believes).

Fails today; passes once a replaced (or revoked) certificate is refused over MQTT too: a CRL the central
maintains and the broker loads (`crlfile`), or an identity the central can check.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from edge.mqtt.api import ApiOp
from edge.pki.bundle import BUNDLE_CLIENT_CERT
from edge.pki.certs import load_cert
from tests.central.conftest import FakeStation
from tests.mqtt.broker import MosquittoBroker, TestPki, require_mosquitto
from tests.mqtt.central_harness import MqttCentral, running_mqtt_central, wire_station


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


@pytest.fixture
async def central(tmp_path: Path, broker: tuple[MosquittoBroker, TestPki]) -> AsyncIterator[MqttCentral]:
    mosquitto, pki = broker
    async with running_mqtt_central(tmp_path / "central", mosquitto, pki) as running:
        yield running


async def test_review8_a_replaced_station_certificate_stops_working_over_mqtt_too(
    central: MqttCentral, broker: tuple[MosquittoBroker, TestPki]
) -> None:
    mosquitto, pki = broker
    station = FakeStation("st-a")
    old_cert = load_cert(pki.client("st-a") / BUNDLE_CLIENT_CERT)
    old_sha = hashlib.sha256(old_cert.public_bytes(Encoding.DER)).hexdigest()
    index = central.running.parts.index
    index.enroll_station("st-a", station.key.public_key_b64, old_sha)
    async with wire_station(station, mosquitto, pki) as old_device:
        # Control: while it is the enrolled certificate, it is the station.
        assert (await old_device.request(ApiOp.LEDGER_HEAD, {})).status == 200
        # Re-enrolment: a new certificate (and the same key) for st-a; the old one should stop working.
        index.enroll_station("st-a", station.key.public_key_b64, "d" * 64)
        reply = await old_device.request(ApiOp.LEDGER_HEAD, {})
    assert reply.status == 403, (
        f"the replaced certificate of st-a still acts as st-a over MQTT (ledger-head: {reply.status})"
    )
