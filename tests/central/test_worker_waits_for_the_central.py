"""Review 9 #8: an MQTT worker started before the central ever ran must not make the client-id secret
(under its systemd sandbox identity/ is read-only: EROFS, exit 78, and RestartPreventExitStatus=78 never
restarts it). It exits 75 (EX_TEMPFAIL, restarted) saying to start the central first."""

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


def test_a_worker_before_the_central_ever_ran_exits_tempfail_without_making_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = _write_config(tmp_path)
    config = load_central_config(config_file)
    secret = config.layout.mqtt_client_secret
    assert main(["central", "mqtt-worker", "--config", str(config_file), "--client-id", "w1"]) == 75
    assert "start edge-central first" in capsys.readouterr().err
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
