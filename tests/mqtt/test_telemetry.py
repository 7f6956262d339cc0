"""Station telemetry over a real Mosquitto (tests/mqtt/broker.py: TLS, client certificates, the shipped
ACL), fed by the real status board: availability with the last will (the connection cut without a
DISCONNECT, through a TCP relay on real sockets), retained state a late subscriber with the central's
identity sees, republished on change and after a reconnect, never twice the same, bursts coalesced;
events from the ledger, bounded while the broker is away; and the agent wiring it all up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.custody.ledger import EntryType, LedgerEntry
from edge.ingest.store import StationStore
from edge.mqtt.client import ConnectionState, InboundMessage, MqttClient, MqttSettings
from edge.mqtt.telemetry import (
    TelemetryPublisher,
    TelemetrySettings,
    availability_topic,
    bay_topic_level,
    will_message,
)
from edge.observe.board import StatusBoard, TaskFacts
from edge.observe.sink import BayChanged, BayPhase, Device, Officer
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki, free_port
from tests.mqtt.test_client import WAIT_S, running
from tests.mqtt.test_commands_broker import sealed_item
from tests.station.harness import simulated_station

STATION = "TEST-STATION"
ROOT = f"{TOPIC_PREFIX}/stations/{STATION}"
PARTS = ("station", "spool", "storage", "clock", "ledger")


class TcpRelay:
    """A TCP relay between the station and the broker on real sockets: `cut()` resets every connection
    (the broker sees the station's connection die without a DISCONNECT); while `refusing`, new
    connections are reset at once (the broker is unreachable)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


class Watcher:
    """The central's view: every message on the station's topics, per topic, awaitable."""

    def __init__(self) -> None:
        self.by_topic: dict[str, list[InboundMessage]] = {}
        self._changed = asyncio.Event()

    async def __call__(self, message: InboundMessage) -> None:
        self.by_topic.setdefault(message.topic, []).append(message)
        self._changed.set()

    async def until(self, topic: str, predicate: Any = lambda m: True, *, count: int = 1) -> InboundMessage:
        """The `count`-th message on `topic` that satisfies `predicate` (awaited)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                matching = [m for m in self.by_topic.get(topic, []) if predicate(m)]
                if len(matching) >= count:
                    return matching[count - 1]
                self._changed.clear()
                await self._changed.wait()

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.by_topic.get(topic, [])]


def doc(message: InboundMessage) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(message.payload)
    return value


@asynccontextmanager
async def watching(
    broker: MosquittoBroker, pki: TestPki, topic_filter: str = f"{ROOT}/#"
) -> AsyncIterator[Watcher]:
    """A subscriber with the central's broker identity (the ACL lets it read every station's topics)."""
    # A new client id each time: a persistent session resumed would hand over messages queued for it.
    client_id = f"{CENTRAL_ID}.{secrets.token_hex(4)}"
    settings = broker.client_settings(pki.client(CENTRAL_ID), client_id=client_id)
    async with running(settings) as (central, _):
        await central.wait_connected(WAIT_S)
        watcher = Watcher()
        await central.subscribe(topic_filter, watcher)
        yield watcher


@dataclass
class StationSide:
    board: StatusBoard
    client: MqttClient
    publisher: TelemetryPublisher
    relay: TcpRelay
    task: asyncio.Task[None]


@asynccontextmanager
async def station_side(
    broker: MosquittoBroker, pki: TestPki, *, min_interval_s: float = 0.0, event_queue: int = 100,
    topic_prefix: str = TOPIC_PREFIX, tasks: Callable[[], list[TaskFacts]] | None = None,
    device_salt: bytes = b"",
) -> AsyncIterator[StationSide]:
    relay = TcpRelay(broker.port)
    await relay.start()
    base = broker.client_settings(pki.client(STATION))
    settings = MqttSettings(
        host=base.host, port=relay.port, client_id=STATION, tls=base.tls, keepalive_s=10,
        connect_timeout_s=5.0, publish_timeout_s=10.0, will=will_message(TOPIC_PREFIX, STATION),
    )
    board = StatusBoard(
        identity={"id": STATION, "name": "dock 1", "unit": {"code": "330100", "name": "unit"},
                  "version": "test", "key_id": "k1"},
        bays=[1, 2], tick_s=0.05, tasks=tasks,
    )
    board_task = asyncio.create_task(board.run())
    try:
        async with running(settings) as (client, _):
            publisher = TelemetryPublisher(
                TelemetrySettings(
                    STATION, topic_prefix, min_interval_s=min_interval_s, event_queue=event_queue,
                    device_salt=device_salt,
                ),
                client=client, subscribe=board.subscribe,
            )
            task = asyncio.create_task(publisher.run())
            try:
                yield StationSide(board, client, publisher, relay, task)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        board_task.cancel()
        await asyncio.gather(board_task, return_exceptions=True)
        await relay.stop()


def copying(battery_pct: int, bay: int = 1) -> BayChanged:
    return BayChanged(bay, "3300001", BayPhase.COPYING, officer=Officer("张伟", "110001"),
                      device=Device("3300001", "DSJ-X", battery_pct))


async def test_availability_goes_offline_by_the_last_will_when_the_connection_dies_and_online_again(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    async with station_side(broker, pki) as station, watching(broker, pki) as central:
        availability = availability_topic(TOPIC_PREFIX, STATION)
        await central.until(availability, lambda m: m.payload == b"online")
        connections = station.client.status.connections
        # The station's connection dies without a DISCONNECT (the relay resets it): the broker
        # publishes the station's will.
        station.relay.cut()
        offline = await central.until(availability, lambda m: m.payload == b"offline")
        assert offline.retain is False  # delivered live; it is also kept (the late subscriber below)
        # The station reconnects by itself and says "online" again, after the will.
        await station.client.wait_for(lambda s: s.connections > connections, WAIT_S)
        await central.until(availability, lambda m: m.payload == b"online", count=2)
        assert central.payloads(availability) == [b"online", b"offline", b"online"]
    # Stopped cleanly (a DISCONNECT: the broker keeps the will), the station said "offline" itself; a
    # late subscriber finds it retained.
    async with watching(broker, pki) as late:
        final = await late.until(availability)
        assert (final.payload, final.retain) == (b"offline", True)


async def test_a_late_subscriber_sees_every_retained_document_and_changes_are_republished(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    async with station_side(broker, pki) as station:
        async with watching(broker, pki) as first:
            for part in PARTS:
                await first.until(f"{ROOT}/status/{part}")
            for bay in ("1", "2"):
                await first.until(f"{ROOT}/status/bays/{bay}")
        # A subscriber that comes later (the central restarted, say) gets the whole state, retained.
        async with watching(broker, pki) as late:
            messages = [await late.until(f"{ROOT}/status/{part}") for part in PARTS]
            messages += [await late.until(f"{ROOT}/status/bays/{bay}") for bay in ("1", "2")]
            messages.append(await late.until(availability_topic(TOPIC_PREFIX, STATION)))
            assert all(m.retain for m in messages)
            station_doc = doc(messages[0])
            assert station_doc["id"] == STATION and station_doc["telemetry"] == {"events_dropped": 0}
            assert {"local", "witnessed", "unwitnessed_entries"} <= set(doc(messages[4]))
            assert doc(messages[5])["state"] == "empty"
            # A change goes out as it happens, in the status model's words.
            station.board.publish(copying(80))
            bay1 = await late.until(f"{ROOT}/status/bays/1", lambda m: doc(m)["state"] == "copying")
            assert doc(bay1)["device"]["battery_pct"] == 80 and doc(bay1)["officer_present"] is True


async def test_a_burst_is_coalesced_and_the_same_document_never_goes_twice(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    async with station_side(broker, pki) as station, watching(broker, pki) as central:
        bay1, bay2 = f"{ROOT}/status/bays/1", f"{ROOT}/status/bays/2"
        await central.until(bay2)
        # 300 changes at once, more than the board queues for a subscriber: the publisher is handed one
        # fresh snapshot (bay 2 unchanged in it) and publishes the last state of bay 1.
        for battery in range(1, 301):
            station.board.publish(copying(battery % 99 + 1 if battery < 300 else 100))
        final = await central.until(bay1, lambda m: doc(m)["device"] is not None
                                    and doc(m)["device"]["battery_pct"] == 100)
        seen = central.payloads(bay1)
        assert len(seen) < 10, f"{len(seen)} publishes for one burst"
        assert seen[-1] == final.payload
        # Bay 2 changes now: the next document on its topic is the changed one, so the identical one
        # in the snapshot was not sent again.
        station.board.publish(copying(55, bay=2))
        await central.until(bay2, lambda m: doc(m)["state"] == "copying")
        assert [doc(json_m)["state"] for json_m in central.by_topic[bay2]] == ["empty", "copying"]


async def test_a_retained_topic_is_published_at_most_once_per_interval(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    async with station_side(broker, pki, min_interval_s=3600) as station, watching(broker, pki) as central:
        bay1 = f"{ROOT}/status/bays/1"
        await central.until(bay1)
        await central.until(f"{ROOT}/status/bays/2")
        station.board.publish(copying(10))
        # Within the interval bay 1 waits; an event still goes at once (events are not rate-limited),
        # and so proves the publisher was busy after the change without publishing bay 1 again.
        station.publisher.ledger_entry(_entry(7, EntryType.RECEIPT, "0f8fad5b-d9cb-469f-a165-70867728950e"))
        await central.until(f"{ROOT}/events/receipt")
        assert len(central.payloads(bay1)) == 1
        # After a reconnect every document goes again at once, the waiting one included.
        station.relay.cut()
        await central.until(bay1, lambda m: doc(m)["state"] == "copying")


def _entry(seq: int, type_: str, item: str | None, data: dict[str, Any] | None = None) -> LedgerEntry:
    return LedgerEntry(seq=seq, time="2026-12-05T12:00:00.000000Z", type=type_, item=item, data=data or {},
                       prev="0" * 64, hash="1" * 64)


async def test_events_from_the_ledger_without_device_text_and_not_retained(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    store = StationStore(tmp_path / "store", STATION)
    try:
        async with station_side(broker, pki) as station, watching(broker, pki) as central:
            store.ledger.add_listener(station.publisher.ledger_entry)
            item = await sealed_item(tmp_path, store)
            sealed = await central.until(f"{ROOT}/events/item-sealed", lambda m: doc(m)["item"] == item)
            assert sealed.retain is False and len(doc(sealed)["manifest_sha256"]) == 64
            entry = store.record(EntryType.ERROR, None, {"stage": "copy",
                                                         "reason": "DCIM/\x1b[31mevil\u202e4pm.MP4 failed"})
            error = await central.until(f"{ROOT}/events/error", lambda m: doc(m)["seq"] == entry.seq)
            assert doc(error) == {"seq": entry.seq, "time": entry.time, "item": None, "stage": "copy"}
            assert b"evil" not in error.payload and b"DCIM" not in error.payload
            # Not retained: a subscriber that comes now gets the next event, not the last one.
            async with watching(broker, pki, f"{ROOT}/events/#") as late:
                store.record(EntryType.ERROR, None, {"stage": "verify", "reason": "x"})
                first = await late.until(f"{ROOT}/events/error")
                assert doc(first)["stage"] == "verify"
    finally:
        store.close()


async def test_events_wait_in_a_bounded_queue_while_the_broker_is_away(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    async with station_side(broker, pki, event_queue=3) as station, watching(broker, pki) as central:
        await central.until(f"{ROOT}/status/station")
        station.relay.refusing = True
        station.relay.cut()
        await station.client.wait_for(lambda s: s.state is not ConnectionState.CONNECTED, WAIT_S)
        for seq in range(1, 6):
            station.publisher.ledger_entry(_entry(seq, EntryType.ERROR, None, {"stage": f"stage-{seq}"}))
        assert station.publisher.events_dropped == 2
        station.relay.refusing = False
        last = await central.until(f"{ROOT}/events/error", lambda m: doc(m)["seq"] == 5)
        assert [doc(m)["seq"] for m in central.by_topic[f"{ROOT}/events/error"]] == [3, 4, 5]
        assert last.retain is False
        dropped = await central.until(f"{ROOT}/status/station",
                                      lambda m: doc(m)["telemetry"]["events_dropped"] == 2)
        assert dropped.retain is False


def test_a_device_tile_gets_a_topic_level_no_device_can_steer() -> None:
    assert bay_topic_level("3") == "3"
    for hostile in ("device:a/b", "device:+", "device:#", "device:\x00", "device:" + "9" * 300):
        level = bay_topic_level(hostile)
        assert level.startswith("device-") and len(level) == 23 and level[7:].isalnum()
    assert bay_topic_level("device:a/b") != bay_topic_level("device:a+b")


async def test_the_station_agent_publishes_telemetry_and_says_why_commands_are_off(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    mqtt = {
        "broker_url": f"mqtts://127.0.0.1:{broker.port}",
        "identity_dir": str(pki.client(STATION)),
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.5,
        "telemetry_interval_s": 0.1,
    }
    async with watching(broker, pki) as central:
        async with simulated_station(tmp_path, [], mqtt=mqtt) as station:
            await central.until(availability_topic(TOPIC_PREFIX, STATION), lambda m: m.payload == b"online")
            station_doc = doc(await central.until(f"{ROOT}/status/station"))
            assert station_doc["id"] == STATION and station_doc["key_id"]
            names = {task["name"] for task in station_doc["tasks"]}
            assert {"mqtt", "telemetry"} <= names
            ledger = doc(await central.until(f"{ROOT}/status/ledger", lambda m: doc(m)["local"]["seq"]))
            assert len(ledger["local"]["hash"]) == 64
            for bay in range(1, 9):
                await central.until(f"{ROOT}/status/bays/{bay}")
            # No [uplink], so no central key is pinned: commands are off, and the ledger says why.
            assert any("mqtt commands disabled" in e.get("reason", "") for e in station.ledger("error"))
            # None of the station's own paths went out (its store, its password file, its mounts).
            sent = b"".join(m.payload for messages in central.by_topic.values() for m in messages)
            assert str(tmp_path).encode() not in sent
        await central.until(availability_topic(TOPIC_PREFIX, STATION), lambda m: m.payload == b"offline")


# The publisher's wait after a publish failed without a refusal, shortened so that a test can wait well
# past it: a refused publish that were retried would show within that wait.
RETRY_AFTER_FAILURE_S = 0.2


async def _publishes_over_time(
    broker: MosquittoBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch, *, refusal_as_failure: bool
) -> tuple[list[str], int, int]:
    """A station whose topic prefix the ACL does not allow (MQTT 5: PUBACK 0x87); the topics it tried to
    publish, counted until several retry intervals after every document and one event were refused, and
    the refusals the publisher counted. ``refusal_as_failure``: the client turns the refusal into a plain
    failure (as a timeout), which the publisher does retry after its wait (the control)."""
    from edge.mqtt import telemetry
    from edge.mqtt.client import MqttError, PublishRefused

    monkeypatch.setattr(telemetry, "_RETRY_AFTER_FAILURE_S", RETRY_AFTER_FAILURE_S)
    async with station_side(broker, pki, topic_prefix="elsewhere") as station:
        calls: list[str] = []
        failed = 0
        publish = station.client.publish

        async def counted(topic: str, payload: bytes, **kwargs: Any) -> Any:
            nonlocal failed
            calls.append(topic)
            try:
                return await publish(topic, payload, **kwargs)
            except PublishRefused as exc:
                if not refusal_as_failure:
                    raise
                failed += 1
                raise MqttError(f"not acknowledged: {exc}") from None

        station.client.publish = counted  # type: ignore[method-assign]
        documents = 1 + len(PARTS) + 2  # availability, the parts, two bays

        def tried() -> int:
            return station.publisher.refused + failed

        async with asyncio.timeout(WAIT_S):
            while tried() < documents:
                await asyncio.sleep(0.02)
        station.publisher.ledger_entry(_entry(1, EntryType.ERROR, None, {"stage": "copy"}))
        async with asyncio.timeout(WAIT_S):
            while tried() < documents + 1:
                await asyncio.sleep(0.02)
        # Wait well past the publisher's retry interval: a retry of anything given up would come here.
        await asyncio.sleep(5 * RETRY_AFTER_FAILURE_S)
        return list(calls), documents, station.publisher.refused  # before the stop says "offline"


async def test_publishes_the_broker_refuses_are_given_up_not_repeated(
    broker: MosquittoBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refused document is tried once and given up, also after the retry interval has passed
    several times (review 8 finding 11: the old test stopped looking when the count was reached)."""
    calls, documents, refused = await _publishes_over_time(broker, pki, monkeypatch, refusal_as_failure=False)
    assert refused == documents + 1
    assert len(calls) <= documents + 1 and all(topic.startswith("elsewhere/") for topic in calls), calls


async def test_control_a_failed_publish_is_retried_within_the_wait(
    broker: MosquittoBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control of the test above: the same wait sees the retries of publishes that failed without a
    refusal, so it would see a refused publish retried."""
    calls, documents, _refused = await _publishes_over_time(broker, pki, monkeypatch, refusal_as_failure=True)
    assert len(calls) > documents + 1


async def test_no_published_payload_names_an_officer_a_badge_a_serial_or_a_file(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    """Retained documents stay in the broker's persistence and go to every reader the ACL allows: no
    officer name, badge number (警号), recorder serial or recorder file name in any of them (review 8
    finding 9). Control: the status model itself holds them all, so the scan can find them."""
    secrets_ = ["张伟", "110001", "3300001", "李娜", "110002", "3300099", "FILE0042.MP4", "100MEDIA"]
    error = "copy of DCIM/100MEDIA/FILE0042.MP4 from recorder 3300099 failed"
    salt = b"station-salt"
    tasks = [TaskFacts("uplink", "restarting", 2, 1.0, last_error=error)]
    async with station_side(broker, pki, tasks=lambda: tasks, device_salt=salt) as station:
        station.board.publish(BayChanged(1, "3300001", BayPhase.COPYING, officer=Officer("张伟", "110001"),
                                         device=Device("3300001", "DSJ-X", 80)))
        # A recorder in no known bay: its tile is keyed by its serial in the model.
        station.board.publish(BayChanged(None, "3300099", BayPhase.COPYING, officer=Officer("李娜", "110002"),
                                         device=Device("3300099", "DSJ-Y", 50)))
        snapshot = json.dumps(station.board.snapshot(), ensure_ascii=False)
        assert all(secret in snapshot for secret in secrets_)  # the control
        tile = f"{ROOT}/status/bays/{bay_topic_level('device:3300099', salt)}"
        async with watching(broker, pki) as live:
            bay1 = doc(await live.until(f"{ROOT}/status/bays/1", lambda m: doc(m)["state"] == "copying"))
            stray = doc(await live.until(tile, lambda m: doc(m)["state"] == "copying"))
            station_doc = doc(await live.until(f"{ROOT}/status/station", lambda m: doc(m)["tasks"]))
            station.publisher.ledger_entry(_entry(9, EntryType.ERROR, None,
                                                  {"stage": "copy", "reason": error}))
            await live.until(f"{ROOT}/events/error")
            # And what the broker keeps: a subscriber that comes later gets the retained documents.
            async with watching(broker, pki) as late:
                await late.until(tile, lambda m: m.retain and doc(m)["state"] == "copying")
                await late.until(f"{ROOT}/status/bays/1", lambda m: m.retain and doc(m)["state"] == "copying")
                for part in PARTS:
                    await late.until(f"{ROOT}/status/{part}", lambda m: m.retain)
                messages = [m for w in (live, late) for ms in w.by_topic.values() for m in ms]
            for message in messages:
                text = message.topic + message.payload.decode("utf-8")
                leaked = [secret for secret in secrets_ if secret in text]
                assert not leaked, f"{message.topic} publishes {leaked}"
        # What is published instead: holder presence, a device id that tells recorders apart.
        assert bay1["officer_present"] is True and stray["officer_present"] is True
        assert bay1["device"]["model"] == "DSJ-X" and bay1["device"]["battery_pct"] == 80
        assert len(bay1["device"]["id"]) == 16 and bay1["device"]["id"] != stray["device"]["id"]
        assert stray["bay"] == tile.rsplit("/", 1)[1]
        assert station_doc["tasks"] == [{"name": "uplink", "state": "restarting", "restarts": 2}]
