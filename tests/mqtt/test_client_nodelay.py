"""The MQTT client's connection sends small packets at once (TCP_NODELAY): without it every PUBACK and
transfer result waited for the peer's delayed ACK under Nagle's algorithm, ~40 ms each, and evidence over
MQTT moved at a quarter of its speed (figures: tests/bench/mqtt.py, README "Performance")."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

from edge.mqtt.client import MqttClient
from edge.uplink.policy import Backoff
from tests.mqtt.broker import MosquittoBroker, TestPki, running_broker


async def test_the_connection_to_the_broker_has_tcp_nodelay(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path / "pki")
    async with running_broker(tmp_path, pki) as broker:
        assert isinstance(broker, MosquittoBroker)
        client = MqttClient(broker.client_settings(pki.client("STATION-A")),
                            backoff=Backoff(0.05, 0.5, rng=random.Random(7)))
        task = asyncio.create_task(client.run())
        try:
            await client.wait_connected(20)
            # The socket paho writes to (no public handle: the client hides paho on purpose).
            sock = client._paho.socket()
            assert isinstance(sock, socket.socket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            # Control: a TCP socket starts with Nagle's algorithm on.
            with socket.create_connection((broker.host, broker.port)) as plain:
                assert plain.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        finally:
            await client.close()
            await task
