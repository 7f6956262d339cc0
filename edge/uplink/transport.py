"""The seam between the uplink's core and the wire: what a :class:`Transport` does, and the one shape of
what it answers.

The core (:mod:`edge.uplink.service`, with the spool, backoff, circuit breaker, receipts, witness checks,
signed-refusal handling and purge) decides; a transport only carries. It moves three kinds of traffic
between one station and the central, over one wire, with one identity:

* **content**: the original bytes of an item, resumable (tus: POST/HEAD/PATCH; MQTT file transfer:
  init, segments with per-segment acks, fin);
* **registration**: the signed manifest with the ledger entries the central has not yet accepted, which
  brings back the receipt;
* **witnessing**: ledger segments pushed, the central's view of our ledger (its head, and the entries it
  holds page by page, which `edge verify` reads), its tree heads and consistency proofs.

All three go over the same transport because the central answers about all three in the same signed
documents (a receipt carries the witnessed head and a tree head, a ledger answer does too), because a
station on a network where only the broker is reachable must still be witnessed, and because one
identity (the enrolled certificate) should vouch for all of it. The transport checks nothing signed:
receipts, refusals, witnessed heads and tree heads come back *unverified*, and the core verifies each
with the central key pinned at enrollment before anything relies on it.

Outcomes, one shape for every transport:

* :class:`Delivered`: the content is complete at the central (``upload`` names it for registration);
* :class:`Accepted`: the central registered the item; ``receipt`` is its receipt document;
* :class:`RetryLater`: nothing final happened (down, timed out, interrupted, a garbled or unexpected
  answer, a busy central); ``retry_after_s`` when the answer asked for a pause;
* :class:`Refused`: the answer refused and said why (``code``), with the signed refusal it carried, if
  any. *Whether a refusal is final is the core's decision alone*: only a code on the published list with
  a refusal the pinned key signed for this item (and upload) is; anything between station and central can
  answer anything.

Item calls (:meth:`Link.upload`, :meth:`Link.register`) return an outcome; the witnessing calls return
their answer or raise :class:`NotDone` carrying a :class:`RetryLater` or :class:`Refused`. A transport
turns every failure of its wire (connection refused, reset, timeout, protocol violation) into one of
these: an ``OSError`` reaching the core means the *local* store failed, and so does
:class:`ContentUnreadable`.

Resuming: ``Parcel.resume`` is the transport's own reference to an upload in progress (tus: the upload
URL; MQTT: ``mqtt:<file_id>``, whose progress the receiver reports), persisted by the spool whenever the
transport reports a new one through ``on_resume``, so an upload resumes after a crash or a restart
instead of starting over.

Transports are chosen by ``[uplink] transport`` (or a preference with failover, ``[uplink] transports``)
through :mod:`edge.uplink.transports`, the only module of the core that names them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge.custody.ledger import Checkpoint, LedgerEntry
from edge.ingest.prefix_digests import PrefixDigests

__all__ = [
    "FOUND_WHILE_SENDING",
    "UPLOAD_LOST",
    "Accepted",
    "ContentUnreadable",
    "Delivered",
    "LedgerAnswer",
    "LedgerPage",
    "LedgerSegment",
    "Link",
    "NotDone",
    "Parcel",
    "Refused",
    "RegisterOutcome",
    "RetryLater",
    "StoredCopyMismatch",
    "Transport",
    "UploadOutcome",
]

# The code of a refusal that says the upload in progress cannot be continued (the central forgot it,
# or the stored reference no longer fits the configured central): the core starts a new upload.
UPLOAD_LOST = "upload_lost"


class ContentUnreadable(Exception):
    """The stored copy of an item cannot be read (or is shorter than its recorded size): a local
    problem, never held against the central or the evidence."""


# How a transport that checks the content as it sends it found a stored copy changed, by default: its
# hash of what it sent, before the last chunk went (StoredCopyMismatch.found_by, the ledger's `found_by`).
FOUND_WHILE_SENDING = "uplink while sending (before its last chunk)"


class StoredCopyMismatch(ContentUnreadable):
    """A transport that checks the content on the pass that sends it (``Link.checks_content_on_send``)
    found that the stored copy no longer gives the item's SHA-256 (``found``), before the central held
    all of it; the upload in progress is abandoned. ``found_by`` says how, for the ledger (the default:
    hashed as it was sent); ``refused_at``, when the central's refusal of the chunk at that offset
    led to it."""

    def __init__(
        self, message: str, found: str, *, found_by: str = FOUND_WHILE_SENDING, refused_at: int | None = None
    ) -> None:
        super().__init__(message)
        self.found = found
        self.found_by = found_by
        self.refused_at = refused_at


@dataclass(frozen=True)
class Parcel:
    """One item to send: the first ``size`` bytes of ``path`` are the original, with SHA-256 ``sha256``."""

    item: str
    sha256: str
    size: int
    path: Path
    original_name: str
    resume: str | None = None
    """The transport's reference to an upload of this item in progress, from an earlier ``on_resume``."""
    prefix_digests: PrefixDigests | None = None
    """The content's SHA-256 prefix digests recorded when the stored copy was verified (the last one is
    ``sha256``), for a transport that sends them instead of hashing the copy again; None: hash it."""
    forget_prefix_digests: Callable[[], None] | None = None
    """Called when ``prefix_digests`` proved wrong (the copy gives ``sha256`` but not one of them)."""

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the content at ``offset`` (bounded by the item's size); raises
        :class:`ContentUnreadable` when the stored copy cannot give them."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError(f"item {self.item}: bytes {offset}..{offset + size} are outside 0..{self.size}")
        try:
            with self.path.open("rb", buffering=0) as f:
                parts: list[bytes] = []
                got = 0
                while got < size:
                    part = os.pread(f.fileno(), size - got, offset + got)
                    if not part:
                        raise ContentUnreadable(
                            f"item {self.item}: expected {size} bytes at offset {offset}, the stored copy "
                            f"ends after {got}"
                        )
                    parts.append(part)
                    got += len(part)
        except OSError as exc:
            raise ContentUnreadable(f"item {self.item}: cannot read the stored copy: {exc}") from exc
        return b"".join(parts)


@dataclass(frozen=True)
class LedgerPage:
    """Entries of our ledger as the central holds them (:meth:`Link.ledger_page`), unverified: the
    entry documents after the asked seq in order, ``next`` (the seq to ask after for the next page, None
    at the central's head), and the head the central signed as witnessed."""

    entries: Sequence[Mapping[str, Any]]
    next: int | None
    witnessed_head: dict[str, Any] | None


@dataclass(frozen=True)
class LedgerSegment:
    """Consecutive ledger entries with the checkpoint signed at the last of them, and every other
    checkpoint the station signed at a seq of the segment (the central keeps them for disclosure
    packages, which bind each disclosed entry by the checkpoint at its seq)."""

    entries: Sequence[LedgerEntry]
    checkpoint: Checkpoint
    signed: Sequence[Checkpoint] = ()


@dataclass(frozen=True)
class LedgerAnswer:
    """The central's view of our ledger: the accepted head, and (unverified) the signed documents that
    came with it: the head as witnessed, and the log's tree head."""

    seq: int
    hash: str
    witnessed_head: dict[str, Any] | None
    tree_head: dict[str, Any] | None

    @property
    def head(self) -> tuple[int, str]:
        return self.seq, self.hash


@dataclass(frozen=True)
class Delivered:
    upload: str
    """How registration names the finished content (tus: the upload URL); persisted by the spool."""
    bytes_sent: int = 0
    """Content bytes this call put on the wire, re-sent pieces included."""
    resumed_from: int = 0
    """Bytes the central already held when this call started (0: a new upload)."""


@dataclass(frozen=True)
class Accepted:
    receipt: dict[str, Any]
    """The central's receipt, unverified."""


@dataclass(frozen=True)
class RetryLater:
    reason: str
    retry_after_s: float | None = None
    """What the answer asked for (e.g. HTTP ``Retry-After``); the core bounds it by its configuration."""
    answered: bool = False
    """The central (or its receiver) answered and asked for later: busy (503 with ``Retry-After``, 429),
    a quota pause, a transfer already in progress, "send every segment again". False: nothing answered
    (down, refused, timed out, no receiver listening). Failover counts only the unanswered ones."""

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Refused:
    code: str
    """The answer's code (``content_mismatch``, ``ledger_gap``, ``http_413``...), at most 64 characters."""
    detail: str
    """What the answer said, bounded and printable."""
    refusal: dict[str, Any] | None = None
    """The signed refusal the answer carried, unverified; None when it carried none."""
    upload: str | None = None
    """The upload the refused request named, as the central names it in its refusals."""
    station_level: bool = False
    """The wire says the refusal is about the station or the path (HTTP 401, 403, 404), not the item."""
    via: str = field(default="", compare=False)
    """How it came, for logs (e.g. ``HTTP 422``)."""

    def __str__(self) -> str:
        return f"{self.via + ' ' if self.via else ''}{self.code}: {self.detail}"


UploadOutcome = Delivered | RetryLater | Refused
RegisterOutcome = Accepted | RetryLater | Refused


class NotDone(Exception):
    """A witnessing call (ledger state or push, tree head, consistency proof) did not get its answer."""

    def __init__(self, outcome: RetryLater | Refused) -> None:
        super().__init__(str(outcome))
        self.outcome = outcome

    @property
    def retry_after_s(self) -> float | None:
        return self.outcome.retry_after_s if isinstance(self.outcome, RetryLater) else None


class Link(Protocol):
    """One open conversation with the central (:meth:`Transport.connect`); safe for concurrent calls."""

    @property
    def checks_content_on_send(self) -> bool:
        """True when :meth:`upload` hashes what it reads as it sends it and raises
        :class:`StoredCopyMismatch` before the central holds the whole of a copy that does not give
        ``parcel.sha256``: the core then does not read and hash the stored copy once more first."""
        ...

    async def upload(self, parcel: Parcel, on_resume: Callable[[str], None]) -> UploadOutcome:
        """Send the content, resuming ``parcel.resume`` when the central still holds it. ``on_resume``
        is called with every new resume reference before more content is sent after it. Raises
        :class:`ContentUnreadable` (:class:`StoredCopyMismatch`) for a stored copy it cannot send."""
        ...

    async def register(
        self, upload: str, manifest: Mapping[str, Any], segment: LedgerSegment | None
    ) -> RegisterOutcome:
        """Register delivered content with its signed manifest and the ledger entries the central lacks."""
        ...

    async def abandon(self, upload: str) -> None:
        """Best effort: let the central drop the content of a refused item. Never raises."""
        ...

    async def ledger_state(self) -> LedgerAnswer:
        """The central's accepted head of our ledger ((0, genesis) when none); raises :class:`NotDone`."""
        ...

    async def push_ledger(self, segment: LedgerSegment) -> LedgerAnswer:
        """Send a ledger segment; the answer is the head the central now holds. Raises :class:`NotDone`."""
        ...

    async def ledger_page(self, after: int, limit: int) -> LedgerPage:
        """At most ``limit`` entries of our ledger the central holds after seq ``after`` (`edge verify`
        names from them what a rewrite of the local ledger removed); raises :class:`NotDone`."""
        ...

    async def tree_head(self) -> dict[str, Any]:
        """The central log's current signed tree head (unverified); raises :class:`NotDone`."""
        ...

    async def consistency(self, first: int, second: int) -> list[str] | None:
        """The log's consistency proof from ``first`` to ``second`` leaves (hex hashes, unverified), or
        None when the central says it holds fewer leaves than asked. Raises :class:`NotDone`."""
        ...

    async def officers(self, have: int) -> dict[str, Any]:
        """The agency's officer list newer than version ``have`` (``{"version", "list"}``, the signed list
        unverified, or null); raises :class:`NotDone`."""
        ...

    async def fleet_report(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """Send the station's fleet report (edge.equipment.fleet_report); raises :class:`NotDone`."""
        ...


class Transport(Protocol):
    """A wire protocol to the central, configured for one station."""

    name: str

    def connect(self) -> AbstractAsyncContextManager[Link]:
        """Open a conversation (connections, sessions, subscriptions); closed on exit."""
        ...
