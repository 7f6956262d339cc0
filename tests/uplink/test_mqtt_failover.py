"""`[uplink] transports = ["mqtt", "tus"]`: the real MQTT transport through a real Mosquitto and the real tus
transport to a real central. While the broker is down the uplink fails over to tus and the evidence
arrives; when the broker is back, the preferred transport is tried again and used as soon as it answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config.station import StationConfig
from edge.uplink.failover import FailoverLink, FailoverPolicy, FailoverTransport
from edge.uplink.mqtt_transport import MqttTransport
from edge.uplink.service import UplinkService
from edge.uplink.transport import NotDone, RetryLater
from edge.uplink.tus_transport import TusTransport
from tests.mqtt.broker import CENTRAL_ID, MosquittoBroker, TestPki, require_mosquitto
from tests.uplink.mqtt_responder import Responder
from tests.uplink.test_refusals import STATION, Rig, make_rig, uplink_running


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulators.recorder.media import make_jpg, make_mp4

    root = tmp_path_factory.mktemp("failover-media")
    make_mp4(root / "clip.mp4", size_bytes=300_000, seed=41)
    make_jpg(root / "scene.jpg", seed=42)
    return root


def failover_config(rig: Rig, broker: MosquittoBroker, pki: TestPki, **uplink: Any) -> StationConfig:
    bundle = pki.client(STATION)
    return StationConfig.model_validate({
        "station": {"id": STATION, "store_dir": str(rig.tmp / "store")},
        "usb": {"mount_root": str(rig.tmp / "media")},
        "uplink": {"transports": ["mqtt", "tus"], "central_url": rig.proxy.url, "insecure_plain_http": True,
                   "central_signing_key": str(rig.central_pub), "request_timeout_s": 1.0,
                   "backoff_base_s": 0.05, "backoff_max_s": 0.3, "breaker_failures": 50,
                   "failover_after_failures": 2, "failover_after_s": 0.0, "failback_after_s": 60.0, **uplink},
        "mqtt": {"broker_url": f"mqtts://127.0.0.1:{broker.port}", "identity_dir": str(bundle),
                 "backoff_base_s": 0.05, "backoff_max_s": 0.3},
    })


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_calls_fail_over_while_the_broker_is_down_and_come_back_when_it_answers(
    tmp_path: Path, media: Path
) -> None:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", pki)  # not started: the broker is down
    async with make_rig(tmp_path, media) as rig:
        config = failover_config(rig, broker, pki)
        clock = Clock()
        transport = FailoverTransport(
            [MqttTransport(config), TusTransport(config.uplink, STATION)],
            FailoverPolicy(after_failures=2, after_s=5.0, failback_s=60.0), clock=clock,
        )
        async with transport.connect() as link:
            assert isinstance(link, FailoverLink)
            # Unanswered twice, but within 5 s: a blip, still MQTT.
            for _ in range(2):
                with pytest.raises(NotDone) as down:
                    await link.tree_head()
                assert isinstance(down.value.outcome, RetryLater) and "broker connection" in str(down.value)
            assert link.names[link.in_use] == "mqtt"
            clock.now += 6
            with pytest.raises(NotDone):
                await link.tree_head()
            assert link.names[link.in_use] == "tus"  # the outage persists: failed over
            head = await link.tree_head()  # the central answers over HTTPS
            assert head["tree_size"] >= 0
            # The broker comes back, with a receiver that relays to the same central.
            await broker.start()
            responder = Responder(broker.client_settings(pki.client(CENTRAL_ID)), relay_url=rig.central.url)
            try:
                async with responder.running():
                    assert await link.tree_head() == await link.tree_head()  # still tus: no probe yet
                    assert responder.requests == []
                    clock.now += 61
                    mqtt_link = link.links[0]
                    await mqtt_link.client.wait_connected(20)  # type: ignore[attr-defined]
                    probed = await link.tree_head()  # the probe goes over MQTT, and is answered
                    assert [r.op.value for _, r in responder.requests] == ["tree-head"]
                    assert link.names[link.in_use] == "mqtt" and probed["tree_size"] == head["tree_size"]
                    state = await link.ledger_state()  # and MQTT stays in use
                    assert [r.op.value for _, r in responder.requests] == ["tree-head", "ledger-head"]
                    assert state.seq >= 0
            finally:
                await broker.stop()


async def test_the_uplink_fails_over_to_tus_while_the_broker_is_down_and_the_evidence_arrives(
    tmp_path: Path, media: Path
) -> None:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", pki)
    await broker.start()
    await broker.stop()  # it was there once; now it is down
    async with make_rig(tmp_path, media) as rig:
        service = UplinkService(failover_config(rig, broker, pki), rig.store)
        assert service.transport.name == "mqtt>tus"
        async with uplink_running(service):
            assert await service.wait_drained(90), rig.states()
        assert set(rig.states().values()) == {"receipted"}, rig.states()
        receipts = rig.ledger("receipt")
        assert len(receipts) == 2 and all(data["verified"] is True for data in receipts)
        # Delivered over tus: the registered uploads are the central's tus uploads, not MQTT transfers.
        uploaded = rig.ledger("uploaded")
        assert len(uploaded) == 2, uploaded
        assert all(not data["upload"].startswith("mqtt:") for data in uploaded), uploaded
