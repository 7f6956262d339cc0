"""Signed refusals: the central's statement that it refuses an item (or a station's ledger) for good.

Between a station and its central there may be proxies, load balancers and broken links, and any of them
can answer a request with a 400, a 413, a 502 or a garbled body that looks like a refusal. Evidence must
never be rejected by such an accident, so a station treats a refusal as final only when the central
signed it with the key pinned at enrollment::

    {"format": "evidence-edge/refusal/1", "central": <log origin>, "station": <id>,
     "item": <item id or null>, "upload": <upload id or null>, "code": <refusal code>,
     "detail": <sentence>, "time": <central UTC>, "key_id": <central key id>, "signature": <base64>}

The signature covers ``canonical_json`` of every member but ``key_id`` and ``signature``; ``format``
keeps it from ever being taken for a tree head, a witnessed head or a receipt signed by the same key.
``item`` and ``upload`` bind the refusal to what was refused: a station checks that they name the item
(and the upload) it sent, so a refusal of another item, or of an earlier upload of this one replayed
after an operator requeued it, decides nothing. The station keeps the document in the ledger entry that
rejects the item, where it stays provable.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json
from edge.custody.errors import CustodyError
from edge.custody.fields import (
    ORIGIN_RE,
    collect,
    key_id_problem,
    member_problems,
    pinned_signature_problems,
    show,
    signature_problem,
    station_problem,
    time_problem,
)
from edge.custody.keys import StationKey
from edge.custody.problems import Problem

__all__ = [
    "FINAL_ITEM_CODES",
    "LEDGER_FORK",
    "REFUSAL_DETAIL_MAX_CHARS",
    "REFUSAL_FIELDS",
    "REFUSAL_FORMAT",
    "RefusalError",
    "refusal_payload",
    "refusal_problems",
    "sign_refusal",
    "verify_refusal",
]

REFUSAL_FORMAT = "evidence-edge/refusal/1"
# The published list: refusals that are final for an item once the central has signed them. The central
# signs exactly these (too_large: an upload whose declared length is beyond the central's maximum), and
# a station rejects an item for nothing else; any other answer is retried.
FINAL_ITEM_CODES = frozenset(
    {"bad_manifest", "bad_signature", "content_mismatch", "chain_mismatch", "item_conflict", "too_large"}
)
# Final for the station's uplink (it stops until an administrator looks), also only when signed.
LEDGER_FORK = "ledger_fork"
REFUSAL_FIELDS = (
    "format", "central", "station", "item", "upload", "code", "detail", "time", "key_id", "signature",
)
_SIGNED_FIELDS = REFUSAL_FIELDS[:-2]
REFUSAL_DETAIL_MAX_CHARS = 500
_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ITEM_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_UPLOAD_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RefusalError(CustodyError, ValueError):
    """A refusal cannot be signed from the given values."""


def refusal_payload(doc: Mapping[str, Any]) -> bytes:
    """The exact bytes a refusal's signature covers."""
    return canonical_json({name: doc[name] for name in _SIGNED_FIELDS})


def _optional_id_problem(
    doc: Mapping[str, Any], name: str, pattern: re.Pattern[str], where: str
) -> Problem | None:
    value = doc.get(name)
    if name in doc and value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
        return Problem(f"{where}.{name}", f"expected null or 1-128 characters of [A-Za-z0-9._:-], found "
                                          f"{show(value)}")
    return None


def refusal_problems(doc: object, where: str = "refusal") -> list[Problem]:
    """Shape problems of a received refusal (no signature check); empty when well-formed."""
    if not isinstance(doc, Mapping):
        return [Problem(where, f"expected a JSON object, found {show(doc)}")]
    problems = member_problems(doc, REFUSAL_FIELDS, where)
    if "format" in doc and doc["format"] != REFUSAL_FORMAT:
        problems.append(Problem(f"{where}.format",
                                f"expected {REFUSAL_FORMAT!r}, found {show(doc['format'])}"))
    central = doc.get("central")
    if "central" in doc and not (isinstance(central, str) and ORIGIN_RE.fullmatch(central)):
        problems.append(Problem(f"{where}.central", f"expected 1-128 printable ASCII characters, found "
                                                    f"{show(central)}"))
    code = doc.get("code")
    if "code" in doc and not (isinstance(code, str) and _CODE_RE.fullmatch(code)):
        problems.append(Problem(f"{where}.code", f"expected a refusal code like 'content_mismatch', found "
                                                 f"{show(code)}"))
    detail = doc.get("detail")
    if "detail" in doc and not (isinstance(detail, str) and len(detail) <= REFUSAL_DETAIL_MAX_CHARS):
        problems.append(Problem(f"{where}.detail", f"expected text of at most {REFUSAL_DETAIL_MAX_CHARS} "
                                                   f"characters, found {show(detail)}"))
    problems += collect(
        station_problem(doc, where),
        _optional_id_problem(doc, "item", _ITEM_RE, where),
        _optional_id_problem(doc, "upload", _UPLOAD_RE, where),
        time_problem(doc, "time", where),
        key_id_problem(doc, "key_id", where),
        signature_problem(doc, where),
    )
    return problems


def sign_refusal(
    *,
    central: str,
    station: str,
    item: str | None,
    upload: str | None,
    code: str,
    detail: str,
    time: str,
    key: StationKey,
) -> dict[str, Any]:
    """Sign a final refusal; the detail is cut to :data:`REFUSAL_DETAIL_MAX_CHARS`. Raises
    :class:`RefusalError` rather than make a document that stations refuse."""
    doc: dict[str, Any] = {
        "format": REFUSAL_FORMAT, "central": central, "station": station, "item": item, "upload": upload,
        "code": code, "detail": detail[:REFUSAL_DETAIL_MAX_CHARS], "time": time, "key_id": key.key_id,
        "signature": "A" * 86 + "==",  # a placeholder of the right shape; replaced below
    }
    problems = refusal_problems(doc)
    if problems:
        raise RefusalError("cannot sign refusal: " + "; ".join(str(problem) for problem in problems))
    doc["signature"] = base64.b64encode(key.sign(refusal_payload(doc))).decode("ascii")
    return doc


def verify_refusal(
    doc: object,
    pinned_pub: Ed25519PublicKey,
    *,
    station: str,
    item: str | None,
    code: str,
    upload: str | None,
    where: str = "refusal",
) -> list[Problem]:
    """Problems with a refusal said to refuse ``item`` and ``upload`` (None: the refusal names none) of
    ``station`` with ``code``; empty only when it is well-formed, says exactly that, and is signed by
    ``pinned_pub``."""
    problems = refusal_problems(doc, where)
    if problems:
        return problems
    assert isinstance(doc, Mapping)
    expected: dict[str, Any] = {"station": station, "item": item, "upload": upload, "code": code}
    for name, value in expected.items():
        if doc[name] != value:
            return [Problem(f"{where}.{name}", f"is {show(doc[name])}, expected {show(value)}: this refusal "
                                               "is about something else")]
    return pinned_signature_problems(doc, pinned_pub, refusal_payload(doc), where, "the refusal")
