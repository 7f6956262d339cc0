"""Witnessed custody against a real central (mutual TLS on a real port): the central witnesses the
station's ledger (receipts and pushes), the ledger tail reaches the central within seconds and at
shutdown, and `edge verify` names what an attacker who can rewrite every station file did, through what
the central witnessed."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge.central.embedded import EmbeddedCentral
from edge.cli import main
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.keys import StationKey
from edge.custody.ledger import checkpoint_payload, entry_hash
from edge.custody.witness_log import unwitnessed_window
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome
from edge.verify.station import VerifyReport, verify_store
from edge.verify.witness import CONFIG_ENV, CentralView, fetch_central_view
from tests.station.harness import simulated_station, spec
from tests.uplink.test_uplink_station import FAST_RETRY, STATION

CHECKPOINT_EVERY = 8


async def central_head_reaches(central: EmbeddedCentral, target: tuple[int, str], timeout_s: float) -> None:
    index = central.running.parts.index
    async with asyncio.timeout(timeout_s):
        while index.ledger_head(STATION) != target:
            await asyncio.sleep(0.05)


def witnessed_seqs(store: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{store / 'state.db'}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT seq FROM witnessed_heads ORDER BY id")]
    finally:
        conn.close()


def attacker_db(store: Path) -> sqlite3.Connection:
    """The state database as someone with the file sees it: triggers are no obstacle."""
    db = sqlite3.connect(store / "state.db", isolation_level=None)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f'DROP TRIGGER "{name}"')
    return db


def resign_checkpoints(db: sqlite3.Connection, key: StationKey, from_seq: int) -> None:
    """What an attacker holding the station key does after rewriting the chain from ``from_seq``."""
    rows = db.execute("SELECT id, station, seq, time FROM ledger_checkpoints WHERE seq >= ?", (from_seq,))
    for row_id, station, seq, time in rows.fetchall():
        hash_hex = db.execute("SELECT hash FROM ledger WHERE seq = ?", (seq,)).fetchone()[0]
        signature = base64.b64encode(key.sign(checkpoint_payload(station, seq, hash_hex, time))).decode()
        db.execute("UPDATE ledger_checkpoints SET hash = ?, signature = ? WHERE id = ?",
                   (hash_hex, signature, row_id))


def rewrite_from(db: sqlite3.Connection, seq: int, data: dict[str, Any]) -> None:
    """Edit the entry at ``seq`` and recompute every later hash so that the chain links again."""
    rows = db.execute("SELECT seq, time, type, item, data, prev FROM ledger WHERE seq >= ? ORDER BY seq",
                      (seq,)).fetchall()
    prev = rows[0][5]
    for number, time, type_, item, text, _ in rows:
        body = {"seq": number, "time": time, "type": type_, "item": item,
                "data": data if number == seq else parse_json(text), "prev": prev}
        hash_hex = entry_hash(body)
        db.execute("UPDATE ledger SET data = ?, prev = ?, hash = ? WHERE seq = ?",
                   (canonical_json(body["data"]).decode(), prev, hash_hex, number))
        prev = hash_hex


def text(report: VerifyReport) -> str:
    return "\n".join(str(p) for p in report.problems)


@pytest.fixture
async def journey(tmp_path: Path) -> Any:
    """A station that offloaded two recorders with after-receipt erasure and stopped; its central runs."""
    central = await EmbeddedCentral.start(tmp_path, STATION, tmp_path / "store")
    specs = [spec(0), spec(1)]
    try:
        async with simulated_station(
            tmp_path,
            specs,
            station={"checkpoint_every": CHECKPOINT_EVERY},
            uplink={**central.uplink_config(), **FAST_RETRY},
            wipe={"policy": "after-receipt", "receipt_wait_s": 60},
        ) as station:
            await station.dock_recorder(specs[0].device_serial, 1)
            await station.dock_recorder(specs[1].device_serial, 2)
            await station.wait_results(2)
            assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE] * 2
            store = station.agent.store
            assert store is not None
            # No new item follows the erasures: the ledger tail still reaches the central within
            # seconds, because the uplink pushes it by itself (erasures at once).
            assert station.ledger("wiped")
            await central_head_reaches(central, store.ledger.head(), timeout_s=15)
            await wait_witnessed(store, store.ledger.head()[0])
            assert unwitnessed_window(store.conn).entries == 0
            config = station.config
        yield central, config, station
    finally:
        await central.stop()


async def wait_witnessed(store: StationStore, seq: int) -> None:
    async with asyncio.timeout(10):
        while unwitnessed_window(store.conn).witnessed_seq < seq:
            await asyncio.sleep(0.05)


async def test_the_central_witnesses_the_ledger_through_receipts_pushes_and_the_shutdown(
    journey: Any, tmp_path: Path
) -> None:
    central, config, _station = journey
    store = tmp_path / "store"
    conn = sqlite3.connect(f"file:{store / 'state.db'}?mode=ro", uri=True)
    try:
        final = conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        stopped = conn.execute("SELECT type FROM ledger WHERE seq = ?", (final[0],)).fetchone()[0]
    finally:
        conn.close()
    # The last entries (station_stopped) went to the central at shutdown and were witnessed.
    assert stopped == "station_stopped"
    assert central.running.parts.index.ledger_head(STATION) == tuple(final)
    assert witnessed_seqs(store)[-1] == final[0]
    receipts = [json.loads(p.read_text()) for p in (store / "items").rglob("*.receipt.json")]
    assert len(receipts) == 6 and all(r["format"] == "evidence-edge/receipt/2" for r in receipts)
    view = await fetch_central_view(config)
    assert view.failure is None and view.head == tuple(final)
    report = verify_store(store, central_key=central.signing_public_key(), central_view=view)
    assert report.ok, report.problems
    assert report.checked["central_consulted"] == 1 and report.checked["unwitnessed_entries"] == 0
    assert report.checked["witnessed_heads"] >= 2 and report.checked["receipts_unwitnessed"] == 0


async def test_edge_verify_finds_the_central_from_the_station_configuration(
    journey: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    central, _config, _station = journey
    store = tmp_path / "store"
    config_file = tmp_path / "station.toml"
    config_file.write_text(
        f'[station]\nid = "{STATION}"\nstore_dir = "{store}"\n[usb]\nmount_root = "{tmp_path / "media"}"\n'
        f'[uplink]\ncentral_url = "{central.url}"\nidentity_dir = "{central.bundle_dir}"\n'
    )
    # Truncate the tail (the erasures, the stop) with its checkpoints and the witnessed heads kept for it:
    # nothing in the store remembers it; the central does.
    last_receipt = _seq_of_last(store, "receipt")
    with attacker_db(store) as db:
        db.execute("DELETE FROM ledger WHERE seq > ?", (last_receipt,))
        db.execute("DELETE FROM ledger_checkpoints WHERE seq > ?", (last_receipt,))
        db.execute("DELETE FROM witnessed_heads WHERE seq > ?", (last_receipt,))
    monkeypatch.setenv(CONFIG_ENV, str(config_file))
    code = await asyncio.to_thread(main, ["verify", str(store), "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1
    named = [p for p in report["problems"] if p["where"].startswith("witnessed head seq")]
    assert named and "the tail was truncated" in named[0]["what"] and "(the central)" in named[0]["what"]
    assert report["checked"]["central_consulted"] == 1
    # Without the configuration the same command says plainly what it could not check.
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "absent.toml"))
    code = await asyncio.to_thread(main, ["verify", str(store), "--json"])
    offline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "central_consulted" not in offline["checked"]
    assert any("give --config" in note for note in offline["notes"])
    assert any("could have removed those" in note for note in offline["notes"])


def _seq_of_last(store: Path, type_: str) -> int:
    conn = sqlite3.connect(f"file:{store / 'state.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT max(seq) FROM ledger WHERE type = ?", (type_,)).fetchone()[0])
    finally:
        conn.close()


async def test_verify_names_each_rewrite_through_the_witnessed_heads(journey: Any, tmp_path: Path) -> None:
    central, config, _station = journey
    pinned = central.signing_public_key()
    view = await fetch_central_view(config)
    original = tmp_path / "store"
    station_key = StationKey.load_or_create(original / "keys" / "station.key")

    def copy(name: str) -> Path:
        target = tmp_path / "copies" / name
        shutil.copytree(original, target)
        return target

    def verify(store: Path, central_view: CentralView | None = None) -> VerifyReport:
        return verify_store(store, central_key=pinned, central_view=central_view)

    # A sloppy attacker truncates the tail with its checkpoints but leaves the witnessed heads kept.
    sloppy = copy("sloppy")
    last_receipt = _seq_of_last(sloppy, "receipt")
    with attacker_db(sloppy) as db:
        db.execute("DELETE FROM ledger WHERE seq > ?", (last_receipt,))
        db.execute("DELETE FROM ledger_checkpoints WHERE seq > ?", (last_receipt,))
    report = verify(sloppy)
    assert "the tail was truncated" in text(report) and f"ends at seq {last_receipt}" in text(report)

    # An attacker with the station key hides an erasure: edits the wiped entry, recomputes the chain and
    # re-signs every checkpoint after it. The chain and checkpoints verify; the witnessed heads do not.
    hidden = copy("hidden-wipe")
    wiped = _seq_of_last(hidden, "wiped")
    with attacker_db(hidden) as db:
        rewrite_from(db, wiped, {"files": [], "reason": "nothing erased"})
        resign_checkpoints(db, station_key, wiped)
    report = verify(hidden)
    chain = [p for p in report.problems if p.where.startswith(("ledger seq", "checkpoint seq"))]
    assert chain == [], "the chain itself verifies after a rewrite with the key"
    assert "rewritten at or before seq" in text(report), text(report)
    # ...and the same against the central, with every kept head removed too.
    with attacker_db(hidden) as db:
        db.execute("DELETE FROM witnessed_heads")
    for receipt in (hidden / "items").rglob("*.receipt.json"):
        receipt.unlink()
    against_central = verify(hidden, view)
    assert any(p.where.startswith("witnessed head seq") and "(the central)" in p.what
               for p in against_central.problems), text(against_central)

    # Deleted checkpoints leave a run longer than the declared cadence.
    gap = copy("gap")
    with attacker_db(gap) as db:
        db.execute("DELETE FROM ledger_checkpoints WHERE seq > 1")
    report = verify(gap)
    assert any(p.where.startswith("ledger seqs 2-") and f"every {CHECKPOINT_EVERY} entries" in p.what
               for p in report.problems), text(report)

    # A replaced station key (with the checkpoints re-signed by it) is named by the witnessed heads.
    replaced = copy("replaced-key")
    impostor = StationKey.generate()
    (replaced / "keys" / "station.key.pub").write_bytes(impostor.public_pem())
    with attacker_db(replaced) as db:
        resign_checkpoints(db, impostor, 1)
    report = verify(replaced)
    assert any(p.where == "station key" and "was replaced" in p.what for p in report.problems), text(report)

    # An edited receipt: its witnessed head no longer verifies.
    edited = copy("edited-receipt")
    receipt_file = next((edited / "items").rglob("*.receipt.json"))
    receipt = json.loads(receipt_file.read_text())
    receipt["witnessed_head"]["seq"] += 1
    receipt_file.write_text(json.dumps(receipt))
    report = verify(edited)
    assert any("witnessed_head.signature" in p.what or "witnessed_head.signature" in p.where
               for p in report.problems), text(report)

    # A receipt from before witnessing (receipt/1) is accepted, and counted as unwitnessed.
    old = copy("old-receipt")
    receipt_file = next((old / "items").rglob("*.receipt.json"))
    receipt = json.loads(receipt_file.read_text())
    del receipt["witnessed_head"]
    receipt["format"] = "evidence-edge/receipt/1"
    receipt_file.write_text(json.dumps(receipt))
    # Only the file changed so far: state.db keeps the receipt/2 it was given, so this is a downgrade.
    assert any("the receipt state.db keeps" in p.what for p in verify(old).problems)
    with attacker_db(old) as db:  # as a store from before witnessing has it: the same receipt/1 in both
        db.execute("UPDATE uploads SET receipt = ? WHERE item = ?",
                   (canonical_json(receipt).decode(), receipt["item"]))
    report = verify(old)
    assert report.ok, text(report)
    assert report.checked["receipts_unwitnessed"] == 1

    # Control: the untouched store verifies, against the central too.
    assert verify(copy("control"), view).ok
