"""The central's commands to a station over a real Mosquitto (tests/mqtt/broker.py: TLS, client
certificates, the shipped ACL): each op does what it says, each refusal is replied, recorded in the ledger
and changes nothing else, beside a control showing the same path accepts a good command; MQTT 5 response
topics and the 3.1.1 reply convention; `edge central command` end to end."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.mqtt_command import Broker, CommandTimeout, send_command
from edge.central.sqlite.index import SqliteIndex
from edge.cli import main
from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.keys import StationKey, load_public_key
from edge.custody.ledger import LedgerEntry
from edge.ingest.store import StationStore
from edge.ingest.tagging import current_case, tag_item
from edge.mqtt.client import ConnectionState, InboundMessage, MessageHandler, MqttClient, ProtocolVersion
from edge.mqtt.command_handler import REFUSALS_RECORDED_PER_MINUTE, CommandHandler, CommandSettings
from edge.mqtt.commands import (
    MAX_COMMAND_BYTES,
    Command,
    CommandOp,
    Reply,
    ReplySigner,
    command_request_topic,
    encode_reply,
    new_request_id,
    parse_reply,
    sign_command,
    utc_rfc3339,
)
from edge.pki.bundle import BUNDLE_CENTRAL_SIGNING_PUB
from edge.sources.usb.offload import VolumeOffload
from edge.uplink.spool import Spool, UploadState
from edge.verify.station import verify_store
from tests.mqtt.broker import (
    CENTRAL_ID,
    TOPIC_PREFIX,
    MosquittoBroker,
    TestPki,
    free_port,
)
from tests.mqtt.test_client import WAIT_S, Inbox, running
from tests.station.conftest import make_config, populate_recorder_volume, session_info, settle_on_disk
from tests.station.harness import simulated_station

STATION = "TEST-STATION"
STATUS_DOC = {"station": {"id": STATION, "spool": {"items": 0}}, "bays": []}


async def sealed_item(tmp_path: Path, store: StationStore) -> str:
    """One item sealed by the real offload from a recorder volume with real media."""
    root = populate_recorder_volume(tmp_path / "media" / "ZFY_3300001", files=1, file_mb=0.05, seed=11)
    settle_on_disk(root)
    result = await VolumeOffload(store, make_config(tmp_path), session_info(), root).run()
    return result.items[0]


@dataclass
class Rig:
    broker: MosquittoBroker
    store: StationStore
    station_client: MqttClient
    handler: CommandHandler
    central_client: MqttClient
    replies: Inbox
    central_key: StationKey
    clock: list[datetime]

    def command(self, op: CommandOp, args: dict[str, Any] | None = None, **overrides: Any) -> Command:
        values: dict[str, Any] = {
            "request_id": new_request_id(), "op": op, "station": STATION,
            "issued_at": utc_rfc3339(self.clock[0]), "args": args or {},
        }
        values.update(overrides)
        return Command(**values)

    def signed(self, command: Command, key: StationKey | None = None) -> bytes:
        return sign_command(command, (key or self.central_key).sign)

    async def ask(
        self,
        payload: bytes,
        op: str,
        *,
        publisher: MqttClient | None = None,
        response_topic: str | None = "default",
        correlation: bytes | None = b"corr-1",
    ) -> tuple[InboundMessage, Reply]:
        topic = f"{TOPIC_PREFIX}/stations/{STATION}/command/{op}"
        v5 = (publisher or self.central_client).settings.protocol is ProtocolVersion.V5
        if response_topic == "default":
            response_topic = f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/central-1" if v5 else None
        await (publisher or self.central_client).publish(
            topic, payload, response_topic=response_topic if v5 else None,
            correlation_data=correlation if v5 else None,
        )
        message = await self.replies.next()
        return message, parse_reply(message.payload)

    def entries(self, after: int = 0) -> list[LedgerEntry]:
        return [e for e in self.store.ledger.entries(after + 1)]

    def head(self) -> int:
        return self.store.ledger.head()[0]


async def subscribed(client: MqttClient) -> None:
    """Until the client's subscriptions (the command handler's) are in effect on the broker."""
    await client.wait_for(
        lambda s: s.state is ConnectionState.CONNECTED and s.unconfirmed_subscriptions == 0
        and bool(client._subscriptions), WAIT_S,
    )


@asynccontextmanager
async def station_handler(
    broker: MosquittoBroker, pki: TestPki, store: StationStore, central_pub: Ed25519PublicKey,
    clock: list[datetime],
    *, protocol: ProtocolVersion = ProtocolVersion.V5, monotonic: Callable[[], float] | None = None,
    handled: MessageHandler | None = None,
) -> AsyncIterator[tuple[MqttClient, CommandHandler]]:
    """A station's command handler on its own connection. ``handled`` is awaited with each request once the
    handler has returned for it, before the client acknowledges it: the client queues the PUBACK in the
    same step as ``handled`` returns, so a request seen in an `Inbox` there is acknowledged ahead of any
    later DISCONNECT, and one whose ``handled`` never returns is not acknowledged at all."""
    settings = broker.client_settings(pki.client(STATION), protocol=protocol)
    async with running(settings) as (client, _):
        handler = CommandHandler(
            CommandSettings(STATION, TOPIC_PREFIX, window_s=300),
            store=store, central_key=central_pub, client=client,
            status=lambda: STATUS_DOC, now=lambda: clock[0],
            monotonic=monotonic if monotonic is not None else time.monotonic,
        )
        if handled is not None:
            handle = handler.handle

            async def handle_and_tell(message: InboundMessage) -> None:
                await handle(message)
                await handled(message)

            handler.handle = handle_and_tell  # type: ignore[method-assign]  # run() subscribes self.handle
        task = asyncio.create_task(handler.run())
        try:
            await subscribed(client)
            yield client, handler
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def rig(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, *, protocol: ProtocolVersion = ProtocolVersion.V5
) -> AsyncIterator[Rig]:
    store = StationStore(tmp_path / "store", STATION)
    central_key = StationKey.generate()
    clock = [datetime.now(UTC)]
    try:
        async with station_handler(
            broker, pki, store, central_key.public_key(), clock, protocol=protocol
        ) as (client, handler):
            central_settings = broker.client_settings(pki.client(CENTRAL_ID), protocol=protocol)
            async with running(central_settings) as (central, _):
                await central.wait_connected(WAIT_S)
                replies = Inbox()
                await central.subscribe(f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/#", replies)
                yield Rig(broker, store, client, handler, central, replies, central_key, clock)
    finally:
        store.close()


async def test_status_and_ledger_head_answer_and_each_command_is_a_ledger_event(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    async with rig(tmp_path, broker, pki) as r:
        before = r.head()
        message, reply = await r.ask(r.signed(command := r.command(CommandOp.STATUS)), "status")
        assert reply.ok and reply.request_id == command.request_id and reply.result == STATUS_DOC
        # MQTT 5: on the response topic the request named, with its correlation data.
        assert message.topic.endswith("/command-reply/central-1") and message.correlation_data == b"corr-1"
        recorded = [e for e in r.entries(before) if e.type == "command"]
        assert len(recorded) == 1 and recorded[0].data["outcome"] == "executed"
        assert recorded[0].data["request_id"] == command.request_id
        assert recorded[0].data["signature"]  # the central's signature is kept: the order stays provable
        _, head = await r.ask(r.signed(r.command(CommandOp.LEDGER_HEAD)), "ledger-head")
        assert head.ok and head.result is not None
        local = head.result["local"]
        # The head as it stood when the command ran (its own entry comes after).
        assert local["seq"] == r.head() - 1
        assert local["hash"] == r.entries(local["seq"] - 1)[0].hash
        assert head.result["witnessed"] is None  # no central has witnessed this ledger
    assert verify_store(tmp_path / "store").ok


async def test_tag_writes_the_signed_entry_edge_tag_writes_and_a_replay_changes_nothing(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    async with rig(tmp_path, broker, pki) as r:
        item = await sealed_item(tmp_path, r.store)
        before = r.head()
        changes = {"case_number": "杭综执罚〔2026〕118号", "important": True}
        payload = r.signed(r.command(CommandOp.TAG, {"item": item, "changes": changes, "by": "clerk"}))
        _, reply = await r.ask(payload, "tag")
        assert reply.ok and reply.result is not None, reply
        tagged = [e for e in r.entries(before) if e.type == "tagged"]
        assert len(tagged) == 1 and tagged[0].seq == reply.result["seq"] and tagged[0].item == item
        assert tagged[0].data["changes"] == changes and tagged[0].data["by"].startswith("central:clerk")
        assert current_case(r.store, item)["case_number"] == changes["case_number"]
        # The very entry `edge tag` writes (tag_item): the same members.
        by_hand = tag_item(r.store, item, {"location": "desk"}, by="clerk")
        assert set(by_hand.data) == set(tagged[0].data)
        recorded = [e for e in r.entries(before) if e.type == "command"]
        assert [e.data["outcome"] for e in recorded] == ["executed"] and recorded[0].item == item
        # The same signed request again: refused as a replay, nothing tagged again.
        head = r.head()
        _, again = await r.ask(payload, "tag")
        assert not again.ok and again.error == "replayed" and "executed" in (again.detail or "")
        assert [e.type for e in r.entries(head)] == ["command"]
        assert r.entries(head)[0].data["error"] == "replayed"
        # An unknown item: refused, and nothing else recorded.
        head = r.head()
        other = "0f8fad5b-d9cb-469f-a165-70867728950e"
        _, unknown = await r.ask(
            r.signed(r.command(CommandOp.TAG, {"item": other, "changes": changes, "by": "clerk"})), "tag"
        )
        assert not unknown.ok and unknown.error == "refused" and "no sealed item" in (unknown.detail or "")
        assert [e.type for e in r.entries(head)] == ["command"]
    assert verify_store(tmp_path / "store").ok


async def test_reupload_requeues_a_rejected_item_through_the_uplinks_requeue(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    async with rig(tmp_path, broker, pki) as r:
        item = await sealed_item(tmp_path, r.store)
        spool = Spool(r.store)
        spool.enqueue_sealed()
        # Not rejected: refused, changes nothing (control of the requeue below).
        head = r.head()
        _, queued = await r.ask(r.signed(r.command(CommandOp.REUPLOAD, {"item": item})), "reupload")
        assert not queued.ok and queued.error == "refused" and "not rejected" in (queued.detail or "")
        assert [e.type for e in r.entries(head)] == ["command"]
        spool.mark_rejected(item, "register", "too-large", "the central refused it")
        head = r.head()
        _, done = await r.ask(
            r.signed(r.command(CommandOp.REUPLOAD, {"item": item, "reason": "limit raised"})), "reupload"
        )
        assert done.ok and done.result is not None and done.result["item"] == item, done
        assert spool.states([item])[item] is UploadState.QUEUED
        requeued = [e for e in r.entries(head) if e.type == "requeued"]
        assert len(requeued) == 1 and requeued[0].data["reason"] == "limit raised"
        assert requeued[0].data["by"]["central_command"] == done.request_id
        assert [e.type for e in r.entries(head)] == ["requeued", "command"]


@pytest.mark.parametrize(
    "attack",
    [
        "malformed JSON", "oversized", "bad signature", "signed by another key", "wrong station", "stale",
        "issued in the future", "unknown op", "op not its topic's", "bad args", "station commands itself",
    ],
)
async def test_each_refused_command_gets_an_error_reply_a_ledger_event_and_changes_nothing(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, attack: str
) -> None:
    async with rig(tmp_path, broker, pki) as r:
        item = await sealed_item(tmp_path, r.store)
        tag_args = {"item": item, "changes": {"case_number": "X-1"}, "by": "clerk"}
        # Control: the path accepts a good tag command.
        _, good = await r.ask(r.signed(r.command(CommandOp.TAG, tag_args)), "tag")
        assert good.ok
        case_before = current_case(r.store, item)
        evil_args = {**tag_args, "changes": {"case_number": "EVIL"}}
        op = "tag"
        publisher = None
        signed = json.loads(r.signed(r.command(CommandOp.TAG, evil_args)))
        if attack == "malformed JSON":
            payload = b'{"v":1,"command":'
            expected = "malformed"
        elif attack == "oversized":
            payload = b"{" + b" " * MAX_COMMAND_BYTES + b"}"
            expected = "too-large"
        elif attack == "bad signature":
            signed["command"]["args"]["changes"]["case_number"] = "EVIL-2"  # altered after signing
            payload, expected = canonical_json(signed), "bad-signature"
        elif attack == "signed by another key":
            payload = r.signed(r.command(CommandOp.TAG, evil_args), StationKey.generate())
            expected = "bad-signature"
        elif attack == "wrong station":
            payload = r.signed(r.command(CommandOp.TAG, evil_args, station="OTHER-STATION"))
            expected = "wrong-station"
        elif attack == "stale":
            old = utc_rfc3339(r.clock[0] - timedelta(seconds=301))
            payload, expected = r.signed(r.command(CommandOp.TAG, evil_args, issued_at=old)), "stale"
        elif attack == "issued in the future":
            ahead = utc_rfc3339(r.clock[0] + timedelta(seconds=301))
            payload, expected = r.signed(r.command(CommandOp.TAG, evil_args, issued_at=ahead)), "stale"
        elif attack == "unknown op":
            signed["command"]["op"] = "reboot"
            payload, op, expected = canonical_json(signed), "reboot", "unknown-op"
        elif attack == "op not its topic's":
            payload, op, expected = r.signed(r.command(CommandOp.TAG, evil_args)), "status", "wrong-topic"
        elif attack == "bad args":
            bad = {**evil_args, "changes": {"case_number": "EVIL\x1b[2J"}}
            payload, expected = r.signed(r.command(CommandOp.TAG, bad)), "bad-args"
        else:
            # The ACL lets a station write to its own command topic; only the central's key commands.
            station_key = StationKey.generate()
            payload, expected = r.signed(r.command(CommandOp.TAG, evil_args), station_key), "bad-signature"
            publisher = r.station_client
        head = r.head()
        message, reply = await r.ask(payload, op, publisher=publisher)
        assert not reply.ok and reply.error == expected, reply
        assert reply.detail  # says what was wrong
        if publisher is not None:
            assert message.topic == f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/central-1"
        # One ledger event, the refusal; the case is what it was.
        entries = r.entries(head)
        assert [(e.type, e.data["outcome"], e.data["error"]) for e in entries] == [
            ("command", "refused", expected)
        ]
        assert current_case(r.store, item) == case_before
        # The command and the central's signature are kept only when that signature verified.
        authentic = expected in ("wrong-station", "stale", "bad-args")
        assert ("command" in entries[0].data) is authentic and ("signature" in entries[0].data) is authentic
        # Control after the refusal: the handler still accepts a good command.
        _, after = await r.ask(r.signed(r.command(CommandOp.STATUS)), "status")
        assert after.ok


async def test_a_replay_is_refused_after_a_restart_of_the_handler(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    """The station's session outlives its connection (QoS 1, clean start off): a request whose PUBACK had
    not gone out when the station closed is delivered again on its next connection, and answered
    `replayed` there. That redelivery is not this test's replay, so the test waits for the station to
    acknowledge the first request before restarting it, and tells each reply apart by its request id and
    the correlation data of the delivery it answers (it once took a redelivery's reply for the replay's)."""
    store = StationStore(tmp_path / "store", STATION)
    central_key = StationKey.generate()
    clock = [datetime.now(UTC)]
    command = Command(new_request_id(), CommandOp.LEDGER_HEAD, STATION, utc_rfc3339(clock[0]), {})
    payload = sign_command(command, central_key.sign)
    central_settings = broker.client_settings(pki.client(CENTRAL_ID))
    topic = command_request_topic(TOPIC_PREFIX, STATION, CommandOp.LEDGER_HEAD)
    reply_topic = f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/central-1"
    async with running(central_settings) as (central, _):
        await central.wait_connected(WAIT_S)
        replies = Inbox()
        await central.subscribe(f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/#", replies)

        async def ask(request: bytes, correlation: bytes) -> Reply:
            await central.publish(topic, request, response_topic=reply_topic, correlation_data=correlation)
            message = await replies.next()
            # The next reply answers this delivery, not an earlier request delivered again.
            assert message.correlation_data == correlation, (message.correlation_data, message.payload)
            return parse_reply(message.payload)

        first_handled = Inbox()
        async with station_handler(broker, pki, store, central_key.public_key(), clock,
                                   handled=first_handled):
            first = await ask(payload, b"first")
            assert first.ok and first.request_id == command.request_id
            # The reply can reach the central before the station acknowledged the request: wait for that.
            assert (await first_handled.next()).correlation_data == b"first"
        store.close()
        # The station restarts (a new store object, a new handler, a new connection), a minute later.
        store = StationStore(tmp_path / "store", STATION)
        clock[0] += timedelta(seconds=60)
        handled = Inbox()
        try:
            async with station_handler(broker, pki, store, central_key.public_key(), clock, handled=handled):
                head = store.ledger.head()[0]
                replay = await ask(payload, b"replay")
                assert replay.request_id == command.request_id
                assert not replay.ok and replay.error == "replayed" and "executed" in (replay.detail or "")
                assert [e.data["error"] for e in store.ledger.entries(head + 1)] == ["replayed"]
                # Control: a new request is executed after the restart.
                fresh = replace(command, request_id=new_request_id(), issued_at=utc_rfc3339(clock[0]))
                control = await ask(sign_command(fresh, central_key.sign), b"fresh")
                assert control.ok and control.request_id == fresh.request_id
                # The restarted station was handed exactly the two requests sent to it, neither a redelivery.
                seen = [await handled.next(), await handled.next()]
                assert [(m.correlation_data, m.duplicate) for m in seen] == [
                    (b"replay", False), (b"fresh", False)
                ]
                assert handled.queue.empty()
                outcomes = [(e.data["request_id"], e.data["outcome"]) for e in store.ledger.entries()
                            if e.type == "command"]
                assert outcomes == [(command.request_id, "executed"), (command.request_id, "refused"),
                                    (fresh.request_id, "executed")]
        finally:
            store.close()


async def test_a_request_the_broker_delivers_again_after_a_lost_acknowledgement_is_answered_not_run_twice(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    """QoS 1 is at least once: a station that stops after running a command but before its PUBACK went out
    gets the request again on its next connection. It answers `replayed` there, saying the first delivery
    was executed, and tags nothing a second time; both deliveries are ledger events."""
    store = StationStore(tmp_path / "store", STATION)
    central_key = StationKey.generate()
    clock = [datetime.now(UTC)]
    topic = command_request_topic(TOPIC_PREFIX, STATION, CommandOp.TAG)
    reply_topic = f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/central-1"
    try:
        item = await sealed_item(tmp_path, store)
        changes = {"case_number": "C-9"}
        command = Command(new_request_id(), CommandOp.TAG, STATION, utc_rfc3339(clock[0]),
                          {"item": item, "changes": changes, "by": "clerk"})
        payload = sign_command(command, central_key.sign)
        async with running(broker.client_settings(pki.client(CENTRAL_ID))) as (central, _):
            await central.wait_connected(WAIT_S)
            replies = Inbox()
            await central.subscribe(f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/#", replies)
            ran = asyncio.Event()

            async def stop_before_acknowledging(message: InboundMessage) -> None:
                ran.set()
                await asyncio.Event().wait()  # cancelled when the station stops: never acknowledged

            async with station_handler(broker, pki, store, central_key.public_key(), clock,
                                       handled=stop_before_acknowledging):
                await central.publish(topic, payload, response_topic=reply_topic, correlation_data=b"first")
                message = await replies.next()
                assert message.correlation_data == b"first" and parse_reply(message.payload).ok
                async with asyncio.timeout(WAIT_S):
                    await ran.wait()
            clock[0] += timedelta(seconds=60)
            handled = Inbox()
            async with station_handler(broker, pki, store, central_key.public_key(), clock, handled=handled):
                again = await handled.next()
                assert (again.payload, again.correlation_data, again.duplicate) == (payload, b"first", True)
                message = await replies.next()
                assert message.correlation_data == b"first"  # the redelivery's reply, to its response topic
                reply = parse_reply(message.payload)
                assert reply.request_id == command.request_id and not reply.ok and reply.error == "replayed"
                assert "executed" in (reply.detail or "")
        assert len([e for e in store.ledger.entries() if e.type == "tagged"]) == 1
        assert current_case(store, item)["case_number"] == "C-9"
        assert [(e.data["request_id"], e.data["outcome"], e.data.get("error"))
                for e in store.ledger.entries() if e.type == "command"] == [
            (command.request_id, "executed", None), (command.request_id, "refused", "replayed")
        ]
    finally:
        store.close()
    assert verify_store(tmp_path / "store").ok


async def test_mqtt_311_replies_on_the_command_reply_topic(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    async with rig(tmp_path, broker, pki, protocol=ProtocolVersion.V311) as r:
        command = r.command(CommandOp.STATUS)
        message, reply = await r.ask(r.signed(command), "status")
        assert message.topic == f"{TOPIC_PREFIX}/stations/{STATION}/command-reply"
        assert reply.ok and reply.request_id == command.request_id
        _, refused = await r.ask(r.signed(r.command(CommandOp.STATUS), StationKey.generate()), "status")
        assert not refused.ok and refused.error == "bad-signature"


async def test_a_response_topic_outside_the_stations_reply_topic_is_not_honoured(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    async with rig(tmp_path, broker, pki) as r:
        elsewhere = f"{TOPIC_PREFIX}/stations/OTHER-STATION/command/tag"
        message, reply = await r.ask(
            r.signed(r.command(CommandOp.STATUS)), "status", response_topic=elsewhere
        )
        assert reply.ok and message.topic == f"{TOPIC_PREFIX}/stations/{STATION}/command-reply"
        assert message.correlation_data == b"corr-1"
        # Control: under the station's own reply topic it is honoured.
        mine = f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/desk-7"
        message, reply = await r.ask(r.signed(r.command(CommandOp.STATUS)), "status", response_topic=mine)
        assert reply.ok and message.topic == mine


def _central_toml(tmp_path: Path) -> Path:
    path = tmp_path / "central.toml"
    path.write_text(
        f'[central]\nid = "{CENTRAL_ID}"\nstore_dir = "{tmp_path / "central-store"}"\n'
        '[server]\nlisten = "127.0.0.1"\nport = 18443\n'
    )
    return path


async def test_edge_central_command_signs_with_the_central_key_and_prints_the_reply(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _central_toml(tmp_path)
    assert await asyncio.to_thread(main, ["central", "init", "--config", str(config)]) == 0
    central_pub = load_public_key(tmp_path / "central-store" / "identity" / "signing.key.pub")
    store = StationStore(tmp_path / "store", STATION)
    enroll_at_central(tmp_path, store)
    clock = [datetime.now(UTC)]

    def cli(*extra: str) -> list[str]:
        return [
            "central", "command", "--config", str(config), "--broker", f"mqtts://127.0.0.1:{broker.port}",
            "--identity", str(pki.client(CENTRAL_ID)), "--timeout", "20", *extra,
        ]

    try:
        item = await sealed_item(tmp_path, store)
        async with station_handler(broker, pki, store, central_pub, clock):
            capsys.readouterr()
            status = await asyncio.to_thread(
                main, cli(STATION, "tag", item, "--case-number", "C-7", "--by", "clerk", "--json")
            )
            out = capsys.readouterr().out
            assert status == 0, out
            reply = json.loads(out)
            assert reply["ok"] and reply["result"]["item"] == item
            assert reply["signed"] and reply["key_id"] == store.key.key_id
            assert current_case(store, item)["case_number"] == "C-7"
            # 3.1.1 too, and a refusal's exit status (reupload of an item that is not rejected).
            status = await asyncio.to_thread(main, cli(STATION, "reupload", item, "--protocol", "3.1.1"))
            assert status == 1 and "not" in capsys.readouterr().err
            # Bad arguments never leave the central.
            head = store.ledger.head()[0]
            status = await asyncio.to_thread(main, cli(STATION, "tag", item, "--case-number", "bad\x07"))
            assert status == 2 and store.ledger.head()[0] == head
    finally:
        store.close()
    assert verify_store(tmp_path / "store").ok


def enroll_at_central(tmp_path: Path, store: StationStore) -> None:
    """The station enrolled at the central of `_central_toml` (its index row: the key replies verify by)."""
    index = SqliteIndex.open(tmp_path / "central-store" / "index.db")
    try:
        index.enroll_station(STATION, store.key.public_key_b64, "ab" * 32)
    finally:
        index.close()


async def test_edge_central_command_takes_only_a_reply_the_enrolled_station_signed_for_this_request(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reply on the station's reply topic that the station did not sign (another key: a process on the
    broker path, or a station whose key the central never enrolled) is reported and not taken; the wait
    goes on, and the station's own reply is taken. A station that answers unsigned (from before signed
    replies) gives exit 69 unless --allow-unsigned-reply. An unknown or revoked station is refused before
    anything is sent. Control: the genuine station's reply is taken (exit 0)."""
    config = _central_toml(tmp_path)
    assert await asyncio.to_thread(main, ["central", "init", "--config", str(config)]) == 0
    central_pub = load_public_key(tmp_path / "central-store" / "identity" / "signing.key.pub")
    store = StationStore(tmp_path / "store", STATION)
    clock = [datetime.now(UTC)]

    def cli(*extra: str, timeout: str = "20") -> list[str]:
        return [
            "central", "command", "--config", str(config), "--broker", f"mqtts://127.0.0.1:{broker.port}",
            "--identity", str(pki.client(CENTRAL_ID)), "--timeout", timeout, STATION, "ledger-head", *extra,
        ]

    try:
        # Not enrolled: refused before anything is sent.
        assert await asyncio.to_thread(main, cli()) == 2
        assert "not enrolled" in capsys.readouterr().err
        enroll_at_central(tmp_path, store)
        async with station_handler(broker, pki, store, central_pub, clock) as (station_client, handler):
            # A forger answers first on the station's reply topic, with another key (and the right request
            # id and digest: it saw the request).
            forger = StationKey.generate()

            async def forge(message: InboundMessage) -> None:
                request_sha256 = sha256_hex(message.payload)
                request_id = json.loads(message.payload)["command"]["request_id"]
                fake = encode_reply(request_id, station=STATION, op="ledger-head",
                                    request_sha256=request_sha256,
                                    signer=ReplySigner(store.key.key_id, forger.sign),
                                    result={"local": {"seq": 999_999, "hash": "0" * 64}})
                await station_client.publish(f"{TOPIC_PREFIX}/stations/{STATION}/command-reply", fake)

            real_reply = handler._reply

            async def forged_then_real(message: InboundMessage, reply: bytes) -> None:
                await forge(message)  # acknowledged by the broker before the station's own reply is sent
                await real_reply(message, reply)

            handler._reply = forged_then_real  # type: ignore[method-assign]
            capsys.readouterr()
            status = await asyncio.to_thread(main, cli("--json"))
            captured = capsys.readouterr()
            assert status == 0, captured.err
            assert "not taken" in captured.err and "does not verify" in captured.err
            reply = json.loads(captured.out)
            assert reply["signed"] and reply["result"]["local"]["seq"] != 999_999  # the station's own
            # A station from before signed replies.
            handler._signed = lambda answer, payload: encode_unsigned(answer)  # type: ignore[method-assign]
            status = await asyncio.to_thread(main, cli(timeout="20"))
            assert status == 69 and "unsigned reply" in capsys.readouterr().err
            status = await asyncio.to_thread(main, cli("--allow-unsigned-reply"))
            captured = capsys.readouterr()
            assert status == 0 and "UNSIGNED" in captured.out, captured.err
        # Revoked: refused before anything is sent.
        index = SqliteIndex.open(tmp_path / "central-store" / "index.db")
        try:
            index.revoke_station(STATION, "lost")
        finally:
            index.close()
        assert await asyncio.to_thread(main, cli()) == 2
        assert "revoked" in capsys.readouterr().err
    finally:
        store.close()


def encode_unsigned(answer: Any) -> bytes:
    """The version-1 reply of a station from before signed replies."""
    doc: dict[str, Any] = {"v": 1, "request_id": answer.request_id, "ok": answer.error is None}
    if answer.error is not None:
        doc["error"], doc["detail"] = answer.error.value, answer.detail or ""
    if answer.result is not None:
        doc["result"] = dict(answer.result)
    return canonical_json(doc)


async def test_the_station_agent_takes_the_central_s_commands_with_the_pinned_key(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    """The composition: the agent pins the central key of its enrollment bundle and answers commands
    with its own status board; a command signed by any other key is refused."""
    bundle = pki.client(STATION)
    central_key = StationKey.generate()
    (bundle / BUNDLE_CENTRAL_SIGNING_PUB).write_bytes(central_key.public_pem())
    mqtt = {"broker_url": f"mqtts://127.0.0.1:{broker.port}", "identity_dir": str(bundle),
            "backoff_base_s": 0.05, "backoff_max_s": 0.5}
    # A central that is not there: the uplink waits (non-critical); its pinned key is what matters here.
    uplink = {"central_url": f"https://127.0.0.1:{free_port()}", "identity_dir": str(bundle)}
    async with running(broker.client_settings(pki.client(CENTRAL_ID))) as (central, _):
        await central.wait_connected(WAIT_S)
        replies = Inbox()
        await central.subscribe(f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/#", replies)
        async with simulated_station(tmp_path, [], mqtt=mqtt, uplink=uplink) as station:
            client = station.agent.mqtt
            assert client is not None and station.agent.commands is not None
            await subscribed(client)
            now = utc_rfc3339(datetime.now(UTC))
            status = Command(new_request_id(), CommandOp.STATUS, STATION, now, {})
            topic = command_request_topic(TOPIC_PREFIX, STATION, CommandOp.STATUS)
            await central.publish(topic, sign_command(status, StationKey.generate().sign))
            refused = parse_reply((await replies.next()).payload)
            assert not refused.ok and refused.error == "bad-signature"
            await central.publish(topic, sign_command(status, central_key.sign))
            reply = parse_reply((await replies.next()).payload)
            assert reply.ok and reply.result is not None
            assert reply.result["station"]["id"] == STATION and len(reply.result["bays"]) == 8
            outcomes = [(e["outcome"], e.get("error")) for e in station.ledger("command")]
            assert outcomes == [("refused", "bad-signature"), ("executed", None)]


async def test_refusals_anyone_can_repeat_are_recorded_at_a_bounded_rate(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    """A station process gone wrong may flood its own command topic: every forgery is replied and logged,
    the ledger records them at most REFUSALS_RECORDED_PER_MINUTE a minute and counts the rest."""
    store = StationStore(tmp_path / "store", STATION)
    central_key = StationKey.generate()
    clock = [datetime.now(UTC)]
    ticks = [1000.0]
    forger = StationKey.generate()
    topic = command_request_topic(TOPIC_PREFIX, STATION, CommandOp.STATUS)

    def forged() -> bytes:
        command = Command(new_request_id(), CommandOp.STATUS, STATION, utc_rfc3339(clock[0]), {})
        return sign_command(command, forger.sign)

    try:
        async with running(broker.client_settings(pki.client(CENTRAL_ID))) as (central, _):
            await central.wait_connected(WAIT_S)
            replies = Inbox()
            await central.subscribe(f"{TOPIC_PREFIX}/stations/{STATION}/command-reply/#", replies)
            async with station_handler(broker, pki, store, central_key.public_key(), clock,
                                       monotonic=lambda: ticks[0]):
                head = store.ledger.head()[0]
                for _ in range(REFUSALS_RECORDED_PER_MINUTE + 5):
                    await central.publish(topic, forged())
                    assert parse_reply((await replies.next()).payload).error == "bad-signature"
                recorded = list(store.ledger.entries(head + 1))
                assert len(recorded) == REFUSALS_RECORDED_PER_MINUTE
                # Control: an authentic command is recorded whatever the budget.
                good = Command(new_request_id(), CommandOp.STATUS, STATION, utc_rfc3339(clock[0]), {})
                await central.publish(topic, sign_command(good, central_key.sign))
                assert parse_reply((await replies.next()).payload).ok
                # Its replay is one anyone could repeat: bounded too, and counted.
                await central.publish(topic, sign_command(good, central_key.sign))
                assert parse_reply((await replies.next()).payload).error == "replayed"
                assert [e.data["outcome"] for e in store.ledger.entries(head + 1)][-1] == "executed"
                # Two seconds later the budget has one more: that refusal counts the six not recorded.
                ticks[0] += 2.0
                await central.publish(topic, forged())
                await replies.next()
                last = list(store.ledger.entries(head + 1))[-1]
                assert (last.data["error"], last.data["unrecorded_refusals_before"]) == ("bad-signature", 6)
    finally:
        store.close()


async def test_a_central_on_mqtt_5_gets_the_reply_of_a_station_on_3_1_1_and_a_silent_station_times_out(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    store = StationStore(tmp_path / "store", STATION)
    central_key = StationKey.generate()
    clock = [datetime.now(UTC)]
    central = Broker(broker.client_settings(pki.client(CENTRAL_ID)), TOPIC_PREFIX)
    keys = {store.key.key_id: store.key.public_key()}
    command = Command(new_request_id(), CommandOp.LEDGER_HEAD, STATION, utc_rfc3339(clock[0]), {})
    try:
        # No station listening: no reply, a timeout naming the request (the command may run later).
        with pytest.raises(CommandTimeout, match=command.request_id):
            await send_command(central, command, central_key, station_keys=keys, timeout_s=1.0)
        async with station_handler(broker, pki, store, central_key.public_key(), clock,
                                   protocol=ProtocolVersion.V311):
            fresh = replace(command, request_id=new_request_id())
            reply = await send_command(central, fresh, central_key, station_keys=keys, timeout_s=WAIT_S)
            assert reply.ok and reply.request_id == fresh.request_id
            # The first one never reached a station (none had subscribed yet): only this one ran.
            assert [e.data["request_id"] for e in store.ledger.entries() if e.type == "command"] == [
                fresh.request_id
            ]
    finally:
        store.close()


async def test_a_forward_jump_of_the_station_clock_does_not_reopen_a_replay(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    """Seen request ids were pruned by the station's wall clock: a jump of more than a day forward (a
    command fresh by the jumped clock taken then), corrected afterwards, erased them, and a replay fresh
    again by the corrected clock ran twice (review 8 finding 10)."""
    async with rig(tmp_path, broker, pki) as r:
        start = r.clock[0]
        first = r.command(CommandOp.LEDGER_HEAD)
        _, reply = await r.ask(r.signed(first), "ledger-head")
        assert reply.ok
        r.clock[0] = start + timedelta(days=3)  # a wrong time source; the central's clock as wrong
        _, reply = await r.ask(r.signed(r.command(CommandOp.LEDGER_HEAD)), "ledger-head")
        assert reply.ok
        r.clock[0] = start + timedelta(seconds=60)  # corrected: the first command is fresh again
        head = r.head()
        _, replay = await r.ask(r.signed(first), "ledger-head")
        assert not replay.ok and replay.error == "replayed"
        assert [e.data["outcome"] for e in r.entries(head)] == ["refused"]
        # Control: a new command at the corrected time is executed.
        _, fresh = await r.ask(r.signed(r.command(CommandOp.LEDGER_HEAD)), "ledger-head")
        assert fresh.ok


async def test_seen_request_ids_are_bounded_by_count_oldest_first(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.mqtt import command_handler

    monkeypatch.setattr(command_handler, "MAX_SEEN_REQUEST_IDS", 3)
    async with rig(tmp_path, broker, pki) as r:
        commands = [r.command(CommandOp.LEDGER_HEAD) for _ in range(5)]
        for command in commands:
            assert (await r.ask(r.signed(command), "ledger-head"))[1].ok
        kept = {row[0] for row in r.store.conn.execute("SELECT request_id FROM mqtt_command_ids")}
        assert kept == {c.request_id for c in commands[2:]}
        # The newest are still refused as replays; the oldest, beyond the bound, is fresh and forgotten.
        assert (await r.ask(r.signed(commands[-1]), "ledger-head"))[1].error == "replayed"
        assert (await r.ask(r.signed(commands[0]), "ledger-head"))[1].ok
