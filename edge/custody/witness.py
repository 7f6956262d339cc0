"""Witnessed heads: the central's signed statement of how much of a station's ledger it has accepted.

A station's checkpoints are signed with a key that lives beside its ledger, so whoever can rewrite the
ledger can also re-sign or delete them. The central therefore *witnesses* every station: with each
receipt and with the answer to each ledger push it returns the head ``(seq, hash)`` of the station's
ledger as the central accepted it, signed with the central's Ed25519 key::

    {"format": "evidence-edge/witnessed-head/1", "central": <log origin>, "station": <id>,
     "seq": <n >= 1>, "hash": <entry hash, hex>, "station_key_id": <key the chain was checked with>,
     "time": <central UTC>, "key_id": <central key id>, "signature": <base64>}

The signature covers ``canonical_json`` of every member but ``key_id`` and ``signature``. The ``format``
member keeps it from ever being taken for a tree head or another document the same key signs.

A station keeps every head it receives; ``edge verify`` proves that the local ledger still holds the
witnessed entry at each witnessed seq, so a truncated tail, deleted checkpoints or a rewritten chain are
named even when the attacker re-signed everything with the station key. What the station keeps can be
deleted with the rest of its files; the central's copy cannot, which is why ``edge verify`` also asks
the central for its newest witnessed head when the station's configuration says where it is.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json
from edge.custody.errors import CustodyError
from edge.custody.fields import (
    ORIGIN_RE,
    collect,
    hex64_problem,
    key_id_problem,
    member_problems,
    pinned_signature_problems,
    show,
    signature_problem,
    size_problem,
    station_problem,
    time_problem,
)
from edge.custody.keys import StationKey
from edge.custody.problems import Problem

__all__ = [
    "WITNESSED_HEAD_FIELDS",
    "WITNESSED_HEAD_FORMAT",
    "WitnessError",
    "WitnessedHead",
    "sign_witnessed_head",
    "verify_witnessed_head",
    "witnessed_head_payload",
    "witnessed_head_problems",
]

WITNESSED_HEAD_FORMAT = "evidence-edge/witnessed-head/1"
WITNESSED_HEAD_FIELDS = (
    "format", "central", "station", "seq", "hash", "station_key_id", "time", "key_id", "signature",
)
_SIGNED_FIELDS = WITNESSED_HEAD_FIELDS[:-2]


class WitnessError(CustodyError, ValueError):
    """A witnessed head is malformed, or cannot be made from the given values."""


def witnessed_head_payload(doc: Mapping[str, Any]) -> bytes:
    """The exact bytes a witnessed head's signature covers."""
    return canonical_json({name: doc[name] for name in _SIGNED_FIELDS})


def witnessed_head_problems(doc: object, where: str = "witnessed_head") -> list[Problem]:
    """Shape problems of a received witnessed head (no signature check); empty when well-formed."""
    if not isinstance(doc, Mapping):
        return [Problem(where, f"expected a JSON object, found {show(doc)}")]
    problems = member_problems(doc, WITNESSED_HEAD_FIELDS, where)
    fmt = doc.get("format")
    if "format" in doc and fmt != WITNESSED_HEAD_FORMAT:
        problems.append(Problem(f"{where}.format", f"expected {WITNESSED_HEAD_FORMAT!r}, found {show(fmt)}"))
    central = doc.get("central")
    if "central" in doc and not (isinstance(central, str) and ORIGIN_RE.fullmatch(central)):
        problems.append(Problem(f"{where}.central", f"expected 1-128 printable ASCII characters, found "
                                                    f"{show(central)}"))
    problems += collect(
        station_problem(doc, where),
        size_problem(doc, "seq", where, minimum=1),
        hex64_problem(doc, "hash", where),
        key_id_problem(doc, "station_key_id", where),
        time_problem(doc, "time", where),
        key_id_problem(doc, "key_id", where),
        signature_problem(doc, where),
    )
    return problems


@dataclass(frozen=True)
class WitnessedHead:
    """The central's signed statement that it accepted ``station``'s ledger up to ``seq`` with ``hash``."""

    central: str
    station: str
    seq: int
    hash: str
    station_key_id: str
    time: str
    key_id: str
    signature: str = field(repr=False)
    format: str = WITNESSED_HEAD_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in WITNESSED_HEAD_FIELDS}

    @classmethod
    def from_dict(cls, doc: object) -> WitnessedHead:
        """Build from a received document after strict shape checks; raises :class:`WitnessError`.

        The signature is not checked here: call :func:`verify_witnessed_head` with the pinned key.
        """
        problems = witnessed_head_problems(doc)
        if problems:
            raise WitnessError("; ".join(str(problem) for problem in problems))
        assert isinstance(doc, Mapping)
        return cls(**{name: doc[name] for name in WITNESSED_HEAD_FIELDS})


def sign_witnessed_head(
    *, central: str, station: str, seq: int, hash_hex: str, station_key_id: str, time: str, key: StationKey
) -> WitnessedHead:
    """Sign that ``station``'s ledger was accepted up to ``(seq, hash_hex)``; raises :class:`WitnessError`
    rather than make a head that verifiers refuse."""
    doc: dict[str, Any] = {
        "format": WITNESSED_HEAD_FORMAT, "central": central, "station": station, "seq": seq,
        "hash": hash_hex, "station_key_id": station_key_id, "time": time, "key_id": key.key_id,
        "signature": "A" * 86 + "==",  # a placeholder of the right shape; replaced below
    }
    problems = witnessed_head_problems(doc)
    if problems:
        raise WitnessError("cannot sign witnessed head: " + "; ".join(str(problem) for problem in problems))
    doc["signature"] = base64.b64encode(key.sign(witnessed_head_payload(doc))).decode("ascii")
    return WitnessedHead.from_dict(doc)


def verify_witnessed_head(
    head: WitnessedHead | Mapping[str, Any],
    pinned_pub: Ed25519PublicKey,
    *,
    expected_station: str | None = None,
    where: str = "witnessed_head",
) -> list[Problem]:
    """Problems with a witnessed head; empty when well-formed, for ``expected_station`` (when given) and
    signed by ``pinned_pub``."""
    doc = head.to_dict() if isinstance(head, WitnessedHead) else head
    problems = witnessed_head_problems(doc, where)
    if problems:
        return problems
    if expected_station is not None and doc["station"] != expected_station:
        return [Problem(f"{where}.station", f"is {show(doc['station'])}, expected {show(expected_station)}")]
    payload = witnessed_head_payload(doc)
    return pinned_signature_problems(doc, pinned_pub, payload, where, "the witnessed head")

