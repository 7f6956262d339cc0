"""The officer registry of a station: who may take a recorder, kept in the station store (state.db).

Each officer: 警号 (6 digits, the width the recorder's identity field holds), name, unit code and name (the
widths of the recorder's GBK fields, so that what the station writes to a recorder is exactly what it
holds), status (active / suspended), an optional card UID (canonical, unique across officers) and an
optional PIN hash (argon2id, never the PIN). Changes happen in the caller's transaction with the ledger
entry that records them (:mod:`.importing`), so that a crash leaves both or neither.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from edge.custody.canonical import canonical_json

__all__ = [
    "OFFICER_NAME_MAX_BYTES",
    "Officer",
    "OfficerError",
    "OfficerRegistry",
    "OfficerStatus",
    "check_officer_no",
    "check_unit_code",
    "check_width",
]

OFFICER_NAME_MAX_BYTES = 32  # GBK bytes: the recorder's officer_name field (drivers/usb/PROTOCOL.md §4.1)
UNIT_NAME_MAX_BYTES = 32
TEXT_ENCODING = "gbk"

_OFFICER_NO = re.compile(r"[0-9]{6}")
_UNIT_CODE = re.compile(r"[A-Za-z0-9]{0,12}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS officers (
    officer_no TEXT PRIMARY KEY,      -- 警号, 6 digits
    name TEXT NOT NULL,
    unit_code TEXT NOT NULL,
    unit_name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    card_uid TEXT UNIQUE,             -- canonical upper-case hex, or NULL
    pin_hash TEXT,                    -- argon2id PHC string, or NULL; never the PIN
    updated TEXT NOT NULL             -- station UTC time of the last change
)
"""


class OfficerError(ValueError):
    """An officer's field breaks the registry's rules; the message names the field."""


class OfficerStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


def check_officer_no(value: str) -> str:
    if not value.isascii() or not _OFFICER_NO.fullmatch(value):
        raise OfficerError(f"警号 officer_no: expected 6 digits, got {value[:40]!r}")
    return value


def check_unit_code(value: str) -> str:
    if not value.isascii() or not _UNIT_CODE.fullmatch(value):
        raise OfficerError(f"unit_code: expected up to 12 characters A-Za-z0-9, got {value[:40]!r}")
    return value


def check_width(field_name: str, value: str, max_bytes: int, *, required: bool) -> str:
    """Printable text that fits the recorder's GBK field of `max_bytes`."""
    if required and not value:
        raise OfficerError(f"{field_name}: must not be empty")
    if not value.isprintable() or value != value.strip():
        raise OfficerError(f"{field_name}: expected printable text without leading or trailing blanks, "
                           f"got {value[:40]!r}")
    try:
        size = len(value.encode(TEXT_ENCODING))
    except UnicodeEncodeError:
        raise OfficerError(f"{field_name}: {value[:40]!r} has characters GBK cannot hold (the recorder's "
                           "encoding)") from None
    if size > max_bytes:
        raise OfficerError(f"{field_name}: at most {max_bytes} GBK bytes (the recorder's field), got {size}")
    return value


@dataclass(frozen=True)
class Officer:
    """One officer as the registry holds them. `pin_hash` is left out of repr and of `public()`."""

    officer_no: str
    name: str
    unit_code: str
    unit_name: str
    status: OfficerStatus
    card_uid: str | None = None
    pin_hash: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_officer_no(self.officer_no)
        check_width("name", self.name, OFFICER_NAME_MAX_BYTES, required=True)
        check_unit_code(self.unit_code)
        check_width("unit_name", self.unit_name, UNIT_NAME_MAX_BYTES, required=False)

    @property
    def has_pin(self) -> bool:
        return self.pin_hash is not None

    def public(self) -> dict[str, object]:
        """What may be shown and recorded: everything but the PIN hash (whether there is one)."""
        return {
            "officer_no": self.officer_no,
            "name": self.name,
            "unit_code": self.unit_code,
            "unit_name": self.unit_name,
            "status": str(self.status),
            "card_uid": self.card_uid,
            "has_pin": self.has_pin,
        }


def _officer(row: sqlite3.Row | tuple[object, ...]) -> Officer:
    no, name, unit_code, unit_name, status, card_uid, pin_hash = row
    return Officer(str(no), str(name), str(unit_code), str(unit_name), OfficerStatus(str(status)),
                   None if card_uid is None else str(card_uid), None if pin_hash is None else str(pin_hash))


_COLUMNS = "officer_no, name, unit_code, unit_name, status, card_uid, pin_hash"


class OfficerRegistry:
    """The `officers` table of a station store's database. Reads anywhere; writes only inside the
    caller's transaction (the connection is the store's, which never commits by itself)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @staticmethod
    def create_schema(conn: sqlite3.Connection) -> None:
        # execute, not executescript: that would commit the caller's open transaction first.
        conn.execute(SCHEMA)

    def get(self, officer_no: str) -> Officer | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM officers WHERE officer_no = ?",
                                (officer_no,)).fetchone()
        return None if row is None else _officer(row)

    def by_card(self, card_uid: str) -> Officer | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM officers WHERE card_uid = ?", (card_uid,)).fetchone()
        return None if row is None else _officer(row)

    def all(self) -> list[Officer]:
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM officers ORDER BY officer_no")
        return [_officer(r) for r in rows]

    def put(self, officer: Officer, *, now: str) -> None:
        """Insert or replace one officer (inside the caller's transaction)."""
        self.conn.execute(
            f"INSERT INTO officers({_COLUMNS}, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(officer_no) DO UPDATE SET name = excluded.name, unit_code = excluded.unit_code, "
            "unit_name = excluded.unit_name, status = excluded.status, card_uid = excluded.card_uid, "
            "pin_hash = excluded.pin_hash, updated = excluded.updated",
            (officer.officer_no, officer.name, officer.unit_code, officer.unit_name, str(officer.status),
             officer.card_uid, officer.pin_hash, now),
        )

    def clear_cards(self, officer_nos: Iterable[str]) -> None:
        """Drop the cards of these officers first, so that a batch may move a card between them."""
        self.conn.executemany("UPDATE officers SET card_uid = NULL WHERE officer_no = ?",
                              [(no,) for no in officer_nos])

    def set_status(self, officer_no: str, status: OfficerStatus, *, now: str) -> None:
        self.conn.execute("UPDATE officers SET status = ?, updated = ? WHERE officer_no = ?",
                          (str(status), now, officer_no))

    def digest(self) -> str:
        """SHA-256 of the registry's public content (canonical JSON, no PIN hashes): what a ledger entry
        records so that the list in force at any time can be proved without showing any credential."""
        return hashlib.sha256(canonical_json([o.public() for o in self.all()])).hexdigest()
