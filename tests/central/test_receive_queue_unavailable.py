"""Review 13, finding 3, at the process: a receive queue file that cannot be used at the start (here its
write lock is held by another connection past SQLite's busy wait, as an operator's ``sqlite3`` session
would) fails the worker's start with 75 (EX_TEMPFAIL: systemd starts it again) and is left as it is, with
the message acknowledged into it. Control: once the lock is free, the same file opens with its message."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.central import mqtt_receiver
from edge.central.config import load_central_config
from edge.central.mqtt_receiver import central_mqtt_settings
from edge.central.receive_queue import Admission, Lane, ReceiveQueue, queue_path
from edge.cli import main
from tests.central.test_worker_waits_for_the_central import _write_config


async def _no_work(receiver: mqtt_receiver.MqttReceiver) -> int:
    return 0  # a worker that got this far would run: not wanted here (no broker)


def test_a_worker_whose_queue_is_write_locked_at_start_exits_tempfail_and_leaves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = _write_config(tmp_path)
    config = load_central_config(config_file)
    central_mqtt_settings(config)  # the central has run once: its client-id secret exists
    path = queue_path(config.mqtt_transfers_dir, "worker-w1")
    queue = ReceiveQueue.open(path, per_station_messages=3, per_station_bytes=100)
    try:
        topic = "evidence/stations/st-a/$file-async/x/fin/1"
        admission, digest = queue.reserve(Lane.CONTENT, "st-a", topic, b"acknowledged")
        assert admission is Admission.ADDED
        queue.insert(Lane.CONTENT, "st-a", topic, b"acknowledged", None, digest)
    finally:
        queue.close()
    monkeypatch.setattr(mqtt_receiver, "_work", _no_work)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        status = main(["central", "mqtt-worker", "--config", str(config_file), "--client-id", "w1"])
    finally:
        other.execute("ROLLBACK")
        other.close()
    err = capsys.readouterr().err
    assert status == 75, err
    assert "database is locked" in err and "left as it is" in err, err
    assert not [p.name for p in path.parent.iterdir() if ".damaged-" in p.name]
    # Control: free now, the same file opens with the acknowledged message in it.
    reopened = ReceiveQueue.open(path, per_station_messages=3, per_station_bytes=100)
    try:
        assert reopened.set_aside is None and reopened.waiting == 1
    finally:
        reopened.close()


def test_a_sqlite_file_of_another_schema_is_set_aside_as_not_a_queue(tmp_path: Path) -> None:
    """What is really not a queue is still set aside (only a condition of the moment is not): a SQLite file
    whose ``queued`` table has other columns. Control: a queue of this module's schema is kept."""
    path = queue_path(tmp_path, "central")
    path.parent.mkdir(parents=True)
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE queued (id INTEGER PRIMARY KEY, what TEXT)")
    other.commit()
    other.close()
    queue = ReceiveQueue.open(path, per_station_messages=3, per_station_bytes=100)
    try:
        assert queue.set_aside is not None and "not a receive queue" in queue.set_aside
        assert queue.waiting == 0
    finally:
        queue.close()
    control = ReceiveQueue.open(path, per_station_messages=3, per_station_bytes=100)
    try:
        assert control.set_aside is None
    finally:
        control.close()
