"""The MQTT client's per-key concurrency: a key's count survives no cancelled task (review 10), against
the real Mosquitto 2.0.11 with the shipped configuration."""

from __future__ import annotations

import asyncio

import pytest

from edge.mqtt import client as client_module
from edge.mqtt.client import InboundMessage
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki
from tests.mqtt.test_client import topic
from tests.mqtt.test_review9_client import _station_of


@pytest.mark.parametrize("started_first", [False, True], ids=["connack-before-first-step", "control"])
async def test_copies_cancelled_before_they_started_do_not_leave_their_key_counted_for_ever(
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
    Failed before the count was given back in a done callback (review 10): the key's count stayed after
    its tasks were cancelled, and a later message was held.
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
