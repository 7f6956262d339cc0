"""Witnessing over MQTT: the station's real ledger pushed through a real Mosquitto to a real central (a test
receiver relays the API requests to the central's HTTP API and its answers back, status and body), cut into
parts at signed checkpoints when a segment does not fit the broker's packet limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config.station import StationConfig
from edge.mqtt.api import ApiOp
from edge.uplink.mqtt_transport import MqttTransport
from edge.uplink.transport import LedgerSegment
from tests.mqtt.broker import CENTRAL_ID, MosquittoBroker, TestPki, require_mosquitto
from tests.uplink.mqtt_responder import Responder
from tests.uplink.test_refusals import STATION, Rig, make_rig


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulators.recorder.media import make_jpg, make_mp4

    root = tmp_path_factory.mktemp("witness-media")
    make_mp4(root / "clip.mp4", size_bytes=200_000, seed=51)
    make_jpg(root / "scene.jpg", seed=52)
    return root


def mqtt_config(rig: Rig, broker: MosquittoBroker, pki: TestPki, **uplink: Any) -> StationConfig:
    bundle = pki.client(STATION)
    return StationConfig.model_validate({
        "station": {"id": STATION, "store_dir": str(rig.tmp / "store")},
        "usb": {"mount_root": str(rig.tmp / "media")},
        "uplink": {"transport": "mqtt", "central_signing_key": str(rig.central_pub),
                   "request_timeout_s": 10.0, **uplink},
        "mqtt": {"broker_url": f"mqtts://127.0.0.1:{broker.port}", "identity_dir": str(bundle),
                 "backoff_base_s": 0.05, "backoff_max_s": 0.3},
    })


def whole_ledger(rig: Rig) -> LedgerSegment:
    ledger = rig.store.ledger
    entries = list(ledger.entries(1))
    checkpoint = ledger.checkpoint(at_seq=entries[-1].seq)
    assert checkpoint is not None
    return LedgerSegment(entries, checkpoint, ledger.checkpoints(1, entries[-1].seq))


@pytest.mark.parametrize(("packet_kb", "pushes"), [(1024, 1), (4, "several")])
async def test_the_ledger_reaches_the_central_over_mqtt_in_parts_that_fit_the_packet_limit(
    tmp_path: Path, media: Path, packet_kb: int, pushes: int | str
) -> None:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", pki)
    await broker.start()
    try:
        async with make_rig(tmp_path, media) as rig:
            segment = whole_ledger(rig)
            responder = Responder(broker.client_settings(pki.client(CENTRAL_ID)), relay_url=rig.central.url)
            async with responder.running(), MqttTransport(
                mqtt_config(rig, broker, pki, mqtt_max_packet_kb=packet_kb)
            ).connect() as link:
                before = await link.ledger_state()
                assert before.seq == 0
                answer = await link.push_ledger(segment)
            local_head = rig.store.ledger.head()
            assert answer.head == (local_head[0], local_head[1])  # the central holds all of it
            assert answer.witnessed_head is not None and answer.witnessed_head["seq"] == local_head[0]
            sent = [r for _, r in responder.requests if r.op is ApiOp.LEDGER_PUSH]
            if pushes == 1:
                assert len(sent) == 1  # the control: a segment that fits goes whole
            else:
                assert len(sent) > 2
                # Consecutive parts, each ending at a checkpoint the station signed, each within the limit.
                seqs = [[e["seq"] for e in r.body["entries"]] for r in sent]
                assert [s for part in seqs for s in part] == [e.seq for e in segment.entries]
                ends = [r.body["checkpoint"]["seq"] for r in sent]
                assert ends == [part[-1] for part in seqs]
                assert all(len(str(r.body)) < packet_kb * 1024 for r in sent)
    finally:
        await broker.stop()
