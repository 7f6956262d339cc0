"""systemd/edge-central-mqtt-worker@.service (review 8, finding 10): `edge central mqtt-worker` under the
central's user and sandbox, writable only in the MQTT transfers directory, checked by systemd itself."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.central.cli import add_central_parser, cmd_central_mqtt_worker
from edge.central.config import load_central_config
from tests.prerequisites import requires
from tests.service.test_central_unit import CENTRAL_UNIT, EXAMPLE_CONFIG, SHARED_HARDENING
from tests.service.test_unit_files import SYSTEMD_DIR, Unit, one, parse_unit, words

WORKER_UNIT = SYSTEMD_DIR / "edge-central-mqtt-worker@.service"


@pytest.fixture(scope="module")
def worker() -> Unit:
    return parse_unit(WORKER_UNIT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def central() -> Unit:
    return parse_unit(CENTRAL_UNIT.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "key",
    [*SHARED_HARDENING, "PrivateDevices", "DevicePolicy", "RestrictAddressFamilies", "SystemCallFilter",
     "CapabilityBoundingSet", "User", "Group", "Type", "ProcSubset"],
)
def test_the_central_s_user_and_sandbox(worker: Unit, central: Unit, key: str) -> None:
    assert worker["Service"].get(key) == central["Service"].get(key), key


def test_it_runs_the_worker_with_the_instance_as_client_id_and_the_central_s_config(
    worker: Unit, central: Unit
) -> None:
    argv = shlex.split(one(worker, "Service", "ExecStart"))
    central_argv = shlex.split(one(central, "Service", "ExecStart"))
    assert argv[0] == central_argv[0]
    assert argv[1:3] == ["central", "mqtt-worker"]
    # What the CLI makes of it: the central's configuration file, the instance name as client id.
    parser = argparse.ArgumentParser(prog="edge")
    add_central_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv[1:])
    assert args.func is cmd_central_mqtt_worker
    assert args.client_id == "%i"
    assert args.config == central_argv[central_argv.index("--config") + 1]


def test_writable_only_in_the_example_s_transfers_dir(worker: Unit) -> None:
    """Not the StateDirectory (the whole store: index, objects, keys); only [mqtt] transfers_dir as the
    example configuration's store_dir makes it."""
    assert "StateDirectory" not in worker["Service"]
    assert one(worker, "Service", "ProtectSystem") == "strict"
    store_dir = load_central_config(EXAMPLE_CONFIG).central.store_dir
    # "-": skipped while missing, so that a worker started before the central's first start can start
    # and wait for it (review 10; edge/central/worker_wait.py).
    assert words(worker, "Service", "ReadWritePaths") == ["-" + str(store_dir / "mqtt-transfers")]


analyze = shutil.which("systemd-analyze")


def _instance(tmp_path: Path, *, runnable: bool) -> Path:
    text = WORKER_UNIT.read_text(encoding="utf-8")
    if runnable:
        text = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", text)
    copy = tmp_path / "edge-central-mqtt-worker@CENTRAL-w1.service"
    copy.write_text(text, encoding="utf-8")
    return copy


@requires(analyze is not None, "systemd-analyze not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert analyze is not None
    copy = _instance(tmp_path, runnable=True)
    done = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert [line for line in (done.stdout + done.stderr).splitlines() if "mqtt-worker" in line] == []


@requires(analyze is not None, "systemd-analyze not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    assert analyze is not None
    copy = _instance(tmp_path, runnable=False)
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--man=no", "--threshold=15", str(copy)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout[-3000:]
