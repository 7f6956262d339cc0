"""`edge verify`: a disc must carry every document attached to its session before it (review rev11c)."""

from __future__ import annotations

from edge.custody.ledger import EntryType, LedgerEntry
from edge.rooms.product_sets import product_sets
from edge.verify.room_products import export_problems
from tests.rooms.test_review29_verify_newest_join import A, B, C, _e, _ledger


def _disc(*documents: str) -> LedgerEntry:
    return _e(30, EntryType.EXPORTED, None, room_session="S", files=[
        {"path": "recordings/cam.mp4", "item": "j2"}, {"path": "session-manifest.json", "item": "m2"},
        {"path": "statement-相关说明.txt", "item": "st-20"},
        *({"path": f"documents/document-{n}.pdf", "item": d} for n, d in enumerate(documents, 1))])


def test_a_disc_without_a_document_attached_before_it_is_a_problem() -> None:
    entries, _ = _ledger(newest_join=[A, B, C])
    sets = product_sets(entries)
    assert export_problems(_disc("d1"), sets["S"], sets["S"], ["d1"]) == ([], [])  # control: carried
    assert export_problems(_disc(), sets["S"], sets["S"], []) == ([], [])  # control: none attached
    problems, _ = export_problems(_disc(), sets["S"], sets["S"], ["d1"])
    assert len(problems) == 1 and "1 document(s) attached" in problems[0].what and "d1" in problems[0].what
