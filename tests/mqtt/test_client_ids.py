"""Client ids nobody else can name (edge.mqtt.client_ids): the secret is made once, kept private, refused
when it is not one, and never logged in full; command-line ids are fresh each time."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from edge.mqtt.client import ConnectionState, MqttClient
from edge.mqtt.client_ids import (
    fresh_client_id,
    load_or_create_client_secret,
    loggable_client_id,
    secret_client_id,
)
from edge.pki.names import IdentityError
from edge.uplink.policy import Backoff
from tests.mqtt.broker import MosquittoBroker, TestPki, require_mosquitto


def test_the_secret_is_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state" / "mqtt-client.secret"
    assert load_or_create_client_secret(path, create=False) is None and not path.exists()
    secret = load_or_create_client_secret(path)
    assert secret is not None and len(secret) == 20 and int(secret, 16) >= 0  # 80 bits
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o077 == 0
    assert load_or_create_client_secret(path) == secret
    # Control: another identity's secret differs.
    assert load_or_create_client_secret(tmp_path / "other.secret") != secret


def test_a_file_that_is_not_a_secret_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "mqtt-client.secret"
    path.write_text("st-a\n")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="not an MQTT client secret"):
        load_or_create_client_secret(path)
    assert path.read_text() == "st-a\n"
    path.write_text("0123456789abcdef0123\n")
    path.chmod(0o644)  # readable by others: exposed
    with pytest.raises(IdentityError):
        load_or_create_client_secret(path)


def test_fresh_ids_differ_and_logs_show_no_secret() -> None:
    ids = {fresh_client_id("st-a", "verify") for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("st-a-verify-") and len(i) == len("st-a-verify-") + 20
                                  for i in ids)
    secret = "0123456789abcdef0123"
    client_id = secret_client_id("st-a", secret)
    assert loggable_client_id(client_id) == "st-a-0123…"
    assert loggable_client_id(f"{client_id}-uplink") == "st-a-0123…-uplink"
    # Control: an id without a secret-like part is logged as it is.
    assert loggable_client_id("dock-7") == "dock-7"


async def test_a_connection_never_logs_its_full_client_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_mosquitto()
    pki = TestPki.create(tmp_path / "pki")
    broker = MosquittoBroker(tmp_path / "broker", pki)
    await broker.start()
    secret = "fedcba98765432100123"
    caplog.set_level(logging.DEBUG)
    try:
        settings = broker.client_settings(pki.client("st-a"), client_id=secret_client_id("st-a", secret))
        client = MqttClient(settings, backoff=Backoff(0.05, 0.5))
        task = asyncio.create_task(client.run())
        await client.wait_for(lambda s: s.state is ConnectionState.CONNECTED, 15.0)
        await client.close()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await broker.stop()
    assert "st-a-fedc…" in caplog.text  # control: the connection was logged
    assert secret not in caplog.text and secret not in repr(client)
