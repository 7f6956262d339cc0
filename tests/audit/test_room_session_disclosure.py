"""A package of a room recording shows its own session's item-less entries (start, every gap with its
reason, marks, case changes, stop, products), to the end of the session even past the disclosed item;
another room session's entries, recorded between them, stay redacted (the control that the filter is
by session and not by kind)."""

from __future__ import annotations

from pathlib import Path

from edge.custody.ledger import LedgerEntry, RedactedEntry
from tests.audit.test_docking_attribution import ITEM, _new_ledger, _segment

OWN, OTHER = "rs-own", "rs-other"


def _room(session: str, case: str) -> dict[str, object]:
    return {"kind": "room", "room_session": session, "room": "xw-1", "case": {"case_number": case},
            "persons": [{"name": "李四" if session == OWN else "赵六", "role": "被询问人"}]}


def test_the_disclosed_recordings_room_session_is_shown_and_another_is_not(tmp_path: Path) -> None:
    ledger = _new_ledger()
    ledger.append("session_started", None, {**_room(OWN, "A-1"), "by": "op"})
    ledger.append("session_started", None, {**_room(OTHER, "B-9"), "by": "op"})
    ledger.append("acquired", ITEM, {"room_session": OWN, "sha256": "0" * 64})
    ledger.append("sealed", ITEM, {"manifest_sha256": "1" * 64})
    ledger.append("segment_sealed", ITEM, {"room_session": OWN, "source": "a", "sha256": "0" * 64})
    ledger.append("gap", None, {"room_session": OTHER, "source": "a", "reason": "camera lost"})
    ledger.append("gap", None, {"room_session": OWN, "source": "a", "reason": "camera lost",
                                "state": "closed"})
    ledger.append("mark", None, {"room_session": OWN, "room": "xw-1", "note": "出示证据", "by": "op"})
    ledger.append("session_stopped", None, {"room_session": OTHER, "kind": "room", "by": "op"})
    ledger.append("session_stopped", None, {"room_session": OWN, "kind": "room", "by": "op"})
    ledger.append("room_products", None, {"room_session": OWN, "joined": [], "statement_item": None})
    segment = _segment(ledger, tmp_path)
    shown = [e for e in segment if isinstance(e, LedgerEntry)]
    own = [e.type for e in shown if e.item is None and e.data.get("room_session") == OWN]
    assert own == ["session_started", "gap", "mark", "session_stopped", "room_products"]
    leaked = [(e.seq, e.type) for e in shown if "B-9" in str(e.data) or "赵六" in str(e.data)
              or e.data.get("room_session") == OTHER]
    assert not leaked, f"another room session is shown: {leaked}"
    assert sum(isinstance(e, RedactedEntry) for e in segment) == 3  # OTHER's start, gap and stop
