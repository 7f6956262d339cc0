"""`edge verify` passes on an untouched store and names exactly what was changed on a tampered one."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.cli import main
from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.offload import VolumeOffload

from .conftest import session_info


@pytest.fixture
async def sealed_store(
    store: StationStore, volume: Path, config_factory: Callable[..., StationConfig]
) -> StationStore:
    await VolumeOffload(store, config_factory(), session_info(), volume).run()
    with store.transaction():
        store.ledger.checkpoint()
    return store


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["verify", *args, "--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def problems(report: dict[str, object]) -> str:
    return "\n".join(f"{p['where']}: {p['what']}" for p in report["problems"])  # type: ignore[attr-defined]


def first_item(store: StationStore, sealed: bool = True) -> tuple[str, Path]:
    row = store.conn.execute(
        "SELECT item, path FROM items WHERE sealed_in_file=? ORDER BY item LIMIT 1", (int(sealed),)
    ).fetchone()
    return row["item"], store.layout.root / row["path"]


def raw_db(store: StationStore) -> sqlite3.Connection:
    """The database as an attacker with file access sees it: the append-only triggers dropped."""
    db = sqlite3.connect(store.layout.db, isolation_level=None)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f'DROP TRIGGER "{name}"')
    return db


def test_untouched_store_verifies(sealed_store: StationStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = verify(capsys, str(sealed_store.layout.root))
    # Every local check holds; no central to consult, so the verdict says only that (exit status 3).
    assert code == 3 and report["ok"] is True and report["verdict"] == "LOCAL CHECKS ONLY", problems(report)
    item, path = first_item(sealed_store)
    assert verify(capsys, str(path))[0] == 0
    assert verify(capsys, str(sealed_store.layout.root), "--item", item)[0] == 0


@pytest.mark.parametrize("sealed", [True, False], ids=["mp4-with-box", "sidecar-only"])
def test_one_flipped_byte_names_the_item(
    sealed_store: StationStore, capsys: pytest.CaptureFixture[str], sealed: bool
) -> None:
    item, path = first_item(sealed_store, sealed)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    code, report = verify(capsys, str(sealed_store.layout.root))
    assert code == 1
    text = problems(report)
    assert f"item {item}" in text and "content differs" in text
    assert verify(capsys, str(path))[0] == 1, "the lone sealed file fails too"


def test_deleted_ledger_entry_names_the_gap(
    sealed_store: StationStore, capsys: pytest.CaptureFixture[str]
) -> None:
    with raw_db(sealed_store) as db:
        db.execute("DELETE FROM ledger WHERE seq = 5")
    code, report = verify(capsys, str(sealed_store.layout.root))
    assert code == 1 and "ledger seq" in problems(report)
    assert any("5" in p["where"] or " 5" in p["what"] for p in report["problems"])  # type: ignore[attr-defined]


def test_edited_ledger_entry_names_its_seq(
    sealed_store: StationStore, capsys: pytest.CaptureFixture[str]
) -> None:
    with raw_db(sealed_store) as db:
        seq, data = db.execute("SELECT seq, data FROM ledger WHERE type='acquired' LIMIT 1").fetchone()
        doc = json.loads(data)
        doc["size"] += 1
        db.execute(
            "UPDATE ledger SET data=? WHERE seq=?",
            (json.dumps(doc, separators=(",", ":"), sort_keys=True), seq),
        )
    code, report = verify(capsys, str(sealed_store.layout.root))
    assert code == 1
    assert any(p["where"] == f"ledger seq {seq}" for p in report["problems"])  # type: ignore[attr-defined]


def test_reordered_ledger_entries_are_detected(
    sealed_store: StationStore, capsys: pytest.CaptureFixture[str]
) -> None:
    with raw_db(sealed_store) as db:
        cols = "time, type, item, data, prev, hash"
        a = db.execute(f"SELECT {cols} FROM ledger WHERE seq=6").fetchone()
        b = db.execute(f"SELECT {cols} FROM ledger WHERE seq=7").fetchone()
        setter = ", ".join(f"{c.strip()}=?" for c in cols.split(","))
        db.execute(f"UPDATE ledger SET {setter} WHERE seq=6", b)
        db.execute(f"UPDATE ledger SET {setter} WHERE seq=7", a)
    code, report = verify(capsys, str(sealed_store.layout.root))
    assert code == 1
    wheres = {p["where"] for p in report["problems"]}  # type: ignore[attr-defined]
    assert wheres & {"ledger seq 6", "ledger seq 7"}


def test_truncated_ledger_tail_is_caught_by_the_signed_checkpoint(
    sealed_store: StationStore, capsys: pytest.CaptureFixture[str]
) -> None:
    head = sealed_store.ledger.head()[0]
    with raw_db(sealed_store) as db:
        db.execute("DELETE FROM ledger WHERE seq >= ?", (head - 1,))
    code, report = verify(capsys, str(sealed_store.layout.root))
    assert code == 1 and "checkpoint" in problems(report)


def test_deleted_object_sidecar_and_planted_file_are_named(
    sealed_store: StationStore, capsys: pytest.CaptureFixture[str]
) -> None:
    item_a, path_a = first_item(sealed_store, True)
    item_b, path_b = first_item(sealed_store, False)
    path_a.unlink()
    path_b.with_name(path_b.name + ".manifest.json").unlink()
    planted = path_b.with_name("00000000-0000-0000-0000-000000000000.mp4")
    planted.write_bytes(b"planted")
    code, report = verify(capsys, str(sealed_store.layout.root))
    text = problems(report)
    assert code == 1
    assert f"item {item_a}" in text and "missing" in text
    assert f"item {item_b}" in text and "sidecar" in text
    assert "00000000-0000-0000-0000-000000000000.mp4" in text and "not accounted for" in text


def test_edited_manifest_in_index_or_sidecar_is_detected(
    sealed_store: StationStore, capsys: pytest.CaptureFixture[str]
) -> None:
    item, path = first_item(sealed_store, False)
    sidecar = path.with_name(path.name + ".manifest.json")
    doc = json.loads(sidecar.read_bytes())
    doc["case"]["case_number"] = "FORGED-1"
    sidecar.write_bytes(json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode())
    code, report = verify(capsys, str(sealed_store.layout.root))
    assert code == 1 and f"item {item}" in problems(report)
