"""Which item-less entries a package shows as the disclosed docking's own (review findings 4 and 9).

USB serials come from the device and are not unique in the field (a batch of cheap recorders ships one
serial, a hostile device copies one): a docking's entries are matched on the USB serial *and* the bay, USB
port and device serial they carry, so another officer's recorder with the same serial at another bay stays
redacted. A copy error or refusal of no item that lies inside the disclosed docking and names its recorder
is that docking's custody and is shown; one naming another recorder stays redacted.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge.central.disclosure.package import segment_for
from edge.central.sqlite import SqliteIndex
from edge.custody.keys import StationKey
from edge.custody.ledger import Ledger, LedgerEntry, RedactedEntry

STATION = "ST-1"
SERIAL = "0123456789ABCDEF"  # the batch's one serial
ITEM = "00000000-0000-4000-8000-000000000001"


@dataclass(frozen=True)
class _Record:
    item: str


def _new_ledger() -> Ledger:
    conn = sqlite3.connect(":memory:")
    Ledger.create_schema(conn)
    ledger = Ledger(conn, STATION, StationKey.generate(), checkpoint_every=1)
    ledger.append("station_started", None, {"station": STATION, "checkpoint_every": 1})
    return ledger


def _segment(ledger: Ledger, tmp_path: Path) -> list[LedgerEntry | RedactedEntry]:
    """The lines of the item's segment as a package writes them."""
    index = SqliteIndex.open(tmp_path / "index.db")
    with index.transaction():
        index.insert_ledger_entries(STATION, list(ledger.entries()), "2026-12-05T00:00:00Z")
        for cp in ledger.checkpoints():
            index.insert_checkpoint(cp, "2026-12-05T00:00:00Z")
    segment = segment_for(STATION, [_Record(ITEM)], index)  # type: ignore[list-item]
    assert segment is not None
    try:
        return list(segment.lines(index))
    finally:
        index.close()


def test_another_officers_docking_with_the_same_usb_serial_is_not_shown(tmp_path: Path) -> None:
    ledger = _new_ledger()
    bay1 = {"usb_serial": SERIAL, "usb_port": "1-1", "bay": 1}
    bay2 = {"usb_serial": SERIAL, "usb_port": "1-2", "bay": 2}
    ledger.append("device_connected", None, {**bay1, "mode": "storage"})
    ledger.append("device_connected", None, {**bay2, "mode": "storage"})
    ledger.append("device_authenticated", None, {
        **bay1, "device_serial": "D-LINA", "identity": {"officer_name": "李娜", "officer_no": "220002"}})
    ledger.append("device_authenticated", None, {
        **bay2, "device_serial": "D-WEI", "identity": {"officer_name": "张伟", "officer_no": "110001"}})
    ledger.append("clock_measured", None, {**bay2, "device_serial": "D-WEI", "offset_ms": 5})
    ledger.append("clock_measured", None, {**bay1, "device_serial": "D-LINA", "offset_ms": 3})
    ledger.append("session_started", None, {"session": "s-lina", "bay": 1, "identity": {
        "usb_serial": SERIAL, "device_serial": "D-LINA", "officer_no": "220002"}})
    ledger.append("acquired", ITEM, {"session": "s-lina", "sha256": "0" * 64})
    ledger.append("sealed", ITEM, {"manifest_sha256": "1" * 64})
    ledger.append("session_stopped", None, {"session": "s-lina"})
    segment = _segment(ledger, tmp_path)
    shown = [e for e in segment if isinstance(e, LedgerEntry)]
    # Control: 李娜's own docking (connect, authentication, clock at bay 1) is shown.
    assert [(e.type, e.data.get("bay")) for e in shown if e.item is None and e.type != "station_started"] == [
        ("device_connected", 1), ("device_authenticated", 1), ("clock_measured", 1), ("session_started", 1),
        ("session_stopped", None)]
    leaked = [(e.seq, e.type) for e in shown if "张伟" in str(e.data) or e.data.get("bay") == 2]
    assert not leaked, f"officer 张伟's docking (bay 2) is shown in 李娜's package: {leaked}"
    assert sum(isinstance(e, RedactedEntry) for e in segment) == 3


def test_an_error_of_the_disclosed_docking_is_shown_not_redacted(tmp_path: Path) -> None:
    ledger = _new_ledger()
    ledger.append("device_connected", None, {"usb_serial": "U-1", "usb_port": "1-1", "bay": 1})
    ledger.append("session_started", None, {"session": "s-1", "bay": 1,
                                            "identity": {"usb_serial": "U-1", "device_serial": "D-1"}})
    ledger.append("acquired", ITEM, {"session": "s-1", "sha256": "0" * 64})
    ledger.append("sealed", ITEM, {"manifest_sha256": "1" * 64})
    own = ledger.append("error", None, {"device_serial": "D-1", "stage": "copy", "original": "DCIM/2.MP4",
                                        "reason": "read error at byte 1048576"})
    refused = ledger.append("refused", None, {"device_serial": "D-1", "original": "DCIM/../x",
                                              "reason": "not a plain name"})
    # Faults of another recorder in the same span, and of no recorder at all, stay redacted.
    other = ledger.append("error", None, {"device_serial": "D-2", "stage": "copy", "reason": "read error"})
    other_bay = ledger.append("refused", None, {"usb_serial": "U-1", "usb_port": "1-2", "bay": 2,
                                                "reason": "recorder not allowed"})
    anonymous = ledger.append("error", None, {"stage": "uplink", "reason": "central unreachable"})
    ledger.append("session_stopped", None, {"session": "s-1", "items": 1, "errors": 2})
    after = ledger.append("error", None, {"device_serial": "D-1", "stage": "control", "reason": "later"})
    ledger.append("tagged", ITEM, {"changes": {"case_number": "A-1"}, "by": "clerk-01"})
    by_seq = {e.seq: e for e in _segment(ledger, tmp_path)}
    assert isinstance(by_seq[own.seq], LedgerEntry), f"seq {own.seq}: the docking's copy error is redacted"
    assert isinstance(by_seq[refused.seq], LedgerEntry)
    for hidden in (other, other_bay, anonymous, after):  # control: the match is by recorder and span
        assert isinstance(by_seq[hidden.seq], RedactedEntry), hidden
