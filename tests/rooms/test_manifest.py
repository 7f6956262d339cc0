"""The session manifest (edge.rooms.manifest), pure: built from a session's ledger entries, segments in
recording order per source whatever order they were sealed in, closed gaps with their reasons, marks
and changes, other sessions' entries left out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edge.custody.ledger import LedgerEntry
from edge.rooms.manifest import SESSION_MANIFEST_FORMAT, session_manifest
from edge.rooms.session import SessionState, new_session

SESSION = replace(
    new_session(
        room="xw-1",
        room_name="第一询问室",
        address="文三路 100 号",
        fields={
            "case_number": "A-1",
            "collector": "张三",
            "subject": "询问",
            "persons": [{"name": "李四", "role": "被询问人"}],
        },
        started_utc="2026-12-05T10:00:00.000000Z",
        started_by="op",
    ),
    state=SessionState.STOPPED,
    stopped_utc="2026-12-05T11:00:00.000000Z",
    started_seq=10,
)


def _entry(seq: int, type_: str, data: dict[str, Any], item: str | None = None) -> LedgerEntry:
    return LedgerEntry(
        seq,
        f"2026-12-05T10:00:{seq:02d}.000000Z",
        type_,
        item,
        {"room_session": SESSION.session, **data},
        "0" * 64,
        "0" * 64,
    )


def _segment(seq: int, source: str, run: str, index: int) -> LedgerEntry:
    return _entry(
        seq,
        "segment_sealed",
        {
            "source": source,
            "run": run,
            "index": index,
            "sha256": f"{seq:064x}",
            "size": 100,
            "start_utc": "s",
            "end_utc": "e",
        },
        item=f"item-{seq}",
    )


def test_the_manifest_lists_segments_in_recording_order_with_gaps_marks_and_changes() -> None:
    entries = [
        _segment(11, "a", "run-20261205T100000.000000Z-aaaaaa", 0),
        _segment(12, "a", "run-20261205T100000.000000Z-aaaaaa", 2),  # sealed before 1 (1 failed first)
        _entry(13, "gap", {"source": "a", "state": "open", "from": "f", "reason": "ffmpeg exited"}),
        _entry(
            14,
            "gap",
            {
                "source": "a",
                "state": "closed",
                "from": "f",
                "to": "t",
                "reason": "ffmpeg exited",
                "attempts": 2,
                "duration_s": 1.5,
            },
        ),
        _segment(15, "a", "run-20261205T100100.000000Z-bbbbbb", 0),
        _entry(16, "mark", {"note": "出示证据一", "by": "op"}),
        _segment(17, "a", "run-20261205T100000.000000Z-aaaaaa", 1),
        _entry(18, "session_changed", {"changes": {"subject": {"from": "询问", "to": "辨认"}}, "by": "op"}),
        _segment(19, "b", "run-20261205T100000.000000Z-cccccc", 0),
        LedgerEntry(
            20,
            "2026-12-05T10:00:20.000000Z",
            "segment_sealed",
            "other",
            {"room_session": "other", "source": "a", "run": "r", "index": 9},
            "0" * 64,
            "0" * 64,
        ),  # another session's
    ]
    manifest = session_manifest(
        SESSION, reversed(entries), station_id="S", sources=[("a", "全景"), ("b", "")], stopped_by="op2"
    )
    assert manifest["format"] == SESSION_MANIFEST_FORMAT and manifest["stopped_by"] == "op2"
    a, b = manifest["sources"]
    assert (a["source"], a["name"], b["source"]) == ("a", "全景", "b")
    assert [s["seq"] for s in a["segments"]] == [11, 17, 12, 15]
    assert [s["item"] for s in b["segments"]] == ["item-19"]
    assert manifest["gaps"] == [
        {
            "source": "a",
            "from": "f",
            "to": "t",
            "reason": "ffmpeg exited",
            "duration_s": 1.5,
            "seq": 14,
            "attempts": 2,
            "until_stop": False,
        }
    ]
    assert [m["note"] for m in manifest["marks"]] == ["出示证据一"]
    assert manifest["changes"][0]["changes"]["subject"]["to"] == "辨认"
    assert manifest["persons"] == [{"name": "李四", "role": "被询问人"}]
    assert manifest["ledger"] == {"from_seq": 10, "to_seq": 19}
