"""Review 11: `edge central command` prints a station's refusal (error and detail) raw on the operator's
terminal. The reply's `error` and `detail` are any JSON strings (edge.mqtt.commands._reply_fields checks
only their type); JSON escapes (\\u001b) give real control characters, so a station's key holder (or,
with --allow-unsigned-reply, anyone who can write the station's reply topic) sends terminal escape
sequences (retitle the window, rewrite what was printed above: "done" over "refused") to the central's
operator. The project's rule: text from a device is never printed raw.

Control: the same path prints an ordinary refusal (exit 1) and its words.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main
from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.keys import load_public_key
from edge.ingest.store import StationStore
from tests.mqtt.broker import CENTRAL_ID, MosquittoBroker, TestPki
from tests.mqtt.test_commands_broker import STATION, _central_toml, enroll_at_central, station_handler

ESCAPES = "\x1b]2;owned\x07\x1b[1A\x1b[2Kstation TEST-STATION: tag done"


@pytest.mark.parametrize("detail", ["item not rejected", ESCAPES], ids=["control-plain", "escapes"])
async def test_a_refusals_text_reaches_the_terminal_without_control_characters(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, capsys: pytest.CaptureFixture[str], detail: str
) -> None:
    config = _central_toml(tmp_path)
    assert await asyncio.to_thread(main, ["central", "init", "--config", str(config)]) == 0
    central_pub = load_public_key(tmp_path / "central-store" / "identity" / "signing.key.pub")
    store = StationStore(tmp_path / "store", STATION)
    enroll_at_central(tmp_path, store)
    try:
        async with station_handler(broker, pki, store, central_pub, [datetime.now(UTC)]) as (_, handler):
            def hostile(answer: Any, payload: bytes) -> bytes:
                # The station's own key signs it (a station gone wrong), so it verifies.
                return _signed_with_detail(store, answer.request_id, payload, detail)

            handler._signed = hostile  # type: ignore[method-assign]
            capsys.readouterr()
            status = await asyncio.to_thread(main, [
                "central", "command", "--config", str(config), "--broker", f"mqtts://127.0.0.1:{broker.port}",
                "--identity", str(pki.client(CENTRAL_ID)), "--timeout", "20", STATION, "ledger-head"])
            err = capsys.readouterr().err
            assert status == 1, err
            assert "refused" in err
            assert not any((ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) < 0xa0 for c in err), repr(err)
    finally:
        store.close()


def _signed_with_detail(store: StationStore, request_id: str | None, payload: bytes, detail: str) -> bytes:
    """A signed refusal whose detail is exactly `detail` (encode_reply itself would clean it: printable)."""
    doc = {"type": "evidence-edge command reply", "station": STATION, "op": "ledger-head",
           "request_id": request_id,
           "request_sha256": sha256_hex(payload), "key_id": store.key.key_id, "ok": False,
           "error": "refused", "detail": detail}
    signature = base64.b64encode(store.key.sign(canonical_json(doc))).decode("ascii")
    return canonical_json({"v": 2, "reply": doc, "signature": signature})
