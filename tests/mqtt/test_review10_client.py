"""Review 10: the review-9 fixes of the MQTT client's per-key concurrency and bound, against the real
Mosquitto 2.0.11 with the shipped configuration (max_inflight_messages 20)."""

from __future__ import annotations

import asyncio

import pytest

from edge.mqtt import client as client_module
from edge.mqtt.client import InboundMessage
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki
from tests.mqtt.test_client import WAIT_S, Inbox, broker, pki, running, topic
from tests.mqtt.test_review9_client import _dispatched, _station_of

__all__ = ["broker", "pki"]


async def test_review10_one_stations_backlog_behind_its_slow_message_does_not_stall_the_other_stations(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    """Review 9 finding 1 fixed the acknowledgements, but a station's own messages waiting for their key's
    turn are unacknowledged too, and up to _WAITING_PER_KEY (32) of them may wait: above the broker's window
    (max_inflight_messages 20). A station with a backlog (its queue after an outage: dozens of segments)
    whose first message is slow (a registration re-hashing a large file) fills the whole window with its
    own waiting messages, and station B gets nothing until A's slow message ends.
    Fails today: B's message does not come while A1 is slow. Control: it comes once A1 is released."""
    release = asyncio.Event()
    inbox = Inbox()

    async def handler(message: InboundMessage) -> None:
        if message.payload == b"A-slow":
            await release.wait()
        await inbox(message)

    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (a, _),
        running(broker.client_settings(pki.client("STATION-B"))) as (b, _),
    ):
        for client in (receiver, a, b):
            await client.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/api", handler, concurrency=4, key=_station_of)
        await a.publish(topic("STATION-A", "api"), b"A-slow")
        backlog = [b"A%d" % n for n in range(25)]  # below the bound: nothing is held over it
        for payload in backlog:
            await a.publish(topic("STATION-A", "api"), payload)
        await b.publish(topic("STATION-B", "api"), b"B")
        try:
            first = (await inbox.next()).payload
        except TimeoutError:
            release.set()
            rest = [(await inbox.next()).payload for _ in range(len(backlog) + 2)]
            # Control: held by the broker, not lost.
            assert sorted(rest) == sorted([b"A-slow", *backlog, b"B"])
            pytest.fail("station B's message did not come while station A's first was slow: A's own "
                        f"{len(backlog)} waiting messages filled the broker's in-flight window "
                        f"(held over the bound: {receiver.held_over_bound})")
        release.set()
        assert first == b"B"


async def test_review10_a_message_held_over_the_bound_is_not_overtaken_by_a_later_message_of_its_key(
    broker: MosquittoBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message held over the per-key bound is neither handled nor acknowledged; the broker sends it again
    only on a new connection (MQTT 4.4), and nothing makes one: held messages do not count towards
    _RECONNECT_AT_HELD_FAILURES. Meanwhile the key's later messages are handled: one station's messages are
    no longer handled in the order they came (module docstring, "Concurrency"), e.g. a segment after the
    record that closes its recording, and the held one waits for an unrelated reconnection (days).
    With Mosquitto 2.0.11 the shipped bound (32) is reached too (this review saw 21 held of 60 in one run:
    the broker sends beyond max_inflight_messages once acknowledgements come out of order); lowered to 3
    here to make it deterministic, as tests/mqtt/test_review9_client.py does.
    Fails today: A11, published after A1..A4 were handled, is handled before A5..A10."""
    monkeypatch.setattr(client_module, "_WAITING_PER_KEY", 3)
    release = asyncio.Event()
    inbox = Inbox()

    async def handler(message: InboundMessage) -> None:
        if message.payload == b"A1":
            await release.wait()
        await inbox(message)

    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (a, _),
        running(broker.client_settings(pki.client("STATION-B"))) as (b, _),
    ):
        for client in (receiver, a, b):
            await client.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/api", handler, concurrency=4, key=_station_of)
        sent = [b"A%d" % n for n in range(1, 11)]
        for payload in sent:
            await a.publish(topic("STATION-A", "api"), payload)
        await b.publish(topic("STATION-B", "api"), b"marker")
        await _dispatched(inbox, b"marker")
        release.set()
        assert [(await inbox.next()).payload for _ in range(4)] == sent[:4]
        connections = receiver.status.connections
        await a.publish(topic("STATION-A", "api"), b"A11")
        got = (await inbox.next()).payload
        assert receiver.status.connections == connections
        assert got == b"A5", (f"{got!r} handled before A5..A10 ({receiver.held_over_bound} held over the "
                              "bound, not handled on this connection): station A's order is broken")


async def test_review10_messages_in_hand_are_not_dropped_when_a_crashed_broker_resumes_a_session_without_them(
    broker: MosquittoBroker, pki: TestPki
) -> None:
    """On a resumed session the client drops the earlier connection's messages still waiting for their key
    (client.py _drop_stale_waiting / _stale), trusting the broker to send them again. Mosquitto saves its
    sessions every autosave_interval (60 s in the shipped configuration) and at a clean stop only: after a
    crash (OOM kill, power loss) it restarts from the last save, which has the central's session (so the
    CONNACK says session present) but not the messages that came after it. The broker never sends them
    again and the central throws away the copies it had in hand: a station's segments or registration
    requests PUBACKed to the station by the broker are handled by nobody.
    Fails today: A2 and A3 are never handled; A4, published after the reconnection, is."""
    release = asyncio.Event()
    inbox = Inbox()

    async def handler(message: InboundMessage) -> None:
        if message.payload == b"A1":
            await release.wait()
        await inbox(message)

    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (a, _),
        running(broker.client_settings(pki.client("STATION-B"))) as (b, _),
    ):
        for client in (receiver, a, b):
            await client.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/api", handler, concurrency=4, key=_station_of)
        # The broker saves the session (a clean stop), as its autosave would within a minute.
        seen = receiver.status.connections
        await broker.restart(graceful=True)
        await receiver.wait_for(lambda s: s.connections > seen, WAIT_S)
        for client in (a, b):
            await client.wait_connected(WAIT_S)
        for payload in (b"A1", b"A2", b"A3"):
            await a.publish(topic("STATION-A", "api"), payload)
        await b.publish(topic("STATION-B", "api"), b"marker")
        await _dispatched(inbox, b"marker")  # A1 running, A2 and A3 waiting behind it
        seen = receiver.status.connections
        await broker.restart(graceful=False)  # a crash: the last save has the session, not A1..A3
        await receiver.wait_for(lambda s: s.connections > seen, WAIT_S)
        release.set()
        assert (await inbox.next()).payload == b"A1"
        await a.wait_connected(WAIT_S)
        await a.publish(topic("STATION-A", "api"), b"A4")
        got = []
        while (payload := (await inbox.next()).payload) != b"A4":
            got.append(payload)
        # Control: the later message of the same station is handled (the connection works).
        assert got == [b"A2", b"A3"], (f"handled {got} before A4: A2 and A3, which the central had in hand "
                                       "and the crashed broker no longer had, were dropped unhandled")


@pytest.mark.parametrize("started_first", [False, True], ids=["connack-before-first-step", "control"])
async def test_review10_copies_cancelled_before_they_started_do_not_leave_their_key_counted_for_ever(
    broker: MosquittoBroker, pki: TestPki, started_first: bool
) -> None:
    """_dispatch drains the inbound queue in one step (Queue.get does not yield while it has items, and
    _dispatch_one awaits nothing for a concurrent subscription), creating a task per message; paho's
    network thread hands the CONNACK of a reconnection to the loop with call_soon_threadsafe, which can land
    between two of those task creations. _on_connack then cancels the stale waiting tasks, some of which have
    not taken their first step: a task cancelled before it starts never runs its coroutine, so
    _handle_concurrently's `finally` never gives back its count in _key_locks. Each such reconnection
    leaks counts; once a key's count passes _WAITING_PER_KEY every later message of that station is held
    over the bound, unhandled and unacknowledged, until the process restarts, though none of its messages
    is in hand. White-box: the interleaving is made by calling the loop-side handlers in that order.
    Fails today: the key's count stays after its tasks were cancelled, and a later message is held.
    Control (started_first): the same tasks, cancelled once they took their first step, give it back."""
    import paho.mqtt.client as paho

    from edge.uplink.policy import Backoff

    receiver = client_module.MqttClient(broker.client_settings(pki.client(CENTRAL_ID, unit="server")),
                                        backoff=Backoff(0.05, 0.5))
    handled: list[bytes] = []

    async def handler(message: InboundMessage) -> None:
        handled.append(message.payload)

    subscribing = asyncio.create_task(receiver.subscribe(
        f"{TOPIC_PREFIX}/stations/+/api", handler, concurrency=4, key=_station_of, timeout_s=3600))
    await asyncio.sleep(0)  # registered
    running_tasks: set[asyncio.Task[None]] = set()

    def message(payload: bytes) -> paho.MQTTMessage:
        m = paho.MQTTMessage(mid=1, topic=topic("STATION-A", "api").encode())
        m.payload, m.qos = payload, 1
        return m

    try:
        receiver._on_connack(False, 0, "Success")  # a new session
        for reconnection in range(12):
            generation = receiver._generation
            for n in range(3):  # a burst drained in one step of the dispatcher
                await receiver._dispatch_one(generation, message(b"%d-%d" % (reconnection, n)), running_tasks)
            if started_first:
                await asyncio.sleep(0)
            receiver._on_connack(True, 0, "Success")  # the CONNACK lands before those tasks first ran
            for _ in range(5):
                await asyncio.sleep(0)
        assert not running_tasks
        leaked = {key: users for key, (_, users) in receiver._key_locks.items()}
        await receiver._dispatch_one(receiver._generation, message(b"later"), running_tasks)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not leaked and b"later" in handled, (
            f"counts left in _key_locks with no message in hand: {leaked}; the later message of the station "
            f"was {'held over the bound' if receiver.held_over_bound else 'not handled'}")
    finally:
        subscribing.cancel()
        await asyncio.gather(subscribing, return_exceptions=True)
        await receiver.close()
