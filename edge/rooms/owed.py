"""Which stopped sessions still owe their products, kept in a small index so that a start reads only the
ledger entries appended since the index was last brought up to date, never the whole ledger (review 29).

The ledger stays the record: the index (``<store>/rooms/products-owed.json``, written atomically) is what
:func:`edge.rooms.reconcile.products_owed` would say, folded entry by entry
(:class:`edge.rooms.reconcile.OwedFold`) up to a ledger seq whose entry hash it keeps;
:meth:`OwedIndex.refresh` folds in what came after that seq. An index that is missing, unreadable, of
another format, or whose seq is past the ledger's head or names another entry there (a restored
backup, another store) is rebuilt from the whole ledger, once.

The index is signed with the station key (Ed25519 over its canonical form, under a tag of its own), and
each entry it keeps is checked against the ledger's at its seq (same hash, an `acquired` entry of that
session's manifest): its anchor alone is readable in the ledger by anyone who can write the file, and an
index that says a session owes nothing (or names another session's manifest) would otherwise never have
the products made (review rev11c). Without the key (a tool), the saved index is not trusted at all.

It also remembers, per session, the manifest whose products could not be made (a damaged or missing
sealed manifest) once that was put on the ledger, so that the `error` entry is written once, not at
every start; the problem stays shown by `edge room status` and named by `edge verify`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from pathlib import Path
from typing import Any

from edge.custody.canonical import canonical_json
from edge.custody.keys import StationKey, verify_signature
from edge.custody.ledger import EntryType, Ledger, LedgerEntry
from edge.durable.files import SmallFileError, read_small_file, write_atomic
from edge.rooms.reconcile import MANIFEST_ROLES, PRODUCTS_TYPES, OwedFold
from edge.rooms.state import ROOMS_DIR

log = logging.getLogger(__name__)

INDEX_NAME = "products-owed.json"
INDEX_FORMAT = "evidence-edge/room-products-owed/1"
# Its sessions owing products and its manifests acquired unsealed: a few kB; anything larger was planted.
MAX_INDEX_BYTES = 4 << 20
# What the signature covers is tagged, so that it can never be taken for the key's signature of anything else.
SIGNATURE_TAG = b"evidence-edge/room-products-owed/signature/1\n"


class OwedIndex:
    """The products owed by stopped sessions, read from the ledger incrementally (see the module)."""

    def __init__(self, store_root: Path, ledger: Ledger, key: StationKey | None = None) -> None:
        self.path = store_root / ROOMS_DIR / INDEX_NAME
        self.ledger = ledger
        self.key = key
        self.fold = OwedFold()
        self.to_seq = 0
        self.to_hash = ""
        self.reported: dict[str, str] = {}  # session: the manifest item whose failure is on the ledger
        self._loaded = False

    def refresh(self) -> dict[str, LedgerEntry]:
        """The products owed, per session (the newest sealed manifest's `acquired` entry), after folding
        in the entries appended since the index was last saved; saved again when anything was read."""
        if not self._loaded:
            self._loaded = True
            if not self._load():
                self.fold, self.to_seq, self.to_hash, self.reported = OwedFold(), 0, "", {}
        head_seq, head_hash = self.ledger.head()
        if head_seq == self.to_seq:
            return dict(self.fold.owed)
        read = 0
        for entry in self.ledger.entries_of_types(PRODUCTS_TYPES, self.to_seq + 1):
            if entry.seq > head_seq:
                break  # appended meanwhile (a worker thread's commit): folded at the next refresh, once
            self.fold.add(entry)
            read += 1
        log.debug("rooms: products owed: %d ledger entries read after seq %d", read, self.to_seq)
        self.to_seq, self.to_hash = head_seq, head_hash
        self.reported = {s: m for s, m in self.reported.items() if s in self.fold.owed}
        self.save()
        return dict(self.fold.owed)

    def mark_reported(self, session: str, manifest_item: str) -> None:
        self.reported[session] = manifest_item
        self.save()

    def save(self) -> None:
        doc = {
            "format": INDEX_FORMAT, "to_seq": self.to_seq, "to_hash": self.to_hash,
            "owed": {s: e.to_dict() for s, e in self.fold.owed.items()},
            "acquired": {s: e.to_dict() for s, e in self.fold.acquired.items()},
            "reported": self.reported,
        }
        if self.key is not None:
            doc["signature"] = base64.b64encode(self.key.sign(SIGNATURE_TAG + canonical_json(doc))).decode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(doc, sort_keys=True).encode())
        except OSError as exc:  # only a cache: the next start reads the ledger from where it was saved
            log.warning("rooms: the index of products owed could not be saved: %s", exc)

    def _load(self) -> bool:
        """The saved index, if it is one and matches this ledger (False: rebuild from the ledger)."""
        if not self.path.exists() and not self.path.is_symlink():
            return False
        try:
            raw = read_small_file(self.path, MAX_INDEX_BYTES, expected="the index of products owed")
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
                raise ValueError("not an index of products owed")
            signature = base64.b64decode(str(doc.pop("signature", "")), validate=True)
            if self.key is None or not verify_signature(self.key.public_key(), signature,
                                                        SIGNATURE_TAG + canonical_json(doc)):
                raise ValueError("not signed by this station's key")
            to_seq, to_hash = int(doc["to_seq"]), str(doc["to_hash"])
            owed = {str(s): _entry(e) for s, e in dict(doc["owed"]).items()}
            acquired = {str(s): _entry(e) for s, e in dict(doc["acquired"]).items()}
            reported = {str(s): str(m) for s, m in dict(doc["reported"]).items()}
        except (SmallFileError, OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            log.warning("rooms: the index of products owed is unreadable (%s): read again from the ledger",
                        exc)
            return False
        if to_seq > 0:
            anchor = next(self.ledger.entries(to_seq), None)
            if anchor is None or anchor.seq != to_seq or anchor.hash != to_hash:
                log.warning("rooms: the index of products owed does not match this ledger at seq %d: read "
                            "again from the ledger", to_seq)
                return False
        try:
            owed = {s: self._on_ledger(s, e, to_seq) for s, e in owed.items()}
            acquired = {s: self._on_ledger(s, e, to_seq) for s, e in acquired.items()}
        except ValueError as exc:
            log.warning("rooms: the index of products owed disagrees with the ledger (%s): read again "
                        "from the ledger", exc)
            return False
        self.fold = OwedFold(owed, acquired)
        self.to_seq, self.to_hash, self.reported = to_seq, to_hash, reported
        return True

    def _on_ledger(self, session: str, kept: LedgerEntry, to_seq: int) -> LedgerEntry:
        """The ledger's own entry for what the index keeps for `session`: the `acquired` entry of one of that
        session's manifests, at or before the index's seq, with the hash the index kept (ValueError when
        not). The ledger's copy is used, never the index's."""
        entry = next(self.ledger.entries(kept.seq), None) if 0 < kept.seq <= to_seq else None
        if entry is None or entry.seq != kept.seq or entry.hash != kept.hash:
            raise ValueError(f"session {session}: no ledger entry {kept.seq} with the hash it keeps")
        if (entry.type != EntryType.ACQUIRED or entry.item is None
                or entry.data.get("room_session") != session or entry.data.get("role") not in MANIFEST_ROLES):
            raise ValueError(f"session {session}: ledger entry {kept.seq} is not the acquisition of its "
                             "manifest")
        return entry


def _entry(doc: Any) -> LedgerEntry:
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise ValueError("an entry of the index is not one")
    item = doc.get("item")
    return LedgerEntry(int(doc["seq"]), str(doc["time"]), str(doc["type"]),
                       item if isinstance(item, str) else None, doc["data"], str(doc["prev"]),
                       str(doc["hash"]))
