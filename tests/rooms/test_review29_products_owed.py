"""Review 29: a re-made products step cut short by a full disk (statement not sealed, a join without an
item) still writes room_products naming the manifest, so products_owed never owes it again: the disc of
that session is missing its statement / joined file for good (edge/rooms/products.py, reconcile.py)."""

from typing import Any

from edge.custody.ledger import EntryType, LedgerEntry
from edge.rooms.reconcile import COMPLETED_MANIFEST_ROLE, products_owed


def _e(seq: int, type_: str, item: str | None = None, **data: Any) -> LedgerEntry:
    return LedgerEntry(seq, "2026-12-06T00:00:00Z", type_, item, data, "", "")


def _ledger(products_data: dict[str, Any]) -> list[LedgerEntry]:
    return [
        _e(1, EntryType.ACQUIRED, "m1", room_session="S", role=COMPLETED_MANIFEST_ROLE, sha256="x"),
        _e(2, EntryType.SEALED, "m1"),
        _e(3, EntryType.ROOM_PRODUCTS, None, room_session="S", manifest_item="m1", **products_data),
    ]


def test_control_products_made_in_full_are_not_owed() -> None:
    made = {"joined": [{"source": "cam1", "item": "j1", "sha256": "h"}], "statement_item": "st1",
            "statement_sha256": "h2"}
    assert products_owed(_ledger(made)) == {}


def test_products_cut_short_by_full_disk_are_still_owed() -> None:
    # What Products.summary() gives when seal_session_file returned None (store at its reserve) and the
    # join could not be made: nothing sealed, yet room_products is recorded with the manifest's item.
    cut_short = {"joined": [{"source": "cam1", "item": None, "sha256": None, "problems": 1}],
                 "statement_item": None, "statement_sha256": "h2"}
    assert "S" in products_owed(_ledger(cut_short))


def test_a_join_left_unsealed_by_a_full_disk_is_still_owed() -> None:
    # The statement found room, the join did not: another try may make it, so the manifest stays owed.
    unsealed = {"joined": [{"source": "cam1", "item": None, "sha256": None, "problems": 1, "unsealed": True}],
                "statement_item": "st1", "statement_sha256": "h2"}
    assert "S" in products_owed(_ledger(unsealed))


def test_control_a_join_refused_for_good_is_not_owed_again() -> None:
    # No segment to join, or a camera changed mid-session: a retry gives the same, so it is not owed.
    refused = {"joined": [{"source": "cam1", "item": None, "sha256": None, "problems": 1}],
               "statement_item": "st1", "statement_sha256": "h2"}
    assert products_owed(_ledger(refused)) == {}
