"""Naming what a rewrite removed: `edge verify STORE` against the station ledger the central holds.

When the local ledger no longer holds a head the central witnessed (:mod:`edge.verify.witness`), someone
changed it after the central accepted it; when they also rewrote the chain and re-signed it with the
station key, the local files alone cannot tell *what* was removed. The central can: it keeps every entry
it accepted. This module pages through them (``GET /v1/stations/{id}/ledger``, mutual TLS with the
enrollment bundle) from the newest witnessed head that still matches, and names every item whose entries
the central holds but the local ledger lacks, or holds differently.

The central's answer is evidence only once it is checked: the entries must hash as they claim, link to
the local ledger's entry at the starting seq (a prefix both sides agree on, proved by a witnessed head)
and chain up to the head the central signed as witnessed (pinned central key). An answer that does not is
reported as a note, and nothing is named from it.

An entry is the same locally when the local ledger holds an entry of the same item, type, time and data
(canonical JSON), whatever its seq: a rewrite that deletes entries renumbers the rest, which are then
found at other seqs and not named. Memory stays bounded: a page at a time, and details for at most
:data:`MAX_NAMED_ITEMS` items (the rest are counted).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.config.station import StationConfig
from edge.custody.canonical import canonical_json
from edge.custody.errors import CanonicalJsonError, LedgerError
from edge.custody.ledger import GENESIS_PREV, LedgerEntry, entry_hash
from edge.custody.problems import Problem
from edge.custody.witness import WitnessedHead, verify_witnessed_head
from edge.uplink.transport import NotDone, Transport

__all__ = ["MAX_NAMED_ITEMS", "CentralLedgerFindings", "compare_with_central_ledger"]

MAX_NAMED_ITEMS = 50
PAGE_LIMIT = 500
MAX_PAGES = 1_000_000  # a central that never reaches its head is cut off (a million pages of 500)


@dataclass
class CentralLedgerFindings:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)


class _Unusable(Exception):
    """The central's answer cannot be relied on (it does not chain, or is not signed as witnessed)."""


@dataclass
class _ItemDiff:
    missing: list[tuple[int, str]] = field(default_factory=list)  # (central seq, type), bounded
    count: int = 0


def _entry(doc: object) -> LedgerEntry:
    if not isinstance(doc, Mapping):
        raise _Unusable("an entry is not a JSON object")
    seq, time, type_, item, data, prev, hash_hex = (
        doc.get(name) for name in ("seq", "time", "type", "item", "data", "prev", "hash")
    )
    if not (isinstance(seq, int) and not isinstance(seq, bool) and isinstance(time, str)
            and isinstance(type_, str) and (item is None or isinstance(item, str)) and isinstance(data, dict)
            and isinstance(prev, str) and isinstance(hash_hex, str)):
        raise _Unusable(f"an entry has members of the wrong types (seq {str(seq)[:20]})")
    return LedgerEntry(seq=seq, time=time, type=type_, item=item, data=data, prev=prev, hash=hash_hex)


class _Comparison:
    def __init__(self, conn: sqlite3.Connection, after: int) -> None:
        self.conn = conn
        self.after = after
        row = conn.execute("SELECT hash FROM ledger WHERE seq = ?", (after,)).fetchone() if after else None
        self.prev = GENESIS_PREV if after == 0 else (None if row is None else str(row[0]))
        self.expected_seq = after + 1
        self.items: dict[str, _ItemDiff] = {}
        self.other_items = 0  # items beyond MAX_NAMED_ITEMS
        self.unitemed: dict[str, int] = {}  # entries without an item, by type
        self.compared = 0
        self.diverged: int | None = None

    def take(self, entry: LedgerEntry) -> None:
        if entry.seq != self.expected_seq or (self.prev is not None and entry.prev != self.prev):
            raise _Unusable(f"its entry at seq {entry.seq} does not follow seq {self.expected_seq - 1}")
        try:
            if entry_hash(entry.body()) != entry.hash:
                raise _Unusable(f"its entry at seq {entry.seq} does not hash to {entry.hash[:64]}")
            data_text = canonical_json(entry.data).decode("utf-8")
        except (LedgerError, CanonicalJsonError) as exc:
            raise _Unusable(f"its entry at seq {entry.seq} is malformed: {exc}") from None
        self.prev, self.expected_seq = entry.hash, entry.seq + 1
        self.compared += 1
        if self.diverged is None:
            local = self.conn.execute("SELECT hash FROM ledger WHERE seq = ?", (entry.seq,)).fetchone()
            if local is not None and local[0] == entry.hash:
                return  # still the common prefix
            self.diverged = entry.seq
        same = self.conn.execute(
            "SELECT 1 FROM ledger WHERE item IS ? AND type = ? AND time = ? AND data = ? LIMIT 1",
            (entry.item, entry.type, entry.time, data_text),
        ).fetchone()
        if same is not None:
            return
        if entry.item is None:
            self.unitemed[entry.type] = self.unitemed.get(entry.type, 0) + 1
            return
        diff = self.items.get(entry.item)
        if diff is None:
            if len(self.items) >= MAX_NAMED_ITEMS:
                self.other_items += 1  # counted per entry: bounded memory, an upper bound on items
                return
            diff = self.items[entry.item] = _ItemDiff()
        diff.count += 1
        if len(diff.missing) < 8:
            diff.missing.append((entry.seq, entry.type))

    def findings(self, central: str, head: WitnessedHead) -> CentralLedgerFindings:
        found = CentralLedgerFindings()
        found.checked["central_ledger_entries_compared"] = self.compared
        for item, diff in self.items.items():
            local = self.conn.execute("SELECT count(*) FROM ledger WHERE item = ?", (item,)).fetchone()[0]
            shown = ", ".join(f"{type_} (seq {seq})" for seq, type_ in diff.missing)
            more = f" and {diff.count - len(diff.missing)} more" if diff.count > len(diff.missing) else ""
            how = ("lacks every entry about it: the item was deleted from this store"
                   if local == 0 else
                   f"lacks them or holds them differently ({local} entries about it remain here): its record "
                   "was edited or partly deleted")
            found.problems.append(Problem(
                f"item {item}",
                f"central {central} accepted {diff.count} ledger "
                f"{'entry' if diff.count == 1 else 'entries'} about this item ({shown}{more}; "
                f"witnessed up to seq {head.seq}), but the local ledger {how} after the central accepted "
                "them",
            ))
        if self.other_items:
            found.problems.append(Problem("items", f"{self.other_items} more entries about items not named "
                                                   f"above are missing or different here (at most "
                                                   f"{MAX_NAMED_ITEMS} items are named)"))
        if self.unitemed:
            shown = ", ".join(f"{count} {type_}" for type_, count in sorted(self.unitemed.items()))
            found.problems.append(Problem("ledger", f"central {central} accepted entries without an item "
                                                    f"that the local ledger lacks or holds differently: "
                                                    f"{shown}"))
        return found


async def compare_with_central_ledger(
    config: StationConfig,
    conn: sqlite3.Connection,
    after: int,
    central_key: Ed25519PublicKey,
    *,
    timeout_s: float = 120.0,
    transport: Transport | None = None,
) -> CentralLedgerFindings:
    """Page through the central's copy of this station's ledger from ``after`` (a seq both sides agree
    on) and name what the local ledger lacks, over the station's own uplink transport (``transport``
    overrides it). Never raises for a central that cannot be used: a note says why."""
    from edge.pki.names import IdentityError
    from edge.uplink.transports import transport_for

    comparison = _Comparison(conn, after)
    if comparison.prev is None:
        return CentralLedgerFindings(notes=[f"the central's ledger was not compared: the local ledger has no "
                                            f"entry at seq {after}"])
    try:
        wire = transport or transport_for(config, None, purpose="verify")
        async with asyncio.timeout(timeout_s), wire.connect() as link:
            cursor: int | None = after
            witnessed: Any = None
            pages = 0
            while cursor is not None and pages < MAX_PAGES:
                page = await link.ledger_page(cursor, PAGE_LIMIT)
                pages += 1
                if len(page.entries) > PAGE_LIMIT:
                    raise _Unusable(f"a page holds {len(page.entries)} entries, {PAGE_LIMIT} were asked for")
                # The last page's: the central may accept more of this ledger while we page.
                witnessed = page.witnessed_head
                for doc in page.entries:
                    comparison.take(_entry(doc))
                next_cursor = page.next
                if next_cursor is not None and (not isinstance(next_cursor, int) or next_cursor <= cursor):
                    raise _Unusable(f"its page cursor went from {cursor} to {str(next_cursor)[:20]}")
                cursor = next_cursor
    except (NotDone, IdentityError, OSError, TimeoutError, ValueError) as exc:
        return CentralLedgerFindings(notes=[f"the central's copy of this ledger could not be read "
                                            f"({type(exc).__name__}: {str(exc)[:300]}), so the items a "
                                            "rewrite removed are not named"])
    except _Unusable as exc:
        return CentralLedgerFindings(notes=[f"the central's copy of this ledger does not verify ({exc}), so "
                                            "nothing is named from it"])
    head = _signed_head(witnessed, central_key, config.station.id, comparison)
    if isinstance(head, str):
        return CentralLedgerFindings(notes=[head])
    found = comparison.findings(head.central, head)
    if comparison.diverged is None:
        found.notes.append(f"the central's copy of this ledger after seq {after} matches the local one "
                           f"entry for entry")
    return found


def _signed_head(
    doc: object, central_key: Ed25519PublicKey, station: str, comparison: _Comparison
) -> WitnessedHead | str:
    """The witnessed head the central's pages must reach, verified; or a note saying why not."""
    if not isinstance(doc, Mapping):
        return "the central's copy of this ledger came without a witnessed head, so nothing is named from it"
    problems = verify_witnessed_head(doc, central_key, expected_station=station)
    if problems:
        return (f"the central's copy of this ledger came with a witnessed head that does not verify "
                f"({problems[0]}), so nothing is named from it")
    head = WitnessedHead.from_dict(doc)
    if comparison.expected_seq - 1 != head.seq or comparison.prev != head.hash:
        return (f"the central's copy of this ledger ends at seq {comparison.expected_seq - 1}, not at the "
                f"head it signed as witnessed (seq {head.seq}), so nothing is named from it")
    return head
