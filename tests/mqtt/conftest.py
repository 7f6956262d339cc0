"""Fixtures of the MQTT tests: a test PKI and a real Mosquitto running the shipped configuration with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.mqtt.broker import MosquittoBroker, TestPki, require_mosquitto


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return TestPki.create(tmp_path / "pki")


@pytest.fixture
async def broker(tmp_path: Path, pki: TestPki) -> AsyncIterator[MosquittoBroker]:
    require_mosquitto()
    broker = MosquittoBroker(tmp_path / "broker", pki)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
