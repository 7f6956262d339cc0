"""Strict field checks shared by the signed documents the central hands out (tree heads, receipts,
witnessed heads).

These documents arrive from the network, so every reader checks every field strictly (type, length,
range, no unknown members; ``True`` is not an integer) and names each problem by its JSON path.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import MAX_SAFE_INTEGER
from edge.custody.keys import key_id_of, verify_signature
from edge.custody.problems import Problem

__all__ = [
    "HEX64_RE",
    "KEY_ID_RE",
    "ORIGIN_RE",
    "STATION_RE",
    "collect",
    "decode_signature",
    "hex64_problem",
    "key_id_problem",
    "member_problems",
    "pinned_signature_problems",
    "show",
    "signature_problem",
    "size_problem",
    "station_problem",
    "time_problem",
    "valid_time",
]

HEX64_RE = re.compile(r"[0-9a-f]{64}")
KEY_ID_RE = re.compile(r"[0-9a-f]{32}")
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
STATION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The origin names the log (the central's configured id); printable, no line breaks, bounded.
ORIGIN_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?")
_SIGNATURE_B64_CHARS = 88  # base64 of a 64-byte Ed25519 signature


def show(value: object) -> str:
    """A bounded rendering of a hostile value for a problem message."""
    if isinstance(value, str):
        return repr(value[:80]) + ("..." if len(value) > 80 else "")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"  # repr of a huge int may even raise
    if isinstance(value, bool | int | float) or value is None:
        text = repr(value)
        return text if len(text) <= 40 else text[:40] + "..."
    return f"a {type(value).__name__}"


def valid_time(value: object) -> bool:
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value[:-1])  # the pattern fixed the layout; this checks the ranges
    except ValueError:
        return False
    return True


def member_problems(doc: Mapping[Any, Any], expected: Sequence[str], where: str) -> list[Problem]:
    problems = [Problem(where, f"required field {name!r} is missing") for name in expected if name not in doc]
    unknown = [name for name in doc if name not in expected]
    if unknown:
        shown = ", ".join(show(name) for name in unknown[:5])
        problems.append(Problem(where, f"unexpected field(s) {shown}{' ...' if len(unknown) > 5 else ''}; "
                                       f"expected only {', '.join(expected)}"))
    return problems


def hex64_problem(doc: Mapping[str, Any], name: str, where: str) -> Problem | None:
    value = doc.get(name)
    if name in doc and not (isinstance(value, str) and HEX64_RE.fullmatch(value)):
        return Problem(f"{where}.{name}", f"expected 64 lower-case hex digits, found {show(value)}")
    return None


def size_problem(doc: Mapping[str, Any], name: str, where: str, *, minimum: int = 0) -> Problem | None:
    value = doc.get(name)
    if name in doc and not (isinstance(value, int) and not isinstance(value, bool)
                            and minimum <= value <= MAX_SAFE_INTEGER):
        return Problem(f"{where}.{name}", f"expected an integer {minimum}..2**53-1, found {show(value)}")
    return None


def time_problem(doc: Mapping[str, Any], name: str, where: str) -> Problem | None:
    value = doc.get(name)
    if name in doc and not valid_time(value):
        return Problem(f"{where}.{name}", f"expected UTC time like 2024-05-01T09:00:00.000000Z, "
                                          f"found {show(value)}")
    return None


def key_id_problem(doc: Mapping[str, Any], name: str, where: str) -> Problem | None:
    value = doc.get(name)
    if name in doc and not (isinstance(value, str) and KEY_ID_RE.fullmatch(value)):
        return Problem(f"{where}.{name}", f"expected 32 lower-case hex digits, found {show(value)}")
    return None


def station_problem(doc: Mapping[str, Any], where: str, name: str = "station") -> Problem | None:
    station = doc.get(name)
    if name in doc and not (isinstance(station, str) and STATION_RE.fullmatch(station)):
        return Problem(f"{where}.{name}",
                       f"expected 1-64 characters of [A-Za-z0-9._-], found {show(station)}")
    return None


def signature_problem(doc: Mapping[str, Any], where: str) -> Problem | None:
    signature = doc.get("signature")
    if "signature" in doc and decode_signature(signature) is None:
        return Problem(f"{where}.signature", f"expected base64 of a 64-byte Ed25519 signature, "
                                             f"found {show(signature)}")
    return None


def pinned_signature_problems(
    doc: Mapping[str, Any], pinned_pub: Ed25519PublicKey, payload: bytes, where: str, what: str
) -> list[Problem]:
    """Empty when ``doc`` (its shape already checked) names the pinned central key as its signer and its
    ``signature`` over ``payload`` verifies with that key; otherwise the one problem, saying ``what``
    ("the tree head") was forged or altered. Tree heads, witnessed heads and refusals all end so."""
    pinned_id = key_id_of(pinned_pub)
    if doc["key_id"] != pinned_id:
        return [Problem(f"{where}.key_id", f"signed by key {show(doc['key_id'])}, expected the pinned "
                                           f"central key {pinned_id}")]
    signature = decode_signature(doc["signature"])
    if signature is None or not verify_signature(pinned_pub, signature, payload):
        return [Problem(f"{where}.signature", f"does not verify with the pinned central key {pinned_id}: "
                                              f"{what} was forged or altered")]
    return []


def collect(*problems: Problem | None) -> list[Problem]:
    return [problem for problem in problems if problem is not None]


def decode_signature(value: object) -> bytes | None:
    """The 64 signature bytes of a canonical base64 Ed25519 signature, None for anything else."""
    if not isinstance(value, str) or len(value) != _SIGNATURE_B64_CHARS:
        return None
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    # Only the canonical encoding: the unused low bits of the last character must be zero.
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != value:
        return None
    return raw
