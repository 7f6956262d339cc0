"""`edge witness clear`: an operator clears a witness alarm, on the ledger, after investigating it.

A witness alarm (:mod:`edge.uplink.witness`) stops the uplink because the central's log, or its record
of our ledger, is provably not what it signed before. It stays stopped across restarts; the only way back
is a signed ``witness_alarm_cleared`` ledger entry, which records who cleared it (the Unix account of the
process, with ``SUDO_USER`` kept as the environment's claim), why, which alarm (its ledger seq and what it
said), and, explicitly, **which tree head of the central the station trusts from then on**:

* **kept** (the default): the tree head kept before the alarm stays the anchor. The uplink starts again,
  and the next head the central shows must be proved consistent with it, or the alarm is raised again (a
  new entry). This is the right choice when the central was repaired, e.g. restored from a backup that
  still extends what it signed: the station's check is not weakened at all.
* **accepted** (``--accept-central-head``): the central's log really changed, the operator investigated
  and decided to go on with it. The command asks the central (mutual TLS with the enrollment bundle) for
  its current signed tree head and its head of our ledger, verifies the tree head with the pinned central
  key, and the entry names both the head it replaces and the head it accepts (size, root, the signed head
  itself), so an auditor sees exactly where the chain of tree heads was re-anchored, by whom and why.
  Only a central whose signed head of our ledger is a prefix of the ledger here can be accepted: a head
  of a fork (another hash at that seq, more entries than we hold, or a plain answer that differs from
  the head it signed) is refused and nothing changes.
  Nothing before is lost: every receipt still carries its own signed head and inclusion proof.

Why not simply accept whatever the central shows next: an anchor replaced silently is what a central
that rewrote its log would want. An auditor must be able to point at the one entry where trust in the
central's log was re-established, with the exact head a person chose to trust.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.config.station import StationConfig
from edge.custody.keys import key_id_of
from edge.custody.ledger import EntryType
from edge.custody.receipt import TreeHead, verify_tree_head
from edge.custody.witness import verify_witnessed_head
from edge.custody.witness_log import OPERATOR_ACCEPTED, StationWitness, alarm_state, newest_witnessed_seq
from edge.ingest.store import StationStore

__all__ = [
    "MAX_REASON_CHARS",
    "AcceptedCentral",
    "ClearError",
    "Cleared",
    "clear_witness_alarm",
    "fetch_accepted_central",
]

MAX_REASON_CHARS = 500


class ClearError(Exception):
    """Nothing to clear, an unusable reason, or a central whose current state cannot be accepted."""


@dataclass(frozen=True)
class AcceptedCentral:
    """The central's current state as the operator accepts it: its signed tree head (verified with the
    pinned key) and its head of this station's ledger."""

    tree_head: TreeHead
    ledger_seq: int
    ledger_hash: str


@dataclass(frozen=True)
class Cleared:
    seq: int
    """The `witness_alarm_cleared` ledger entry."""
    alarm_seq: int
    alarm_reason: str
    trusted: str
    """``kept`` or ``accepted``."""
    tree_head: TreeHead | None
    """The tree head the station trusts from now on (None when it never kept one)."""


def _head_facts(head: TreeHead | None) -> dict[str, Any] | None:
    if head is None:
        return None
    return {"origin": head.origin, "tree_size": head.tree_size, "root_hash": head.root_hash,
            "time": head.time}


async def fetch_accepted_central(
    config: StationConfig, central_key: Ed25519PublicKey, timeout_s: float = 30.0
) -> AcceptedCentral:
    """Ask the configured central for its current tree head and its head of our ledger; raises
    :class:`ClearError` when it cannot be reached or what it answers does not verify."""
    from edge.pki.names import IdentityError
    from edge.uplink.transport import NotDone
    from edge.uplink.transports import transport_for

    uplink = config.uplink
    try:
        # Over the configured transport, like the uplink itself.
        async with (
            asyncio.timeout(timeout_s),
            transport_for(config, None, purpose="witness").connect() as link,
        ):
            tree_doc = await link.tree_head()
            ledger = await link.ledger_state()
    except (NotDone, IdentityError, OSError, TimeoutError, ValueError) as exc:
        raise ClearError(f"the central at {uplink.central_url} could not be asked for its current tree "
                         f"head ({type(exc).__name__}: {str(exc)[:300]}); nothing was changed") from None
    problems = verify_tree_head(tree_doc, central_key)
    if problems:
        raise ClearError("the central's current tree head does not verify with the pinned central key ("
                         + "; ".join(str(p) for p in problems[:3]) + "); nothing was changed")
    if ledger.seq > 0:
        # What is accepted is what the central signed: a plain (seq, hash) beside a signed head of
        # another ledger would let a forked central pass for a prefix of ours.
        if ledger.witnessed_head is None:
            raise ClearError(f"the central says it holds this station's ledger up to seq {ledger.seq} but "
                             "sent no signed (witnessed) head of it; nothing was changed")
        problems = verify_witnessed_head(ledger.witnessed_head, central_key,
                                         expected_station=config.station.id)
        if problems:
            raise ClearError("the central's witnessed head of this station's ledger does not verify ("
                             + "; ".join(str(p) for p in problems[:3]) + "); nothing was changed")
        signed = (ledger.witnessed_head["seq"], ledger.witnessed_head["hash"])
        if signed != (ledger.seq, ledger.hash):
            raise ClearError(f"the central's answer names seq {ledger.seq} with hash {ledger.hash}, but the "
                             f"head it signed is seq {signed[0]} with hash {signed[1]}: its answer does not "
                             "hold together; nothing was changed")
    return AcceptedCentral(TreeHead.from_dict(tree_doc), ledger.seq, ledger.hash)


def clear_witness_alarm(
    store: StationStore,
    *,
    operator: dict[str, Any],
    reason: str,
    accepted: AcceptedCentral | None = None,
    central_key: Ed25519PublicKey | None = None,
) -> Cleared:
    """Clear the standing witness alarm with a ``witness_alarm_cleared`` entry; with ``accepted`` the
    central's current tree head becomes the trusted one in the same transaction. Raises
    :class:`ClearError` and changes nothing when no alarm stands or the request is unusable."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise ClearError(f"give --reason: what was investigated and found, 1-{MAX_REASON_CHARS} printable "
                         "characters (it is kept in the ledger entry)")
    state = alarm_state(store.conn)
    if state is None:
        raise ClearError("the ledger holds no witness alarm: nothing to clear")
    if not state.standing:
        raise ClearError(f"the witness alarm at ledger seq {state.seq} was already cleared at ledger seq "
                         f"{state.cleared_seq}: nothing to clear")
    kept = StationWitness(store.conn)
    previous = kept.newest_tree_head()
    data: dict[str, Any] = {
        "by": operator,
        "reason": reason,
        "alarm": {"seq": state.seq, "reason": state.reason[:2000]},
    }
    if accepted is None:
        data["trusted_tree_head"] = {
            "decision": "kept",
            "head": _head_facts(previous),
            "meaning": "the tree head kept before the alarm stays the station's anchor: the next head the "
                       "central shows must be proved consistent with it, or the alarm is raised again",
        }
        trusted = previous
    else:
        row = store.conn.execute("SELECT hash FROM ledger WHERE seq = ?", (accepted.ledger_seq,)).fetchone()
        if accepted.ledger_seq > 0 and (row is None or row[0] != accepted.ledger_hash):
            found = "no such entry" if row is None else f"hash {row[0]}"
            raise ClearError(
                f"the central holds this station's ledger up to seq {accepted.ledger_seq} with hash "
                f"{accepted.ledger_hash}, but the ledger here has {found}: the two ledgers forked, which "
                "accepting the central's head cannot mend; nothing was changed"
            )
        data["trusted_tree_head"] = {
            "decision": "accepted",
            "head": _head_facts(accepted.tree_head),
            "replaces": _head_facts(previous),
            "meaning": "the operator accepted the central's current tree head as the station's new anchor "
                       "without a consistency proof from the one it replaces; later heads must extend it",
        }
        data["accepted_central"] = {
            "tree_head": accepted.tree_head.to_dict(),
            "ledger_seq": accepted.ledger_seq,
            "ledger_hash": accepted.ledger_hash,
            "witnessed_seq_kept": newest_witnessed_seq(store.conn),
            **({"central_key_id": key_id_of(central_key)} if central_key is not None else {}),
        }
        trusted = accepted.tree_head
    with store.transaction():
        entry = store.ledger.append(EntryType.WITNESS_ALARM_CLEARED, None, data)
        if accepted is not None:
            kept.add_tree_head(accepted.tree_head, OPERATOR_ACCEPTED, None)
    return Cleared(entry.seq, state.seq, state.reason, "kept" if accepted is None else "accepted", trusted)
