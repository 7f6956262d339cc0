"""The central's MQTT receiver under faults, with a real Mosquitto and a real central: the broker killed and
restarted mid-transfer, the central process killed (SIGKILL) mid-transfer and started again, and two
receivers sharing the subscription group."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from edge.central.config import CentralConfig, load_central_config
from edge.central.identity import init_central
from edge.central.service import start_central
from edge.central.sqlite import SqliteDatabase
from edge.mqtt.api import ApiOp
from edge.mqtt.client import ConnectionState, ConnectionStatus, MqttClient
from edge.mqtt.filetransfer import FinCommand, InitCommand, Mode, ReasonCode, transfer_upload_id
from tests.central.conftest import FakeStation, free_port
from tests.mqtt.broker import CENTRAL_ID, MosquittoBroker, TestPki
from tests.mqtt.central_harness import (
    WAIT_S,
    MqttCentral,
    WireStation,
    file_id_for,
    init_payload,
    running_mqtt_central,
    segment_commands,
    station_receipt_problems,
    wire_station,
)

JOURNAL_RECORD_BYTES = 48
# The longest a central process may take to start (or a first few dozen answers to come) on a loaded machine.
START_S = 120.0


def _ready(status: ConnectionStatus, connections: int) -> bool:
    return (status.state is ConnectionState.CONNECTED and status.connections >= connections
            and status.unconfirmed_subscriptions == 0)


async def _reconnected(client: MqttClient | None, connections: int) -> None:
    assert client is not None
    await client.wait_for(lambda s: _ready(s, connections), WAIT_S)


def _journal_records(store_root: Path, station: str, file_id: str) -> int:
    journal = store_root / f"{transfer_upload_id(station, file_id)}.segments"
    size = journal.stat().st_size
    assert size % JOURNAL_RECORD_BYTES == 0
    return size // JOURNAL_RECORD_BYTES


async def test_the_broker_killed_mid_transfer_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    fake = FakeStation("st-0101")
    acquired = fake.acquire(random.Random(11).randbytes(120_000))
    file_id = file_id_for(acquired.item)
    segments = segment_commands(file_id, acquired.content, 4096)
    half = len(segments) // 2
    async with running_mqtt_central(tmp_path / "central", broker, pki) as central:
        central.enroll(fake)
        store = central.running.parts.mqtt_transfers
        assert store is not None
        async with wire_station(fake, broker, pki) as station:
            init = await station.command(InitCommand(file_id, Mode.ASYNC), init_payload(acquired.content))
            assert init.reason_code is ReasonCode.SUCCESS
            for command, chunk in segments[:half]:
                assert (await station.command(command, chunk)).reason_code is ReasonCode.SUCCESS
            # SIGKILL: the broker saves nothing (autosave every 60 s), so both sessions are gone with it.
            await broker.stop(graceful=False)
            # A segment sent while the broker is away waits in the station's client, and is sent again
            # until the receiver answers it.
            pending = asyncio.create_task(station.command_until_answered(*segments[half]))
            await broker.start()
            await _reconnected(central.receiver.client, 2)
            await _reconnected(central.receiver.api_client, 2)
            await _reconnected(station.client, 2)
            assert (await pending).reason_code is ReasonCode.SUCCESS
            # The station cannot tell which results it missed: it sends a few acknowledged segments again
            # as well as the rest. Each is stored once.
            for command, chunk in [*segments[half - 3:half], *segments[half + 1:]]:
                result = await station.command_until_answered(command, chunk)
                assert result.reason_code is ReasonCode.SUCCESS
            fin = FinCommand(file_id, len(acquired.content), acquired.sha256, Mode.ASYNC)
            assert (await station.command_until_answered(fin)).reason_code is ReasonCode.SUCCESS
            assert _journal_records(store.root, fake.station_id, file_id) == len(segments)
            reply = await station.request(ApiOp.REGISTER, station.register_body(acquired, file_id))
            assert reply.status == 201, reply.body
            assert station_receipt_problems(reply.body["receipt"], central, acquired, fake.station_id) == []
            assert central.running.parts.merkle.size() == 1
    fake.conn.close()


# -- the central process killed mid-transfer ------------------------------------------------------------


_RUN_CLI = """
import argparse, sys
from edge.central.cli import add_central_parser
parser = argparse.ArgumentParser(prog="edge")
add_central_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def _config_file(root: Path, broker: MosquittoBroker, pki: TestPki) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "central.toml"
    path.write_text(
        f'[central]\nid = "{CENTRAL_ID}"\nstore_dir = "{root / "store"}"\n\n'
        f'[server]\nlisten = "127.0.0.1"\nport = {free_port()}\nnames = ["localhost", "127.0.0.1"]\n\n'
        f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:{broker.port}"\nca_file = "{pki.ca_file}"\n'
        f'client_bundle_dir = "{pki.client(CENTRAL_ID)}"\nkeepalive_s = 10\nconnect_timeout_s = 5\n'
    )
    return path


@asynccontextmanager
async def _edge_process(
    args: list[str], log: Path, *, until: bytes = b"READY=1", script: str = _RUN_CLI,
    env: dict[str, str] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`edge <args>` in its own process (`script` runs the CLI, with `env` added to the environment),
    until its sd_notify messages carry `until`; killed at the end if still up."""
    with tempfile.TemporaryDirectory(prefix="ntfy", dir="/tmp") as short:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(f"{short}/notify")
        notify.setblocking(False)
        environment = {**os.environ, **(env or {}), "NOTIFY_SOCKET": f"{short}/notify"}
        with log.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, *args,
                                                           env=environment, stderr=stderr)
        try:
            loop = asyncio.get_running_loop()
            messages = b""
            # A bound on a process start, not a measure of it: on a loaded two-core CI machine a Python
            # process importing the central has been seen to take most of a minute.
            async with asyncio.timeout(START_S):
                while until not in messages:
                    messages += await loop.sock_recv(notify, 4096)
            yield process
        finally:
            notify.close()
            if process.returncode is None:
                process.kill()
                await process.wait()


def _central_process(config_file: Path, log: Path) -> Any:
    return _edge_process(["central", "run", "--config", str(config_file)], log)


async def _answered(station: WireStation) -> None:
    """Until the receiver answers a request (it subscribes a moment after the process is ready)."""
    for _ in range(60):
        try:
            await station.request(ApiOp.LEDGER_HEAD, {}, timeout_s=2.0)
            return
        except TimeoutError:
            continue
    raise TimeoutError("the central's receiver never answered")


async def test_the_central_killed_mid_transfer_loses_nothing_acknowledged_and_completes(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    config_file = _config_file(tmp_path / "central", broker, pki)
    config: CentralConfig = load_central_config(config_file)
    init_central(config)
    fake = FakeStation("st-0103")
    database = SqliteDatabase.open(config.layout.index_db)
    try:
        database.index.enroll_station(fake.station_id, fake.key.public_key_b64, "c" * 64)
    finally:
        database.close()
    acquired = fake.acquire(random.Random(13).randbytes(400_000))
    file_id = file_id_for(acquired.item)
    segments = segment_commands(file_id, acquired.content, 2048)
    log = tmp_path / "central.log"
    async with wire_station(fake, broker, pki) as station:
        async with _central_process(config_file, log) as process:
            await _answered(station)
            init = await station.command(InitCommand(file_id, Mode.ASYNC), init_payload(acquired.content))
            assert init.reason_code is ReasonCode.SUCCESS
            # Every segment at once; the central is killed once a few dozen are answered.
            topic_root = f"evidence/stations/{fake.station_id}"
            sending = [asyncio.create_task(station.client.publish(f"{topic_root}/{command.topic}", chunk))
                       for command, chunk in segments]
            await station.wait_until(lambda: sum(len(station.results[c.topic]) for c, _ in segments) >= 40,
                                     timeout_s=START_S)
            process.send_signal(signal.SIGKILL)
            await process.wait()
            answered = {c.offset: station.results[c.topic][0]
                        for c, _ in segments if station.results[c.topic]}
            assert 40 <= len(answered) < len(segments), "the kill came after the transfer, not in its middle"
            assert all(r.reason_code is ReasonCode.SUCCESS for r in answered.values())
            await asyncio.gather(*sending, return_exceptions=True)
        async with _central_process(config_file, log):
            await _answered(station)
            # Every segment acknowledged before the kill is still stored (nothing was resent yet).
            state = await station.request(ApiOp.TRANSFER_STATE, {"file_id": file_id})
            assert state.status == 200 and state.body["known"] is True
            runs = state.body["segments"]
            for offset in answered:
                assert any(start <= offset < start + size for start, size in runs), offset
            # The station resends what it still has no result for; the broker delivers the rest again from
            # the central's persistent session (unacknowledged when the process died), answered as well.
            for command, chunk in segments:
                if not station.results[command.topic]:

                    result = await station.command_until_answered(command, chunk)
                    assert result.reason_code is ReasonCode.SUCCESS, result.reason_description
            await station.wait_until(lambda: all(station.results[c.topic] for c, _ in segments))
            assert all(station.results[c.topic][-1].reason_code is ReasonCode.SUCCESS for c, _ in segments)
            fin = FinCommand(file_id, len(acquired.content), acquired.sha256, Mode.ASYNC)
            assert (await station.command_until_answered(fin)).reason_code is ReasonCode.SUCCESS
            reply = await station.request(ApiOp.REGISTER, station.register_body(acquired, file_id))
            assert reply.status == 201, reply.body
    store = config.mqtt_transfers_dir
    assert not any(store.glob("*.part"))  # registration took it
    text = log.read_text(errors="replace")
    assert "PRIVATE KEY" not in text
    fake.conn.close()


async def test_a_worker_process_and_the_central_share_the_group_and_one_file_assembles(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    """`edge central mqtt-worker` (its own process and session) beside the central: the broker splits one
    file's commands between them, both store into the shared transfers directory, the central registers."""
    config_file = _config_file(tmp_path / "central", broker, pki)
    config = load_central_config(config_file)
    init_central(config)
    fake = FakeStation("st-0102")
    acquired = fake.acquire(random.Random(12).randbytes(120_000))
    file_id = file_id_for(acquired.item)
    running = await start_central(config)
    try:
        central = MqttCentral(config, running)
        central.enroll(fake)
        await central.receiver.wait_subscribed(WAIT_S)
        worker = ["central", "mqtt-worker", "--config", str(config_file), "--client-id", f"{CENTRAL_ID}-2"]
        async with (
            _edge_process(worker, tmp_path / "worker.log", until=b"subscribed"),
            wire_station(fake, broker, pki) as station,
        ):
            results = await station.send_file(file_id, acquired.content, segment_bytes=2048)
            assert all(r.reason_code is ReasonCode.SUCCESS for r in results), \
                [r.reason_description for r in results]
            # Round robin within the group: the central answered some, the worker the others.
            by_central = central.receiver.counts.commands
            assert 0 < by_central < len(results), (by_central, len(results))
            reply = await station.request(ApiOp.REGISTER, station.register_body(acquired, file_id))
            assert reply.status == 201, reply.body
            assert running.parts.file_objects.path_of(acquired.sha256).read_bytes() == acquired.content
            # Each process has its own receive queue, and the fin (queued by whichever got it) was
            # answered once: no message was handled by both.
            queues = config.mqtt_transfers_dir / "receive-queue"
            assert {"central.sqlite3", f"worker-{CENTRAL_ID}-2.sqlite3"} <= {p.name for p in queues.iterdir()}
            fin = FinCommand(file_id, len(acquired.content), acquired.sha256, Mode.ASYNC)
            assert len(station.results[fin.topic]) == 1
    finally:
        await running.stop()
    assert "PRIVATE KEY" not in (tmp_path / "worker.log").read_text(errors="replace")
    fake.conn.close()
