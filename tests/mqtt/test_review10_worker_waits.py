"""Review 10 (4a): an MQTT worker started before the central ever ran (no client-id secret yet) waits for
it instead of exiting 75: exiting made systemd restart it every 2 s until the unit's StartLimitBurst gave
up on it for good (systemd/edge-central-mqtt-worker@.service). The worker process runs the unit's own
ExecStart with a real notify socket and watchdog, against a real Mosquitto: it reports READY=1 with a
status naming what it waits for, pings the watchdog, logs the wait once, and starts working (subscribes)
once the central has made the secret. A stop while it waits is a clean exit (0)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.central.config import load_central_config
from edge.central.mqtt_receiver import central_mqtt_settings
from tests.mqtt.broker import MosquittoBroker, TestPki
from tests.mqtt.test_receiver_faults import _config_file
from tests.service.processes import NotifySocket, exec_start, notify_socket, running

UNIT = "edge-central-mqtt-worker@.service"
WAITING = "waiting for the central's first start"


@contextmanager
def _worker(config_file: Path, **env: str) -> Iterator[tuple[NotifySocket, subprocess.Popen[str]]]:
    """The worker as its unit runs it (its ExecStart, instance w1), with a notify socket."""
    argv = [word.replace("%i", "w1") for word in exec_start(UNIT, config_file)]
    with (tempfile.TemporaryDirectory(prefix="ntfy", dir="/tmp") as short,  # sockaddr_un: a short path
          notify_socket(Path(short)) as notify,
          running(argv, notify.env(**env)) as worker):
        yield notify, worker


async def test_a_worker_started_before_the_central_waits_and_starts_working_once_it_has_run(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    config_file = _config_file(tmp_path / "central", broker, pki)
    config = load_central_config(config_file)
    secret = config.layout.mqtt_client_secret
    # WATCHDOG_USEC: a ping at least every 0.5 s while it waits.
    with _worker(config_file, WATCHDOG_USEC="1000000") as (notify, worker):
        _at, ready = await asyncio.to_thread(notify.wait_for, "READY", 30)
        assert WAITING in ready.get("STATUS", ""), ready
        await asyncio.to_thread(notify.wait_for, "WATCHDOG", 10)
        await asyncio.to_thread(notify.wait_for, "WATCHDOG", 10)
        assert worker.poll() is None, "the worker exited instead of waiting"
        assert not secret.exists(), "the worker made the central's secret"
        # The central's first start makes the secret (the same code the central runs).
        central = central_mqtt_settings(config)
        assert secret.exists()
        while True:
            _at, fields = await asyncio.to_thread(notify.wait_for, "STATUS", 30)
            if "subscribed" in fields["STATUS"]:
                break
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(worker.communicate, None, 60)
        assert worker.returncode == 0, err[-3000:]
    assert err.count(WAITING) == 1, err[-3000:]  # said once, not once a poll
    assert central.client_id.endswith(secret.read_text().strip())  # the central's secret, not another


async def test_a_worker_stopped_while_it_waits_exits_cleanly_and_makes_nothing(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    config_file = _config_file(tmp_path / "central", broker, pki)
    secret = load_central_config(config_file).layout.mqtt_client_secret
    with _worker(config_file) as (notify, worker):
        _at, ready = await asyncio.to_thread(notify.wait_for, "READY", 30)
        assert WAITING in ready.get("STATUS", "")
        worker.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(worker.communicate, None, 60)
        assert worker.returncode == 0, err[-3000:]
    assert not secret.exists()
