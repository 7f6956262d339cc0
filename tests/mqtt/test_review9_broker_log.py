"""Review 9, finding 7: the shipped broker configuration logged every connection with the client's full id
("New client connected from ... as <id>"), and client ids are secret (README "Client ids are secret":
whoever reads one takes that session over). With `connection_messages false` the broker's log never
shows a full id: not on connection, not on a takeover of the id, not on disconnection."""

from __future__ import annotations

from edge.mqtt.client_ids import secret_client_id
from tests.mqtt.broker import MosquittoBroker, TestPki
from tests.mqtt.test_client import WAIT_S, running, topic

SECRET = "fedcba9876543210fedc"  # 20 hex digits, the shape of edge.mqtt.client_ids' secret


async def _connect_take_over_and_leave(broker: MosquittoBroker, pki: TestPki, client_id: str) -> None:
    """A station connects under ``client_id`` and publishes; a second connection takes the id over (the
    broker closes the first); both end."""
    settings = broker.client_settings(pki.client("STATION-A"), client_id=client_id)
    async with running(settings) as (first, _):
        await first.wait_connected(WAIT_S)
        await first.publish(topic("STATION-A", "status/availability"), b"online")
        async with running(settings) as (second, _):
            await second.wait_connected(WAIT_S)
            await second.publish(topic("STATION-A", "status/availability"), b"online")


async def test_the_shipped_broker_never_logs_a_full_client_id(broker: MosquittoBroker, pki: TestPki) -> None:
    """Control: the same broker with connection messages switched back on logs the full id (the test sees
    what it looks for), and the broker did log while the secret id came and went (its startup)."""
    client_id = secret_client_id("STATION-A", SECRET)
    await _connect_take_over_and_leave(broker, pki, client_id)
    await broker.stop()  # flushes the log
    log_text = broker.log_text()
    assert "running" in log_text
    assert SECRET not in log_text, "the broker's log shows a full (secret) client id"

    conf = broker.conf_file.read_text()
    assert "\nconnection_messages false\n" in conf
    broker.conf_file.write_text(conf.replace("\nconnection_messages false\n", "\nconnection_messages true\n"))
    await broker.start()
    await _connect_take_over_and_leave(broker, pki, client_id)
    await broker.stop()
    assert SECRET in broker.log_text()  # control
