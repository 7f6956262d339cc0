"""Review 13, finding 3, at the central: a receive queue file whose write lock is held at the start (as an
operator's ``sqlite3`` session would) fails the central's start (QueueUnavailable, which the command line
turns into exit 75) and is left as it is, with the message acknowledged into it; the store's lock is
released. Control: once the lock is free the central starts on the same file, which was not set aside."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.central.identity import init_central
from edge.central.receive_queue import Admission, Lane, QueueUnavailable, ReceiveQueue, queue_path
from edge.central.service import start_central
from tests.mqtt.broker import MosquittoBroker, TestPki
from tests.mqtt.central_harness import WAIT_S, MqttCentral, central_mqtt_config


async def test_a_central_whose_queue_is_write_locked_at_start_fails_its_start_and_leaves_the_file(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    config = central_mqtt_config(tmp_path / "central", broker, pki)
    init_central(config)
    path = queue_path(config.mqtt_transfers_dir, "central")
    queue = ReceiveQueue.open(path, per_station_messages=3, per_station_bytes=1000)
    try:
        topic = "evidence/stations/st-gone/api/request/tree-head"
        admission, digest = queue.reserve(Lane.API, "st-gone", topic, b"acknowledged")
        assert admission is Admission.ADDED
        queue.insert(Lane.API, "st-gone", topic, b"acknowledged", None, digest)
    finally:
        queue.close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(QueueUnavailable, match="database is locked"):
            await start_central(config)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not [p.name for p in path.parent.iterdir() if ".damaged-" in p.name]
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM queued").fetchone() == (1,)
    # Control: the lock is free; the central starts (its store lock was released) on the same file.
    running = await start_central(config)
    try:
        central = MqttCentral(config, running)
        await central.receiver.wait_subscribed(WAIT_S)
        assert not [p.name for p in path.parent.iterdir() if ".damaged-" in p.name]
    finally:
        await running.stop()
