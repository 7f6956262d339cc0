"""Signed tree heads of the central Merkle log, and the receipts the central returns for accepted items.

A **tree head** is the central's Ed25519 signature over
``canonical_json({"origin", "tree_size", "root_hash", "time"})``: the central whose log this is, how many
leaves it had, their RFC 9162 root (hex) and when it signed. A **leaf** is one accepted item,
``canonical_json`` of ``{"format": "evidence-edge/leaf/1", "item", "sha256", "size", "station",
"manifest_sha256", "accepted_utc"}``, hashed with :func:`edge.custody.merkle.leaf_hash`. A **receipt**
names the item, carries its leaf entry, the leaf's index and the audit path to the root of a signed tree
head; a station (or a court expert) checks it offline with the central key pinned at enrolment. A
receipt/2 also carries the central's witnessed head of the station's ledger (:mod:`edge.custody.witness`);
a receipt/1 (from before witnessing) still verifies and is reported as unwitnessed.

Documents arrive from the network, so every reader checks every field strictly (type, length, range,
no unknown members; ``True`` is not an integer) and names each problem by its JSON path.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json
from edge.custody.errors import CanonicalJsonError, CustodyError
from edge.custody.fields import HEX64_RE as _HEX64_RE
from edge.custody.fields import ORIGIN_RE as _ORIGIN_RE
from edge.custody.fields import collect as _collect
from edge.custody.fields import hex64_problem as _hex64_problem
from edge.custody.fields import key_id_problem, pinned_signature_problems, signature_problem
from edge.custody.fields import member_problems as _member_problems
from edge.custody.fields import show as _show
from edge.custody.fields import size_problem as _size_problem
from edge.custody.fields import station_problem as _station_problem
from edge.custody.fields import time_problem as _time_problem
from edge.custody.keys import StationKey
from edge.custody.merkle import HASH_SIZE, inclusion_proof_length, leaf_hash, verify_inclusion
from edge.custody.problems import Problem
from edge.custody.witness import WitnessedHead, verify_witnessed_head, witnessed_head_problems

__all__ = [
    "LEAF_FIELDS",
    "LEAF_FORMAT",
    "MAX_PROOF_HASHES",
    "RECEIPT_FORMAT",
    "RECEIPT_FORMAT_WITNESSED",
    "TREE_HEAD_FIELDS",
    "Receipt",
    "ReceiptError",
    "TreeHead",
    "leaf_data",
    "leaf_entry_problems",
    "make_leaf_entry",
    "make_receipt",
    "receipt_problems",
    "sign_tree_head",
    "tree_head_payload",
    "tree_head_problems",
    "verify_receipt",
    "verify_tree_head",
]

LEAF_FORMAT = "evidence-edge/leaf/1"
RECEIPT_FORMAT = "evidence-edge/receipt/1"
# A receipt that also carries the central's witnessed head of the station's ledger (edge.custody.witness).
RECEIPT_FORMAT_WITNESSED = "evidence-edge/receipt/2"
TREE_HEAD_FIELDS = ("origin", "tree_size", "root_hash", "time", "key_id", "signature")
LEAF_FIELDS = ("format", "item", "sha256", "size", "station", "manifest_sha256", "accepted_utc")
RECEIPT_FIELDS = (
    "format", "item", "sha256", "station", "leaf", "leaf_index", "tree_size", "inclusion_proof", "tree_head",
)
RECEIPT_FIELDS_WITNESSED = (*RECEIPT_FIELDS, "witnessed_head")
# Tree sizes stay within canonical JSON's exact integers (2**53 - 1), so an audit path has at most 53
# hashes; a longer list is refused before any of it is decoded.
MAX_PROOF_HASHES = 53

# Exactly the strings str(uuid.UUID(...)) produces, as the manifest requires.
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class ReceiptError(CustodyError, ValueError):
    """A tree head, leaf entry or receipt is malformed, or cannot be built from the given values."""


# --- tree heads -------------------------------------------------------------------------------------


def tree_head_payload(origin: str, tree_size: int, root_hash: str, time: str) -> bytes:
    """The exact bytes a tree head signature covers."""
    return canonical_json({"origin": origin, "tree_size": tree_size, "root_hash": root_hash, "time": time})


def tree_head_problems(doc: object, where: str = "tree_head") -> list[Problem]:
    """Shape problems of a received tree head document (no signature check); empty when well-formed."""
    if not isinstance(doc, Mapping):
        return [Problem(where, f"expected a JSON object, found {_show(doc)}")]
    problems = _member_problems(doc, TREE_HEAD_FIELDS, where) + _signed_field_problems(doc, where)
    problems += _collect(key_id_problem(doc, "key_id", where), signature_problem(doc, where))
    return problems


def _signed_field_problems(doc: Mapping[str, Any], where: str) -> list[Problem]:
    """Problems with the four fields a tree head signature covers."""
    problems: list[Problem] = []
    origin = doc.get("origin")
    if "origin" in doc and not (isinstance(origin, str) and _ORIGIN_RE.fullmatch(origin)):
        problems.append(Problem(f"{where}.origin", f"expected 1-128 printable ASCII characters, found "
                                                   f"{_show(origin)}"))
    problems += _collect(
        _size_problem(doc, "tree_size", where),
        _hex64_problem(doc, "root_hash", where),
        _time_problem(doc, "time", where),
    )
    return problems


@dataclass(frozen=True)
class TreeHead:
    """A signed statement by the central that its log had ``tree_size`` leaves with root ``root_hash``."""

    origin: str
    tree_size: int
    root_hash: str  # 64 lower-case hex digits
    time: str  # UTC, ledger format 2024-05-01T09:00:00.000000Z
    key_id: str
    signature: str = field(repr=False)  # base64 Ed25519 signature over signed_payload()

    @property
    def root(self) -> bytes:
        return bytes.fromhex(self.root_hash)

    def signed_payload(self) -> bytes:
        return tree_head_payload(self.origin, self.tree_size, self.root_hash, self.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "time": self.time,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, doc: object) -> TreeHead:
        """Build from a received document after strict shape checks; raises :class:`ReceiptError`.

        The signature is not checked here: call :func:`verify_tree_head` with the pinned key.
        """
        problems = tree_head_problems(doc)
        if problems:
            raise ReceiptError("; ".join(str(problem) for problem in problems))
        assert isinstance(doc, Mapping)
        return cls(**{name: doc[name] for name in TREE_HEAD_FIELDS})


def sign_tree_head(origin: str, tree_size: int, root: bytes, time: str, key: StationKey) -> TreeHead:
    """Sign the head of a tree of ``tree_size`` leaves whose RFC 9162 root is ``root`` (32 bytes).

    Raises :class:`ReceiptError` when a value would make a head that verifiers refuse.
    """
    if not isinstance(root, bytes) or len(root) != HASH_SIZE:
        raise ReceiptError(f"expected a {HASH_SIZE}-byte root hash, found {_show(root)}")
    root_hash = root.hex()
    problems = _signed_field_problems(
        {"origin": origin, "tree_size": tree_size, "root_hash": root_hash, "time": time}, "tree_head"
    )
    if problems:
        raise ReceiptError("cannot sign tree head: " + "; ".join(str(problem) for problem in problems))
    signature = key.sign(tree_head_payload(origin, tree_size, root_hash, time))
    return TreeHead(origin=origin, tree_size=tree_size, root_hash=root_hash, time=time, key_id=key.key_id,
                    signature=base64.b64encode(signature).decode("ascii"))


def verify_tree_head(
    th: TreeHead | Mapping[str, Any], pinned_pub: Ed25519PublicKey, *, where: str = "tree_head"
) -> list[Problem]:
    """Problems with a tree head (object or received document); empty when it is well-formed and signed
    by ``pinned_pub``."""
    doc = th.to_dict() if isinstance(th, TreeHead) else th
    problems = tree_head_problems(doc, where)
    if problems:
        return problems
    payload = tree_head_payload(doc["origin"], doc["tree_size"], doc["root_hash"], doc["time"])
    return pinned_signature_problems(doc, pinned_pub, payload, where, "the tree head")


# --- leaves -----------------------------------------------------------------------------------------


def leaf_entry_problems(entry: object, where: str = "leaf") -> list[Problem]:
    """Shape problems of a leaf entry; empty when well-formed."""
    if not isinstance(entry, Mapping):
        return [Problem(where, f"expected a JSON object, found {_show(entry)}")]
    problems = _member_problems(entry, LEAF_FIELDS, where)
    fmt = entry.get("format")
    if "format" in entry and fmt != LEAF_FORMAT:
        problems.append(Problem(f"{where}.format", f"expected {LEAF_FORMAT!r}, found {_show(fmt)}"))
    problems += _collect(
        _item_problem(entry, where),
        _hex64_problem(entry, "sha256", where),
        _size_problem(entry, "size", where),
        _station_problem(entry, where),
        _hex64_problem(entry, "manifest_sha256", where),
        _time_problem(entry, "accepted_utc", where),
    )
    return problems


def _item_problem(doc: Mapping[str, Any], where: str) -> Problem | None:
    item = doc.get("item")
    if "item" in doc and not (isinstance(item, str) and _UUID_RE.fullmatch(item)):
        return Problem(f"{where}.item", f"expected a lower-case hyphenated UUID, found {_show(item)}")
    return None


def make_leaf_entry(
    *, item: str, sha256: str, size: int, station: str, manifest_sha256: str, accepted_utc: str
) -> dict[str, Any]:
    """A leaf entry for an accepted item; raises :class:`ReceiptError` naming any malformed value."""
    entry: dict[str, Any] = {
        "format": LEAF_FORMAT,
        "item": item,
        "sha256": sha256,
        "size": size,
        "station": station,
        "manifest_sha256": manifest_sha256,
        "accepted_utc": accepted_utc,
    }
    problems = leaf_entry_problems(entry)
    if problems:
        raise ReceiptError("; ".join(str(problem) for problem in problems))
    return entry


def leaf_data(entry: Mapping[str, Any]) -> bytes:
    """The bytes a leaf hashes: ``canonical_json`` of the leaf entry.

    Raises :class:`ReceiptError` when the entry is not a well-formed leaf entry, so that nothing else
    is ever hashed into the log.
    """
    problems = leaf_entry_problems(entry)
    if problems:
        raise ReceiptError("; ".join(str(problem) for problem in problems))
    try:
        return canonical_json(entry)
    except CanonicalJsonError as exc:  # unreachable for a well-formed entry; kept as a hard stop
        raise ReceiptError(f"leaf entry cannot be serialised canonically: {exc}") from None


# --- receipts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """The central's proof that an item was accepted: its leaf, where it is, and a signed root over it."""

    item: str
    sha256: str
    station: str
    leaf: dict[str, Any]
    leaf_index: int
    tree_size: int
    inclusion_proof: tuple[str, ...]  # hex hashes, leaf end first
    tree_head: TreeHead
    # The station's ledger head as the central had accepted it when it answered (receipt/2); None in a
    # receipt/1, which stations still accept but `edge verify` reports as unwitnessed.
    witnessed_head: WitnessedHead | None = None

    @property
    def format(self) -> str:
        return RECEIPT_FORMAT if self.witnessed_head is None else RECEIPT_FORMAT_WITNESSED

    def proof_hashes(self) -> list[bytes]:
        return [bytes.fromhex(value) for value in self.inclusion_proof]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "item": self.item,
            "sha256": self.sha256,
            "station": self.station,
            "leaf": dict(self.leaf),
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "inclusion_proof": list(self.inclusion_proof),
            "tree_head": self.tree_head.to_dict(),
            **({} if self.witnessed_head is None else {"witnessed_head": self.witnessed_head.to_dict()}),
        }

    @classmethod
    def from_dict(cls, doc: object) -> Receipt:
        """Build from a received document after strict shape checks; raises :class:`ReceiptError`.

        Only the shape is checked: call :func:`verify_receipt` for signature, fields and proof.
        """
        problems = receipt_problems(doc)
        if problems:
            raise ReceiptError("; ".join(str(problem) for problem in problems))
        assert isinstance(doc, Mapping)
        return cls(
            item=doc["item"],
            sha256=doc["sha256"],
            station=doc["station"],
            leaf=dict(doc["leaf"]),
            leaf_index=doc["leaf_index"],
            tree_size=doc["tree_size"],
            inclusion_proof=tuple(doc["inclusion_proof"]),
            tree_head=TreeHead.from_dict(doc["tree_head"]),
            witnessed_head=(WitnessedHead.from_dict(doc["witnessed_head"]) if "witnessed_head" in doc
                            else None),
        )


def make_receipt(
    leaf_entry: Mapping[str, Any],
    leaf_index: int,
    proof: Sequence[bytes],
    tree_head: TreeHead,
    witnessed_head: WitnessedHead | None = None,
) -> Receipt:
    """A receipt for ``leaf_entry`` at ``leaf_index`` with its audit path to ``tree_head``'s root, and the
    station's witnessed ledger head when given (a receipt/2).

    Checks everything a verifier will check except the signature, so the central never hands out a
    receipt that fails; raises :class:`ReceiptError`.
    """
    entry: dict[str, Any] = dict(leaf_entry)
    problems = leaf_entry_problems(entry)
    if problems:
        raise ReceiptError("cannot make receipt: " + "; ".join(str(problem) for problem in problems))
    receipt = Receipt(
        item=entry["item"],
        sha256=entry["sha256"],
        station=entry["station"],
        leaf=entry,
        leaf_index=leaf_index,
        tree_size=tree_head.tree_size,
        inclusion_proof=tuple(value.hex() if isinstance(value, bytes) else str(value) for value in proof),
        tree_head=tree_head,
        witnessed_head=witnessed_head,
    )
    problems = receipt_problems(receipt.to_dict())
    if not problems:
        problems = _proof_problems(receipt.to_dict(), "receipt")
    if problems:
        raise ReceiptError("cannot make receipt: " + "; ".join(str(problem) for problem in problems))
    return receipt


def receipt_problems(doc: object, where: str = "receipt") -> list[Problem]:
    """Shape problems of a received receipt document (no signature or proof check)."""
    if not isinstance(doc, Mapping):
        return [Problem(where, f"expected a JSON object, found {_show(doc)}")]
    fmt = doc.get("format")
    if fmt not in (RECEIPT_FORMAT, RECEIPT_FORMAT_WITNESSED):
        # Without a known format the expected members are unknown: the shape of receipt/1 is checked.
        problems = [Problem(f"{where}.format", f"expected {RECEIPT_FORMAT!r} or "
                                               f"{RECEIPT_FORMAT_WITNESSED!r}, found {_show(fmt)}")
                    ] if "format" in doc else []
        problems += _member_problems(doc, RECEIPT_FIELDS, where)
    else:
        expected = RECEIPT_FIELDS if fmt == RECEIPT_FORMAT else RECEIPT_FIELDS_WITNESSED
        problems = _member_problems(doc, expected, where)
    if "witnessed_head" in doc and fmt == RECEIPT_FORMAT_WITNESSED:
        problems += witnessed_head_problems(doc["witnessed_head"], f"{where}.witnessed_head")
    problems += _collect(
        _item_problem(doc, where),
        _hex64_problem(doc, "sha256", where),
        _station_problem(doc, where),
        _size_problem(doc, "leaf_index", where),
        _size_problem(doc, "tree_size", where),
    )
    if "leaf" in doc:
        problems += leaf_entry_problems(doc["leaf"], f"{where}.leaf")
    if "tree_head" in doc:
        problems += tree_head_problems(doc["tree_head"], f"{where}.tree_head")
    proof = doc.get("inclusion_proof")
    if "inclusion_proof" in doc:
        if not isinstance(proof, list):
            problems.append(Problem(f"{where}.inclusion_proof", f"expected a list of hex hashes, found "
                                                                f"{_show(proof)}"))
        elif len(proof) > MAX_PROOF_HASHES:
            problems.append(Problem(f"{where}.inclusion_proof",
                                    f"expected at most {MAX_PROOF_HASHES} hashes, found {len(proof)}"))
        else:
            for position, value in enumerate(proof):
                if not (isinstance(value, str) and _HEX64_RE.fullmatch(value)):
                    problems.append(Problem(f"{where}.inclusion_proof[{position}]",
                                            f"expected 64 lower-case hex digits, found {_show(value)}"))
    return problems


def _proof_problems(doc: Mapping[str, Any], where: str) -> list[Problem]:
    """Consistency of a well-formed receipt's fields with each other and the audit path."""
    problems: list[Problem] = []
    leaf = doc["leaf"]
    for name in ("item", "sha256", "station"):
        if leaf[name] != doc[name]:
            problems.append(Problem(f"{where}.leaf.{name}", f"is {_show(leaf[name])} but the receipt is for "
                                                            f"{_show(doc[name])}"))
    head = doc["tree_head"]
    tree_size, leaf_index = doc["tree_size"], doc["leaf_index"]
    if tree_size != head["tree_size"]:
        problems.append(Problem(f"{where}.tree_size", f"is {tree_size} but the tree head is for "
                                                      f"{head['tree_size']} leaves"))
        return problems
    if leaf_index >= tree_size:
        problems.append(Problem(f"{where}.leaf_index", f"is {leaf_index}, outside a tree of {tree_size} "
                                                       f"leaves"))
        return problems
    proof = [bytes.fromhex(value) for value in doc["inclusion_proof"]]
    expected_length = inclusion_proof_length(leaf_index, tree_size)
    if len(proof) != expected_length:
        problems.append(Problem(f"{where}.inclusion_proof", f"has {len(proof)} hashes; leaf {leaf_index} of "
                                                            f"a tree of {tree_size} needs {expected_length}"))
        return problems
    if not verify_inclusion(leaf_hash(leaf_data(leaf)), leaf_index, tree_size, proof,
                            bytes.fromhex(head["root_hash"])):
        problems.append(Problem(f"{where}.inclusion_proof", f"does not lead from leaf {leaf_index} to the "
                                                            f"signed root {head['root_hash']} of "
                                                            f"{tree_size} leaves: the receipt was altered"))
    return problems


def verify_receipt(
    receipt_doc: Receipt | Mapping[str, Any],
    pinned_central_pub: Ed25519PublicKey,
    *,
    expected_item: str | None = None,
    expected_sha256: str | None = None,
    expected_station: str | None = None,
) -> list[Problem]:
    """Problems with a receipt; an empty list means the central accepted exactly this item.

    Checks the shape of every field, that the tree head is signed by the pinned central key, that the
    leaf names the receipt's item, content hash and station (and the expected ones when given), that
    the inclusion proof leads from the leaf to the signed root, and (receipt/2) that the witnessed head
    of the station's ledger is the same central's signed statement about this station. Whether the
    station's ledger still holds the witnessed entry is for the caller with the ledger to check.
    """
    doc = receipt_doc.to_dict() if isinstance(receipt_doc, Receipt) else receipt_doc
    where = "receipt"
    problems = receipt_problems(doc, where)
    if problems:
        return problems
    assert isinstance(doc, Mapping)
    for name, expected in (("item", expected_item), ("sha256", expected_sha256),
                           ("station", expected_station)):
        if expected is not None and doc[name] != expected:
            problems.append(Problem(f"{where}.{name}", f"is {_show(doc[name])}, expected {_show(expected)}"))
    problems += verify_tree_head(doc["tree_head"], pinned_central_pub, where=f"{where}.tree_head")
    problems += _proof_problems(doc, where)
    witnessed = doc.get("witnessed_head")
    if witnessed is not None:
        problems += verify_witnessed_head(witnessed, pinned_central_pub, expected_station=doc["station"],
                                          where=f"{where}.witnessed_head")
        if witnessed["central"] != doc["tree_head"]["origin"]:
            problems.append(Problem(f"{where}.witnessed_head.central",
                                    f"is {_show(witnessed['central'])} but the tree head is of log "
                                    f"{_show(doc['tree_head']['origin'])}"))
    return problems
