"""Importing an officer list into a station's registry: one transaction with its ledger entry.

Merge by 警号: a listed officer is added or updated (name, and unit, status and card where the file has
those columns; the PIN only when the file gives one, since a personnel list usually carries none);
officers the file does not list are left as they are. A card the file gives to one officer while the
registry has it on an officer the file does not list refuses the import (a card is one officer's).

The `officers_imported` ledger entry holds counts and the SHA-256 of the registry's public content
afterwards (:meth:`OfficerRegistry.digest`), never a PIN, a PIN hash, or a digest of the file: a file of
known names with one 6-digit PIN in it would be brute-forced from its digest in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from edge.custody.ledger import EntryType, LedgerEntry, station_time_now
from edge.custody.text import printable
from edge.equipment.assignments import AssignmentBook, clear_pin_failures
from edge.equipment.credentials import hash_pin
from edge.equipment.officer_csv import OfficerCsvError, OfficerRow
from edge.equipment.officer_sync import central_status, list_in_force, local_suspension
from edge.equipment.officers import Officer, OfficerRegistry, OfficerStatus
from edge.ingest.store import StationStore

__all__ = [
    "CentralSuspension",
    "ImportResult",
    "import_officers",
    "record_refused_import",
    "set_officer_pin",
    "set_officer_status",
]

MAX_REASONS_RECORDED = 5


class CentralSuspension(ValueError):
    """A station may not reinstate an officer whom the central's list in force suspends."""


@dataclass(frozen=True)
class ImportResult:
    rows: int
    added: int
    updated: int
    unchanged: int
    pins_set: int
    officers_total: int
    registry_sha256: str
    entry: LedgerEntry


def _source_name(source: str) -> str:
    # The operator's file name, as a name only: no directory of the station in the ledger.
    return printable(source.rsplit("/", 1)[-1])[:200]


def record_refused_import(store: StationStore, source: str, problems: list[str], *, by: str) -> LedgerEntry:
    """The `refused` entry of an import that did not happen: how many problems and the first few."""
    return store.record(EntryType.REFUSED, None, {
        "what": "officer import",
        "source": _source_name(source),
        "problems": len(problems),
        "reason": "; ".join(problems[:MAX_REASONS_RECORDED]),
        "by": by,
    })


def _merged(row: OfficerRow, old: Officer | None, pin_hash: str | None) -> Officer:
    """The officer a row makes: a column the file does not have keeps the registry's value."""
    if old is None:
        return Officer(row.officer_no, row.name, row.unit_code, row.unit_name, row.status, row.card_uid,
                       pin_hash)
    given = row.given
    return Officer(
        officer_no=row.officer_no, name=row.name,
        unit_code=row.unit_code if "unit_code" in given else old.unit_code,
        unit_name=row.unit_name if "unit_name" in given else old.unit_name,
        status=row.status if "status" in given else old.status,
        card_uid=row.card_uid if "card_uid" in given else old.card_uid,
        pin_hash=pin_hash,
    )


def import_officers(store: StationStore, rows: list[OfficerRow], *, source: str, by: str) -> ImportResult:
    """Merge `rows` into the registry; `OfficerCsvError` (nothing changed) when a card is another's, or
    when the station follows the central's list (edge.equipment.officer_sync)."""
    registry = OfficerRegistry(store.conn)
    OfficerRegistry.create_schema(store.conn)
    held = list_in_force(store.conn)
    if held is not None:
        raise OfficerCsvError([
            f"this station follows the officer list of central {held.central} (version {held.version}, "
            f"applied {held.applied}): change the list at the central (`edge central officers import`); "
            "PINs are set here with `edge officers set-pin`"])
    listed = {row.officer_no for row in rows}
    conflicts = []
    for row in rows:
        holder = registry.by_card(row.card_uid) if row.card_uid else None
        if holder is not None and holder.officer_no not in listed:
            conflicts.append(f"line {row.line}: card {row.card_uid} belongs to 警号 {holder.officer_no}, "
                             "who is not in this file")
    if conflicts:
        raise OfficerCsvError(conflicts)
    # argon2 is slow and memory-hungry on purpose: hash before the transaction holds the store.
    new_hashes = {row.officer_no: hash_pin(row.pin) for row in rows if row.pin is not None}
    added = updated = unchanged = 0
    now = station_time_now()
    with store.transaction():
        before = {o.officer_no: o for o in registry.all()}
        if "card_uid" in rows[0].given:
            registry.clear_cards(no for no in listed if no in before)
        for row in rows:
            old = before.get(row.officer_no)
            officer = _merged(row, old, new_hashes.get(row.officer_no, old.pin_hash if old else None))
            registry.put(officer, now=now)
            if old is None:
                added += 1
            elif old.public() != officer.public() or row.officer_no in new_hashes:
                updated += 1
            else:
                unchanged += 1
        total = len(registry.all())
        digest = registry.digest()
        data: dict[str, Any] = {
            "source": _source_name(source), "rows": len(rows), "added": added, "updated": updated,
            "unchanged": unchanged, "pins_set": len(new_hashes),
            "cards": sum(1 for row in rows if row.card_uid), "officers_total": total,
            "registry_sha256": digest, "by": by,
        }
        entry = store.ledger.append(EntryType.OFFICERS_IMPORTED, None, data)
    return ImportResult(len(rows), added, updated, unchanged, len(new_hashes), total, digest, entry)


def set_officer_status(store: StationStore, officer_no: str, status: OfficerStatus, *, reason: str,
                       by: str) -> LedgerEntry:
    """Suspend or reinstate an officer, with an `officer_status` entry; KeyError for an unknown 警号,
    `CentralSuspension` to reinstate an officer the central's list in force suspends (suspended anywhere
    wins: edge.equipment.officer_sync). A suspension here is kept apart, so that a later central list
    that has the officer active does not lift it."""
    registry = OfficerRegistry(store.conn)
    OfficerRegistry.create_schema(store.conn)
    if status is OfficerStatus.ACTIVE and central_status(store.conn, officer_no) is OfficerStatus.SUSPENDED:
        raise CentralSuspension(f"officer {officer_no} is suspended by the central's officer list in force; "
                                "only the central reinstates them")
    with store.transaction():
        officer = registry.get(officer_no)
        if officer is None:
            raise KeyError(officer_no)
        now = station_time_now()
        registry.set_status(officer_no, status, now=now)
        local_suspension(store.conn, officer_no, status is OfficerStatus.SUSPENDED, now=now)
        return store.ledger.append(EntryType.OFFICER_STATUS, None, {
            "officer_no": officer_no, "status": str(status), "previous": str(officer.status),
            "reason": printable(reason)[:200], "by": by, "registry_sha256": registry.digest(),
        })


def set_officer_pin(store: StationStore, officer_no: str, pin: str, *, by: str) -> LedgerEntry:
    """Set an officer's PIN (hashed before the transaction) with an `officer_pin_set` entry, and clear
    the officer's wrong-PIN count; KeyError for an unknown 警号, CredentialError for a bad PIN."""
    pin_hash = hash_pin(pin)
    registry = OfficerRegistry(store.conn)
    OfficerRegistry.create_schema(store.conn)
    AssignmentBook.create_schema(store.conn)
    with store.transaction():
        officer = registry.get(officer_no)
        if officer is None:
            raise KeyError(officer_no)
        registry.put(replace(officer, pin_hash=pin_hash), now=station_time_now())
        clear_pin_failures(store.conn, officer_no)
        return store.ledger.append(EntryType.OFFICER_PIN_SET, None, {"officer_no": officer_no, "by": by})
