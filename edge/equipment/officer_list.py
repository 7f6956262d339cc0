"""The agency's officer list as the central signs it for its stations: a pure codec (no I/O, no clock).

    envelope  {"list": LIST, "key_id": K, "signature": "<base64 Ed25519 over canonical_json(LIST)>"}
    LIST      {"type": "evidence-edge officer list", "central": C, "version": N, "issued_at": "<RFC 3339 Z>",
               "officers": [OFFICER, ...] (sorted by officer_no), "officers_sha256": "<hex>"}
    OFFICER   {"officer_no", "name", "unit_code", "unit_name", "status", "card_uid" (hex or null)}

``version`` increases by one with every list the central issues; ``officers_sha256`` is the SHA-256 of the
canonical JSON of ``officers``, the list's identity in both sides' records. The ``type`` member keeps the
signing input apart from everything else the central's key signs (receipts, tree heads, commands).

No PIN and no PIN hash: PINs stay station-set (README "Equipment issue and return"). An argon2 hash of a
4..12 digit PIN falls to a search of at most 10^12 guesses, 10^4..10^6 for the usual lengths, so shipping
hashes to every station of an agency would put every officer's PIN within reach of whoever copies one
station's disk; cards are the agency-wide credential, the PIN is the fallback an officer sets where they
work. A list member named ``pin`` or ``pin_hash`` is refused like any unknown member.

Every check is here, in order: shape, signature (with the pinned central key), digest, then each officer
by the registry's own rules (:class:`Officer`), duplicates of 警号 or card. A station applies a list only
when all pass (:mod:`.officer_sync`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.errors import CanonicalJsonError
from edge.custody.fields import decode_signature
from edge.custody.keys import key_id_of, verify_signature
from edge.custody.text import printable
from edge.equipment.credentials import CredentialError, normalise_card_uid
from edge.equipment.officer_csv import OfficerRow
from edge.equipment.officers import Officer, OfficerError, OfficerStatus

__all__ = [
    "LIST_TYPE",
    "MAX_LIST_BYTES",
    "MAX_OFFICERS",
    "OfficerList",
    "OfficerListError",
    "list_document",
    "officer_entry",
    "officers_sha256",
    "sign_list",
    "verify_list",
]

LIST_TYPE = "evidence-edge officer list"
# An agency's list in one answer: ~150 bytes an officer, below both the HTTP answer bound (4 MiB) and the
# MQTT API's payload bound (2 MiB).
MAX_OFFICERS = 10_000
# The signed list in canonical JSON: it must fit one MQTT API reply (2 MiB with its envelope) as well as
# an HTTP answer (4 MiB). About 7000 officers with the longest names and units the fields allow.
MAX_LIST_BYTES = 1536 * 1024
_LIST_MEMBERS = frozenset({"type", "central", "version", "issued_at", "officers", "officers_sha256"})
_ENVELOPE_MEMBERS = frozenset({"list", "key_id", "signature"})
_OFFICER_MEMBERS = frozenset({"officer_no", "name", "unit_code", "unit_name", "status", "card_uid"})
_ISSUED_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
_CENTRAL_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_VERSION = 2**53 - 1


class OfficerListError(ValueError):
    """The list is refused; the message names what was wrong (never a credential)."""


@dataclass(frozen=True)
class OfficerList:
    """A verified list: what a station may apply."""

    central: str
    version: int
    issued_at: str
    officers: tuple[Officer, ...]
    sha256: str
    key_id: str


def officer_entry(officer: Officer) -> dict[str, Any]:
    """One officer as the list carries it (no PIN hash, no has_pin: PINs are the station's)."""
    return {"officer_no": officer.officer_no, "name": officer.name, "unit_code": officer.unit_code,
            "unit_name": officer.unit_name, "status": str(officer.status), "card_uid": officer.card_uid}


def officers_sha256(entries: Iterable[Mapping[str, Any]]) -> str:
    return sha256_hex(canonical_json(list(entries)))


def list_document(
    rows: Iterable[OfficerRow], *, central: str, version: int, issued_at: str
) -> dict[str, Any]:
    """The unsigned list from parsed CSV rows (the strict reader's; a row's PIN is refused before this)."""
    officers = sorted(
        (Officer(r.officer_no, r.name, r.unit_code, r.unit_name, r.status, r.card_uid) for r in rows),
        key=lambda o: o.officer_no)
    entries = [officer_entry(o) for o in officers]
    if len(entries) > MAX_OFFICERS:
        raise OfficerListError(f"{len(entries)} officers; a list holds at most {MAX_OFFICERS}")
    return {"type": LIST_TYPE, "central": central, "version": version, "issued_at": issued_at,
            "officers": entries, "officers_sha256": officers_sha256(entries)}


def sign_list(document: Mapping[str, Any], sign: Callable[[bytes], bytes], key_id: str) -> dict[str, Any]:
    signature = base64.b64encode(sign(canonical_json(dict(document)))).decode("ascii")
    return {"list": dict(document), "key_id": key_id, "signature": signature}


def _officer(index: int, doc: object) -> Officer:
    where = f"officers[{index}]"
    if not isinstance(doc, dict):
        raise OfficerListError(f"{where}: expected an object")
    if set(doc) != _OFFICER_MEMBERS:
        unknown = sorted(str(k)[:40] for k in set(doc) - _OFFICER_MEMBERS)
        missing = sorted(_OFFICER_MEMBERS - set(doc))
        raise OfficerListError(f"{where}: members unknown {unknown}, missing {missing}")
    texts = {name: doc[name] for name in ("officer_no", "name", "unit_code", "unit_name", "status")}
    for name, value in texts.items():
        if not isinstance(value, str):
            raise OfficerListError(f"{where}.{name}: expected a string")
    card = doc["card_uid"]
    try:
        if card is not None and (not isinstance(card, str) or normalise_card_uid(card) != card):
            raise OfficerListError(f"{where}.card_uid: expected canonical hex or null")
        status = OfficerStatus(texts["status"])
    except (CredentialError, ValueError) as exc:
        if isinstance(exc, OfficerListError):
            raise
        raise OfficerListError(f"{where}: {printable(str(exc))[:200]}") from None
    try:
        return Officer(texts["officer_no"], texts["name"], texts["unit_code"], texts["unit_name"], status,
                       card)
    except OfficerError as exc:
        raise OfficerListError(f"{where}: {printable(str(exc))[:200]}") from None


def verify_list(envelope: object, central_key: Ed25519PublicKey) -> OfficerList:
    """The list of ``envelope`` if it is well formed, signed by ``central_key`` and every officer valid;
    `OfficerListError` naming the first problem otherwise (also for what canonical JSON cannot hold: an
    integer beyond 2^53, a float)."""
    try:
        return _verified(envelope, central_key)
    except CanonicalJsonError as exc:
        raise OfficerListError(f"not canonical JSON: {printable(str(exc))[:200]}") from None


def _verified(envelope: object, central_key: Ed25519PublicKey) -> OfficerList:
    if not isinstance(envelope, dict) or set(envelope) != _ENVELOPE_MEMBERS:
        raise OfficerListError(f"expected an object with exactly {sorted(_ENVELOPE_MEMBERS)}")
    doc = envelope["list"]
    if not isinstance(doc, dict) or set(doc) != _LIST_MEMBERS:
        found = sorted(str(k)[:40] for k in doc) if isinstance(doc, dict) else type(doc).__name__
        raise OfficerListError(f"list: expected exactly the members {sorted(_LIST_MEMBERS)}, found {found}")
    signature = decode_signature(envelope["signature"])
    if signature is None:
        raise OfficerListError("signature: expected 64 bytes in canonical base64")
    if envelope["key_id"] != key_id_of(central_key):
        shown = printable(str(envelope["key_id"]))[:80]
        raise OfficerListError(f"key_id {shown!r} is not the pinned central key {key_id_of(central_key)}")
    if not verify_signature(central_key, signature, canonical_json(doc)):
        raise OfficerListError("the signature does not verify with the pinned central key")
    if doc["type"] != LIST_TYPE:
        raise OfficerListError(f"type: expected {LIST_TYPE!r}")
    version = doc["version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise OfficerListError("version: expected a positive integer")
    central, issued_at, entries = doc["central"], doc["issued_at"], doc["officers"]
    if not isinstance(central, str) or not _CENTRAL_ID.fullmatch(central):
        raise OfficerListError("central: expected a central id")
    if not isinstance(issued_at, str) or not _ISSUED_AT.fullmatch(issued_at):
        raise OfficerListError("issued_at: expected RFC 3339 UTC time")
    if not isinstance(entries, list) or len(entries) > MAX_OFFICERS:
        raise OfficerListError(f"officers: expected an array of at most {MAX_OFFICERS}")
    if doc["officers_sha256"] != officers_sha256(entries):
        raise OfficerListError("officers_sha256 does not match the officers the list carries")
    officers = tuple(_officer(i, entry) for i, entry in enumerate(entries))
    seen_numbers: set[str] = set()
    seen_cards: set[str] = set()
    for officer in officers:
        if officer.officer_no in seen_numbers:
            raise OfficerListError(f"警号 {officer.officer_no} is listed twice")
        seen_numbers.add(officer.officer_no)
        if officer.card_uid is not None:
            if officer.card_uid in seen_cards:
                raise OfficerListError(f"card {officer.card_uid} is given to two officers")
            seen_cards.add(officer.card_uid)
    return OfficerList(central, version, issued_at, officers, str(doc["officers_sha256"]),
                       str(envelope["key_id"]))
