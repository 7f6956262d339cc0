"""Which of a room session's products are *the* products: the set made from its newest sealed manifest.

A session's products (one joined MP4 per source, the statement; edge.rooms.products) are made at its stop
from its signed manifest, and made again whenever a newer manifest is sealed (a completed manifest
listing segments sealed after the stop, review 28) or a making was cut short. Each making is a
``room_products`` entry naming the manifest it was made from, its joined files and its statement. So a
ledger can hold several sets; one rule says which one counts (the lead's decision on review 29):

* the **newest set** is the last ``room_products`` made from the session's newest sealed manifest (the
  stop's ``session-manifest`` or a ``session-manifest-completed``, whichever was sealed last). It is what
  the disc carries (`edge room export`) and what `edge verify` requires to be complete: every sealed
  segment of each source in that set's joined file of the source;
* every other ``room_products`` of the session (made from an older manifest, or an earlier try from the
  same one) is **superseded**: its joins still verify by hash, but they are not required to be complete;
* a session whose newest manifest has no ``room_products`` made from it has no newest set: its products
  are owed (the agent makes them at its next start).

Pure: it reads ledger entries (of :data:`SET_TYPES`, in ledger order) and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edge.custody.ledger import EntryType, LedgerEntry
from edge.rooms.reconcile import MANIFEST_ROLES

__all__ = ["SET_TYPES", "ProductSets", "SessionProducts", "SetJoin", "product_sets", "set_joins"]

# The entry types the rule reads: manifests are `acquired` then `sealed`; sets are `room_products`.
SET_TYPES = (EntryType.ACQUIRED, EntryType.SEALED, EntryType.ROOM_PRODUCTS)


@dataclass(frozen=True)
class SetJoin:
    """One source as a set names it: its joined item and hash, or none (`unsealed`: a join a full disk
    left unsealed, owed again; otherwise refused for good, its segments stand on their own)."""

    source: str
    item: str | None
    sha256: str | None
    unsealed: bool


@dataclass
class SessionProducts:
    """What the ledger holds of one session's products."""

    session: str
    # The newest sealed manifest: its `acquired` entry and the seq of its `sealed` entry.
    manifest: LedgerEntry | None = None
    manifest_sealed_seq: int | None = None
    # Every `room_products` of the session, in ledger order.
    made: list[LedgerEntry] = field(default_factory=list)

    @property
    def newest(self) -> LedgerEntry | None:
        """The newest set: the last `room_products` made from the newest sealed manifest (None: owed)."""
        if self.manifest is None:
            return None
        return next((e for e in reversed(self.made) if e.data.get("manifest_item") == self.manifest.item),
                    None)

    @property
    def superseded(self) -> list[LedgerEntry]:
        newest = self.newest
        return [e for e in self.made if e is not newest]

    def joins(self) -> list[SetJoin]:
        """The sources of the newest set, as it names them (empty without one)."""
        newest = self.newest
        return [] if newest is None else set_joins(newest.data)


def set_joins(data: dict[str, Any]) -> list[SetJoin]:
    """The sources a `room_products` entry's data names (entries that are not objects are skipped)."""
    joined = data.get("joined")
    return [SetJoin(str(j.get("source")), _text(j.get("item")), _text(j.get("sha256")),
                    bool(j.get("unsealed")))
            for j in (joined if isinstance(joined, list) else []) if isinstance(j, dict)]


class ProductSets:
    """The fold behind :func:`product_sets`, entry by entry (`add`, in ledger order), so that a reader can
    ask what the sets were at any point of the ledger (an export's: which set its disc had to carry)."""

    def __init__(self) -> None:
        self._acquired: dict[str, LedgerEntry] = {}  # manifests acquired, not yet sealed
        self.sessions: dict[str, SessionProducts] = {}

    def add(self, entry: LedgerEntry) -> None:
        if entry.type == EntryType.SEALED:
            manifest = self._acquired.pop(entry.item, None) if entry.item is not None else None
            if manifest is not None:
                session = str(manifest.data.get("room_session"))
                known = self.sessions.setdefault(session, SessionProducts(session))
                known.manifest, known.manifest_sealed_seq = manifest, entry.seq
            return
        named = entry.data.get("room_session")
        if not isinstance(named, str):
            return
        if entry.type == EntryType.ROOM_PRODUCTS:
            self.sessions.setdefault(named, SessionProducts(named)).made.append(entry)
        elif (entry.type == EntryType.ACQUIRED and entry.item is not None
              and entry.data.get("role") in MANIFEST_ROLES):
            self._acquired[entry.item] = entry


def product_sets(entries: Iterable[LedgerEntry]) -> dict[str, SessionProducts]:
    """Per room session, its newest sealed manifest and every `room_products` (`entries`: of SET_TYPES,
    in ledger order; others are skipped). Only sessions with a sealed manifest or a `room_products`."""
    fold = ProductSets()
    for entry in entries:
        fold.add(entry)
    return fold.sessions


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
