"""`edge central command`'s exit status for a `replayed` reply: 0 when its signed first_outcome says the
first delivery executed ("done earlier"), 1 when it was refused. Real Mosquitto, the real handler and CLI;
the station's reply is replaced by the replayed one it sends for a redelivery."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main
from edge.custody.canonical import sha256_hex
from edge.custody.keys import load_public_key
from edge.ingest.store import StationStore
from edge.mqtt.commands import CommandError, FirstOutcome, ReplySigner, encode_reply
from tests.mqtt.broker import CENTRAL_ID, MosquittoBroker, TestPki
from tests.mqtt.test_commands_broker import STATION, _central_toml, enroll_at_central, station_handler


@pytest.mark.parametrize(("first", "status", "words"), [(FirstOutcome.EXECUTED, 0, "done earlier"),
                                                        (FirstOutcome.REFUSED, 1, "refused")])
async def test_a_replayed_reply_exits_by_what_became_of_the_first_delivery(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, capsys: pytest.CaptureFixture[str],
    first: FirstOutcome, status: int, words: str,
) -> None:
    config = _central_toml(tmp_path)
    assert await asyncio.to_thread(main, ["central", "init", "--config", str(config)]) == 0
    central_pub = load_public_key(tmp_path / "central-store" / "identity" / "signing.key.pub")
    store = StationStore(tmp_path / "store", STATION)
    enroll_at_central(tmp_path, store)
    try:
        async with station_handler(broker, pki, store, central_pub, [datetime.now(UTC)]) as (_, handler):
            def replayed(answer: Any, payload: bytes) -> bytes:
                return encode_reply(answer.request_id, station=STATION, op="ledger-head",
                                    request_sha256=sha256_hex(payload),
                                    signer=ReplySigner(store.key.key_id, store.key.sign),
                                    error=CommandError.REPLAYED, detail="received before",
                                    first_outcome=first)

            handler._signed = replayed  # type: ignore[method-assign]
            capsys.readouterr()
            code = await asyncio.to_thread(main, [
                "central", "command", "--config", str(config), "--broker", f"mqtts://127.0.0.1:{broker.port}",
                "--identity", str(pki.client(CENTRAL_ID)), "--timeout", "20", STATION, "ledger-head"])
            captured = capsys.readouterr()
            assert code == status, captured
            assert words in captured.out + captured.err
    finally:
        store.close()
