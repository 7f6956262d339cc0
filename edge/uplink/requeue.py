"""`edge uplink retry`: an operator sends items the central refused (or held ones) back to the upload queue.

A refusal is final only when the central signed it (`edge.uplink.service`), but final is not for ever:
the central's maximum upload size may be raised, a station key re-enrolled, a central bug fixed. The
operator then requeues the item: its upload state goes back to `queued` (attempts and backoff reset, no
upload URL, so the content is sent again from the start) and a `requeued` ledger entry records, in the
same transaction, who did it, why, and which refusal it overrides (the seq of the `error` entry that
rejected the item, and its code). The refusal entry itself stays, like every ledger entry.

Who: the Unix account of the process (`os.getuid()` looked up in the password database), which a
variable in the environment cannot change; when the command runs under sudo, the `SUDO_USER` it names
is kept beside it, marked as what the environment claims. Requeueing is all or nothing: an unknown item,
or one that is not rejected, refuses the whole command and changes nothing.

Held items (`release_held=True`, which `edge uplink retry ITEM` passes): a queued item whose stored copy
the uplink found changed is held, not sent, until a re-acquisition replaces the copy
(`edge.uplink.spool`). An operator who repaired the copy otherwise, or judged the finding a passing read
fault, releases it by naming it: the hold goes, the upload starts afresh, and the `requeued` entry names
the `error` entry that held it (``previous``: state `held`, its seq). The copy is checked again as it is
sent: still changed, it is held again with a new entry. Only named items are released (never by
``--all-rejected``), and never over the central's MQTT re-upload command.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge.custody.ledger import EntryType
from edge.ingest.store import StationStore
from edge.uplink.spool import HELD, Spool, UploadState

__all__ = ["MAX_REASON_CHARS", "RequeueError", "Requeued", "local_operator", "requeue_rejected"]

MAX_REASON_CHARS = 200
_MAX_NAME_CHARS = 64


class RequeueError(Exception):
    """The request names an unknown item, an item that is not rejected, or an unusable reason."""


@dataclass(frozen=True)
class Requeued:
    item: str
    seq: int
    """The `requeued` ledger entry."""
    refusal_code: str | None
    refusal_seq: int | None
    """The `error` entry that rejected the item (None when the ledger holds none: an older store)."""
    signed: bool
    """Whether that refusal was signed by the central."""
    held_seq: int | None = None
    """For a released held item: the `error` entry (stage `stored copy`) that held it; else None."""


def _printable(value: str, limit: int) -> bool:
    return 0 < len(value) <= limit and value.isprintable()


def local_operator() -> dict[str, Any]:
    """Who is running this command: the process's Unix account, and sudo's claim of the human behind it."""
    uid = os.getuid()
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None  # an account without a name (a container's arbitrary uid): the uid says it
    operator: dict[str, Any] = {"uid": uid, "user": user}
    claimed = os.environ.get("SUDO_USER")
    if claimed is not None and _printable(claimed, _MAX_NAME_CHARS):
        operator["sudo_user"] = claimed  # from the environment: a claim, recorded as such
    return operator


def _rejecting_entry(store: StationStore, item: str) -> tuple[int, dict[str, Any]] | None:
    """The newest `error` entry that rejected ``item`` (the spool's `mark_rejected`)."""
    found: tuple[int, dict[str, Any]] | None = None
    for entry in store.ledger.entries(item=item):
        if entry.type == EntryType.ERROR and entry.data.get("stage") in ("register", "upload"):
            found = entry.seq, dict(entry.data)
    return found


def requeue_rejected(
    store: StationStore,
    items: Sequence[str] | None,
    *,
    operator: dict[str, Any],
    reason: str = "",
    release_held: bool = False,
) -> list[Requeued]:
    """Requeue ``items`` (None: every rejected item); raises :class:`RequeueError` and changes nothing
    when one of them is unknown or not rejected (nor, with ``release_held``, held)."""
    if reason and not _printable(reason, MAX_REASON_CHARS):
        raise RequeueError(f"the reason must be at most {MAX_REASON_CHARS} printable characters")
    spool = Spool(store)
    held: dict[str, int] = {}
    if items is None:
        wanted = spool.rejected_items()
    else:
        wanted = list(dict.fromkeys(items))  # named twice is requeued once
        states = spool.states(wanted)
        held = spool.held(wanted) if release_held else {}
        for item in wanted:
            state = states.get(item)
            if state is None:
                known = store.conn.execute("SELECT 1 FROM items WHERE item=?", (item,)).fetchone()
                shown = item if _printable(item, 128) else repr(item[:128])
                if known is None:
                    raise RequeueError(f"no item {shown} in this store")
                raise RequeueError(f"item {shown} has not been queued for upload yet: nothing to retry")
            if state is not UploadState.REJECTED and item not in held:
                raise RequeueError(f"item {item} is {state.value}, not rejected"
                                   f"{' nor held' if release_held else ''}: nothing to retry")
    plans: dict[str, dict[str, Any]] = {}
    found: dict[str, tuple[int, dict[str, Any]] | None] = {}
    for item in wanted:
        if item in held:
            found[item] = None
            holding = {"state": HELD, "seq": held[item], "stage": "stored copy"}
            plans[item] = {"by": operator, "previous": holding, **({"reason": reason} if reason else {})}
            continue
        found[item] = rejecting = _rejecting_entry(store, item)
        previous: dict[str, Any] = {"state": UploadState.REJECTED.value}
        if rejecting is not None:
            seq, data = rejecting
            previous.update({"seq": seq, "code": data.get("code"), "signed": "refusal" in data})
        plans[item] = {"by": operator, "previous": previous, **({"reason": reason} if reason else {})}
    try:
        seqs = spool.requeue_rejected(plans)
    except ValueError as exc:  # changed under us (an agent running without the store lock)
        raise RequeueError(str(exc)) from None
    done: list[Requeued] = []
    for item in wanted:
        rejecting = found[item]
        done.append(
            Requeued(
                item=item,
                seq=seqs[item],
                refusal_code=None if rejecting is None else rejecting[1].get("code"),
                refusal_seq=None if rejecting is None else rejecting[0],
                signed=rejecting is not None and "refusal" in rejecting[1],
                held_seq=held.get(item),
            )
        )
    return done
