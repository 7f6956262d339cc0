"""MQTT abandon answers as the tus DELETE does and passes no exception text of the central to the station
(review 8, finding 10)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.mqtt.api import ApiOp
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


async def test_abandon_of_a_busy_upload_is_409_and_a_failure_of_the_central_is_500_without_its_text(
    central: MqttCentral, broker: tuple[MosquittoBroker, TestPki], monkeypatch: pytest.MonkeyPatch
) -> None:
    mosquitto, pki = broker
    fake = FakeStation("st-a")
    central.enroll(fake)
    uploads = central.running.parts.uploads
    busy = uploads.create("st-a", 10)
    write = uploads.begin_write(busy.upload_id, offset=0)  # a PATCH in progress
    async with wire_station(fake, mosquitto, pki) as station:
        try:
            reply = await station.request(ApiOp.ABANDON, {"upload": busy.upload_id})
        finally:
            write.close()
        assert reply.status == 409
        assert reply.body == {"error": "upload_busy",
                              "detail": f"upload {busy.upload_id} is being written by another request; "
                                        "retry later"}
        # A failure of the central's own (its disk) is a 500 that says nothing of its files.
        failing = uploads.create("st-a", 10)
        secret_path = "/srv/central/uploads/deadbeef.part"

        def no_space(upload_id: str) -> bool:
            raise OSError(28, "No space left on device", secret_path)

        monkeypatch.setattr(uploads, "remove", no_space)
        reply = await station.request(ApiOp.ABANDON, {"upload": failing.upload_id})
        assert reply.status == 500 and secret_path not in str(reply.body), reply.body
        monkeypatch.undo()
        # Control: once the write is over, the same abandon removes it (204).
        reply = await station.request(ApiOp.ABANDON, {"upload": busy.upload_id})
        assert (reply.status, reply.body) == (204, None)
