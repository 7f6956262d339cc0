"""The central's index, whatever holds it: its records, the rules for names, and how an item's rows
follow from its signed manifest.

The index is everything the central knows except content: stations and readers, the stations' accepted
ledgers and checkpoints, items with their officer, device and case folds and metadata history,
rejections and the access log. History is append-only (the station ledgers and checkpoints, items,
metadata history, rejections, access log, enrolment events); the directories derived from it (officers,
devices, cases, the current case fold of an item) are upserted, and ``edge verify`` recomputes them.

The :class:`edge.central.storage.Index` protocol says what a backend offers; :mod:`edge.central.sqlite`
implements it today. What must not differ between backends lives here: validation of names, the
indexable case fields, and the item record made from a manifest.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json, parse_json, sha256_hex
from edge.custody.errors import CanonicalJsonError
from edge.custody.keys import public_key_from_b64
from edge.custody.ledger import LedgerEntry
from edge.pki import names
from edge.pki.names import checked_name

__all__ = [
    "CASE_FIELDS",
    "AccountRecord",
    "CentralIndexError",
    "IssuedList",
    "ItemQuery",
    "ItemRecord",
    "ReaderGrant",
    "ReaderRecord",
    "ReaderScope",
    "Role",
    "StationRecord",
    "StationStatus",
    "indexable_case",
    "item_from_row",
    "item_record_from_manifest",
    "ledger_entry_from_row",
    "text_or_none",
    "validate_cert_sha256",
    "validate_reader_name",
    "validate_station_id",
    "validate_unit_code",
]

log = logging.getLogger(__name__)

# The case block of a manifest and the fields a `tagged` ledger entry may change (edge/tagging.py).
CASE_FIELDS = ("case_number", "location", "collector", "subject", "important", "category", "retention")
# Case fields a manifest may carry that the index holds in another column, not in item_case.
CASE_FIELDS_INDEXED_ELSEWHERE = frozenset({"collector_no"})

# A leading letter or digit keeps ids from being read as options ("-x") or path parts ("." / "..").
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
MAX_QUERY_LIMIT = 1000  # rows per page of the read side, whatever the query asks


class CentralIndexError(Exception):
    """The index cannot do what was asked: invalid argument, unknown name, damaged row."""


def validate_station_id(station_id: object) -> str:
    """A station id (see `edge.pki.names`), or `CentralIndexError`."""
    return checked_name(names.validate_station_id, station_id, CentralIndexError)


def validate_reader_name(name: object) -> str:
    """A reader name (see `edge.pki.names`), or `CentralIndexError`."""
    return checked_name(names.validate_reader_name, name, CentralIndexError)


# Unit (单位) codes: the 12-digit GA/T 380 agency codes in practice; any short code of letters and digits.
_UNIT_CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


def validate_unit_code(code: object) -> str:
    """A unit (单位) code: 1-32 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit."""
    if not isinstance(code, str) or not _UNIT_CODE_RE.fullmatch(code):
        raise CentralIndexError(f"a unit code is 1-32 letters, digits, '.', '_' or '-' starting with a "
                                f"letter or digit, found {str(code)[:40]!r}")
    return code


class Role(StrEnum):
    """What a reader may see: ``reader`` the items of its units, ``supervisor`` the items of every unit.

    Either way an item marked sensitive is seen only by the readers named on it."""

    READER = "reader"
    SUPERVISOR = "supervisor"


@dataclass(frozen=True)
class ReaderScope:
    """Who is reading and what they may see; every read of evidence is filtered by one.

    ``units`` are the unit codes a ``reader`` sees (empty: nothing); a supervisor sees every unit and its
    ``units`` are informational. An item is visible when its unit is (supervisor: always) and, if it is
    marked sensitive, ``reader`` is named on it."""

    reader: str
    role: Role
    units: frozenset[str]

    @property
    def all_units(self) -> bool:
        return self.role is Role.SUPERVISOR

    def sees_unit(self, unit: str | None) -> bool:
        """Whether an item of ``unit`` (None: an item whose unit is unknown) is within the role and units."""
        return self.all_units or (unit is not None and unit in self.units)


@dataclass(frozen=True)
class AccountRecord:
    """A console account; ``repr`` never shows the hash or the TOTP secret."""

    name: str
    password_hash: str
    totp_secret: str | None
    totp_last_step: int | None
    status: str
    failed_attempts: int
    locked_until: str | None

    def __repr__(self) -> str:
        return (f"AccountRecord(name={self.name!r}, status={self.status!r}, "
                f"totp={self.totp_secret is not None}, "
                f"failed_attempts={self.failed_attempts}, locked_until={self.locked_until!r})")

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True)
class ReaderGrant:
    name: str
    role: Role
    units: frozenset[str]
    granted_utc: str
    by: str


def validate_cert_sha256(cert_sha256: object) -> str:
    if not isinstance(cert_sha256, str) or not _HEX64_RE.fullmatch(cert_sha256):
        raise CentralIndexError(f"expected a certificate SHA-256 of 64 lower-case hex digits, found "
                                f"{str(cert_sha256)[:80]!r}")
    return cert_sha256


class StationStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"



@dataclass(frozen=True)
class StationRecord:
    station: str
    public_key_b64: str
    key_id: str
    cert_sha256: str
    status: str
    enrolled_utc: str
    revoked_utc: str | None
    revoke_reason: str | None

    @property
    def active(self) -> bool:
        return self.status == StationStatus.ACTIVE

    def public_key(self) -> Ed25519PublicKey:
        return public_key_from_b64(self.public_key_b64)


@dataclass(frozen=True)
class ReaderRecord:
    name: str
    cert_sha256: str
    status: str
    enrolled_utc: str

    @property
    def active(self) -> bool:
        return self.status == StationStatus.ACTIVE


@dataclass(frozen=True)
class ItemRecord:
    item: str
    sha256: str
    size: int
    station: str
    manifest: dict[str, Any]
    manifest_text: str
    manifest_sha256: str
    officer_no: str | None
    device_serial: str | None
    acquired_utc: str
    recorded_start: str | None
    chain_seq: int
    leaf_index: int
    accepted_utc: str


@dataclass(frozen=True)
class IssuedList:
    """One version of the agency's officer list as the central's database holds it (edge.central.equipment):
    its number, the digest and count of its officers, when and by whom it was issued, and the canonical
    JSON of the signed envelope the stations get."""

    version: int
    sha256: str
    issued_at: str
    by: str
    officers: int
    envelope: bytes

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, "officers_sha256": self.sha256, "issued_at": self.issued_at,
                "by": self.by, "officers": self.officers}


@dataclass(frozen=True)
class ItemQuery:
    """Filters of the read side; ``time_from``/``time_to`` bound ``acquired_utc`` (ledger time format)."""

    case_number: str | None = None
    officer_no: str | None = None
    device_serial: str | None = None
    station: str | None = None
    time_from: str | None = None
    time_to: str | None = None
    limit: int = 100
    after: tuple[str, str] | None = None  # (acquired_utc, item) of the last row already returned
    unit: str | None = None  # the item's unit (see :meth:`edge.central.storage.Index.item_unit`)
    important: bool | None = None  # the current case fold's important flag


def indexable_case(case: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The case fields of a manifest block or a tag that the index can hold; others are logged, not kept.

    The signed manifest and ledger entry keep every byte; only the queryable fold skips a bad value.
    """
    clean: dict[str, Any] = {}
    for name, value in case.items():
        fits = value is None or (
            isinstance(value, bool) if name == "important" else isinstance(value, str)
        )
        if name in CASE_FIELDS and fits:
            clean[name] = value
        elif name in CASE_FIELDS_INDEXED_ELSEWHERE and (value is None or isinstance(value, str)):
            continue  # a room session's collector_no is the item's officer_no (source block), indexed there
        else:
            log.warning("%s: case field %r with a %s value is not indexed", where, str(name)[:40],
                        type(value).__name__)
    return clean


def text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def item_record_from_manifest(
    manifest: Mapping[str, Any], *, station_id: str, leaf_index: int, accepted_utc: str
) -> ItemRecord:
    """The item row an accepted, verified manifest makes (the same in every backend: `edge verify`
    recomputes it)."""
    text = canonical_json(manifest).decode("utf-8")
    source = manifest.get("source") or {}
    time_block = manifest.get("time") or {}
    return ItemRecord(
        item=str(manifest["item"]),
        sha256=str(manifest["sha256"]),
        size=int(manifest["size"]),
        station=station_id,
        manifest=dict(manifest),
        manifest_text=text,
        manifest_sha256=sha256_hex(text.encode("utf-8")),
        officer_no=text_or_none(source.get("officer_no")),
        device_serial=text_or_none(source.get("device_serial")),
        acquired_utc=text_or_none(time_block.get("acquired_utc")) or accepted_utc,
        recorded_start=text_or_none(time_block.get("recorded_start")),
        chain_seq=int(manifest["chain"]["seq"]),
        leaf_index=leaf_index,
        accepted_utc=accepted_utc,
    )


class Row(Protocol):
    """A database row read by column name (``sqlite3.Row``, a dict, a PostgreSQL dict row)."""

    def __getitem__(self, key: str) -> Any: ...


def ledger_entry_from_row(station_id: str, row: Row) -> LedgerEntry:
    """A stored station ledger entry; :class:`CentralIndexError` when its data column is damaged."""
    try:
        data = parse_json(row["data"])
    except CanonicalJsonError as exc:
        raise CentralIndexError(
            f"station {station_id} ledger seq {row['seq']}: damaged data ({exc})"
        ) from None
    if not isinstance(data, dict):
        raise CentralIndexError(f"station {station_id} ledger seq {row['seq']}: data is not an object")
    return LedgerEntry(seq=row["seq"], time=row["time"], type=row["type"], item=row["item"], data=data,
                       prev=row["prev"], hash=row["hash"])


def item_from_row(row: Row) -> ItemRecord:
    """A stored item row; :class:`CentralIndexError` when its manifest column is damaged."""
    try:
        manifest = parse_json(row["manifest"])
    except CanonicalJsonError as exc:
        raise CentralIndexError(f"item {row['item']}: damaged manifest column ({exc})") from None
    if not isinstance(manifest, dict):
        raise CentralIndexError(f"item {row['item']}: manifest column is not an object")
    return ItemRecord(
        item=row["item"], sha256=row["sha256"], size=row["size"], station=row["station"], manifest=manifest,
        manifest_text=row["manifest"], manifest_sha256=row["manifest_sha256"], officer_no=row["officer_no"],
        device_serial=row["device_serial"], acquired_utc=row["acquired_utc"],
        recorded_start=row["recorded_start"], chain_seq=row["chain_seq"], leaf_index=row["leaf_index"],
        accepted_utc=row["accepted_utc"],
    )
