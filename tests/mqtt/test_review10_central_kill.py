"""Review 10: the central's receiver acknowledges a request once it is in its durable receive queue, so a
central killed (SIGKILL) after that and before handling it must find it there at its next start: handled
then, once. A real central process (`edge central run`), a real Mosquitto.

The central process here runs with its tree-head operation held (set in the test's own launcher script,
not in the product): the request is queued, acknowledged, and being handled when the process is killed.
(Before the queue the receiver held such a request unacknowledged, and the broker delivered it again
after the restart: this test passes there too; it guards the queue's durability, not an old failure.)"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path

from edge.central.config import load_central_config
from edge.central.identity import init_central
from edge.central.receive_queue import queue_path
from edge.central.sqlite import SqliteDatabase
from edge.mqtt.api import ApiOp
from tests.central.conftest import FakeStation
from tests.mqtt.broker import MosquittoBroker, TestPki
from tests.mqtt.central_harness import WAIT_S, wire_station
from tests.mqtt.test_receiver_faults import _RUN_CLI, _answered, _config_file, _edge_process
from tests.mqtt.test_review10_receiver import _publish_request

# The launcher of tests/mqtt/test_receiver_faults.py, with tree-head held for ever once it is entered
# (after writing the marker file the test waits for).
_RUN_CLI_HOLDING_TREE_HEAD = """
import asyncio, os
from pathlib import Path
from edge.central import mqtt_api

async def held(self, caller, body):
    Path(os.environ["HELD_MARKER"]).write_text("held")
    await asyncio.Event().wait()

mqtt_api.MqttApi._tree_head = held
""" + _RUN_CLI


def _queued_request_ids(path: Path) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        payloads = [row[0] for row in conn.execute("SELECT payload FROM queued ORDER BY id")]
    conn.close()
    return [json.loads(p)["request_id"] for p in payloads]


async def test_a_request_acknowledged_into_the_queue_survives_a_sigkill_of_the_central_and_is_handled_once(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    config_file = _config_file(tmp_path / "central", broker, pki)
    config = load_central_config(config_file)
    init_central(config)
    fake = FakeStation("st-0110")
    database = SqliteDatabase.open(config.layout.index_db)
    try:
        database.index.enroll_station(fake.station_id, fake.key.public_key_b64, "c" * 64)
    finally:
        database.close()
    queue_file = queue_path(config.mqtt_transfers_dir, "central")
    marker = tmp_path / "held"
    log = tmp_path / "central.log"
    async with wire_station(fake, broker, pki) as station:
        holding = _edge_process(["central", "run", "--config", str(config_file)], log,
                                script=_RUN_CLI_HOLDING_TREE_HEAD, env={"HELD_MARKER": str(marker)})
        async with holding as process:
            await _answered(station)
            held = await _publish_request(station, ApiOp.TREE_HEAD)
            behind = await _publish_request(station, ApiOp.LEDGER_HEAD)  # queued behind it
            async with asyncio.timeout(WAIT_S):
                while not marker.exists() or behind not in _queued_request_ids(queue_file):
                    await asyncio.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        assert held not in station.replies and behind not in station.replies
        assert _queued_request_ids(queue_file) == [held, behind]
        async with _edge_process(["central", "run", "--config", str(config_file)], log):
            await station.wait_until(lambda: held in station.replies and behind in station.replies)
            # A later request is answered after them: by then a second copy of either would have come.
            assert (await station.request(ApiOp.LEDGER_HEAD, {})).status == 200
            answered = [json.loads(m.payload)["request_id"] for m in station.reply_messages]
            assert answered.count(held) == 1 and answered.count(behind) == 1, answered
            assert answered.index(held) < answered.index(behind)
            assert station.replies[held].status == 200 and station.replies[behind].status == 200
            # Each is removed from the queue once answered (a moment after its reply went out).
            async with asyncio.timeout(WAIT_S):
                while _queued_request_ids(queue_file):
                    await asyncio.sleep(0.05)
    fake.conn.close()
