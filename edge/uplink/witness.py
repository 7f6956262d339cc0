"""The station's side of witnessing: it keeps what the central witnessed of its ledger, and it witnesses
the central's log in turn.

*The central witnesses the station.* Every receipt and every answer to a ledger push carries the head
of our ledger the central has accepted, signed by the central (:mod:`edge.custody.witness`). Each one is
checked here (pinned central key, our station, and an entry our own ledger holds with exactly that
hash) and the newest is kept in state.db, so ``edge verify`` can later prove the ledger still holds it.

*The station witnesses the central.* We keep the newest signed tree head of the central's Merkle log we
have seen (from receipts, ledger answers and a periodic fetch) and accept a newer one only with a
consistency proof from the one we hold. A head that cannot be proved consistent, a second root for the
same size, a log that shrank, or a central that no longer holds ledger entries it witnessed, is an
**alarm**: a ``witness_alarm`` ledger entry, and :class:`WitnessAlarm` stops the uplink (nothing more is
receipted, so under ``after-receipt`` nothing more is erased) until an administrator has investigated.
The alarm is read back from the ledger at every start, so a restart does not forget it; only a
``witness_alarm_cleared`` entry that names it (``edge witness clear``, :mod:`edge.uplink.alarm_clear`)
lets the uplink start again.

A malformed or badly signed document is *not* an alarm: proxies garble answers. It is refused like any
bad answer and asked for again.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.keys import key_id_of
from edge.custody.ledger import EntryType
from edge.custody.merkle import verify_consistency
from edge.custody.receipt import ReceiptError, TreeHead, verify_tree_head
from edge.custody.witness import WitnessedHead, verify_witnessed_head
from edge.custody.witness_log import (
    StationWitness,
    UnwitnessedWindow,
    alarm_state,
    newest_witnessed_seq,
    unwitnessed_window,
)
from edge.ingest.store import StationStore
from edge.uplink.errors import UplinkFatal

__all__ = [
    "BadWitnessDocument",
    "CentralWitness",
    "ConsistencyFetch",
    "WitnessAlarm",
    "WitnessStatus",
    "ledger_floor",
    "standing_alarm",
    "witness_status",
]

log = logging.getLogger(__name__)

ConsistencyFetch = Callable[[int, int], Awaitable[list[str] | None]]
"""``fetch(first, second)``: the central's consistency proof (hex hashes), or None when the central says
it cannot give one (it holds fewer than ``second`` leaves)."""

TreeHeadFetch = Callable[[], Awaitable[Mapping[str, Any]]]


class WitnessAlarm(UplinkFatal):
    """The central's log or its record of our ledger is not what it signed before: uploads stop."""


class BadWitnessDocument(Exception):
    """A witnessed head or tree head from the central is malformed or not signed by the pinned key
    (a garbled answer, not yet proof of anything): ask again later."""


@dataclass(frozen=True)
class WitnessStatus:
    """What the status model shows about witnessing."""

    unwitnessed: UnwitnessedWindow
    newest_tree_size: int | None
    alarm: str | None


def witness_status(store: StationStore) -> WitnessStatus:
    """The unwitnessed window, the newest checked tree head and any standing alarm, for the status page."""
    newest = StationWitness(store.conn).newest_tree_head()
    return WitnessStatus(
        unwitnessed=unwitnessed_window(store.conn),
        newest_tree_size=None if newest is None else newest.tree_size,
        alarm=standing_alarm(store),
    )


def standing_alarm(store: StationStore) -> str | None:
    """The newest ``witness_alarm`` ledger entry while no ``witness_alarm_cleared`` entry cleared it
    (``edge witness clear``); None when no alarm stands."""
    state = alarm_state(store.conn)
    return state.summary() if state is not None and state.standing else None


def ledger_floor(store: StationStore) -> int:
    """The lowest head of our ledger the central may answer with without an alarm: the newest seq it
    witnessed, unless an operator accepted that it holds less (``edge witness clear
    --accept-central-head`` after it lost accepted entries) and nothing newer has been witnessed since;
    then the head it held when the operator accepted it (it only grows again from there)."""
    witnessed = newest_witnessed_seq(store.conn)
    row = store.conn.execute(
        "SELECT data FROM ledger WHERE type = ? ORDER BY seq DESC LIMIT 1", (EntryType.WITNESS_ALARM_CLEARED,)
    ).fetchone()
    if row is None:
        return witnessed
    try:
        data = parse_json(row[0])
    except CanonicalJsonError:
        return witnessed
    accepted = data.get("accepted_central") if isinstance(data, dict) else None
    if not isinstance(accepted, dict):
        return witnessed
    ledger_seq, kept_then = accepted.get("ledger_seq"), accepted.get("witnessed_seq_kept")
    if isinstance(ledger_seq, int) and isinstance(kept_then, int) and witnessed <= kept_then:
        return min(witnessed, ledger_seq)
    return witnessed


class CentralWitness:
    """Checks and keeps what the central signs about our ledger and its log (one per uplink)."""

    def __init__(self, store: StationStore, station_id: str, central_key: Ed25519PublicKey) -> None:
        self.store = store
        self.station_id = station_id
        self.central_key = central_key
        self.central_key_id = key_id_of(central_key)
        self.kept = StationWitness(store.conn)
        self._tree_lock = asyncio.Lock()
        self.alarm: str | None = standing_alarm(store)

    def __repr__(self) -> str:
        return f"CentralWitness(station={self.station_id!r}, central_key={self.central_key_id!r})"

    # -- the central witnesses us ------------------------------------------------------------------

    def accept_witnessed_head(self, doc: object, source: str) -> WitnessedHead:
        """Check a witnessed head of our ledger and keep it when it is the newest.

        Raises :class:`BadWitnessDocument` for a malformed or badly signed head, and :class:`WitnessAlarm`
        when the central signed a head our ledger does not hold (the ledgers forked).
        """
        if not isinstance(doc, Mapping):
            raise BadWitnessDocument(f"expected a witnessed head object, found {type(doc).__name__}")
        problems = verify_witnessed_head(doc, self.central_key, expected_station=self.station_id)
        if problems:
            raise BadWitnessDocument("; ".join(str(p) for p in problems[:3]))
        head = WitnessedHead.from_dict(doc)
        row = self.store.conn.execute("SELECT hash FROM ledger WHERE seq = ?", (head.seq,)).fetchone()
        if row is None or row[0] != head.hash:
            found = "no such entry" if row is None else f"hash {row[0]}"
            self.raise_alarm(
                f"the central witnessed this station's ledger at seq {head.seq} with hash {head.hash}, but "
                f"the ledger here has {found}: the ledgers forked",
                {"witnessed_seq": head.seq, "witnessed_hash": head.hash},
            )
        with self.store.transaction():
            if self.kept.add_witnessed_head(head, source):
                log.debug("central witnessed ledger seq %d (%s)", head.seq, source)
        return head

    def verified_witnessed_seq(self) -> int:
        """The seq of the newest kept witnessed head, checked again before anything relies on it (the
        wipe policy after-witness): signed with the pinned central key for this station, and naming an
        entry our ledger holds with exactly that hash. 0 when none is kept or the newest does not hold
        (a row planted or altered in state.db must never let a recorder be erased)."""
        try:
            row = self.store.conn.execute(
                "SELECT head FROM witnessed_heads ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        except sqlite3.OperationalError:
            return 0  # a store from before witnessing
        if row is None:
            return 0
        try:
            doc = parse_json(row[0])
        except CanonicalJsonError:
            doc = None
        if not isinstance(doc, Mapping) or verify_witnessed_head(
            doc, self.central_key, expected_station=self.station_id
        ):
            log.error("the newest kept witnessed head does not verify with the pinned central key")
            return 0
        head = WitnessedHead.from_dict(doc)
        held = self.store.conn.execute("SELECT hash FROM ledger WHERE seq = ?", (head.seq,)).fetchone()
        return head.seq if held is not None and held[0] == head.hash else 0

    def check_accepted_head(self, seq: int, hash_hex: str) -> None:
        """The central's answer about our ledger must not fall behind what it witnessed before."""
        witnessed = ledger_floor(self.store)
        if seq < witnessed:
            self.raise_alarm(
                f"the central says it holds this station's ledger up to seq {seq}, but it witnessed (signed) "
                f"seq {witnessed} before: it lost or removed accepted ledger entries",
                {"central_seq": seq, "witnessed_seq": witnessed},
            )

    # -- we witness the central --------------------------------------------------------------------

    async def observe_tree_head(
        self, doc: object, source: str, consistency: ConsistencyFetch, refetch: TreeHeadFetch
    ) -> TreeHead:
        """Check a tree head against the newest one we hold; keep it when it is newer and consistent.

        Raises :class:`BadWitnessDocument` for a malformed or badly signed head and :class:`WitnessAlarm`
        when the log provably changed under a head it signed.
        """
        head = self._verified_tree_head(doc)
        async with self._tree_lock:
            if self.alarm is not None:
                raise WitnessAlarm(self.alarm)
            await self._observe(head, source, consistency, refetch, allow_refetch=True)
        return head

    def _verified_tree_head(self, doc: object) -> TreeHead:
        if not isinstance(doc, Mapping):
            raise BadWitnessDocument(f"expected a tree head object, found {type(doc).__name__}")
        problems = verify_tree_head(doc, self.central_key)
        if problems:
            raise BadWitnessDocument("; ".join(str(p) for p in problems[:3]))
        try:
            return TreeHead.from_dict(doc)
        except ReceiptError as exc:  # unreachable after verify_tree_head; kept as a hard stop
            raise BadWitnessDocument(str(exc)) from None

    async def _observe(
        self,
        head: TreeHead,
        source: str,
        consistency: ConsistencyFetch,
        refetch: TreeHeadFetch,
        *,
        allow_refetch: bool,
    ) -> None:
        newest = self.kept.newest_tree_head()
        if newest is None:
            with self.store.transaction():
                self.kept.add_tree_head(head, source, None)
            log.info("central log: first tree head kept (size %d)", head.tree_size)
            return
        if head.origin != newest.origin:
            self.raise_alarm(
                f"the central signed a tree head of log {head.origin!r}, but its log is {newest.origin!r}",
                {"origin": newest.origin, "seen_origin": head.origin},
            )
        if head.tree_size == newest.tree_size:
            if head.root_hash != newest.root_hash:
                self._split_view(newest, head)
            return
        if head.tree_size > newest.tree_size:
            proof = await consistency(newest.tree_size, head.tree_size)
            if proof is None:
                # It signed the larger head, so it can prove it; a refusal here is a garbled answer or a
                # stall, not yet evidence: the document is refused and asked for again.
                raise BadWitnessDocument(f"the central gave no consistency proof from {newest.tree_size} to "
                                         f"{head.tree_size} leaves")
            if not _consistent(newest, head, proof):
                self._inconsistent(newest, head)
            with self.store.transaction():
                self.kept.add_tree_head(head, source, newest.tree_size)
            log.debug("central log grew from %d to %d leaves (consistent)", newest.tree_size, head.tree_size)
            return
        # An older head than ours: a slow answer is fine if the central can still prove it a prefix of
        # ours; a log that now holds fewer leaves than a head it signed is not.
        proof = await consistency(head.tree_size, newest.tree_size)
        if proof is not None:
            if not _consistent(head, newest, proof):
                self._inconsistent(head, newest)
            return
        if allow_refetch:
            current = self._verified_tree_head(await refetch())
            if current.tree_size >= newest.tree_size:
                await self._observe(current, "tree_head", consistency, refetch, allow_refetch=False)
                return
            head = current
        self.raise_alarm(
            f"the central's log now has {head.tree_size} leaves, but it signed a tree head of "
            f"{newest.tree_size} leaves (root {newest.root_hash}) before: the log shrank, entries were "
            f"removed",
            {"kept_size": newest.tree_size, "kept_root": newest.root_hash, "seen_size": head.tree_size},
        )

    def _split_view(self, kept: TreeHead, seen: TreeHead) -> None:
        self.raise_alarm(
            f"the central signed two different roots for a log of {kept.tree_size} leaves ({kept.root_hash} "
            f"and {seen.root_hash}): its log was rewritten",
            {"size": kept.tree_size, "kept_root": kept.root_hash, "seen_root": seen.root_hash},
        )

    def _inconsistent(self, old: TreeHead, new: TreeHead) -> None:
        self.raise_alarm(
            f"the central's log of {new.tree_size} leaves (root {new.root_hash}) is not an extension of its "
            f"log of {old.tree_size} leaves (root {old.root_hash}) that it signed before (its consistency "
            f"proof does not verify): its log was rewritten",
            {"old_size": old.tree_size, "old_root": old.root_hash, "new_size": new.tree_size,
             "new_root": new.root_hash},
        )

    # -- alarms ------------------------------------------------------------------------------------

    def raise_alarm(self, reason: str, facts: Mapping[str, Any]) -> None:
        """Put the alarm on the ledger (once) and stop: raises :class:`WitnessAlarm`."""
        if self.alarm is None:
            log.critical("WITNESS ALARM: %s; the uplink stops until an administrator investigates", reason)
            entry = self.store.record(
                EntryType.WITNESS_ALARM, None,
                {"reason": reason[:2000], "central_key_id": self.central_key_id, **dict(facts)},
            )
            self.alarm = f"ledger seq {entry.seq}: {reason}"
        raise WitnessAlarm(self.alarm)


def _consistent(old: TreeHead, new: TreeHead, proof: list[str]) -> bool:
    try:
        hashes = [bytes.fromhex(value) for value in proof]
    except ValueError:
        return False
    return verify_consistency(old.tree_size, new.tree_size, old.root, new.root, hashes)
