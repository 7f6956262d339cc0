"""The central's signed officer list applied at a station store: what is taken, what is refused and why.

Each refusal has its control: the same path with the fault removed applies. Lists are signed with a real
Ed25519 key standing for the central's (the station pins its public half)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main
from edge.custody.keys import StationKey
from edge.custody.ledger import EntryType, verify_ledger
from edge.equipment.assignments import AssignmentBook
from edge.equipment.checkout import return_recorder
from edge.equipment.credentials import verify_pin
from edge.equipment.importing import (
    CentralSuspension,
    import_officers,
    set_officer_status,
)
from edge.equipment.officer_csv import OfficerCsvError, parse_officer_csv
from edge.equipment.officer_list import list_document, officers_sha256, sign_list
from edge.equipment.officer_sync import SyncOutcome, apply_officer_list, list_in_force
from edge.equipment.officers import OfficerRegistry, OfficerStatus
from edge.ingest.store import StationStore

STATION = "ST-SYNC"
CENTRAL = "central-test"
V1 = ("警号,姓名,单位编号,单位名称,状态,卡号\n"
      "110001,张伟,330100000000,杭州市公安局,正常,04A21B7C\n"
      "110002,王芳,330100000000,杭州市公安局,正常,01000734E0\n")
V2 = ("警号,姓名,单位编号,单位名称,状态,卡号\n"
      "110001,张伟,330100000000,杭州市公安局,停用,04A21B7C\n"
      "110003,李娜,330100000000,杭州市公安局,正常,0A0B0C0D\n")


def signed(key: StationKey, csv_text: str, version: int) -> dict[str, Any]:
    rows = parse_officer_csv(csv_text.encode())
    doc = list_document(rows, central=CENTRAL, version=version, issued_at="2026-12-06T00:00:00Z")
    return sign_list(doc, key.sign, key.key_id)


@pytest.fixture
def central() -> StationKey:
    return StationKey.generate()


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = StationStore(tmp_path / "store", STATION)
    yield store
    store.close()


def registry(store: StationStore) -> dict[str, dict[str, object]]:
    OfficerRegistry.create_schema(store.conn)
    return {o.officer_no: o.public() for o in OfficerRegistry(store.conn).all()}


def entries(store: StationStore, type_: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in store.ledger.entries() if e.type == type_]


def test_a_list_replaces_the_registry_keeps_station_pins_and_records_version_digest_and_counts(
    store: StationStore, central: StationKey
) -> None:
    # Before the station follows the central: a local list with a PIN and an officer the central omits.
    local = parse_officer_csv("警号,姓名,密码\n110001,张伟,135790\n110009,赵六,\n".encode())
    import_officers(store, local, source="local.csv", by="admin")
    envelope = signed(central, V1, 1)
    result = apply_officer_list(store, envelope, central.public_key(), source="test")
    assert result.outcome is SyncOutcome.APPLIED and result.version == 1
    held = registry(store)
    assert sorted(held) == ["110001", "110002"]  # 110009 is not on the agency's list: removed
    assert held["110001"]["card_uid"] == "04A21B7C" and held["110001"]["has_pin"] is True
    officer = OfficerRegistry(store.conn).get("110001")
    assert officer is not None and verify_pin(officer.pin_hash, "135790")  # the station's PIN stays
    [entry] = entries(store, EntryType.OFFICERS_SYNCED)
    assert entry["version"] == 1 and entry["officers_sha256"] == envelope["list"]["officers_sha256"]
    assert (entry["added"], entry["updated"], entry["removed"], entry["officers"]) == (1, 1, 1, 2)
    assert entry["registry_sha256"] == OfficerRegistry(store.conn).digest()
    assert "pin" not in str(entry).replace("has_pin", "")
    held_list = list_in_force(store.conn)
    assert held_list is not None and held_list.version == 1
    # The same list again (every poll): nothing recorded.
    again = apply_officer_list(store, envelope, central.public_key(), source="test")
    assert again.outcome is SyncOutcome.CURRENT
    assert len(entries(store, EntryType.OFFICERS_SYNCED)) == 1
    assert verify_ledger(store.conn, store.key.public_key(), STATION) == []


def test_an_older_version_is_refused_as_a_rollback_and_a_newer_one_applies(
    store: StationStore, central: StationKey
) -> None:
    v1, v2, v3 = signed(central, V1, 1), signed(central, V2, 2), signed(central, V1, 3)
    assert apply_officer_list(store, v2, central.public_key(), source="t").outcome is SyncOutcome.APPLIED
    before = registry(store)
    refused_before: set[str] = set()
    result = apply_officer_list(store, v1, central.public_key(), source="t", refused_before=refused_before)
    assert result.outcome is SyncOutcome.REFUSED and "rollback" in (result.reason or "")
    assert registry(store) == before
    [refusal] = entries(store, EntryType.REFUSED)
    assert refusal["what"] == "officer list" and refusal["version"] == 1 and "older" in refusal["reason"]
    # Offered again at the next poll: refused again, recorded once.
    apply_officer_list(store, v1, central.public_key(), source="t", refused_before=refused_before)
    assert len(entries(store, EntryType.REFUSED)) == 1
    # Control: a newer version on the same path applies.
    assert apply_officer_list(store, v3, central.public_key(), source="t").outcome is SyncOutcome.APPLIED
    assert sorted(registry(store)) == ["110001", "110002"]
    held = list_in_force(store.conn)
    assert held is not None and held.version == 3


def test_two_lists_under_one_version_are_refused(store: StationStore, central: StationKey) -> None:
    assert apply_officer_list(store, signed(central, V1, 1), central.public_key(),
                              source="t").outcome is SyncOutcome.APPLIED
    result = apply_officer_list(store, signed(central, V2, 1), central.public_key(), source="t")
    assert result.outcome is SyncOutcome.REFUSED and "two lists under one version" in (result.reason or "")
    assert sorted(registry(store)) == ["110001", "110002"]


@pytest.mark.parametrize("fault", ["renamed", "card_moved", "signature", "other_key", "pin_hash_added",
                                   "huge_version", "float_member", "not_an_object"])
def test_a_tampered_list_is_refused_and_the_registry_is_unchanged(
    store: StationStore, central: StationKey, fault: str
) -> None:
    assert apply_officer_list(store, signed(central, V1, 1), central.public_key(),
                              source="t").outcome is SyncOutcome.APPLIED
    before = registry(store)
    envelope = signed(central, V2, 2)
    tampered = copy.deepcopy(envelope)
    if fault == "renamed":  # the digest is recomputed too: only the signature can tell
        tampered["list"]["officers"][0]["name"] = "冒名"
        tampered["list"]["officers_sha256"] = officers_sha256(tampered["list"]["officers"])
    elif fault == "card_moved":
        tampered["list"]["officers"][1]["card_uid"] = "04A21B7C"
    elif fault == "signature":
        raw = tampered["signature"]
        tampered["signature"] = ("B" if raw[0] == "A" else "A") + raw[1:]
    elif fault == "other_key":
        other = StationKey.generate()
        tampered = sign_list(envelope["list"], other.sign, central.key_id)
    elif fault == "huge_version":  # beyond what canonical JSON holds: refused, not a crash of the uplink
        tampered["list"]["version"] = 2**64
    elif fault == "float_member":
        tampered["list"]["officers"][0]["unit_code"] = 1.5
    elif fault == "not_an_object":
        tampered = [tampered]  # type: ignore[assignment]
    else:
        tampered["list"]["officers"][0]["pin_hash"] = "$argon2id$v=19$m=65536,t=3,p=4$x$y"
    result = apply_officer_list(store, tampered, central.public_key(), source="t")
    assert result.outcome is SyncOutcome.REFUSED, result
    assert registry(store) == before
    [refusal] = entries(store, EntryType.REFUSED)
    assert refusal["what"] == "officer list" and refusal["reason"].startswith("not a valid officer list")
    # Control: the untampered list applies.
    control = apply_officer_list(store, envelope, central.public_key(), source="t")
    assert control.outcome is SyncOutcome.APPLIED
    assert sorted(registry(store)) == ["110001", "110003"]


def test_a_list_the_central_signed_but_that_breaks_the_registry_rules_is_refused(
    store: StationStore, central: StationKey
) -> None:
    doc = signed(central, V1, 1)["list"]
    doc["officers"][1]["card_uid"] = doc["officers"][0]["card_uid"]  # one card, two officers
    doc["officers_sha256"] = officers_sha256(doc["officers"])
    result = apply_officer_list(store, sign_list(doc, central.sign, central.key_id), central.public_key(),
                                source="t")
    assert result.outcome is SyncOutcome.REFUSED and "two officers" in (result.reason or "")
    assert registry(store) == {} and list_in_force(store.conn) is None


def test_suspended_anywhere_wins(store: StationStore, central: StationKey) -> None:
    apply_officer_list(store, signed(central, V1, 1), central.public_key(), source="t")
    # The station suspends 110002; the central's next list still has them active: they stay suspended.
    set_officer_status(store, "110002", OfficerStatus.SUSPENDED, reason="lost card", by="desk")
    apply_officer_list(store, signed(central, V1 + "110004,周杰,330100000000,杭州市公安局,正常,\n", 2),
                       central.public_key(), source="t")
    assert registry(store)["110002"]["status"] == "suspended"
    # The station lifts its own suspension (control: allowed).
    set_officer_status(store, "110002", OfficerStatus.ACTIVE, reason="found", by="desk")
    assert registry(store)["110002"]["status"] == "active"
    # The central suspends 110001: the station cannot reinstate them.
    apply_officer_list(store, signed(central, V2, 3), central.public_key(), source="t")
    assert registry(store)["110001"]["status"] == "suspended"
    with pytest.raises(CentralSuspension):
        set_officer_status(store, "110001", OfficerStatus.ACTIVE, reason="", by="desk")
    assert registry(store)["110001"]["status"] == "suspended"


def test_a_local_import_is_refused_while_the_central_list_is_in_force(
    store: StationStore, central: StationKey
) -> None:
    rows = parse_officer_csv("警号,姓名\n110005,孙七\n".encode())
    # Control: before any central list, a local import works.
    import_officers(store, rows, source="a.csv", by="admin")
    apply_officer_list(store, signed(central, V1, 1), central.public_key(), source="t")
    with pytest.raises(OfficerCsvError, match="follows the officer list of central"):
        import_officers(store, rows, source="b.csv", by="admin")
    assert "110005" not in registry(store)


def test_edge_officers_list_names_the_central_list_in_force(
    tmp_path: Path, central: StationKey, capsys: pytest.CaptureFixture[str]
) -> None:
    store = StationStore(tmp_path / "s2", STATION)
    try:
        apply_officer_list(store, signed(central, V1, 4), central.public_key(), source="t")
    finally:
        store.close()
    assert main(["officers", "list", "--store", str(tmp_path / "s2")]) == 0
    out = capsys.readouterr().out
    assert f"following the officer list of central {CENTRAL}: version 4" in out and "110002" in out


def test_an_officer_the_list_removes_while_holding_a_recorder_can_still_return_it(
    store: StationStore, central: StationKey
) -> None:
    apply_officer_list(store, signed(central, V1, 1), central.public_key(), source="t")
    AssignmentBook.create_schema(store.conn)
    with store.transaction():
        AssignmentBook(store.conn).open(
            officer_no="110002", officer_name="王芳", unit_code="330100000000", unit_name="杭州市公安局",
            device_serial="ZFY-9", usb_serial="U9", bay=1, method="card",
            checked_out="2026-12-06T08:00:00.000000Z", seq=1)
    apply_officer_list(store, signed(central, V2, 2), central.public_key(), source="t")
    assert "110002" not in registry(store)
    returned = return_recorder(store, "ZFY-9", bay=2)
    assert returned is not None and (returned.officer_no, returned.officer_name) == ("110002", "王芳")
