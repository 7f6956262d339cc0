"""The session model: one proceeding in one room, bound to one case. Pure: no I/O.

A session names its room and the room's address (together the location, 采集地点), the case number
(案件编号), the collector (采集人: the operator who runs the recording), what the recording proves (证明对象)
and the persons present with their roles (询问人, 被询问人, 记录人, 翻译, 监护人, ...). It is created by
:func:`new_session` from what an operator typed, every field checked (:class:`SessionError` names the field
and what was wrong), and it changes only by :func:`apply_change` (case fields, persons) and marks, each of
which the service records on the ledger before the change is kept.

The JSON form (:meth:`RoomSession.to_json` / :meth:`RoomSession.from_json`) is what :mod:`edge.rooms.state`
persists and what the ledger entries and the session manifest carry.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

MAX_CASE_NUMBER = 64
MAX_NAME = 64
MAX_SUBJECT = 256
MAX_NOTE = 512
MAX_PERSONS = 32
# Marks per session: more than any proceeding needs (a bouncing MARK button or a script is refused), and
# sized so that a session file of MAX_MARKS marks of MAX_NOTE characters (about 1.6 kB each as written)
# stays under edge.rooms.state.MAX_SESSION_FILE_BYTES (4 MiB) with the rest of the session, and is read
# back at the next start.
MAX_MARKS = 2_000
# The case fields a session carries (the manifest's `case` block) and which may change during a session.
CHANGEABLE = ("case_number", "collector", "collector_no", "subject")


class SessionError(ValueError):
    """Operator input that cannot make or change a session; the message names the field and the fault."""


class SessionState(StrEnum):
    RECORDING = "recording"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Person:
    name: str
    role: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role}


@dataclass(frozen=True)
class Mark:
    """An operator's mark (打点) at a moment of the proceeding."""

    time_utc: str
    note: str
    by: str
    seq: int | None = None  # its ledger entry

    def to_json(self) -> dict[str, Any]:
        return {"time_utc": self.time_utc, "note": self.note, "by": self.by, "seq": self.seq}


@dataclass(frozen=True)
class RoomSession:
    session: str  # a UUID
    room: str
    room_name: str
    address: str
    case_number: str
    collector: str
    subject: str
    persons: tuple[Person, ...]
    started_utc: str
    started_by: str
    collector_no: str = ""
    state: SessionState = SessionState.RECORDING
    stopped_utc: str | None = None
    started_seq: int | None = None  # the ledger entry that started it: the manifest reads from there
    marks: tuple[Mark, ...] = field(default_factory=tuple)

    @property
    def location(self) -> str:
        """The location (采集地点) as one line: the address, then the room."""
        return f"{self.address} {self.room_name}"

    def case_block(self) -> dict[str, Any]:
        """The manifest's `case` block of every item the session seals."""
        return {
            "case_number": self.case_number,
            "location": self.location,
            "collector": self.collector,
            "collector_no": self.collector_no,
            "subject": self.subject,
        }

    def facts(self) -> dict[str, Any]:
        """What the ledger's session entries carry."""
        return {
            "room_session": self.session,
            "room": self.room,
            "room_name": self.room_name,
            "address": self.address,
            "case": self.case_block(),
            "persons": [p.to_json() for p in self.persons],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.facts(),
            "state": self.state.value,
            "started_utc": self.started_utc,
            "started_by": self.started_by,
            "stopped_utc": self.stopped_utc,
            "started_seq": self.started_seq,
            "marks": [m.to_json() for m in self.marks],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RoomSession:
        """Read back a persisted session; raises SessionError when the document is not one."""
        try:
            case = doc["case"]
            return cls(
                session=_uuid(str(doc["room_session"])),
                room=str(doc["room"]),
                room_name=str(doc["room_name"]),
                address=str(doc["address"]),
                case_number=str(case["case_number"]),
                collector=str(case["collector"]),
                collector_no=str(case.get("collector_no", "")),
                subject=str(case["subject"]),
                persons=tuple(Person(str(p["name"]), str(p["role"])) for p in doc["persons"]),
                state=SessionState(doc["state"]),
                started_utc=str(doc["started_utc"]),
                started_by=str(doc["started_by"]),
                stopped_utc=None if doc.get("stopped_utc") is None else str(doc["stopped_utc"]),
                started_seq=None if doc.get("started_seq") is None else int(doc["started_seq"]),
                marks=tuple(
                    Mark(str(m["time_utc"]), str(m["note"]), str(m["by"]),
                         None if m.get("seq") is None else int(m["seq"]))
                    for m in doc.get("marks", [])
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionError(f"not a room session document: {exc}") from None


def check_mark_room(session: RoomSession) -> None:
    """SessionError when `session` has MAX_MARKS marks already (no mark more is taken)."""
    if len(session.marks) >= MAX_MARKS:
        raise SessionError(f"note: the session has {len(session.marks)} marks, the most one may have "
                           f"({MAX_MARKS}); no mark more is taken")


def check_text(what: str, value: object, max_chars: int, *, required: bool = True) -> str:
    """`value` as operator text: a string, printable (no control or bidi-override characters), without
    white space at either end, at most `max_chars`; SessionError otherwise."""
    if not isinstance(value, str):
        raise SessionError(f"{what} must be text, got {type(value).__name__}")
    if required and not value:
        raise SessionError(f"{what} is required")
    if len(value) > max_chars:
        raise SessionError(f"{what} is longer than {max_chars} characters")
    if not value.isprintable():
        raise SessionError(f"{what} contains control or formatting characters")
    if value != value.strip():
        raise SessionError(f"{what} has white space at its start or end")
    return value


def check_case_number(value: object) -> str:
    """A case number (案件编号) such as 京公（刑）立字〔2024〕123号 or A3301062024000123."""
    text = check_text("case_number", value, MAX_CASE_NUMBER)
    if not any(ch.isalnum() for ch in text):
        raise SessionError("case_number must contain letters or digits")
    return text


def check_persons(value: object) -> tuple[Person, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise SessionError("persons must be a list of {name, role}")
    if len(value) > MAX_PERSONS:
        raise SessionError(f"more than {MAX_PERSONS} persons")
    persons = []
    for index, entry in enumerate(value):
        if not isinstance(entry, Mapping) or set(entry) != {"name", "role"}:
            raise SessionError(f"persons[{index}] must be an object with name and role, nothing else")
        persons.append(Person(check_text(f"persons[{index}].name", entry["name"], MAX_NAME),
                              check_text(f"persons[{index}].role", entry["role"], MAX_NAME)))
    return tuple(persons)


def new_session(
    *, room: str, room_name: str, address: str, fields: Mapping[str, Any], started_utc: str, started_by: str
) -> RoomSession:
    """A session from an operator's request (`fields`: case_number, collector, subject, persons,
    optionally collector_no); anything else in `fields` is refused, so a typo is not silently dropped."""
    allowed = {"case_number", "collector", "collector_no", "subject", "persons"}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise SessionError(f"unknown session field(s): {', '.join(unknown)}")
    return RoomSession(
        session=str(uuid.uuid4()),
        room=room,
        room_name=room_name,
        address=address,
        case_number=check_case_number(fields.get("case_number")),
        collector=check_text("collector", fields.get("collector"), MAX_NAME),
        collector_no=check_text("collector_no", fields.get("collector_no", ""), MAX_NAME, required=False),
        subject=check_text("subject", fields.get("subject"), MAX_SUBJECT),
        persons=check_persons(fields.get("persons", [])),
        started_utc=started_utc,
        started_by=started_by,
    )


def apply_change(session: RoomSession, changes: Mapping[str, Any]) -> tuple[RoomSession, dict[str, Any]]:
    """The session with `changes` (case fields of CHANGEABLE, or persons) applied, and what changed
    as ``{field: {"from": old, "to": new}}``; SessionError for an unknown field or bad value, or no change."""
    if session.state is not SessionState.RECORDING:
        raise SessionError(f"session {session.session} is stopped: it cannot change")
    unknown = sorted(set(changes) - {*CHANGEABLE, "persons"})
    if unknown:
        raise SessionError(f"these fields cannot change: {', '.join(unknown)}")
    updated: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "persons":
            updated[name] = check_persons(value)
        elif name == "case_number":
            updated[name] = check_case_number(value)
        elif name == "subject":
            updated[name] = check_text(name, value, MAX_SUBJECT)
        else:
            updated[name] = check_text(name, value, MAX_NAME, required=name != "collector_no")
    diff: dict[str, Any] = {}
    for name, value in updated.items():
        old = getattr(session, name)
        if old != value:
            shown = (lambda v: [p.to_json() for p in v]) if name == "persons" else (lambda v: v)
            diff[name] = {"from": shown(old), "to": shown(value)}
    if not diff:
        raise SessionError("nothing changes")
    return replace(session, **updated), diff


def _uuid(text: str) -> str:
    return str(uuid.UUID(text))
