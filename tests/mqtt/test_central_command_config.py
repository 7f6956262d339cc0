"""`edge central command` takes the broker, the broker identity, its CA and the topic prefix from the
central's [mqtt] section; the options override (review 8, finding 10)."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.central.config import CentralConfig
from edge.central.mqtt_command import command_connection
from edge.cli import main
from edge.custody.keys import load_public_key
from edge.ingest.store import StationStore
from tests.mqtt.broker import CENTRAL_ID, MosquittoBroker, TestPki
from tests.mqtt.test_commands_broker import STATION, enroll_at_central, station_handler


def _args(**options: str | None) -> argparse.Namespace:
    values: dict[str, str | None] = {"broker": None, "identity": None, "ca": None, "topic_prefix": None}
    values.update(options)
    return argparse.Namespace(**values)


def _mqtt(tmp_path: Path) -> CentralConfig:
    return CentralConfig.model_validate({
        "central": {"id": CENTRAL_ID, "store_dir": str(tmp_path / "store")},
        "mqtt": {"broker_url": "mqtts://broker.agency:8884", "ca_file": "/etc/ee/broker-ca.crt",
                 "client_bundle_dir": "/etc/ee/broker-id", "topic_prefix": "agency7"},
    })


def test_the_connection_comes_from_the_mqtt_section_and_options_override(tmp_path: Path) -> None:
    mqtt = _mqtt(tmp_path).mqtt
    found = command_connection(_args(), mqtt)
    assert (found.broker_url, found.identity_dir, found.ca_file, found.topic_prefix) == (
        "mqtts://broker.agency:8884", Path("/etc/ee/broker-id"), Path("/etc/ee/broker-ca.crt"), "agency7")
    found = command_connection(_args(broker="mqtts://other:8883", identity="/tmp/id", ca="/tmp/ca.crt",
                                     topic_prefix="p2"), mqtt)
    assert (found.broker_url, found.identity_dir, found.ca_file, found.topic_prefix) == (
        "mqtts://other:8883", Path("/tmp/id"), Path("/tmp/ca.crt"), "p2")
    # Without [mqtt]: the options are needed, the CA defaults to DIR/ca.crt (None here), the prefix is
    # the stations' default.
    found = command_connection(_args(broker="mqtts://b", identity="/tmp/id"), None)
    assert (found.ca_file, found.topic_prefix) == (None, "evidence")
    with pytest.raises(ValueError, match="--broker and --identity required"):
        command_connection(_args(), None)


async def test_edge_central_command_with_only_the_config_reaches_the_station(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "central.toml"
    config.write_text(
        f'[central]\nid = "{CENTRAL_ID}"\nstore_dir = "{tmp_path / "central-store"}"\n'
        '[server]\nlisten = "127.0.0.1"\nport = 18443\n'
        f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:{broker.port}"\nca_file = "{pki.ca_file}"\n'
        f'client_bundle_dir = "{pki.client(CENTRAL_ID)}"\n'
    )
    assert await asyncio.to_thread(main, ["central", "init", "--config", str(config)]) == 0
    central_pub = load_public_key(tmp_path / "central-store" / "identity" / "signing.key.pub")
    store = StationStore(tmp_path / "store", STATION)
    enroll_at_central(tmp_path, store)
    try:
        async with station_handler(broker, pki, store, central_pub, [datetime.now(UTC)]):
            capsys.readouterr()
            status = await asyncio.to_thread(
                main, ["central", "command", "--config", str(config), "--timeout", "20", STATION, "status",
                       "--json"])
            captured = capsys.readouterr()
            assert status == 0, captured.err
            assert json.loads(captured.out)["ok"] is True
            # Control: an option still overrides the section (a prefix outside the central's ACL: the
            # broker refuses the publish at once).
            status = await asyncio.to_thread(
                main, ["central", "command", "--config", str(config), "--timeout", "20", "--topic-prefix",
                       "elsewhere", STATION, "status"])
            err = capsys.readouterr().err
            assert status == 69 and "elsewhere/stations/" in err and "refused" in err, err
    finally:
        store.close()
