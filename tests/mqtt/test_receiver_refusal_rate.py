"""Refusals of a station the broker lets in but the central does not (revoked), recorded at a bounded rate
with the count of the others carried in the next record (review 8, finding 5; the bound itself:
test_review8_revoked_flood.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.central.record_rate import RecordRate
from edge.mqtt.api import ApiOp
from edge.mqtt.filetransfer import AbortCommand, Mode, ReasonCode
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


async def test_a_revoked_station_s_refusals_are_recorded_at_a_rate_and_the_next_record_counts_the_others(
    central: MqttCentral, broker: tuple[MosquittoBroker, TestPki]
) -> None:
    mosquitto, pki = broker
    now = [0.0]
    central.running.parts.auth.refusal_rate = RecordRate(10, monotonic=lambda: now[0])
    revoked, other = FakeStation("st-r"), FakeStation("st-o")
    central.enroll(revoked)
    central.enroll(other)
    index = central.running.parts.index
    index.revoke_station("st-r", "device stolen")
    index.revoke_station("st-o", "device stolen")
    async with wire_station(revoked, mosquitto, pki) as station, wire_station(other, mosquitto, pki) as o:
        for n in range(40):
            result = await station.command(AbortCommand(f"f{n}", Mode.ASYNC))
            assert result.reason_code is ReasonCode.CANCEL  # every one refused, recorded or not
        # The API's refusals share the station's budget: refused, not recorded.
        assert (await station.request(ApiOp.LEDGER_HEAD, {})).status == 403
        assert len(index.rejections("st-r")) == 10
        # Control: another station has its own budget.
        await o.command(AbortCommand("g0", Mode.ASYNC))
        assert len(index.rejections("st-o")) == 1
        now[0] += 6.0  # one record every 6 s at 10 a minute
        await station.command(AbortCommand("late", Mode.ASYNC))
    rows = index.rejections("st-r")
    assert len(rows) == 11
    assert "31 more of this station were not recorded" in rows[-1]["detail"]  # rows come in their order
    assert not any("not recorded" in r["detail"] for r in rows[:-1])
