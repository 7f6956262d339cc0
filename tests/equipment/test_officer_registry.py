"""Importing officer lists into a real station store, through the `edge officers` command line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.custody.ledger import EntryType, verify_ledger
from edge.equipment.credentials import verify_pin
from edge.equipment.officers import OfficerRegistry, OfficerStatus
from edge.ingest.store import StationStore

STATION = "TEST-STATION"
LIST = (
    "警号,姓名,单位编号,单位名称,卡号,密码\n"
    "110001,张伟,330100000000,杭州市公安局,04:a2:1b:7c,135790\n"
    "110002,王芳,330100000000,杭州市公安局,0100073 4E0,\n"
)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    store = StationStore(tmp_path / "store", STATION)
    store.close()
    return tmp_path / "store"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def officers_cli(*args: str) -> int:
    return main(["officers", *args])


def ledger_entries(store_dir: Path, type_: str) -> list[dict[str, object]]:
    store = StationStore(store_dir, STATION)
    try:
        return [dict(e.data) for e in store.ledger.entries() if e.type == type_]
    finally:
        store.close()


def test_import_then_list_shows_officers_with_cards_and_no_pin(store_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    csv_file = write(tmp_path / "officers.csv", LIST)
    assert officers_cli("import", str(csv_file), "--store", str(store_dir), "--by", "admin") == 0
    assert "2 added, 0 updated, 0 unchanged, 1 PINs set; 2 in the registry" in capsys.readouterr().out
    assert officers_cli("list", "--store", str(store_dir), "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {"officer_no": "110001", "name": "张伟", "unit_code": "330100000000", "unit_name": "杭州市公安局",
         "status": "active", "card_uid": "04A21B7C", "has_pin": True},
        {"officer_no": "110002", "name": "王芳", "unit_code": "330100000000", "unit_name": "杭州市公安局",
         "status": "active", "card_uid": "01000734E0", "has_pin": False},
    ]
    store = StationStore(store_dir, STATION)
    try:
        officer = OfficerRegistry(store.conn).get("110001")
        assert officer is not None and officer.pin_hash is not None
        assert officer.pin_hash.startswith("$argon2id$") and "135790" not in officer.pin_hash
        assert verify_pin(officer.pin_hash, "135790") and not verify_pin(officer.pin_hash, "135791")
        [entry] = [e for e in store.ledger.entries() if e.type == EntryType.OFFICERS_IMPORTED]
        assert entry.data["added"] == 2 and entry.data["pins_set"] == 1 and entry.data["by"] == "admin"
        assert entry.data["registry_sha256"] == OfficerRegistry(store.conn).digest()
        assert entry.data["source"] == "officers.csv"
        raw = json.dumps(dict(entry.data), ensure_ascii=False)
        assert "135790" not in raw and "argon2" not in raw
        assert verify_ledger(store.conn, store.key.public_key(), STATION) == []
    finally:
        store.close()


def test_a_second_import_merges_keeps_pins_it_does_not_give_and_moves_a_card(
        store_dir: Path, tmp_path: Path) -> None:
    assert officers_cli("import", str(write(tmp_path / "a.csv", LIST)), "--store", str(store_dir)) == 0
    # 110001 loses its card to 110002 and is suspended; its PIN stays (no pin column); 110003 is new.
    update = ("officer_no,name,status,card_uid\n110001,张伟,suspended,\n110002,王芳,active,04A21B7C\n"
              "110003,李娜,active,\n")
    assert officers_cli("import", str(write(tmp_path / "b.csv", update)), "--store", str(store_dir)) == 0
    store = StationStore(store_dir, STATION)
    try:
        registry = OfficerRegistry(store.conn)
        first, second = registry.get("110001"), registry.get("110002")
        assert first is not None and second is not None
        assert first.status is OfficerStatus.SUSPENDED and first.card_uid is None
        assert verify_pin(first.pin_hash, "135790")
        assert second.card_uid == "04A21B7C"
        assert [o.officer_no for o in registry.all()] == ["110001", "110002", "110003"]
    finally:
        store.close()
    [_, second_import] = ledger_entries(store_dir, EntryType.OFFICERS_IMPORTED)
    assert (second_import["added"], second_import["updated"]) == (1, 2)


def test_a_card_held_by_an_officer_the_file_does_not_list_refuses_the_whole_import(
        store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert officers_cli("import", str(write(tmp_path / "a.csv", LIST)), "--store", str(store_dir)) == 0
    capsys.readouterr()
    steal = "officer_no,name,card_uid\n110009,New,\n110010,Thief,04a21b7c\n"
    assert officers_cli("import", str(write(tmp_path / "b.csv", steal)), "--store", str(store_dir)) == 65
    assert "line 3: card 04A21B7C belongs to 警号 110001" in capsys.readouterr().err
    assert officers_cli("list", "--store", str(store_dir), "--json") == 0
    assert [o["officer_no"] for o in json.loads(capsys.readouterr().out)] == ["110001", "110002"]
    [refused] = ledger_entries(store_dir, EntryType.REFUSED)
    assert refused["what"] == "officer import" and refused["problems"] == 1


def test_a_refused_file_changes_nothing_and_leaves_a_refused_entry_without_pins(
        store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = "officer_no,name,pin\n110001,A,864200\n110001,B,97531x\n"
    assert officers_cli("import", str(write(tmp_path / "bad.csv", bad)), "--store", str(store_dir)) == 65
    err = capsys.readouterr().err
    assert "refused, nothing imported" in err and "line 3:" in err
    assert "864200" not in err and "97531x" not in err
    [refused] = ledger_entries(store_dir, EntryType.REFUSED)
    assert refused["problems"] == 1 and "864200" not in json.dumps(refused)
    assert ledger_entries(store_dir, EntryType.OFFICERS_IMPORTED) == []
    # Control: the same officers without the faults import.
    good = "officer_no,name,pin\n110001,A,864200\n110002,B,975310\n"
    assert officers_cli("import", str(write(tmp_path / "good.csv", good)), "--store", str(store_dir)) == 0


def test_a_gbk_list_imports_with_its_encoding_named(store_dir: Path, tmp_path: Path) -> None:
    csv_file = write(tmp_path / "gbk.csv", LIST, "gbk")
    assert officers_cli("import", str(csv_file), "--store", str(store_dir)) == 65
    assert officers_cli("import", str(csv_file), "--store", str(store_dir), "--encoding", "gbk") == 0


def test_suspend_and_activate_are_ledger_entries(store_dir: Path, tmp_path: Path) -> None:
    assert officers_cli("import", str(write(tmp_path / "a.csv", LIST)), "--store", str(store_dir)) == 0
    assert officers_cli("suspend", "110002", "--store", str(store_dir), "--reason", "on leave") == 0
    assert officers_cli("suspend", "999999", "--store", str(store_dir)) == 65
    assert officers_cli("activate", "110002", "--store", str(store_dir)) == 0
    changes = ledger_entries(store_dir, EntryType.OFFICER_STATUS)
    assert [(c["status"], c["previous"]) for c in changes] == [
        ("suspended", "active"), ("active", "suspended")]
    assert changes[0]["reason"] == "on leave"


def test_the_registry_survives_reopening_the_store(store_dir: Path, tmp_path: Path) -> None:
    assert officers_cli("import", str(write(tmp_path / "a.csv", LIST)), "--store", str(store_dir)) == 0
    for _ in range(2):
        store = StationStore(store_dir, STATION)
        try:
            assert [o.officer_no for o in OfficerRegistry(store.conn).all()] == ["110001", "110002"]
        finally:
            store.close()


def test_a_list_without_status_or_card_columns_keeps_them(store_dir: Path, tmp_path: Path) -> None:
    """A personnel list with names only must not reinstate a suspended officer nor drop cards."""
    assert officers_cli("import", str(write(tmp_path / "a.csv", LIST)), "--store", str(store_dir)) == 0
    assert officers_cli("suspend", "110001", "--store", str(store_dir)) == 0
    names_only = "officer_no,name\n110001,张伟\n110002,王芳芳\n"
    assert officers_cli("import", str(write(tmp_path / "b.csv", names_only)), "--store", str(store_dir)) == 0
    store = StationStore(store_dir, STATION)
    try:
        registry = OfficerRegistry(store.conn)
        first, second = registry.get("110001"), registry.get("110002")
        assert first is not None and second is not None
        assert (first.status, first.card_uid, first.unit_code) == (
            OfficerStatus.SUSPENDED, "04A21B7C", "330100000000")
        assert (second.name, second.card_uid) == ("王芳芳", "01000734E0")
    finally:
        store.close()
    # Control: with the columns, the file's values apply (an empty card cell: no card).
    with_columns = "officer_no,name,status,card_uid\n110001,张伟,active,\n"
    assert officers_cli("import", str(write(tmp_path / "c.csv", with_columns)), "--store",
                        str(store_dir)) == 0
    store = StationStore(store_dir, STATION)
    try:
        first = OfficerRegistry(store.conn).get("110001")
        assert first is not None and (first.status, first.card_uid) == (OfficerStatus.ACTIVE, None)
    finally:
        store.close()


def test_the_registry_is_not_changed_while_another_process_holds_the_store(
        store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    running_agent = StationStore(store_dir, STATION, purpose="edge run")
    try:
        assert officers_cli("import", str(write(tmp_path / "a.csv", LIST)), "--store", str(store_dir)) == 75
        assert "edge run" in capsys.readouterr().err
    finally:
        running_agent.close()
    assert officers_cli("import", str(write(tmp_path / "a.csv", LIST)), "--store", str(store_dir)) == 0


def test_set_pin_from_stdin_hashes_it_and_records_who_not_what(
        store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert officers_cli("import", str(write(tmp_path / "a.csv", LIST)), "--store", str(store_dir)) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("24680\n"))
    assert officers_cli("set-pin", "110002", "--store", str(store_dir), "--by", "admin") == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("12ab\n"))
    assert officers_cli("set-pin", "110002", "--store", str(store_dir)) == 65  # not digits: refused
    assert "12ab" not in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("13579\n"))
    assert officers_cli("set-pin", "999999", "--store", str(store_dir)) == 65  # no such officer
    store = StationStore(store_dir, STATION)
    try:
        officer = OfficerRegistry(store.conn).get("110002")
        assert officer is not None and verify_pin(officer.pin_hash, "24680")
        [entry] = [e for e in store.ledger.entries() if e.type == EntryType.OFFICER_PIN_SET]
        assert (entry.data["officer_no"], entry.data["by"]) == ("110002", "admin")
        assert "24680" not in json.dumps(dict(entry.data)) and "argon2" not in json.dumps(dict(entry.data))
    finally:
        store.close()
