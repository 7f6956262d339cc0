"""Review 8: a revoked station (whose certificate the shipped broker still accepts: no CRL is produced or
configured) floods its own transfer topics with tiny commands. Every one is refused, which is right, but
every one also becomes a row of the central index's rejections (its own SQLite transaction, on the event
loop that serves HTTPS too) and a warning log line: the central's index and log grow without bound at the
rate of a few dozen bytes per publish.

Fails today; passes once refusals by the MQTT receiver are recorded at a bounded rate per station (as the
station's command handler does, REFUSALS_RECORDED_PER_MINUTE, counting what it did not record).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.mqtt.filetransfer import AbortCommand, Mode, ReasonCode
from tests.central.conftest import FakeStation
from tests.mqtt.broker import MosquittoBroker, TestPki, require_mosquitto
from tests.mqtt.central_harness import MqttCentral, running_mqtt_central, wire_station

FLOOD = 600


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


async def test_review8_a_revoked_station_cannot_grow_the_central_index_without_bound(
    central: MqttCentral, broker: tuple[MosquittoBroker, TestPki]
) -> None:
    mosquitto, pki = broker
    revoked = FakeStation("st-r")
    central.enroll(revoked)
    index = central.running.parts.index
    index.revoke_station("st-r", "device stolen")
    before = len(index.rejections("st-r"))
    async with wire_station(revoked, mosquitto, pki) as station:
        last = None
        for n in range(FLOOD):
            last = await station.command(AbortCommand(f"f{n}", Mode.ASYNC))
        # Control: every command was refused (so each one reached the receiver's station check).
        assert last is not None and last.reason_code is ReasonCode.CANCEL
    recorded = len(index.rejections("st-r")) - before
    assert recorded <= FLOOD // 10, f"{recorded} rejection rows for {FLOOD} refused commands of one station"
