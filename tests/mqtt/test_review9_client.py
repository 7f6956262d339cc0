"""Review 9: the MQTT client's poison handling and its logs, against the real Mosquitto with the shipped
configuration (max_inflight_messages 20).

These tests failed on review9 (b66b5dc). The review's tests of the client's concurrent subscriptions (per-key
order, in-order acknowledgements, the bound per key, copies on a resumed session) went with those
subscriptions (review 10): the central's receiver handles one message at a time per connection and queues
the slow ones durably (tests/mqtt/test_review10_receiver.py, tests/mqtt/test_receiver_fairness.py)."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from edge.mqtt import client as client_module
from edge.mqtt.client import ConnectionState, InboundMessage
from edge.mqtt.client_ids import secret_client_id
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki
from tests.mqtt.test_client import WAIT_S, Inbox, running, topic

SECRET = "0123456789abcdef0123"  # 20 hex digits, the shape of edge.mqtt.client_ids' secret


async def test_the_reconnect_for_held_failures_never_logs_the_full_client_id(
    broker: MosquittoBroker, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    """Client ids are secret (README "Client ids are secret"; whoever reads one takes the session over),
    yet client.py logs `self._settings.client_id` in full when held failures make it reconnect
    (edge/mqtt/client.py, "holds %d messages whose handler failed"). Fails today: the secret is in the log.
    Control: the warning itself is logged (with the shortened id)."""
    caplog.set_level(logging.INFO)
    settings = broker.client_settings(pki.client(CENTRAL_ID, unit="server"))
    settings = replace(settings, client_id=secret_client_id(CENTRAL_ID, SECRET) + "-api")

    async def always_fails(message: InboundMessage) -> None:
        raise ValueError("cannot handle this")

    async with (
        running(settings) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (station, _),
    ):
        await receiver.wait_connected(WAIT_S)
        await station.wait_connected(WAIT_S)
        connections = receiver.status.connections
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/segments", always_fails)
        for n in range(12):
            await station.publish(topic("STATION-A", "segments"), b"bad %d" % n)
        await receiver.wait_for(lambda s: s.connections > connections, WAIT_S)
    assert "whose handler failed: reconnecting" in caplog.text  # control: the warning was logged
    assert SECRET not in caplog.text, "the full (secret) client id was logged"


async def _dispatched(inbox: Inbox, marker: bytes) -> None:
    """Waits for ``marker`` (published after the messages of interest): the dispatcher takes messages in the
    order they came, so every earlier one was dispatched (and, handled in place, handled) by then."""
    while (await inbox.next()).payload != marker:
        pass


async def test_a_message_acknowledged_as_poison_is_forgotten_so_an_identical_resend_starts_at_zero(
    broker: MosquittoBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 9: the failure count of a message survived its acknowledgement as poison, so the same request
    published again later (after the central was fixed, say) was poison at its first failure. Poison after 2
    failures here: "p" fails, comes again after a broker restart, fails, is acknowledged as poison; "p"
    published again fails once and is held, not acknowledged as poison.
    Control: the first "p" did become poison at its second failure."""
    monkeypatch.setattr(client_module, "POISON_AFTER_FAILURES", 2)
    caplog.set_level(logging.INFO, logger="edge.mqtt.client")
    inbox = Inbox()
    failures = 0

    async def handler(message: InboundMessage) -> None:
        nonlocal failures
        if message.payload == b"p":
            failures += 1
            raise ValueError("cannot handle this")
        await inbox(message)

    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (a, _),
    ):
        await receiver.wait_connected(WAIT_S)
        await a.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/segments", handler)
        await a.publish(topic("STATION-A", "segments"), b"p")
        await a.publish(topic("STATION-A", "segments"), b"m1")
        await _dispatched(inbox, b"m1")
        assert failures == 1 and "acknowledged as poison" not in caplog.text
        connections = receiver.status.connections
        await broker.restart(graceful=True)
        await receiver.wait_for(lambda s: s.connections > connections, WAIT_S)
        await a.wait_for(lambda s: s.state is ConnectionState.CONNECTED, WAIT_S)
        await a.publish(topic("STATION-A", "segments"), b"m2")
        await _dispatched(inbox, b"m2")
        assert failures == 2 and caplog.text.count("acknowledged as poison") == 1  # control

        await a.publish(topic("STATION-A", "segments"), b"p")
        await a.publish(topic("STATION-A", "segments"), b"m3")
        await _dispatched(inbox, b"m3")
        assert failures == 3
        assert caplog.text.count("acknowledged as poison") == 1, "the resend was poison at its first failure"
        assert "failed (1 of 2)" in caplog.text.split("acknowledged as poison", 1)[1]


async def test_qos0_messages_on_a_subscription_for_qos1_only_are_dropped_counted_and_logged_at_a_bounded_rate(
    broker: MosquittoBroker, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 2 (kept when the concurrent subscriptions went): the central subscribes at QoS 1, yet a QoS 0
    publish is delivered at QoS 0, and nothing bounds those while a handler works. 50 QoS 0 messages: none
    handled, all counted, one log line. Control: the QoS 1 message after them on the same topic is
    handled; a subscription not for QoS 1 only still handles QoS 0."""
    caplog.set_level(logging.WARNING, logger="edge.mqtt.client")
    inbox = Inbox()
    async with (
        running(broker.client_settings(pki.client(CENTRAL_ID, unit="server"))) as (receiver, _),
        running(broker.client_settings(pki.client("STATION-A"))) as (a, _),
    ):
        await receiver.wait_connected(WAIT_S)
        await a.wait_connected(WAIT_S)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/api", inbox, qos1_only=True)
        await receiver.subscribe(f"{TOPIC_PREFIX}/stations/+/plain", inbox)
        for n in range(50):
            await a.publish(topic("STATION-A", "api"), b"q0 %d" % n, qos=0)
        await a.publish(topic("STATION-A", "api"), b"q1")
        assert (await inbox.next()).payload == b"q1"
        assert receiver.dropped_qos0 == 50
        assert caplog.text.count("at QoS 0 on a subscription for QoS 1 only dropped") == 1
        await a.publish(topic("STATION-A", "plain"), b"plain q0", qos=0)
        assert (await inbox.next()).payload == b"plain q0"
