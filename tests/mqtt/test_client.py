"""edge.mqtt.client against a real Mosquitto (tests/mqtt/broker.py): TLS with client certificates, the
shipped agency configuration and ACL, refusals reported as refused, QoS 1 acknowledgements, persistent
sessions, reconnection after a broker restart."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest

from edge.mqtt.client import (
    POISON_AFTER_FAILURES,
    ConnectionState,
    ConnectionStatus,
    InboundMessage,
    MqttClient,
    MqttSettings,
    PacketTooLarge,
    ProtocolVersion,
    PublishRefused,
    PublishTimeout,
)
from edge.mqtt.filetransfer import (
    FinCommand,
    InitCommand,
    Mode,
    SegmentCommand,
    parse_scoped_topic,
    publish_packet_bytes,
    response_topic,
    scoped_topic,
)
from edge.uplink.policy import Backoff
from tests.mqtt.broker import (
    CENTRAL_ID,
    TOPIC_PREFIX,
    MosquittoBroker,
    TestPki,
    password_broker,
)

WAIT_S = 20.0


class Inbox:
    """Messages a handler received, awaitable one by one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[InboundMessage] = asyncio.Queue()

    async def __call__(self, message: InboundMessage) -> None:
        self.queue.put_nowait(message)

    async def next(self) -> InboundMessage:
        async with asyncio.timeout(WAIT_S):
            return await self.queue.get()


@asynccontextmanager
async def running(settings: MqttSettings) -> AsyncIterator[tuple[MqttClient, list[ConnectionStatus]]]:
    """A client running its connection loop (fast back-off), and every status it went through."""
    history: list[ConnectionStatus] = []
    client = MqttClient(settings, backoff=Backoff(0.05, 0.5, rng=random.Random(7)), on_status=history.append)
    task = asyncio.create_task(client.run())
    try:
        yield client, history
    finally:
        await client.close()
        async with asyncio.timeout(WAIT_S):
            await task


def topic(station: str, leaf: str) -> str:
    return f"{TOPIC_PREFIX}/stations/{station}/{leaf}"


async def test_station_connects_with_its_certificate_and_a_qos1_publish_is_acknowledged(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    async with running(broker.client_settings(pki.client("STATION-A"))) as (station, _):
        status = await station.wait_connected(WAIT_S)
        assert status.session_present is False and status.reason_code == 0
        inbox = Inbox()
        await station.subscribe(topic("STATION-A", "echo"), inbox)
        ack = await station.publish(topic("STATION-A", "echo"), b"hello", qos=1)
        assert ack.reason_code == 0  # a subscriber exists: "Success", not 0x10 "No matching subscribers"
        message = await inbox.next()
        assert (message.topic, message.payload, message.qos) == (topic("STATION-A", "echo"), b"hello", 1)
        # With nobody subscribed Mosquitto still acknowledges (0x10): a PUBACK means the broker took it.
        nobody = await station.publish(topic("STATION-A", "nobody"), b"x")
        assert nobody.reason_code == 0x10


@pytest.mark.parametrize("credential", ["no certificate", "certificate of another CA"])
async def test_a_broker_that_rejects_the_certificate_is_reported_refused_never_connected(
    broker: MosquittoBroker, pki: TestPki, tmp_path: Path, credential: str
) -> None:
    rogue = TestPki.create(tmp_path / "rogue")
    bundle = None if credential == "no certificate" else rogue.client("STATION-A")
    settings = broker.client_settings(bundle, client_id="STATION-A")
    async with running(settings) as (client, history):
        status = await client.wait_for(lambda s: s.state is ConnectionState.REFUSED, WAIT_S)
        assert "rejected the client certificate" in status.reason
        # It keeps trying with back-off, and is refused each time; never once connected.
        await client.wait_for(lambda s: s.failed_attempts >= 3, WAIT_S)
        assert all(s.state is not ConnectionState.CONNECTED for s in history)
        assert client.status.connections == 0
    # Control: the enrolled certificate connects to the same broker.
    async with running(broker.client_settings(pki.client("STATION-A"))) as (client, _):
        await client.wait_connected(WAIT_S)


async def test_a_broker_whose_certificate_the_station_does_not_trust_is_never_connected(
    broker: MosquittoBroker, pki: TestPki, tmp_path: Path
) -> None:
    """An impostor broker (or a man in the middle) cannot collect the station's telemetry or feed it
    commands: the station checks the broker's certificate against its own CA and stops at the handshake."""
    other_ca = TestPki.create(tmp_path / "other").ca_file
    settings = broker.client_settings(pki.client("STATION-A"), ca_file=other_ca)
    async with running(settings) as (client, history):
        status = await client.wait_for(lambda s: s.failed_attempts >= 2, WAIT_S)
        assert status.state is ConnectionState.DISCONNECTED
        assert "broker certificate not trusted" in status.reason
        assert all(s.state is not ConnectionState.CONNECTED for s in history)
    # Control: the CA that issued the broker's certificate.
    async with running(broker.client_settings(pki.client("STATION-A"))) as (client, _):
        await client.wait_connected(WAIT_S)


@pytest.mark.parametrize("protocol", [ProtocolVersion.V5, ProtocolVersion.V311])
async def test_a_wrong_password_is_refused_with_the_brokers_reason_code(
    pki: TestPki, tmp_path: Path, protocol: ProtocolVersion
) -> None:
    broker = await password_broker(tmp_path / "pw-broker", pki, {"STATION-A": "right horse battery"})
    try:
        def settings(password: str) -> MqttSettings:
            return broker.client_settings(
                None, client_id="STATION-A", protocol=protocol, username="STATION-A",
                password=lambda: password,
            )

        async with running(settings("wrong")) as (client, history):
            status = await client.wait_for(lambda s: s.state is ConnectionState.REFUSED, WAIT_S)
            # Mosquitto 2.0 answers a wrong password with 0x87 "Not authorized" (MQTT 5), or CONNACK code 5
            # (3.1.1), which paho maps to the same MQTT 5 reason code.
            assert (status.reason_code, status.reason) == (0x87, "Not authorized"), status
            await client.wait_for(lambda s: s.failed_attempts >= 2, WAIT_S)
            assert all(s.state is not ConnectionState.CONNECTED for s in history)
            assert "wrong" not in repr(client) and "wrong" not in repr(client.settings)
        # Control: the right password connects.
        async with running(settings("right horse battery")) as (client, _):
            await client.wait_connected(WAIT_S)
    finally:
        await broker.stop()


async def test_the_shipped_acl_confines_a_station_to_its_own_topics_mqtt5(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (central, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (station, _),
    ):
        await central.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        inbox = Inbox()
        await central.subscribe(f"{TOPIC_PREFIX}/stations/#", inbox)
        with pytest.raises(PublishRefused) as refused:
            await station.publish(topic("STATION-B", "state"), b"forged")
        assert refused.value.reason_code == 0x87  # Not authorized
        # Control: under its own id the same station is acknowledged and delivered.
        ack = await station.publish(topic("STATION-A", "state"), b"genuine")
        assert ack.reason_code == 0
        assert (await inbox.next()).payload == b"genuine"
        assert inbox.queue.empty()


async def test_the_shipped_acl_drops_a_forged_publish_silently_under_mqtt311(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    """MQTT 3.1.1 has no reason code in PUBACK: Mosquitto acknowledges the refused publish and drops it.
    Detected by order: the station publishes the forged message, then a control message on its own topic,
    over the same connection; the broker handles one connection's packets in order and delivers to one
    subscriber in order, so when the control message arrives the forged one would have arrived first."""
    station_settings = broker.client_settings(pki.client("STATION-A"), protocol=ProtocolVersion.V311)
    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (central, _),
        running(station_settings) as (station, _),
    ):
        await central.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        inbox = Inbox()
        await central.subscribe(f"{TOPIC_PREFIX}/stations/#", inbox)
        forged = await station.publish(topic("STATION-B", "state"), b"forged")
        assert forged.reason_code == 0  # acknowledged all the same: 3.1.1 cannot say otherwise
        await station.publish(topic("STATION-A", "state"), b"control")
        first = await inbox.next()
        assert (first.topic, first.payload) == (topic("STATION-A", "state"), b"control")
        assert inbox.queue.empty()
        # Control of the method: a message the ACL allows, published before the control, does arrive first.
        await station.publish(topic("STATION-A", "before"), b"allowed")
        await station.publish(topic("STATION-A", "state"), b"control-2")
        assert (await inbox.next()).payload == b"allowed"
        assert (await inbox.next()).payload == b"control-2"


@pytest.mark.parametrize("protocol", [ProtocolVersion.V5, ProtocolVersion.V311])
async def test_messages_sent_while_a_subscriber_is_offline_arrive_after_it_reconnects(
    broker: MosquittoBroker, pki: TestPki, protocol: ProtocolVersion
) -> None:
    receiver_settings = broker.client_settings(pki.client(CENTRAL_ID, unit="server"), protocol=protocol)
    async with running(receiver_settings) as (receiver, _):
        await receiver.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/events", Inbox())
    # The receiver disconnected cleanly; its session (and subscription) stays on the broker.
    async with running(broker.client_settings(pki.client("STATION-A"))) as (station, _):
        await station.wait_connected(WAIT_S)
        for n in range(3):
            ack = await station.publish(topic("STATION-A", "events"), f"event {n}".encode())
            assert ack.reason_code == 0  # the offline session counts as a subscriber
    # A new process with the same client id resumes the session and gets what it missed.
    inbox = Inbox()
    async with running(receiver_settings) as (receiver, _):
        subscribing = asyncio.create_task(receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/events", inbox))
        status = await receiver.wait_connected(WAIT_S)
        assert status.session_present is True
        got = [(await inbox.next()).payload for _ in range(3)]
        await subscribing
    assert got == [b"event 0", b"event 1", b"event 2"]


async def test_broker_killed_and_restarted_the_client_reconnects_and_subscribes_again(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    inbox = Inbox()
    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, history),
        running(broker.client_settings(pki.client("STATION-A"))) as (station, _),
    ):
        await receiver.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/state", inbox)
        await station.publish(topic("STATION-A", "state"), b"before")
        assert (await inbox.next()).payload == b"before"

        await broker.stop(graceful=False)  # SIGKILL: the broker forgets every session
        await receiver.wait_for(lambda s: s.state is not ConnectionState.CONNECTED, WAIT_S)
        # A publish while the broker is down waits for the next connection and its PUBACK.
        pending = asyncio.create_task(station.publish(topic("STATION-A", "state"), b"during"))
        await receiver.wait_for(lambda s: s.failed_attempts >= 2, WAIT_S)  # backing off, not connected
        assert not pending.done()
        await broker.start()

        status = await receiver.wait_for(lambda s: s.connections == 2, WAIT_S)
        assert status.session_present is False  # the broker lost the subscription; the client makes it again
        await receiver.wait_for(lambda s: s.unconfirmed_subscriptions == 0, WAIT_S)
        assert (await pending).reason_code in (0, 0x10)
        await station.publish(topic("STATION-A", "state"), b"after")
        # "during" arrives too when the station's resend reached the broker after the re-subscription.
        payloads = [(await inbox.next()).payload]
        while payloads[-1] != b"after":
            payloads.append((await inbox.next()).payload)
        assert set(payloads) <= {b"during", b"after"}
    states = [s.state for s in history]
    first_down = states.index(ConnectionState.DISCONNECTED)
    assert ConnectionState.CONNECTED in states[first_down:]
    assert any(s.failed_attempts >= 2 for s in history)


async def test_broker_restarted_gracefully_keeps_the_session(broker: MosquittoBroker, pki: TestPki) -> None:
    inbox = Inbox()
    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (station, _),
    ):
        await receiver.wait_connected(WAIT_S)
        # Both connected before the restart (on a loaded machine the station's first connection can come
        # after it, and would then be its only one).
        await station.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/state", inbox)
        await broker.restart(graceful=True)  # SIGTERM: mosquitto saves its sessions
        status = await receiver.wait_for(lambda s: s.connections == 2, WAIT_S)
        assert status.session_present is True
        await station.wait_for(lambda s: s.state is ConnectionState.CONNECTED and s.connections >= 2, WAIT_S)
        await station.publish(topic("STATION-A", "state"), b"after")
        assert (await inbox.next()).payload == b"after"


async def test_the_shipped_acl_confines_transfer_commands_and_results_to_the_station(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    """EMQX file-transfer commands go under the station's own topics on Mosquitto (the ACL cannot confine
    a bare `$file/{file_id}` level to one station), and results come back on `$file-response/<id>`."""
    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (central, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (station, _),
    ):
        await central.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        commands = Inbox()
        await central.subscribe(f"$share/receivers/{TOPIC_PREFIX}/stations/+/$file-async/#", commands)
        results = Inbox()
        # Mosquitto 2.0 grants a subscription to a topic the ACL does not let the client read, and checks
        # the ACL on each delivery instead (below).
        await station.subscribe("$file-response/STATION-B", results)
        await station.subscribe(response_topic("STATION-A"), results)
        # The topics as the file-transfer codec builds and reads them (edge.mqtt.filetransfer), with the
        # station level under <prefix>/stations, where the shipped ACL confines it.
        scope = f"{TOPIC_PREFIX}/stations"
        digest = hashlib.sha256(b"segment").hexdigest()
        sent = [
            (scoped_topic(scope, "STATION-A", InitCommand("f1", Mode.ASYNC).topic), b'{"name":"a.mp4"}'),
            (scoped_topic(scope, "STATION-A", SegmentCommand("f1", 0, digest, Mode.ASYNC).topic), b"segment"),
            (scoped_topic(scope, "STATION-A", FinCommand("f1", 7, digest, Mode.ASYNC).topic), b""),
        ]
        for command_topic, payload in sent:
            assert (await station.publish(command_topic, payload)).reason_code == 0
        with pytest.raises(PublishRefused):
            forged = scoped_topic(scope, "STATION-B", InitCommand("f1", Mode.ASYNC).topic)
            await station.publish(forged, b'{"name":"forged.mp4"}')
        with pytest.raises(PublishRefused):  # bare $file/ is EMQX's, handled by that broker itself
            await station.publish("$file/f1/init", b'{"name":"a.mp4"}')
        received = [await commands.next() for _ in sent]
        assert [(m.topic, m.payload) for m in received] == sent
        assert [parse_scoped_topic(scope, m.topic)[0] for m in received] == ["STATION-A"] * 3
        assert parse_scoped_topic(scope, received[1].topic)[1] == SegmentCommand("f1", 0, digest, Mode.ASYNC)
        # Another station's result, then this station's own (the control), in this order over one connection:
        # had the first been delivered it would have arrived first.
        await central.publish("$file-response/STATION-B", b'{"for":"B"}')
        await central.publish(response_topic("STATION-A"), b'{"for":"A"}')
        got = await results.next()
        assert (got.topic, got.payload) == ("$file-response/STATION-A", b'{"for":"A"}')
        assert results.queue.empty() and commands.queue.empty()


async def test_a_message_whose_handler_failed_is_not_acknowledged_and_comes_again(
    broker: MosquittoBroker, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    """What a receiver that stores before it acknowledges relies on: a handler that raises leaves the
    message unacknowledged, and the broker sends it again on the next connection of the session."""
    seen: list[tuple[bytes, bool]] = []
    inbox = Inbox()
    failed_once = False

    async def store_then_ack(message: InboundMessage) -> None:
        nonlocal failed_once
        seen.append((message.payload, message.duplicate))
        if message.payload == b"flaky" and not failed_once:
            failed_once = True
            raise OSError("disk full")  # the store failed: nothing may be acknowledged
        await inbox(message)

    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (station, _),
    ):
        await receiver.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/segments", store_then_ack)
        await station.publish(topic("STATION-A", "segments"), b"ok")
        await station.publish(topic("STATION-A", "segments"), b"flaky")
        await station.publish(topic("STATION-A", "segments"), b"marker")
        assert [(await inbox.next()).payload for _ in range(2)] == [b"ok", b"marker"]
        assert (b"flaky", False) in seen and "not acknowledged" in caplog.text

        # A barrier: the broker handles one connection's packets in order, so once it has answered this
        # SUBSCRIBE it has also had the PUBACKs the receiver queued before it (for "ok" and "marker").
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/barrier", inbox)
        await broker.restart(graceful=True)  # the session (with the unacknowledged message) survives
        await receiver.wait_for(lambda s: s.connections == 2, WAIT_S)
        await station.wait_for(lambda s: s.connections == 2, WAIT_S)
        await station.publish(topic("STATION-A", "segments"), b"after")
        # The unacknowledged message comes again (marked duplicate) before the new one; the acknowledged
        # ones ("ok", "marker") do not.
        assert [(await inbox.next()).payload for _ in range(2)] == [b"flaky", b"after"]
        assert seen[-2:] == [(b"flaky", True), (b"after", False)]
        assert [p for p, _ in seen].count(b"ok") == 1


def _more_connections(seen: int, status: ConnectionStatus) -> bool:
    return status.connections > seen


async def test_messages_whose_handler_keeps_failing_are_acknowledged_as_poison_and_stop_holding_the_broker(
    broker: MosquittoBroker, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    """Review 8, finding 2: the shipped broker sends a client at most max_inflight_messages (20)
    unacknowledged messages; handler failures held for ever stalled the connection. Enough failed messages
    held make the client reconnect (the broker sends them again), and after POISON_AFTER_FAILURES failed
    deliveries a message is acknowledged as poison: the later messages get through, the poison never
    comes again."""
    attempts: dict[bytes, int] = {}
    inbox = Inbox()

    async def refuses_poison(message: InboundMessage) -> None:
        attempts[message.payload] = attempts.get(message.payload, 0) + 1
        if message.payload.startswith(b"poison"):
            raise ValueError("cannot handle this")
        await inbox(message)

    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (station, _),
    ):
        await receiver.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/segments", refuses_poison)
        poison = [b"poison %d" % n for n in range(25)]  # more than the broker's 20 in-flight slots
        for payload in poison:
            await station.publish(topic("STATION-A", "segments"), payload)
        await station.publish(topic("STATION-A", "segments"), b"after")
        # Without the poison rule the 20 held messages stall the connection and "after" never arrives.
        assert (await inbox.next()).payload == b"after"
        # A few failed messages (fewer than make the client reconnect) may still be held, and an
        # acknowledgement may be lost to a reconnection: they come again with each connection of the
        # session (here: broker restarts) until every one is acknowledged as poison; then none comes again.
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/barrier", inbox)
        for restart in range(2 * POISON_AFTER_FAILURES):
            before = dict(attempts)
            connections = receiver.status.connections
            await broker.restart(graceful=True)
            await receiver.wait_for(partial(_more_connections, connections), WAIT_S)
            await station.wait_for(lambda s: s.state is ConnectionState.CONNECTED, WAIT_S)
            # The broker sends what it holds for the session before what is published afterwards.
            await station.publish(topic("STATION-A", "barrier"), b"marker %d" % restart)
            while (message := await inbox.next()).payload != b"marker %d" % restart:
                # At least once: a message handled just before a reconnection, its acknowledgement lost, comes
                # again ("after", an earlier marker); never a poison message (the handler would not pass it).
                assert message.payload == b"after" or message.payload.startswith(b"marker"), message
            if all(attempts[p] == before.get(p) for p in poison):
                break
        else:
            pytest.fail(f"poison still delivered after {2 * POISON_AFTER_FAILURES} restarts: {attempts}")
        # Each failed at least POISON_AFTER_FAILURES times before it was acknowledged.
        assert all(attempts[p] >= POISON_AFTER_FAILURES for p in poison), sorted(attempts.items())
        assert caplog.text.count("acknowledged as poison") >= len(poison)
        assert "poison 0" not in caplog.text  # logged by topic, size and digest, never the payload


async def test_a_shared_subscription_survives_a_graceful_broker_restart(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    """Mosquitto 2.0 keeps a session over a graceful restart (session present) but not its shared
    subscriptions: the central's receiver was deaf afterwards (seen while testing review 8, finding 2)."""
    inbox = Inbox()
    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (station, _),
    ):
        await receiver.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        await receiver.subscribe(f"$share/group/{TOPIC_PREFIX}/stations/+/segments", inbox)
        await station.publish(topic("STATION-A", "segments"), b"before")
        assert (await inbox.next()).payload == b"before"
        await broker.restart(graceful=True)
        status = await receiver.wait_for(lambda s: s.connections == 2 and not s.unconfirmed_subscriptions,
                                         WAIT_S)
        assert status.session_present  # the broker says it kept the session...
        await station.wait_for(lambda s: s.connections == 2, WAIT_S)
        await station.publish(topic("STATION-A", "segments"), b"after")
        # ...and the subscription is in effect again. "before" may come once more first: QoS 1 is at least
        # once, and its acknowledgement (sent when the handler returned) may not have reached the broker
        # before it stopped (a fresh clone's run saw exactly that).
        message = await inbox.next()
        while message.payload == b"before":
            message = await inbox.next()
        assert message.payload == b"after"


async def test_a_publish_the_broker_never_acknowledges_raises_after_its_time_limit(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    async with running(broker.client_settings(pki.client("STATION-A"))) as (station, _):
        await station.wait_connected(WAIT_S)
        await broker.stop(graceful=False)
        await station.wait_for(lambda s: s.state is not ConnectionState.CONNECTED, WAIT_S)
        with pytest.raises(PublishTimeout):
            await station.publish(topic("STATION-A", "state"), b"lost?", timeout_s=0.3)
        # Control: with the broker back, the same call is acknowledged.
        await broker.start()
        await station.wait_connected(WAIT_S)
        assert (await station.publish(topic("STATION-A", "state"), b"x", timeout_s=5)).reason_code == 0x10


async def test_a_publish_over_the_brokers_maximum_packet_size_is_refused_before_it_is_sent(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    # The shipped broker announces max_packet_size 2097152 in its CONNACK. A larger packet would make it
    # drop the connection, and paho would send the same message again after every reconnection.
    async with running(broker.client_settings(pki.client("STATION-A"))) as (station, history):
        await station.wait_connected(WAIT_S)
        leaf = topic("STATION-A", "big")
        largest = 2097152 - publish_packet_bytes(leaf, 0)
        while publish_packet_bytes(leaf, largest) > 2097152:  # the remaining length takes more bytes
            largest -= 1
        with pytest.raises(PacketTooLarge) as refused:
            await station.publish(leaf, b"\0" * (largest + 1))
        assert (refused.value.size, refused.value.limit) == (2097153, 2097152)
        # Control: the largest packet the broker takes goes through, on the same connection.
        ack = await station.publish(leaf, b"\0" * largest)
        assert ack.reason_code == 0x10
        assert station.status.connections == 1
        assert [s.state for s in history].count(ConnectionState.CONNECTED) == 1


async def test_a_publish_started_is_queued_before_it_returns_and_its_acknowledgement_comes_later(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    """publish_started() (the central's results) queues the message for the network thread at once, ahead
    of anything queued after it; the broker's answer, success or refusal, is what its awaitable gives."""
    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (central, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (station, _),
    ):
        await central.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        inbox = Inbox()
        await central.subscribe(f"{TOPIC_PREFIX}/stations/#", inbox)
        # Both started before either is awaited: they arrive in the order they were started.
        first = station.publish_started(topic("STATION-A", "state"), b"first")
        refused = station.publish_started(topic("STATION-B", "state"), b"forged")
        second = station.publish_started(topic("STATION-A", "state"), b"second")
        assert (await first).reason_code == 0 and (await second).reason_code == 0
        with pytest.raises(PublishRefused) as refusal:
            await refused
        assert refusal.value.reason_code == 0x87  # the ACL's answer, given by the awaitable
        assert [(await inbox.next()).payload for _ in range(2)] == [b"first", b"second"]
