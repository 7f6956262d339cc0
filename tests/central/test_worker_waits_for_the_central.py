"""Review 9 #8: an MQTT worker started before the central ever ran must not make the client-id secret
(under its systemd sandbox identity/ is read-only: EROFS, exit 78, and RestartPreventExitStatus=78 never
restarts it). Review 10: it waits for the central's first start rather than exit 75 until systemd's start
limit gives up on it (edge.central.worker_wait); 75 stays for a secret that exists and still fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.central.config import load_central_config
from edge.central.mqtt_receiver import central_mqtt_settings
from edge.cli import main
from tests.mqtt.broker import TestPki


def _write_config(tmp_path: Path) -> Path:
    pki = TestPki.create(tmp_path / "pki")
    bundle = pki.client("central-hq")
    config = tmp_path / "central.toml"
    config.write_text(
        f'[central]\nid = "central-hq"\nstore_dir = "{tmp_path / "store"}"\n'
        f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:1"\nca_file = "{pki.ca_file}"\n'
        f'client_bundle_dir = "{bundle}"\n'
    )
    return config


def test_a_worker_before_the_central_ever_ran_waits_without_making_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 10: it waits instead of exiting 75 (tests/mqtt/test_review10_worker_waits.py runs the process
    against a real broker); here, in process, the wait is ended as SIGTERM ends it, and the worker exits 0
    without having made the secret."""
    from edge.central import worker_wait

    config_file = _write_config(tmp_path)
    config = load_central_config(config_file)
    secret = config.layout.mqtt_client_secret
    waited: list[Path] = []

    def stopped_while_waiting(path: Path, **_: object) -> bool:
        waited.append(path)
        return False

    monkeypatch.setattr(worker_wait, "wait_for_the_central", stopped_while_waiting)
    assert main(["central", "mqtt-worker", "--config", str(config_file), "--client-id", "w1"]) == 0
    assert waited == [secret]
    assert not secret.exists(), "the worker made the central's client-id secret"
    # Control: once the central made it, the worker takes the central's id with its own suffix.
    from edge.central.mqtt_receiver import worker_mqtt_settings

    central = central_mqtt_settings(config)
    assert secret.exists()
    assert worker_mqtt_settings(config, "w1").client_id == f"{central.client_id}-w-w1"


def test_the_worker_unit_restarts_on_tempfail() -> None:
    unit = (Path(__file__).parents[2] / "systemd" / "edge-central-mqtt-worker@.service").read_text()
    prevent = [line for line in unit.splitlines() if line.startswith("RestartPreventExitStatus=")]
    assert prevent and all("75" not in line.split("=", 1)[1].split() for line in prevent)
    assert "Restart=on-failure" in unit.splitlines()


def test_a_worker_that_waited_exits_tempfail_once_when_it_cannot_write_the_transfers_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the wait, a transfers directory this process cannot make or write (under systemd: its sandbox
    was set up before the central made it) ends the worker with 75, for systemd to start it again with the
    directory in its sandbox, rather than a worker that runs and fails every segment. Here the directory
    cannot be made (its parent is a file: a real OS refusal; root ignores mode bits). Control: a directory
    it can make is no reason to stop (tests/mqtt/test_review10_worker_waits.py: the worker that waited
    goes on to subscribe)."""
    from edge.central import worker_wait

    config_file = _write_config(tmp_path)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with config_file.open("a") as toml:
        toml.write(f'transfers_dir = "{blocker / "transfers"}"\n')
    config = load_central_config(config_file)

    def central_starts_meanwhile(path: Path, **_: object) -> bool:
        central_mqtt_settings(config)  # the central's first start makes the secret
        return True

    monkeypatch.setattr(worker_wait, "wait_for_the_central", central_starts_meanwhile)
    assert main(["central", "mqtt-worker", "--config", str(config_file), "--client-id", "w1"]) == 75
    assert f"{blocker / 'transfers'} cannot be made here" in capsys.readouterr().err
    # Control: the restart finds the secret, does not wait, and does not take this path again.
    assert worker_wait.transfers_dir_unusable(tmp_path / "transfers") is None
    assert (tmp_path / "transfers").is_dir()
