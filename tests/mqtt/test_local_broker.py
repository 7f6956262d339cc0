"""edge.mqtt.local_broker: the broker of the demo, the benchmark and the tests, outside the tests' fixtures.

It starts from nothing under a directory that does not exist yet, refuses configuration values that
would change the shipped file's structure, reports a broker that cannot start with its own words, and
does not outlive the process that started it."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.mqtt.local_broker import BrokerError, BrokerTls, LocalBroker, fill_placeholders
from tests.mqtt.broker import ROOT, TestPki, require_mosquitto


def _tls(pki: TestPki) -> BrokerTls:
    cert, key = pki.server()
    return BrokerTls(pki.ca_file, cert, key, pki.crl_file)


def test_a_value_that_would_add_a_line_to_the_configuration_is_refused() -> None:
    assert fill_placeholders("port @PORT@\n", {"PORT": "1883"}) == "port 1883\n"
    with pytest.raises(BrokerError, match=r"PORT .*expected one line"):
        fill_placeholders("port @PORT@\n", {"PORT": "1883\nallow_anonymous true"})
    with pytest.raises(BrokerError, match="placeholders left unfilled"):
        fill_placeholders("port @PORT@\nuser @USER@\n", {"PORT": "1883"})


def test_a_path_mosquitto_would_cut_at_a_space_is_refused(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path / "pki")
    with pytest.raises(BrokerError, match=r"directory .*without white space"):
        LocalBroker(tmp_path / "my broker", _tls(pki), central_id="C1")
    with pytest.raises(BrokerError, match=r"central id .*expected"):
        LocalBroker(tmp_path / "broker", _tls(pki), central_id="C1 #")


async def test_starts_under_a_directory_that_does_not_exist_yet(tmp_path: Path) -> None:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    root = tmp_path / "not" / "made" / "yet"
    async with LocalBroker(root, _tls(pki), central_id="C1") as broker:
        assert broker.running and broker.url == f"mqtts://127.0.0.1:{broker.port}"
        assert (root / "data").is_dir() and "acl_file " + str(root / "acl") in broker.conf_file.read_text()
    assert not broker.running


async def test_a_broker_that_cannot_listen_is_reported_with_its_own_words(tmp_path: Path) -> None:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = LocalBroker(tmp_path / "broker", _tls(pki), central_id="C1", port=taken.getsockname()[1])
        with pytest.raises(BrokerError, match="mosquitto exited with status") as caught:
            await broker.start()
    assert "in use" in str(caught.value).lower()
    assert not broker.running


def test_the_broker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A demo killed with SIGKILL runs no cleanup; its broker must not stay behind holding the port."""
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    cert, key = pki.server()
    starter = textwrap.dedent(
        f"""
        import asyncio, json, sys
        from pathlib import Path
        from edge.mqtt.local_broker import BrokerTls, LocalBroker

        async def main() -> None:
            tls = BrokerTls(Path({str(pki.ca_file)!r}), Path({str(cert)!r}), Path({str(key)!r}),
                            Path({str(pki.crl_file)!r}))
            broker = LocalBroker(Path({str(tmp_path / "broker")!r}), tls, central_id="C1")
            await broker.start()
            print(json.dumps({{"pid": broker.process.pid}}), flush=True)
            await asyncio.Event().wait()

        asyncio.run(main())
        """
    )
    starting = [sys.executable, "-c", starter]
    with subprocess.Popen(starting, cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the starter printed nothing"
        broker_pid = json.loads(line)["pid"]
        pidfd = os.pidfd_open(broker_pid)
        try:
            # Control: the broker runs while its starter does.
            assert select.select([pidfd], [], [], 0)[0] == []
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            # The pidfd becomes readable when the broker exits (an event, not a sleep).
            assert select.select([pidfd], [], [], 10)[0] == [pidfd], "the broker outlived its starter"
        finally:
            if not select.select([pidfd], [], [], 0)[0]:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # ours, started by the starter above
            os.close(pidfd)
            if proc.poll() is None:
                proc.kill()

