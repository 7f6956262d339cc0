"""The spool: the station's durable outbox of sealed items bound for the central receiver.

One `uploads` row per sealed item, in the station's state.db. Every change of state and its ledger
entry share one transaction (queued, uploaded, receipt, purged, error), so after a crash the spool and
the ledger agree and the uplink resumes where it stopped: an item whose upload reference is known (the
transport's resume reference, kept in `upload_url`; tus: the upload URL) resumes that upload where the
central holds it; an item without one starts again.

States: queued (waiting or in flight) → uploaded (content complete at the central, not yet registered)
→ receipted (the central accepted it and its receipt verified here). `rejected` items were refused by
the central for a reason retrying cannot fix (a mismatch, a signature), in a refusal the central signed;
they stay local and are named in the ledger, with that refusal, for a human to examine, who may send them
back to the queue (`edge uplink retry`, a `requeued` ledger entry).

A queued item whose stored copy the uplink found changed is *held* (`held_seq`: the seq of the `error`
entry, stage `stored copy`, that found it; set in the same transaction): it is not sent again, however
often it would have been retried, until a re-acquisition replaces the copy (which releases it in the
transaction that records `reacquired`: edge.ingest.repository.release_held_upload) or an operator
releases it (`edge uplink retry ITEM`, a `requeued` entry). It stays held across restarts.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.ledger import EntryType, station_time_now
from edge.ingest.prefix_digests import PrefixDigests
from edge.ingest.repository import forget_prefix_digests, load_prefix_digests
from edge.ingest.store import StationStore

log = logging.getLogger(__name__)
# Items per query of an IN list: within SQLite's limit on host parameters whatever the build.
_ITEMS_PER_QUERY = 500


# `previous.state` of a `requeued` entry that released a held item (not an upload state: a held item is
# queued, and not sent until released).
HELD = "held"


class UploadState(StrEnum):
    QUEUED = "queued"
    UPLOADED = "uploaded"
    RECEIPTED = "receipted"
    REJECTED = "rejected"


@dataclass(frozen=True)
class SpoolEntry:
    item: str
    sha256: str
    size: int
    path: Path  # the stored evidence file; its first `size` bytes are the original
    original_name: str
    manifest: dict[str, Any]
    state: UploadState
    upload_url: str | None
    attempts: int


class Spool:
    def __init__(self, store: StationStore) -> None:
        self.store = store

    def enqueue_sealed(self) -> list[str]:
        """Queue every sealed item not yet in the spool, each with a `queued` ledger entry."""
        rows = self.store.conn.execute(
            "SELECT items.item, items.sha256, items.size FROM items LEFT JOIN uploads USING (item) "
            "WHERE items.path IS NOT NULL AND items.manifest IS NOT NULL AND uploads.item IS NULL "
            "ORDER BY items.acquired"
        ).fetchall()
        if not rows:
            return []
        with self.store.transaction() as conn:
            for row in rows:
                conn.execute(
                    "INSERT INTO uploads (item, state) VALUES (?, ?)", (row["item"], UploadState.QUEUED.value)
                )
                self.store.ledger.append(
                    EntryType.QUEUED, row["item"], {"sha256": row["sha256"], "size": row["size"]}
                )
        return [row["item"] for row in rows]

    def due(self, now_s: float, exclude: Iterable[str], limit: int) -> list[SpoolEntry]:
        """Items to work on now (queued or uploaded, not backing off, not already in flight)."""
        busy = set(exclude)
        rows = self.store.conn.execute(
            "SELECT uploads.item, uploads.state, uploads.upload_url, uploads.attempts, items.sha256, "
            "items.size, items.path, items.manifest FROM uploads JOIN items USING (item) "
            "WHERE uploads.state IN ('queued', 'uploaded') AND uploads.next_attempt <= ? "
            "AND uploads.held_seq IS NULL ORDER BY uploads.next_attempt, items.acquired LIMIT ?",
            (now_s, limit + len(busy)),
        ).fetchall()
        entries: list[SpoolEntry] = []
        for row in rows:
            if row["item"] in busy:
                continue
            try:
                manifest = parse_json(row["manifest"])
            except (CanonicalJsonError, ValueError) as exc:
                log.error("item %s: unreadable manifest in the index (%s); not uploaded", row["item"], exc)
                continue
            original = manifest.get("original", {}) if isinstance(manifest, dict) else {}
            entries.append(
                SpoolEntry(
                    item=row["item"],
                    sha256=row["sha256"],
                    size=int(row["size"]),
                    path=self.store.layout.root / row["path"],
                    original_name=str(original.get("name", "")),
                    manifest=manifest,
                    state=UploadState(row["state"]),
                    upload_url=row["upload_url"],
                    attempts=int(row["attempts"]),
                )
            )
        return entries[:limit]

    def next_due_s(self, exclude: Iterable[str] = ()) -> float | None:
        """When the next item not in `exclude` (in flight) is due."""
        busy = set(exclude)
        rows = self.store.conn.execute(
            "SELECT item, next_attempt FROM uploads WHERE state IN ('queued', 'uploaded') "
            "AND held_seq IS NULL ORDER BY next_attempt LIMIT ?",
            (len(busy) + 1,),
        ).fetchall()
        due = [float(row["next_attempt"]) for row in rows if row["item"] not in busy]
        return due[0] if due else None

    def prefix_digests(self, entry: SpoolEntry) -> PrefixDigests | None:
        """The prefix digests recorded for the item when its copy was verified (the upload's sha256-prefix
        checksums, edge.ingest.prefix_digests), when they end at its sealed hash; else None."""
        return load_prefix_digests(self.store.conn, entry.item, entry.sha256, entry.size)

    def forget_prefix_digests(self, item: str) -> None:
        """The central found a recorded digest the copy does not give while the copy gives its sealed
        hash: the digests are wrong and the item's uploads hash from now on."""
        with self.store.transaction() as conn:
            forget_prefix_digests(conn, item)

    def set_upload_url(self, item: str, url: str | None) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE uploads SET upload_url=? WHERE item=?", (url, item))

    def mark_uploaded(self, item: str, url: str, bytes_sent: int, resumed_from: int) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE uploads SET state=?, upload_url=?, last_error=NULL WHERE item=?",
                (UploadState.UPLOADED.value, url, item),
            )
            self.store.ledger.append(
                EntryType.UPLOADED,
                item,
                {"upload": url, "bytes_sent": bytes_sent, "resumed_from": resumed_from},
            )

    def requeue(self, item: str, reason: str, retry_at_s: float = 0.0) -> None:
        """The central lost or expired an upload: send the content again (after `retry_at_s`)."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE uploads SET state=?, upload_url=NULL, last_error=?, attempts=attempts+1, "
                "next_attempt=? WHERE item=?",
                (UploadState.QUEUED.value, reason[:500], retry_at_s, item),
            )

    def resume_upload(self, item: str, reason: str, retry_at_s: float) -> None:
        """The central holds less of an upload than we thought: back to queued, same upload URL,
        so tus resumes it from the central's offset."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE uploads SET state=?, last_error=?, attempts=attempts+1, next_attempt=? WHERE item=?",
                (UploadState.QUEUED.value, reason[:500], retry_at_s, item),
            )

    def mark_receipted(self, item: str, receipt: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
        """Store the verified receipt with its ledger entry; returns the receipt time."""
        now = station_time_now()
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE uploads SET state=?, receipt=?, receipted=?, last_error=NULL WHERE item=?",
                (UploadState.RECEIPTED.value, canonical_json(receipt).decode("utf-8"), now, item),
            )
            forget_prefix_digests(conn, item)  # receipted: never uploaded again, its cache goes
            self.store.ledger.append(EntryType.RECEIPT, item, dict(summary))
        return now

    def mark_rejected(
        self, item: str, stage: str, code: str, detail: str, *, refusal: Mapping[str, Any] | None = None
    ) -> None:
        """The central refused the item for good: `refusal` is its signed refusal, kept in the ledger
        entry so that the refusal itself stays provable."""
        data: dict[str, Any] = {"stage": stage, "code": code, "reason": detail[:1000]}
        if refusal is not None:
            data["refusal"] = dict(refusal)
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE uploads SET state=?, last_error=? WHERE item=?",
                (UploadState.REJECTED.value, f"{code}: {detail}"[:1000], item),
            )
            # Out of the upload path until a human requeues it (`edge uplink retry`), which then hashes
            # the copy: its cache goes with the state change.
            forget_prefix_digests(conn, item)
            self.store.ledger.append(EntryType.ERROR, item, data)

    def states(self, items: Iterable[str]) -> dict[str, UploadState]:
        """The upload state of each of ``items`` the spool holds (items not in it are left out)."""
        rows = self._rows_of("SELECT item, state FROM uploads WHERE item IN ({marks})", items)
        return {row["item"]: UploadState(row["state"]) for row in rows}

    def rejected_items(self) -> list[str]:
        """Every item the central refused for good, oldest acquisition first."""
        rows = self.store.conn.execute(
            "SELECT uploads.item FROM uploads JOIN items USING (item) WHERE uploads.state='rejected' "
            "ORDER BY items.acquired, uploads.item"
        ).fetchall()
        return [row["item"] for row in rows]

    def requeue_rejected(self, requeued: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        """Send refused (or held) items back to the queue, all or none: state queued, attempts and backoff
        reset, no upload URL (the content goes again), not held, each with its `requeued` ledger entry
        (``requeued`` maps an item to that entry's data; ``data["previous"]["state"]`` says which it
        was: `rejected`, or `held` with the holding entry's ``seq``). Returns each item's entry seq.
        Raises ValueError, changing nothing, when an item is not (any more) what its data says."""
        seqs: dict[str, int] = {}
        with self.store.transaction() as conn:
            for item, data in requeued.items():
                previous = data.get("previous") or {}
                if previous.get("state") == HELD:
                    changed = conn.execute(
                        "UPDATE uploads SET upload_url=NULL, attempts=0, next_attempt=0, last_error=NULL, "
                        "held_seq=NULL WHERE item=? AND state=? AND held_seq=?",
                        (item, UploadState.QUEUED.value, previous.get("seq")),
                    ).rowcount
                    if changed != 1:
                        raise ValueError(f"item {item} is not held")
                else:
                    changed = conn.execute(
                        "UPDATE uploads SET state=?, upload_url=NULL, attempts=0, next_attempt=0, "
                        "last_error=NULL WHERE item=? AND state=?",
                        (UploadState.QUEUED.value, item, UploadState.REJECTED.value),
                    ).rowcount
                    if changed != 1:
                        raise ValueError(f"item {item} is not rejected")
                seqs[item] = self.store.ledger.append(EntryType.REQUEUED, item, dict(data)).seq
        return seqs

    def held(self, items: Iterable[str] | None = None) -> dict[str, int]:
        """Each held item (of ``items``, or all) with the seq of the `error` entry that holds it."""
        if items is None:
            rows: Iterable[sqlite3.Row] = self.store.conn.execute(
                "SELECT item, held_seq FROM uploads WHERE held_seq IS NOT NULL").fetchall()
        else:
            rows = self._rows_of("SELECT item, held_seq FROM uploads WHERE held_seq IS NOT NULL "
                                 "AND item IN ({marks})", items)
        return {row["item"]: int(row["held_seq"]) for row in rows}

    def defer(self, item: str, error: str, retry_at_s: float) -> None:
        """A transient failure: try again after `retry_at_s` (no ledger entry; the log has it)."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE uploads SET attempts=attempts+1, next_attempt=?, last_error=? WHERE item=?",
                (retry_at_s, error[:1000], item),
            )

    def receipted(self, items: Iterable[str]) -> set[str]:
        rows = self._rows_of("SELECT item FROM uploads WHERE state='receipted' AND item IN ({marks})", items)
        return {row["item"] for row in rows}

    def _rows_of(self, query: str, items: Iterable[str]) -> Iterator[sqlite3.Row]:
        """The rows of ``query`` for ``items``: its ``{marks}`` becomes the placeholders of one chunk of
        items at a time, few enough for SQLite's limit on host parameters (999 in older builds)."""
        wanted = list(items)
        for start in range(0, len(wanted), _ITEMS_PER_QUERY):
            chunk = wanted[start : start + _ITEMS_PER_QUERY]
            yield from self.store.conn.execute(query.format(marks=",".join("?" * len(chunk))), chunk)

    def pending_count(self) -> int:
        """Sealed items the central has not yet receipted (or refused)."""
        row = self.store.conn.execute(
            "SELECT count(*) FROM items LEFT JOIN uploads USING (item) WHERE items.path IS NOT NULL "
            "AND items.manifest IS NOT NULL "
            "AND (uploads.state IS NULL OR uploads.state IN ('queued', 'uploaded'))"
        ).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        rows = self.store.conn.execute("SELECT state, count(*) FROM uploads GROUP BY state").fetchall()
        return {str(row[0]): int(row[1]) for row in rows}

    # -- retention --------------------------------------------------------------------------------

    def purge_due(self, retention_s: float, now: datetime | None = None) -> list[tuple[str, Path]]:
        """Receipted items whose local copy has been kept for the retention period."""
        current = now or datetime.now(UTC)
        rows = self.store.conn.execute(
            "SELECT uploads.item, uploads.receipted, items.path FROM uploads JOIN items USING (item) "
            "WHERE uploads.state='receipted' AND uploads.purged IS NULL AND uploads.receipted IS NOT NULL"
        ).fetchall()
        due: list[tuple[str, Path]] = []
        for row in rows:
            try:
                receipted = datetime.strptime(row["receipted"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            except (TypeError, ValueError):
                continue  # never purge on a time we cannot read
            if (current - receipted).total_seconds() >= retention_s:
                due.append((row["item"], self.store.layout.root / row["path"]))
        return due

    def newest_entry_time_before_start(self) -> float | None:
        """Epoch seconds of the newest ledger entry written before this run of the station, None when
        there is none or its time does not read: the store's own history of the wall clock. This run
        began at the newest `station_started` unless a `station_stopped` follows it (no run is on)."""
        conn = self.store.conn
        started = conn.execute("SELECT max(seq) FROM ledger WHERE type=?",
                               (EntryType.STATION_STARTED.value,)).fetchone()[0]
        if started is not None and conn.execute(
            "SELECT 1 FROM ledger WHERE type=? AND seq>?", (EntryType.STATION_STOPPED.value, started)
        ).fetchone() is None:
            row = conn.execute("SELECT time FROM ledger WHERE seq<? ORDER BY seq DESC LIMIT 1",
                               (started,)).fetchone()
        else:
            row = conn.execute("SELECT time FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return None
        try:
            return datetime.strptime(row[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        except (TypeError, ValueError):
            return None

    def mark_purged(self, item: str, files: list[str], *, already_absent: bool = False) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE uploads SET purged=? WHERE item=?", (station_time_now(), item))
            forget_prefix_digests(conn, item)  # no copy left to upload (receipted rows have none already)
            self.store.ledger.append(
                EntryType.PURGED,
                item,
                {
                    "files": files,
                    "already_absent": already_absent,
                    "reason": "receipt verified and retention elapsed",
                },
            )

    def purged(self, item: str) -> bool:
        row = self.store.conn.execute("SELECT purged FROM uploads WHERE item=?", (item,)).fetchone()
        return row is not None and row[0] is not None


def hold_stored_copy(
    store: StationStore, item: str, data: Mapping[str, Any], *, checked_after: int
) -> int | None:
    """The uplink found ``item``'s stored copy changed: put that on the ledger (`error`, ``data``) and hold
    the item, in one transaction; returns the entry's seq. Nothing is written (None) when the item is
    held already (the same damage is on the ledger once, whatever restarts come between) or when a
    `reacquired` entry after seq ``checked_after`` (the ledger head when the copy began to be read)
    says the copy found changed is no longer the stored one. A function of the store, not of a Spool:
    the uplink's damage path needs nothing else."""
    with store.transaction() as conn:
        row = conn.execute("SELECT held_seq FROM uploads WHERE item=?", (item,)).fetchone()
        if row is not None and row[0] is not None:
            return None
        replaced = conn.execute(
            "SELECT 1 FROM ledger WHERE item=? AND type=? AND seq>?",
            (item, EntryType.REACQUIRED.value, checked_after),
        ).fetchone()
        if replaced is not None:
            return None
        seq = store.ledger.append(EntryType.ERROR, item, dict(data)).seq
        conn.execute("UPDATE uploads SET held_seq=? WHERE item=?", (seq, item))
        return seq
