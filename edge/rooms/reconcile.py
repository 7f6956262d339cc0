"""A room session's file checked against the ledger at the agent's start; the ledger wins.

A session file (``<store>/rooms/sessions/<id>.json``) is a convenience: what the agent needs to resume a
session after a stop or crash. The ledger is the record: ``session_started`` (``kind`` room: the case,
location and persons, who started it), each ``session_changed`` (what changed from what to what), each
``mark``, and ``session_stopped``. Someone with write access to the store, or a restore of an old backup,
can change or remove the file between two runs of the agent; the ledger's entries are hash-chained and
witnessed.

:func:`sessions_on_ledger` rebuilds every room session the ledger saw start and never stop from those
entries alone; :func:`disagreements` names each field in which a file says otherwise. The service
(:meth:`edge.rooms.service.RoomService.load`) resumes the ledger's session, records every disagreement
(or a missing file) as an `error` entry, and writes the file again from the ledger. A stopped session's
missing or unreadable file is rebuilt likewise when its stop left work, and whether a completed manifest
is still owed is read from the ledger too (:func:`completed_manifest_owed`). A session whose stop sealed
its signed manifest but never appended session_stopped (the agent was killed between the two) is over:
:func:`stop_manifest_sealed` finds that manifest, and the service finishes the stop instead of resuming.
A recovered ``session_started`` (written after a restart from a file whose start was cut short) carries the
file's ``started_utc``, which :meth:`LedgerSession.rebuilt` takes.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from edge.custody.ledger import EntryType, LedgerEntry
from edge.rooms.session import Mark, Person, RoomSession, SessionError, apply_change

# Types of the entries a room session's record is made of.
SESSION_TYPES = (
    EntryType.SESSION_STARTED, EntryType.SESSION_CHANGED, EntryType.MARK, EntryType.SESSION_STOPPED,
)
# How much earlier than its session_started entry a session file may say it started (the file is written,
# then the entry appended: a fraction of a second apart, more on a loaded machine, never minutes).
START_SLACK_S = 60


@dataclass
class LedgerSession:
    """What the ledger holds of one room session."""

    started: LedgerEntry
    changes: list[LedgerEntry] = field(default_factory=list)
    marks: list[LedgerEntry] = field(default_factory=list)
    stopped: LedgerEntry | None = None
    problems: list[str] = field(default_factory=list)

    def rebuilt(self, file_started_utc: str | None) -> RoomSession:
        """The session as its entries say (recording: the caller asks only for unstopped ones). The start
        time is the file's when it is plausible (a little before the entry), else the entry's."""
        data = self.started.data
        raw_case = data.get("case")
        case: dict[str, Any] = raw_case if isinstance(raw_case, dict) else {}
        persons = tuple(
            Person(str(p.get("name", "")), str(p.get("role", "")))
            for p in data.get("persons", []) if isinstance(p, dict)
        )
        started_utc = self.started.time
        recovered_start = data.get("started_utc")
        if data.get("recovered") is True and isinstance(recovered_start, str) and _seconds(recovered_start):
            # Written after a restart from the session's file (its start was cut short): the file's start,
            # as the entry says.
            started_utc = recovered_start
        elif file_started_utc is not None and _plausible_start(file_started_utc, self.started.time):
            started_utc = file_started_utc
        session = RoomSession(
            session=str(data.get("room_session")),
            room=str(data.get("room", "")),
            room_name=str(data.get("room_name", "")),
            address=str(data.get("address", "")),
            case_number=str(case.get("case_number", "")),
            collector=str(case.get("collector", "")),
            collector_no=str(case.get("collector_no", "")),
            subject=str(case.get("subject", "")),
            persons=persons,
            started_utc=started_utc,
            started_by=str(data.get("by", "")),
            started_seq=self.started.seq,
        )
        for entry in self.changes:
            diff = entry.data.get("changes")
            if not isinstance(diff, dict):
                self.problems.append(f"session_changed {entry.seq} carries no changes")
                continue
            try:
                session, _ = apply_change(session, {name: change.get("to") for name, change in diff.items()
                                                    if isinstance(change, dict)})
            except SessionError as exc:
                self.problems.append(f"session_changed {entry.seq}: {exc}")
        marks = tuple(
            Mark(entry.time, str(entry.data.get("note", "")), str(entry.data.get("by", "")), entry.seq)
            for entry in self.marks
        )
        return replace(session, marks=marks)


def sessions_on_ledger(entries: Iterable[LedgerEntry]) -> dict[str, LedgerSession]:
    """Every room session in `entries` (the ledger's session entries, in order), by session id."""
    found: dict[str, LedgerSession] = {}
    for entry in entries:
        session = entry.data.get("room_session")
        if not isinstance(session, str):
            continue
        if entry.type == EntryType.SESSION_STARTED:
            if entry.data.get("kind") == "room" and session not in found:
                found[session] = LedgerSession(entry)
            continue
        known = found.get(session)
        if known is None:
            continue
        if entry.type == EntryType.SESSION_CHANGED:
            known.changes.append(entry)
        elif entry.type == EntryType.MARK:
            known.marks.append(entry)
        elif entry.type == EntryType.SESSION_STOPPED:
            known.stopped = entry
    return found


def disagreements(file: RoomSession, ledger: RoomSession) -> list[str]:
    """The fields in which a session file says otherwise than the ledger, each with both values."""
    said: list[str] = []
    ours, theirs = file.to_json(), ledger.to_json()
    for name in ("room", "room_name", "address", "state", "started_by", "started_seq", "started_utc"):
        if ours.get(name) != theirs.get(name):
            said.append(f"{name} {ours.get(name)!r} (ledger: {theirs.get(name)!r})")
    for name, value in theirs["case"].items():
        if ours["case"].get(name) != value:
            said.append(f"case.{name} {ours['case'].get(name)!r} (ledger: {value!r})")
    if ours["persons"] != theirs["persons"]:
        said.append("persons")
    if [(m["note"], m["seq"]) for m in ours["marks"]] != [(m["note"], m["seq"]) for m in theirs["marks"]]:
        said.append(f"marks ({len(ours['marks'])} in the file, {len(theirs['marks'])} on the ledger)")
    return said


COMPLETED_MANIFEST_ROLE = "session-manifest-completed"
# Entry types that say whether a stopped session still owes its completed manifest.
COMPLETION_TYPES = (
    EntryType.SESSION_STOPPED, EntryType.SEGMENT_SEALED, EntryType.ACQUIRED, EntryType.SEALED,
)


def completed_manifest_owed(entries: Iterable[LedgerEntry], session: str) -> bool:
    """Whether stopped `session` still owes a completed manifest, by the ledger alone (`entries`: of
    COMPLETION_TYPES, in order): a segment was sealed after its session_stopped (the stop's manifest does
    not list it), and no completed manifest was sealed after the last such segment. A completion cut short
    at any step (a crash, a full disk again) is owed until its manifest is on the ledger."""
    stopped = False
    last_late: int | None = None
    pending: set[str] = set()  # completed manifests acquired after the last late segment
    covered = False
    for entry in entries:
        if entry.type == EntryType.SEALED:
            if entry.item is not None and entry.item in pending:
                covered = True
            continue
        if entry.data.get("room_session") != session:
            continue
        if entry.type == EntryType.SESSION_STOPPED:
            stopped = True
        elif entry.type == EntryType.SEGMENT_SEALED and stopped:
            last_late, covered = entry.seq, False
            pending.clear()
        elif (entry.type == EntryType.ACQUIRED and entry.data.get("role") == COMPLETED_MANIFEST_ROLE
              and last_late is not None and entry.item is not None):
            pending.add(entry.item)
    return last_late is not None and not covered


STOP_MANIFEST_ROLE = "session-manifest"
# Entry types that say whether a stop's signed manifest was sealed.
STOP_MANIFEST_TYPES = (EntryType.ACQUIRED, EntryType.SEALED)


def stop_manifest_sealed(
    entries: Iterable[LedgerEntry], session: str
) -> tuple[LedgerEntry, LedgerEntry] | None:
    """The `acquired` and `sealed` entries of the signed manifest a stop of `session` sealed (role
    ``session-manifest``), by the ledger alone (`entries`: of STOP_MANIFEST_TYPES, in order); None when no
    such manifest was sealed. A stop seals it just before its session_stopped: found without one, the
    stop was cut short (the agent was killed) and the session is over."""
    acquired: dict[str, LedgerEntry] = {}
    for entry in entries:
        if entry.item is None:
            continue
        if entry.type == EntryType.ACQUIRED:
            if entry.data.get("room_session") == session and entry.data.get("role") == STOP_MANIFEST_ROLE:
                acquired[entry.item] = entry
        elif entry.type == EntryType.SEALED and entry.item in acquired:
            return acquired[entry.item], entry
    return None


# Entry types that say whether a stopped session's products (joins, statement) are owed.
PRODUCTS_TYPES = (EntryType.ACQUIRED, EntryType.SEALED, EntryType.ROOM_PRODUCTS)
MANIFEST_ROLES = (STOP_MANIFEST_ROLE, COMPLETED_MANIFEST_ROLE)


def products_owed(entries: Iterable[LedgerEntry]) -> dict[str, LedgerEntry]:
    """Per room session, the `acquired` entry of its newest sealed manifest (the stop's, or a completed
    one) when no complete `room_products` was made from it, by the ledger alone (`entries`: of
    PRODUCTS_TYPES, in order). The products of a session are made from its newest manifest: a stop on a
    full disk sealed none (its manifest is sealed at the next start), and a completed manifest lists
    segments sealed after the stop, which the stop's joins never held (review 28). Owed until made,
    whatever cut the making short (a crash, a full disk again). The agent keeps this fold in an index
    (edge.rooms.owed) rather than reading the whole ledger at each start."""
    fold = OwedFold()
    for entry in entries:
        fold.add(entry)
    return dict(fold.owed)


@dataclass
class OwedFold:
    """:func:`products_owed`, entry by entry (:meth:`add`, in ledger order), keeping only what is owed
    and the manifests acquired but not yet sealed: small whatever the ledger's length."""

    # Per session, the `acquired` entry of its newest sealed manifest with no complete products from it.
    owed: dict[str, LedgerEntry] = field(default_factory=dict)
    # Per session, its manifest acquired and not (yet) sealed: at most one (a seal follows its acquisition).
    acquired: dict[str, LedgerEntry] = field(default_factory=dict)

    def add(self, entry: LedgerEntry) -> None:
        if entry.type == EntryType.SEALED:
            session = next((s for s, a in self.acquired.items() if a.item == entry.item), None)
            if session is not None:
                self.owed[session] = self.acquired.pop(session)
            return
        session = entry.data.get("room_session")
        if not isinstance(session, str):
            return
        if entry.type == EntryType.ROOM_PRODUCTS:
            # Made in full only with its statement sealed and no join left unsealed (a full disk): a
            # making cut short leaves the manifest owed, so the disc gets them once there is room. A join
            # refused for good (no segment, a camera changed) is made as far as it can be.
            found = self.owed.get(session)
            if (found is not None and entry.data.get("manifest_item") == found.item
                    and products_complete(entry.data)):
                del self.owed[session]
        elif (entry.type == EntryType.ACQUIRED and entry.item is not None
              and entry.data.get("role") in MANIFEST_ROLES):
            self.acquired[session] = entry


def products_complete(data: dict[str, Any]) -> bool:
    """Whether a `room_products` entry's data says the making was complete (see OwedFold.add)."""
    joined = data.get("joined")
    if not isinstance(data.get("statement_item"), str) or not isinstance(joined, list):
        return False
    return not any(isinstance(j, dict) and j.get("unsealed") for j in joined)


def recording_on_ledger(found: dict[str, LedgerSession]) -> dict[str, LedgerSession]:
    return {session: known for session, known in found.items() if known.stopped is None}


def _plausible_start(file_started_utc: str, entry_time: str) -> bool:
    file_s, entry_s = _seconds(file_started_utc), _seconds(entry_time)
    return file_s is not None and entry_s is not None and entry_s - START_SLACK_S <= file_s <= entry_s


def _seconds(text: str) -> float | None:
    try:
        whole, _, fraction = text.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")
    except ValueError:
        return None
