"""Review 10, findings 1 and 2, at the central's MQTT receiver (a real central, a real Mosquitto with the
shipped configuration: max_inflight_messages 20): one station's slow message and the backlog behind it do
not stall the other stations; messages the receiver acknowledged are handled from its durable receive
queue, after a broker crash too, each once; a station over its share of the queue is answered busy at once;
a damaged queue row is removed, logged and recorded, and the receiver goes on.

Before the receive queue (main at ba41a74) the first three failed: the receiver's concurrent subscriptions
held a station's waiting messages unacknowledged, so 26 of station A's filled the broker's window and
station B's request or segments never came while A's first was slow; and after a broker crash the
messages waiting behind A's slow one were dropped as "sent again" by a broker that no longer had them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge.central.app import METRICS
from edge.central.receive_queue import Lane, ReceiveQueue, queue_path
from edge.central.registration import Caller
from edge.custody.canonical import sha256_hex
from edge.mqtt.api import ApiOp, ApiRequest, encode_request, new_request_id, reply_topic
from edge.mqtt.client import ConnectionState, MqttClient
from edge.mqtt.filetransfer import FinCommand, InitCommand, Mode, ReasonCode, scoped_topic
from tests.central.conftest import FakeStation
from tests.mqtt.broker import TOPIC_PREFIX, MosquittoBroker, TestPki
from tests.mqtt.central_harness import (
    STATIONS,
    MqttCentral,
    WireStation,
    file_id_for,
    init_payload,
    running_mqtt_central,
    segment_commands,
    wire_station,
)

# Below the old per-station bound (32) and above the broker's window (20): nothing was ever held over
# the bound, the window alone stalled everyone.
BACKLOG = 25
# How long station B may take while station A's first message is slow: far more than B needs (tens of
# milliseconds), far less than the harness's 30 s, so that the old code fails in reasonable time.
B_WAIT_S = 15.0


@pytest.fixture
async def central(tmp_path: Path, broker: MosquittoBroker, pki: TestPki) -> AsyncIterator[MqttCentral]:
    async with running_mqtt_central(tmp_path / "central", broker, pki, max_segment_kb=64) as running:
        yield running


async def _publish_request(station: WireStation, op: ApiOp, body: dict[str, Any] | None = None) -> str:
    """One API request published (acknowledged by the broker), its reply not awaited; its request id."""
    request_id = new_request_id()
    await station.client.publish(
        f"{STATIONS}/{station.station_id}/api/request/{op}",
        encode_request(ApiRequest(request_id, op, body or {})),
        response_topic=reply_topic(TOPIC_PREFIX, station.station_id),
        correlation_data=request_id.encode("ascii"))
    return request_id


async def _subscribed_again(client: MqttClient, connections: int) -> None:
    """Until ``client`` has connected again and its (shared) subscription is in effect once more: what a
    station publishes before that has no subscriber and is dropped by the broker."""
    await client.wait_for(lambda s: s.state is ConnectionState.CONNECTED and s.connections > connections
                          and s.unconfirmed_subscriptions == 0, 30)


def _hold_first(central: MqttCentral, op: ApiOp, station_id: str) -> tuple[asyncio.Event, asyncio.Event,
                                                                            Counter[str]]:
    """Makes ``station_id``'s first ``op`` request as slow as a registration of a large file (until the
    returned release is set); counts every request the API handles, by station and op."""
    api = central.receiver.api
    assert api is not None
    entered, release = asyncio.Event(), asyncio.Event()
    handled: Counter[str] = Counter()
    for each in ApiOp:
        real = api._ops[each]

        async def counted(caller: Caller, body: dict[str, Any], real: Any = real, each: ApiOp = each) -> Any:
            handled[f"{caller.station_id} {each.value}"] += 1
            if each is op and caller.station_id == station_id and not entered.is_set():
                entered.set()
                await release.wait()
            return await real(caller, body)

        api._ops[each] = counted
    return entered, release, handled


async def test_a_slow_request_of_one_station_and_its_backlog_do_not_stall_another_station(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki
) -> None:
    a, b = FakeStation("st-a"), FakeStation("st-b")
    central.enroll(a)
    central.enroll(b)
    entered, release, handled = _hold_first(central, ApiOp.LEDGER_HEAD, "st-a")
    async with wire_station(a, broker, pki) as station_a, wire_station(b, broker, pki) as station_b:
        first = await _publish_request(station_a, ApiOp.LEDGER_HEAD)
        async with asyncio.timeout(30):
            await entered.wait()
        backlog = [await _publish_request(station_a, ApiOp.TREE_HEAD) for _ in range(BACKLOG)]
        try:
            reply = await station_b.request(ApiOp.LEDGER_HEAD, {}, timeout_s=B_WAIT_S)
        except TimeoutError:
            pytest.fail(f"station B's request was not answered while station A's first was slow: A's "
                        f"{BACKLOG} waiting requests filled the broker's in-flight window")
        finally:
            stalled = first not in station_a.replies
            release.set()
        assert reply.status == 200 and stalled
        # Control: station A's requests were all kept, and answered in the order they came, each once.
        await station_a.wait_until(lambda: all(r in station_a.replies for r in [first, *backlog]))
        order = [m.payload for m in station_a.reply_messages]
        assert [json.loads(p)["request_id"] for p in order] == [first, *backlog]
        assert handled["st-a tree-head"] == BACKLOG and handled["st-a ledger-head"] == 1
    a.conn.close()
    b.conn.close()


async def test_a_slow_fin_of_one_station_and_its_backlog_do_not_stall_another_stations_segments(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fin re-reads and hashes the whole file (seconds for a large one): queued, it holds nothing of the
    connection; station A's segments of its next file and station B's whole file go on meanwhile."""
    a, b = FakeStation("st-a"), FakeStation("st-b")
    central.enroll(a)
    central.enroll(b)
    store = central.receiver.store
    real_carry_out = store.carry_out
    entered, release = threading.Event(), threading.Event()

    def carry_out(station: str, command: Any, payload: bytes) -> Any:
        if isinstance(command, FinCommand) and station == "st-a" and not entered.is_set():
            entered.set()
            release.wait(60)
        return real_carry_out(station, command, payload)

    monkeypatch.setattr(store, "carry_out", carry_out)
    slow = bytes(range(256)) * 64
    slow_id, next_id, b_id = file_id_for("a" * 32), file_id_for("c" * 32), file_id_for("b" * 32)
    following = bytes(reversed(range(256))) * 4 * BACKLOG  # BACKLOG segments of 1 KiB
    async with wire_station(a, broker, pki) as station_a, wire_station(b, broker, pki) as station_b:
        assert (await station_a.command(InitCommand(slow_id, Mode.ASYNC), init_payload(slow))).reason_code \
            is ReasonCode.SUCCESS
        for command, chunk in segment_commands(slow_id, slow, 4096):
            assert (await station_a.command(command, chunk)).reason_code is ReasonCode.SUCCESS
        fin = FinCommand(slow_id, len(slow), sha256_hex(slow), Mode.ASYNC)
        await station_a.client.publish(scoped_topic(STATIONS, "st-a", fin.topic), b"")
        assert await asyncio.to_thread(entered.wait, 30)
        try:
            # Station A's next file: init and BACKLOG segments published at once behind its slow fin.
            assert (await station_a.command(InitCommand(next_id, Mode.ASYNC), init_payload(following),
                                            timeout_s=B_WAIT_S)).reason_code is ReasonCode.SUCCESS
            segments = segment_commands(next_id, following, 1024)
            for command, chunk in segments:
                await station_a.client.publish(scoped_topic(STATIONS, "st-a", command.topic), chunk)
            # Station B's whole file, init to fin, while A's fin is still being handled.
            data = bytes(range(200)) * 100
            results = await asyncio.wait_for(station_b.send_file(b_id, data), B_WAIT_S)
            assert all(r.reason_code is ReasonCode.SUCCESS for r in results), results
            await station_a.wait_until(lambda: all(station_a.results[c.topic] for c, _ in segments),
                                       timeout_s=B_WAIT_S)
        except TimeoutError:
            pytest.fail("station B's file (or station A's next segments) was not answered while station A's "
                        "fin was slow: the messages behind that fin filled the broker's in-flight window")
        finally:
            stalled = not station_a.results[fin.topic]
            release.set()
        assert stalled, "the fin was answered before it was released: the test proved nothing"
        await station_a.wait_until(lambda: bool(station_a.results[fin.topic]))
        assert [r.reason_code for r in station_a.results[fin.topic]] == [ReasonCode.SUCCESS]
    a.conn.close()
    b.conn.close()


async def test_messages_the_receiver_holds_survive_a_broker_crash_and_are_each_handled_once(
    central: MqttCentral, broker: MosquittoBroker, pki: TestPki
) -> None:
    """Mosquitto saves sessions every autosave_interval and at a clean stop: after a crash it resumes the
    central's session from the last save, without the messages that came since. Those the receiver had
    acknowledged are in its queue: handled once each, in order, none dropped."""
    a, b = FakeStation("st-a"), FakeStation("st-b")
    central.enroll(a)
    central.enroll(b)
    entered, release, handled = _hold_first(central, ApiOp.LEDGER_HEAD, "st-a")
    receiver = central.receiver
    async with wire_station(a, broker, pki) as station_a, wire_station(b, broker, pki) as station_b:
        # The broker saves every session now (a clean stop), as its autosave would within a minute.
        assert receiver.api_client is not None
        seen = receiver.api_client.status.connections
        await broker.restart(graceful=True)
        await _subscribed_again(receiver.api_client, seen)
        for station in (station_a, station_b):
            await station.client.wait_connected(30)
        first = await _publish_request(station_a, ApiOp.LEDGER_HEAD)
        async with asyncio.timeout(30):
            await entered.wait()
        waiting = [await _publish_request(station_a, ApiOp.TREE_HEAD) for _ in range(3)]
        # Station B's request is answered: station A's three are past the connection, in the queue.
        assert (await station_b.request(ApiOp.LEDGER_HEAD, {})).status == 200
        assert receiver.queue is not None and receiver.queue.queue.waiting_of("st-a")[0] == 4
        seen = receiver.api_client.status.connections
        await broker.restart(graceful=False)  # a crash: the last save has the session, not A's requests
        await _subscribed_again(receiver.api_client, seen)
        release.set()
        await station_a.client.wait_connected(30)
        later = await _publish_request(station_a, ApiOp.TREE_HEAD)
        await station_a.wait_until(lambda: all(r in station_a.replies for r in [first, *waiting, later]))
        assert [json.loads(m.payload)["request_id"] for m in station_a.reply_messages] == \
            [first, *waiting, later]
        assert handled["st-a ledger-head"] == 1 and handled["st-a tree-head"] == 4
    a.conn.close()
    b.conn.close()


async def test_a_station_over_its_share_of_the_queue_is_answered_busy_at_once_and_later_served(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    async with running_mqtt_central(tmp_path / "central", broker, pki, queue_per_station=2) as central:
        a = FakeStation("st-a")
        central.enroll(a)
        entered, release, handled = _hold_first(central, ApiOp.LEDGER_HEAD, "st-a")
        data = bytes(range(256)) * 8
        file_id = file_id_for("d" * 32)
        async with wire_station(a, broker, pki) as station:
            assert (await station.command(InitCommand(file_id, Mode.ASYNC), init_payload(data))).reason_code \
                is ReasonCode.SUCCESS
            for command, chunk in segment_commands(file_id, data, 1024):
                assert (await station.command(command, chunk)).reason_code is ReasonCode.SUCCESS
            first = await _publish_request(station, ApiOp.LEDGER_HEAD)
            async with asyncio.timeout(30):
                await entered.wait()
            second = await _publish_request(station, ApiOp.TREE_HEAD)  # the station's share: 2
            # Beyond it: answered at once, busy, while the first is still handled.
            busy = await station.request(ApiOp.TREE_HEAD, {})
            assert busy.status == 503 and busy.body["error"] == "server_busy", busy
            assert "send the request again later" in busy.body["detail"]
            fin = FinCommand(file_id, len(data), sha256_hex(data), Mode.ASYNC)
            result = await station.command(fin)
            assert result.reason_code is ReasonCode.QUOTA_EXCEEDED and "server_busy" in \
                result.reason_description, result
            assert first not in station.replies and second not in station.replies
            assert central.receiver.counts.busy == 2
            scraped = central.running.app[METRICS].exposition().decode()
            assert "edge_central_mqtt_queue_busy_total 2.0" in scraped
            assert "edge_central_mqtt_queue_waiting 2.0" in scraped
            release.set()
            await station.wait_until(lambda: first in station.replies and second in station.replies)
            # The station sends again what was busy: now there is room.
            assert (await station.request(ApiOp.TREE_HEAD, {})).status == 200
            assert (await station.command(fin)).reason_code is ReasonCode.SUCCESS
            assert handled["st-a tree-head"] == 2  # the busy one was never handled
        a.conn.close()


async def test_damaged_queue_rows_are_removed_recorded_and_the_receiver_goes_on(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    """What a restart finds in the queue is handled (a request queued before it is answered); a row
    changed on disk, or one this code never writes, is a clear error naming it, an incident, and the
    receiver goes on."""
    root = tmp_path / "central"
    fake = FakeStation("st-a")
    queued_id = new_request_id()
    async with running_mqtt_central(root, broker, pki) as central:
        central.enroll(fake)
        path = central.receiver.queue_path
    # Stopped: the queue as a killed process would leave it, with a good row and three damaged ones.
    queue = ReceiveQueue.open(path, per_station_messages=64, per_station_bytes=1 << 20)
    try:
        good_topic = f"{STATIONS}/st-a/api/request/tree-head"
        good = encode_request(ApiRequest(queued_id, ApiOp.TREE_HEAD, {}))
        for topic, payload in ((good_topic, good), (good_topic, b"changed later"),
                               (good_topic, b"unknown lane"), (good_topic, b"no station")):
            _, digest = queue.reserve(Lane.API, "st-a", topic, payload)
            queue.insert(Lane.API, "st-a", topic, payload, queued_id.encode("ascii"), digest)
    finally:
        queue.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE queued SET payload = ? WHERE payload = ?",
                     (b"changed on disk", b"changed later"))
        conn.execute("UPDATE queued SET lane = 'evil' WHERE payload = ?", (b"unknown lane",))
        conn.execute("UPDATE queued SET station = '' WHERE payload = ?", (b"no station",))
    conn.close()
    async with wire_station(fake, broker, pki) as station, running_mqtt_central(root, broker, pki) as central:
        await station.wait_until(lambda: queued_id in station.replies)
        assert station.replies[queued_id].status == 200
        runner = central.receiver.queue
        assert runner is not None
        # Still answering after the damaged rows.
        assert (await station.request(ApiOp.LEDGER_HEAD, {})).status == 200
        # (A reply goes out before its row is removed: the queue empties a moment after.)
        async with asyncio.timeout(30):
            while runner.queue.damaged < 3 or runner.queue.waiting:
                await asyncio.sleep(0.05)
        incidents = [json.loads(line) for line in
                     (central.config.mqtt_transfers_dir / "incidents.jsonl").read_text().splitlines()]
    damaged = [i for i in incidents if i["kind"] == "receive_queue_damaged"]
    assert len(damaged) == 3, incidents
    details = " ".join(i["detail"] for i in damaged)
    assert str(queue_path(central.config.mqtt_transfers_dir, "central")) in details
    assert "does not match" in details and "unknown lane 'evil'" in details and "no station" in details
    assert all(f"row {n}" in details for n in (2, 3, 4)), details
    fake.conn.close()
