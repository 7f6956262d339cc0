"""Case metadata after acquisition: each change is a new signed ledger entry, never an edit.

An item's current case metadata is the fold of its manifest's `case` block and every `tagged` entry
for it, in ledger order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge.custody.ledger import EntryType, LedgerEntry
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore

CASE_FIELDS = ("case_number", "location", "collector", "subject", "important", "category", "retention")
MAX_FIELD_CHARS = 200


class TagError(Exception):
    """A tag request names an unknown item or an invalid field."""


def validated_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The case fields of a tag request, each checked; `TagError` names what is wrong."""
    clean: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in CASE_FIELDS:
            raise TagError(f"unknown case field {key!r}; expected one of {', '.join(CASE_FIELDS)}")
        if key == "important":
            if not isinstance(value, bool):
                raise TagError("important must be true or false")
        elif not isinstance(value, str) or len(value) > MAX_FIELD_CHARS or any(ord(c) < 32 for c in value):
            raise TagError(f"{key} must be text of at most {MAX_FIELD_CHARS} printable characters")
        clean[key] = value
    if not clean:
        raise TagError(
            "nothing to change: give at least one of --case, --location, --collector, --subject, "
            "--important/--not-important, --category, --retention"
        )
    return clean


def current_case(store: StationStore, item: str) -> dict[str, Any]:
    record = IngestRepository(store).item(item)
    if record is None or record.manifest is None:
        raise TagError(f"no sealed item {item} in this store")
    case: dict[str, Any] = dict(record.manifest.get("case") or {})
    for entry in store.ledger.entries(item=item):
        if entry.type == EntryType.TAGGED:
            case.update(entry.data.get("changes") or {})
    return case


def tag_item(store: StationStore, item: str, changes: Mapping[str, Any], *, by: str) -> LedgerEntry:
    clean = validated_changes(changes)
    current_case(store, item)  # an unknown item is refused before the transaction starts
    with store.transaction():
        return append_tag(store, item, clean, by=by)


def append_tag(store: StationStore, item: str, changes: Mapping[str, Any], *, by: str) -> LedgerEntry:
    """The `tagged` entry (and a checkpoint after it) inside the caller's transaction, so that a caller
    can record why it tagged (a central's command) in the same atomic unit; `TagError` as `tag_item`."""
    clean = validated_changes(changes)
    before = current_case(store, item)
    entry = store.ledger.append(
        EntryType.TAGGED,
        item,
        {"changes": clean, "previous": {k: before.get(k) for k in clean}, "by": by},
    )
    store.ledger.checkpoint()
    return entry
