"""End to end over MQTT: the real station uplink service (spool, retries, receipts, witness checks) with the
`mqtt` transport, through a real Mosquitto (TLS, client certificates, the shipped ACL), to a real central
whose MQTT receiver stores the segments and registers the items with the same Registrar as HTTPS.

Items arrive with receipts the station verifies; a broker killed mid-transfer costs nothing (the transfer
completes, every segment stored once, one log leaf per item); with `transports = ["mqtt", "tus"]` the
station fails over to tus while the broker is down and back to MQTT once it answers again."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.central.app import MQTT_RECEIVER
from edge.central.config import CentralConfig
from edge.central.embedded import free_port
from edge.central.service import RunningCentral, start_central
from edge.central.verify import verify_central_store
from edge.config.station import StationConfig
from edge.custody.keys import StationKey
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.mqtt.client import ConnectionState, InboundMessage, MqttClient
from edge.mqtt.filetransfer import SegmentCommand, parse_command_topic, parse_scoped_topic
from edge.sources.local import LocalDirectory
from edge.uplink.failover import FailoverLink
from edge.uplink.policy import Backoff
from edge.uplink.service import UplinkService
from edge.verify.central_ledger import compare_with_central_ledger
from edge.verify.station import verify_store
from edge.verify.witness import fetch_central_view
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki, require_mosquitto
from tests.uplink.test_refusals import CASE, uplink_running

STATION = "ST-E2E"
SEGMENT_KB = 64
WAIT_S = 90.0


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulators.recorder.media import make_jpg, make_mp4

    root = tmp_path_factory.mktemp("e2e-mqtt-media")
    make_mp4(root / "clip.mp4", size_bytes=1_500_000, seed=61)
    make_jpg(root / "scene.jpg", seed=62)
    return root


@dataclass
class E2E:
    tmp: Path
    pki: TestPki
    broker: MosquittoBroker
    central: RunningCentral
    central_key: StationKey
    store: StationStore

    @property
    def central_pub(self) -> Path:
        return self.tmp / "central-signing.pub"

    def config(self, **uplink: Any) -> StationConfig:
        return StationConfig.model_validate({
            "station": {"id": STATION, "store_dir": str(self.tmp / "store")},
            "usb": {"mount_root": str(self.tmp / "media")},
            "uplink": {"transport": "mqtt", "central_signing_key": str(self.central_pub),
                       "request_timeout_s": 10.0, "mqtt_result_timeout_s": 3.0,
                       "mqtt_segment_kb": SEGMENT_KB, "backoff_base_s": 0.05, "backoff_max_s": 0.5,
                       "breaker_failures": 50, **uplink},
            "mqtt": {"broker_url": f"mqtts://127.0.0.1:{self.broker.port}",
                     "identity_dir": str(self.pki.client(STATION)), "backoff_base_s": 0.05,
                     "backoff_max_s": 0.3},
        })

    async def ingest(self, media: Path, label: str) -> list[str]:
        drop = self.tmp / f"drop-{label}"
        shutil.copytree(media, drop)
        source = LocalDirectory(drop, label=label, station_id=STATION, case=CASE, collector_no="110002")
        run = await IngestPipeline(self.store, IngestSettings(min_free_bytes=0)).ingest(
            source, source.listing().items)
        assert run.outcome is IngestOutcome.DONE
        return list(run.sealed)

    def states(self) -> dict[str, str]:
        rows = self.store.conn.execute("SELECT item, state FROM uploads")
        return {row["item"]: row["state"] for row in rows}

    def uploads(self) -> dict[str, str]:
        """item -> the upload its registration named (the spool's `uploaded` ledger entries)."""
        return {e.item: e.data["upload"] for e in self.store.ledger.entries() if e.type == "uploaded"
                and e.item is not None}

    def receipts_verified(self) -> list[str]:
        return [e.item for e in self.store.ledger.entries() if e.type == "receipt" and e.data.get("verified")
                and e.item is not None]


@contextlib.asynccontextmanager
async def e2e(
    tmp_path: Path, *, broker_up: bool = True, mqtt: dict[str, Any] | None = None,
    index: dict[str, Any] | None = None,
) -> AsyncIterator[E2E]:
    """A broker, a central (its database the embedded file, or ``index``: ``[central] index``) and a
    station store enrolled at it."""
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", pki)
    await broker.start()
    if not broker_up:
        await broker.stop()
    config = CentralConfig.model_validate({
        "central": {"id": CENTRAL_ID, "store_dir": str(tmp_path / "central-store"),
                    **({"index": index} if index else {})},
        "server": {"listen": "127.0.0.1", "port": free_port(), "insecure_plain_http": True},
        "mqtt": {"broker_url": f"mqtts://127.0.0.1:{broker.port}", "ca_file": str(pki.ca_file),
                 "client_bundle_dir": str(pki.client(CENTRAL_ID)), "keepalive_s": 10, "connect_timeout_s": 5,
                 "publish_timeout_s": 10,
                 # Outside the store: `edge central verify` takes the default <store>/mqtt-transfers for a
                 # planted file (found here; reported to the receiver's author).
                 "transfers_dir": str(tmp_path / "mqtt-transfers"), **(mqtt or {})},
    })
    central_key = StationKey.generate()
    central = await start_central(config, signing_key=central_key)
    store = StationStore(tmp_path / "store", STATION)
    central.parts.index.enroll_station(STATION, store.key.public_key_b64, "0" * 64)
    (tmp_path / "central-signing.pub").write_bytes(central_key.public_pem())
    try:
        yield E2E(tmp_path, pki, broker, central, central_key, store)
    finally:
        await central.stop()
        await broker.stop()
        store.close()


@contextlib.asynccontextmanager
async def segment_spy(rig: E2E) -> AsyncIterator[Counter[str]]:
    """Every file-transfer command the broker routes (a plain subscription with the central's identity,
    beside the receiver's shared one): command topic -> times seen."""
    seen: Counter[str] = Counter()

    async def count(message: InboundMessage) -> None:
        seen[parse_scoped_topic(f"{TOPIC_PREFIX}/stations", message.topic)[1].topic] += 1

    client = MqttClient(rig.broker.client_settings(rig.pki.client(CENTRAL_ID), client_id="spy"),
                        backoff=Backoff(0.05, 0.3, rng=random.Random(5)))
    task = asyncio.create_task(client.run())
    try:
        await client.subscribe(f"{TOPIC_PREFIX}/stations/+/$file-async/#", count)
        yield seen
    finally:
        await client.close()
        await task


def all_receipted(rig: E2E, items: list[str]) -> None:
    states = rig.states()
    assert {states[item] for item in items} == {"receipted"}, states
    assert sorted(rig.receipts_verified()) == sorted(items)
    report = verify_store(rig.tmp / "store", central_key=rig.central_key.public_key())
    assert report.ok, report.problems
    # One leaf per item in the central's log (nothing registered twice), and its store verifies.
    assert rig.central.parts.merkle.size() == len(rig.uploads())
    pinned = rig.central_key.public_key()
    assert verify_central_store(rig.tmp / "central-store", central_public_key=pinned) == []


async def test_items_go_over_mqtt_and_come_back_with_receipts_the_station_verifies(
    tmp_path: Path, media: Path
) -> None:
    async with e2e(tmp_path) as rig:
        items = await rig.ingest(media, "room-1")
        service = UplinkService(rig.config(), rig.store)
        assert service.transport.name == "mqtt"
        async with uplink_running(service):
            assert await service.wait_drained(WAIT_S), rig.states()
            # Witnessed over MQTT too: the central holds the station's whole ledger.
            assert service.witness.verified_witnessed_seq() > 0
            # `edge verify` asks the central over MQTT beside the running uplink (its own client id: the
            # uplink's connection stays up, nobody's session is taken over).
            uplink_client = service._link.client  # type: ignore[union-attr]
            view = await fetch_central_view(rig.config())
            assert view.failure is None and view.head is not None and view.head[0] > 0, view
            findings = await compare_with_central_ledger(
                rig.config(), rig.store.conn, 0, rig.central_key.public_key())
            assert findings.problems == [] and findings.checked, findings
            assert uplink_client.status.connections == 1
        all_receipted(rig, items)
        uploads = rig.uploads()
        assert all(uploads[item].startswith(f"mqtt:{item}.") for item in items), uploads
        assert rig.central.parts.merkle.size() == len(items)


async def test_a_broker_killed_mid_transfer_costs_nothing_and_duplicates_nothing(
    tmp_path: Path, media: Path
) -> None:
    async with e2e(tmp_path) as rig, segment_spy(rig) as seen:
        items = await rig.ingest(media, "room-1")
        service = UplinkService(rig.config(concurrency=1), rig.store)
        async with uplink_running(service):
            async with asyncio.timeout(WAIT_S):
                while sum(1 for t in seen if isinstance(parse_command_topic(t), SegmentCommand)) < 8:
                    await asyncio.sleep(0.02)  # polls the spy's count; proves nothing by itself
            finished_before = sum(1 for t in seen if "/fin/" in t)
            await rig.broker.restart(graceful=False)  # SIGKILL: sessions and messages in flight are lost
            assert await service.wait_drained(WAIT_S), rig.states()
        all_receipted(rig, items)
        assert finished_before < len(items)  # the kill came mid-transfer
        assert rig.central.parts.merkle.size() == len(items)  # one leaf per item: nothing registered twice
        # The transfer went on where it was: one init per item, not a new transfer after the restart.
        inits = [t for t in seen if t.endswith("/init")]
        assert len(inits) == len(items), inits


async def test_failover_to_tus_while_the_broker_is_down_and_back_to_mqtt_when_it_answers(
    tmp_path: Path, media: Path
) -> None:
    async with e2e(tmp_path, broker_up=False) as rig:
        first = await rig.ingest(media, "room-1")
        config = rig.config(transports=["mqtt", "tus"], central_url=rig.central.url, insecure_plain_http=True,
                            request_timeout_s=1.0, failover_after_failures=3, failover_after_s=0.0,
                            failback_after_s=1.0, tree_head_interval_s=0.5)
        service = UplinkService(config, rig.store)
        assert service.transport.name == "mqtt>tus"
        async with uplink_running(service):
            assert await service.wait_drained(WAIT_S), rig.states()
            all_receipted(rig, first)
            uploads = rig.uploads()
            assert all(not uploads[item].startswith("mqtt:") for item in first), uploads  # over tus
            # The broker is back: the next probe (a tree head every 0.5 s) goes over MQTT and is answered,
            # and new evidence goes over MQTT again.
            receiver = rig.central.app[MQTT_RECEIVER]
            assert receiver.counts.requests == 0
            await rig.broker.start()
            async with asyncio.timeout(WAIT_S):
                while receiver.counts.requests == 0:
                    await asyncio.sleep(0.05)  # polls the receiver's count; proves nothing by itself
            # The receiver's content connection reconnects on its own (until then a station's init is
            # PUBACKed 0x10, nobody listening, and the station would fail over again).
            assert receiver.client is not None
            await receiver.client.wait_for(
                lambda s: s.state is ConnectionState.CONNECTED and s.unconfirmed_subscriptions == 0, WAIT_S)
            # And the station has had its probe's answer: MQTT is in use again (the central counting the
            # probe comes before the station reads its answer; an item sealed in between goes over tus).
            link = service._link
            assert isinstance(link, FailoverLink)
            async with asyncio.timeout(WAIT_S):
                while link.names[link.in_use] != "mqtt":
                    await asyncio.sleep(0.05)  # polls the station's failover state; proves nothing by itself
            second = await rig.ingest(media, "room-2")
            for item in second:
                service.item_sealed(item)
            assert await service.wait_drained(WAIT_S), rig.states()
        all_receipted(rig, first + second)
        uploads = rig.uploads()
        assert all(uploads[item].startswith(f"mqtt:{item}.") for item in second), uploads
        assert rig.central.parts.merkle.size() == len(first) + len(second)


async def test_a_station_restart_mid_transfer_resumes_what_the_central_lacks(
    tmp_path: Path, media: Path
) -> None:
    async with e2e(tmp_path) as rig, segment_spy(rig) as seen:
        items = await rig.ingest(media, "room-1")
        config = rig.config(concurrency=1, mqtt_segments_in_flight=2)
        first = UplinkService(config, rig.store)
        async with uplink_running(first):
            async with asyncio.timeout(WAIT_S):
                while sum(1 for t in seen if isinstance(parse_command_topic(t), SegmentCommand)) < 6:
                    await asyncio.sleep(0.02)  # polls the spy's count; proves nothing by itself
        # The process is gone (the task cancelled mid-transfer); a new one has only the store.
        sent_before = sum(seen.values())
        second = UplinkService(config, rig.store)
        async with uplink_running(second):
            assert await second.wait_drained(WAIT_S), rig.states()
        all_receipted(rig, items)
        assert second.stats.resumed >= 1  # it went on where the central was
        inits = [t for t in seen if t.endswith("/init")]
        assert len(inits) == len(items), inits  # the same transfer, not a new one
        segments = [t for t in seen if isinstance(parse_command_topic(t), SegmentCommand)]
        resent = sum(seen[t] - 1 for t in segments)
        assert resent <= 2, (resent, sent_before)  # at most the window in flight at the restart


async def test_small_packets_cut_segments_and_the_ledger_and_the_evidence_arrives(
    tmp_path: Path, media: Path
) -> None:
    async with e2e(tmp_path) as rig:
        items = await rig.ingest(media, "room-1")
        service = UplinkService(rig.config(mqtt_max_packet_kb=8, mqtt_segments_in_flight=16), rig.store)
        async with uplink_running(service):
            assert await service.wait_drained(WAIT_S), rig.states()
        all_receipted(rig, items)


async def test_a_revoked_station_is_refused_at_station_level(tmp_path: Path, media: Path) -> None:
    async with e2e(tmp_path) as rig:
        items = await rig.ingest(media, "room-1")
        rig.central.parts.index.revoke_station(STATION, "test: revoked")
        from edge.uplink.mqtt_transport import MqttTransport
        from edge.uplink.transport import Parcel, Refused

        row = rig.store.conn.execute("SELECT item, sha256, size, path FROM items WHERE item=?",
                                     (items[0],)).fetchone()
        parcel = Parcel(row["item"], row["sha256"], row["size"], rig.tmp / "store" / row["path"], "clip.mp4")
        async with MqttTransport(rig.config()).connect() as link:
            outcome = await link.upload(parcel, lambda _ref: None)
        assert isinstance(outcome, Refused) and outcome.station_level, outcome
        assert outcome.code == "station_revoked", outcome
