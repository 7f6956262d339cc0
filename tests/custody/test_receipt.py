"""Signed tree heads, leaf entries and receipts: round trips, forgeries and hostile documents."""

from __future__ import annotations

import base64
import copy
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from edge.custody.canonical import canonical_json, parse_json, sha256_hex
from edge.custody.keys import StationKey
from edge.custody.merkle import MemoryTree, leaf_hash
from edge.custody.problems import Problem
from edge.custody.receipt import (
    LEAF_FORMAT,
    MAX_PROOF_HASHES,
    RECEIPT_FORMAT,
    Receipt,
    ReceiptError,
    TreeHead,
    leaf_data,
    leaf_entry_problems,
    make_leaf_entry,
    make_receipt,
    receipt_problems,
    sign_tree_head,
    tree_head_payload,
    tree_head_problems,
    verify_receipt,
    verify_tree_head,
)

ORIGIN = "central-hq"
STATION = "3201000001"
TIME = "2024-05-01T09:00:00.123456Z"


@pytest.fixture(scope="module")
def central_key() -> StationKey:
    return StationKey.generate()


@pytest.fixture(scope="module")
def other_key() -> StationKey:
    return StationKey.generate()


def _entry(number: int, station: str = STATION) -> dict[str, Any]:
    content = f"evidence {number}".encode()
    return make_leaf_entry(
        item=str(uuid.UUID(int=number + 1)),
        sha256=sha256_hex(content),
        size=len(content),
        station=station,
        manifest_sha256=sha256_hex(b"manifest %d" % number),
        accepted_utc=TIME,
    )


@pytest.fixture(scope="module")
def entries() -> list[dict[str, Any]]:
    return [_entry(number) for number in range(11)]


@pytest.fixture(scope="module")
def tree(entries: list[dict[str, Any]]) -> MemoryTree:
    return MemoryTree([leaf_hash(leaf_data(entry)) for entry in entries])


@pytest.fixture(scope="module")
def head(tree: MemoryTree, central_key: StationKey) -> TreeHead:
    return sign_tree_head(ORIGIN, tree.size, tree.root(), TIME, central_key)


def _receipt(entries: list[dict[str, Any]], tree: MemoryTree, head: TreeHead, index: int = 6) -> Receipt:
    return make_receipt(entries[index], index, tree.inclusion_proof(index, head.tree_size), head)


@pytest.fixture
def receipt_doc(entries: list[dict[str, Any]], tree: MemoryTree, head: TreeHead) -> dict[str, Any]:
    """A valid receipt as it arrives over the wire (JSON text parsed strictly)."""
    text = json.dumps(_receipt(entries, tree, head).to_dict())
    doc: dict[str, Any] = parse_json(text)
    return doc


def _wheres(problems: list[Problem]) -> list[str]:
    return [problem.where for problem in problems]


# --- tree heads -----------------------------------------------------------------------------------


def test_tree_head_signs_exactly_the_canonical_payload(head: TreeHead, central_key: StationKey,
                                                       tree: MemoryTree) -> None:
    assert head.root == tree.root()
    assert head.key_id == central_key.key_id
    assert head.signed_payload() == (
        b'{"origin":"central-hq","root_hash":"' + tree.root().hex().encode()
        + b'","time":"2024-05-01T09:00:00.123456Z","tree_size":11}'
    )
    assert tree_head_payload(ORIGIN, 11, head.root_hash, TIME) == head.signed_payload()
    assert verify_tree_head(head, central_key.public_key()) == []
    assert verify_tree_head(head.to_dict(), central_key.public_key()) == []
    assert "signature" not in repr(head)


def test_tree_head_round_trips_through_json(head: TreeHead, central_key: StationKey) -> None:
    doc = parse_json(json.dumps(head.to_dict()))
    assert TreeHead.from_dict(doc) == head
    assert verify_tree_head(doc, central_key.public_key()) == []


@pytest.mark.parametrize(("name", "value"), [
    ("origin", "central-hq2"),
    ("tree_size", 12),
    ("tree_size", 0),
    ("root_hash", "00" * 32),
    ("time", "2024-05-01T09:00:00.123457Z"),
])
def test_altered_tree_head_fails_its_signature(head: TreeHead, central_key: StationKey, name: str,
                                               value: Any) -> None:
    doc = {**head.to_dict(), name: value}
    problems = verify_tree_head(doc, central_key.public_key())
    assert _wheres(problems) == ["tree_head.signature"]
    assert "forged or altered" in problems[0].what


def test_tree_head_by_another_key_is_refused(head: TreeHead, central_key: StationKey,
                                             other_key: StationKey, tree: MemoryTree) -> None:
    problems = verify_tree_head(head, other_key.public_key())
    assert _wheres(problems) == ["tree_head.key_id"]
    assert other_key.key_id in problems[0].what
    # A forger who signs with their own key and claims the central's key id is caught by the signature.
    forged = sign_tree_head(ORIGIN, tree.size, tree.root(), TIME, other_key)
    doc = {**forged.to_dict(), "key_id": central_key.key_id}
    assert _wheres(verify_tree_head(doc, central_key.public_key())) == ["tree_head.signature"]


def test_swapped_signature_of_another_head_fails(head: TreeHead, central_key: StationKey,
                                                 tree: MemoryTree) -> None:
    older = sign_tree_head(ORIGIN, 5, tree.root(5), TIME, central_key)
    doc = {**head.to_dict(), "signature": older.signature}
    assert _wheres(verify_tree_head(doc, central_key.public_key())) == ["tree_head.signature"]


HOSTILE_TREE_HEAD_FIELDS: list[tuple[str, Any]] = [
    ("origin", ""),
    ("origin", "central\nfake"),
    ("origin", " leading-space"),
    ("origin", "x" * 129),
    ("origin", 7),
    ("origin", None),
    ("tree_size", True),
    ("tree_size", False),
    ("tree_size", -1),
    ("tree_size", 2**53),
    ("tree_size", 2**20_000),
    ("tree_size", 11.0),
    ("tree_size", "11"),
    ("tree_size", None),
    ("root_hash", "AB" * 32),
    ("root_hash", "ab" * 31),
    ("root_hash", "ab" * 33),
    ("root_hash", "zz" * 32),
    ("root_hash", ["ab" * 32]),
    ("time", "2024-05-01T09:00:00Z"),
    ("time", "2024-02-30T09:00:00.000000Z"),
    ("time", "2024-05-01 09:00:00.000000Z"),
    ("time", "2024-05-01T09:00:00.000000+08:00"),
    ("time", 1714554000),
    ("time", "٢٠٢٤-05-01T09:00:00.000000Z"),
    ("key_id", "AB" * 16),
    ("key_id", "ab" * 17),
    ("key_id", None),
    ("signature", ""),
    ("signature", "not base64!"),
    ("signature", base64.b64encode(b"\0" * 63).decode()),
    ("signature", base64.b64encode(b"\0" * 65).decode()),
    ("signature", "A" * 85 + "B=="),  # non-canonical: unused low bits set
    ("signature", 12),
    ("signature", "A" * 10_000_000),
]


@pytest.mark.parametrize(
    ("name", "value"), HOSTILE_TREE_HEAD_FIELDS,
    ids=[f"{name}-{number}" for number, (name, _) in enumerate(HOSTILE_TREE_HEAD_FIELDS)],
)
def test_hostile_tree_head_field_is_named(head: TreeHead, central_key: StationKey, name: str,
                                          value: Any) -> None:
    doc = {**head.to_dict(), name: value}
    problems = verify_tree_head(doc, central_key.public_key())
    assert _wheres(problems) == [f"tree_head.{name}"], problems
    assert len(problems[0].what) < 300
    with pytest.raises(ReceiptError, match=re.escape(f"tree_head.{name}")):
        TreeHead.from_dict(doc)


def test_tree_head_members_must_be_exactly_the_known_ones(head: TreeHead, central_key: StationKey) -> None:
    doc = head.to_dict()
    del doc["time"]
    assert _wheres(verify_tree_head(doc, central_key.public_key())) == ["tree_head"]
    extra = {**head.to_dict(), "note": "hello", "witness": 1}
    problems = verify_tree_head(extra, central_key.public_key())
    assert _wheres(problems) == ["tree_head"]
    assert "'note'" in problems[0].what and "'witness'" in problems[0].what
    hostile: Any
    for hostile in (None, [], "tree head", 3, [head.to_dict()]):
        assert _wheres(tree_head_problems(hostile)) == ["tree_head"]
        with pytest.raises(ReceiptError):
            TreeHead.from_dict(hostile)


@pytest.mark.parametrize(("origin", "size", "root", "time"), [
    ("bad\norigin", 1, b"\0" * 32, TIME),
    (ORIGIN, -1, b"\0" * 32, TIME),
    (ORIGIN, True, b"\0" * 32, TIME),
    (ORIGIN, 1, b"\0" * 31, TIME),
    (ORIGIN, 1, "00" * 32, TIME),
    (ORIGIN, 1, b"\0" * 32, "yesterday"),
])
def test_sign_tree_head_refuses_values_verifiers_would_refuse(
    central_key: StationKey, origin: str, size: int, root: bytes, time: str
) -> None:
    with pytest.raises(ReceiptError):
        sign_tree_head(origin, size, root, time, central_key)


# --- leaf entries ---------------------------------------------------------------------------------


def test_leaf_data_is_canonical_json_of_the_entry(entries: list[dict[str, Any]]) -> None:
    entry = entries[0]
    data = leaf_data(entry)
    assert data == canonical_json(entry)
    assert data.startswith(b'{"accepted_utc":"2024-05-01T09:00:00.123456Z","format":"evidence-edge/leaf/1",'
                           b'"item":"00000000-0000-0000-0000-000000000001","manifest_sha256":"')
    assert leaf_entry_problems(entry) == []
    assert entry["format"] == LEAF_FORMAT


HOSTILE_LEAF_FIELDS: list[tuple[str, Any]] = [
    ("format", "evidence-edge/leaf/2"),
    ("format", None),
    ("item", "00000000-0000-0000-0000-00000000000G"),
    ("item", "00000000-0000-0000-0000-00000000000A"),
    ("item", "{00000000-0000-0000-0000-000000000001}"),
    ("item", "000000000000000000000000000000001"),
    ("item", 1),
    ("sha256", "AB" * 32),
    ("sha256", "ab" * 16),
    ("sha256", None),
    ("size", True),
    ("size", -1),
    ("size", 1.5),
    ("size", 2**53),
    ("size", "10"),
    ("station", ""),
    ("station", "../other"),
    ("station", "st/1"),
    ("station", "x" * 65),
    ("station", 3201000001),
    ("manifest_sha256", "ab" * 32 + "\n"),
    ("accepted_utc", "2024-05-01T09:00:00.000000"),
    ("accepted_utc", "2024-13-01T09:00:00.000000Z"),
    ("accepted_utc", None),
]


@pytest.mark.parametrize(("name", "value"), HOSTILE_LEAF_FIELDS)
def test_hostile_leaf_field_is_named(entries: list[dict[str, Any]], name: str, value: Any) -> None:
    entry = {**entries[0], name: value}
    problems = leaf_entry_problems(entry)
    assert _wheres(problems) == [f"leaf.{name}"], problems
    with pytest.raises(ReceiptError, match=re.escape(f"leaf.{name}")):
        leaf_data(entry)
    arguments = {key: entry[key] for key in entry if key != "format"}
    if name != "format":
        with pytest.raises(ReceiptError, match=re.escape(f"leaf.{name}")):
            make_leaf_entry(**arguments)


def test_leaf_members_must_be_exactly_the_known_ones(entries: list[dict[str, Any]]) -> None:
    missing = dict(entries[0])
    del missing["station"]
    assert _wheres(leaf_entry_problems(missing)) == ["leaf"]
    assert "'station'" in leaf_entry_problems(missing)[0].what
    # An extra member would change the leaf bytes, so it is refused rather than hashed.
    assert _wheres(leaf_entry_problems({**entries[0], "officer": "012345"})) == ["leaf"]
    assert _wheres(leaf_entry_problems(["not", "a", "dict"])) == ["leaf"]


# --- receipts -------------------------------------------------------------------------------------


def test_valid_receipt_verifies(receipt_doc: dict[str, Any], central_key: StationKey,
                                entries: list[dict[str, Any]]) -> None:
    entry = entries[6]
    assert receipt_doc["format"] == RECEIPT_FORMAT
    assert verify_receipt(receipt_doc, central_key.public_key()) == []
    assert verify_receipt(receipt_doc, central_key.public_key(), expected_item=entry["item"],
                          expected_sha256=entry["sha256"], expected_station=STATION) == []


def test_receipt_round_trips(receipt_doc: dict[str, Any], central_key: StationKey,
                             entries: list[dict[str, Any]], tree: MemoryTree, head: TreeHead) -> None:
    receipt = Receipt.from_dict(receipt_doc)
    assert receipt == _receipt(entries, tree, head)
    assert receipt.to_dict() == receipt_doc
    assert receipt.proof_hashes() == tree.inclusion_proof(6, 11)
    assert verify_receipt(receipt, central_key.public_key()) == []


def test_every_leaf_and_every_tree_size_gives_a_verifying_receipt(
    entries: list[dict[str, Any]], tree: MemoryTree, central_key: StationKey
) -> None:
    for size in range(1, tree.size + 1):
        head = sign_tree_head(ORIGIN, size, tree.root(size), TIME, central_key)
        for index in range(size):
            receipt = make_receipt(entries[index], index, tree.inclusion_proof(index, size), head)
            assert verify_receipt(receipt.to_dict(), central_key.public_key()) == [], (index, size)


def test_receipt_for_another_item_station_or_content_is_refused(
    receipt_doc: dict[str, Any], central_key: StationKey
) -> None:
    pub = central_key.public_key()
    assert _wheres(verify_receipt(receipt_doc, pub, expected_item=str(uuid.UUID(int=99)))) == ["receipt.item"]
    assert _wheres(verify_receipt(receipt_doc, pub, expected_sha256="00" * 32)) == ["receipt.sha256"]
    assert _wheres(verify_receipt(receipt_doc, pub, expected_station="3201000002")) == ["receipt.station"]


def test_receipt_signed_by_another_key_is_refused(receipt_doc: dict[str, Any], other_key: StationKey) -> None:
    assert _wheres(verify_receipt(receipt_doc, other_key.public_key())) == ["receipt.tree_head.key_id"]


@pytest.mark.parametrize("name", ["item", "sha256", "station"])
def test_receipt_fields_must_match_its_leaf(receipt_doc: dict[str, Any], central_key: StationKey,
                                            name: str) -> None:
    replacement = {"item": str(uuid.UUID(int=99)), "sha256": "00" * 32, "station": "3201000002"}[name]
    doc = {**receipt_doc, name: replacement}
    problems = verify_receipt(doc, central_key.public_key())
    assert _wheres(problems) == [f"receipt.leaf.{name}"]


@pytest.mark.parametrize(("name", "value"), [
    ("size", 1),
    ("sha256", "00" * 32),
    ("manifest_sha256", "00" * 32),
    ("accepted_utc", "2030-01-01T00:00:00.000000Z"),
    ("station", "3201000002"),
])
def test_altered_leaf_fails_the_inclusion_proof(receipt_doc: dict[str, Any], central_key: StationKey,
                                                name: str, value: Any) -> None:
    doc = copy.deepcopy(receipt_doc)
    doc["leaf"][name] = value
    if name in ("sha256", "station"):
        doc[name] = value  # a consistent forgery: receipt and leaf agree, only the proof can tell
    problems = verify_receipt(doc, central_key.public_key())
    assert _wheres(problems) == ["receipt.inclusion_proof"]
    assert "does not lead from leaf 6" in problems[0].what


def test_proof_of_another_position_or_tree_fails(receipt_doc: dict[str, Any], central_key: StationKey,
                                                 tree: MemoryTree, entries: list[dict[str, Any]]) -> None:
    pub = central_key.public_key()
    moved = {**receipt_doc, "leaf_index": 7}
    assert _wheres(verify_receipt(moved, pub)) == ["receipt.inclusion_proof"]
    other_proof = {**receipt_doc, "inclusion_proof": [value.hex() for value in tree.inclusion_proof(7, 11)]}
    assert _wheres(verify_receipt(other_proof, pub)) == ["receipt.inclusion_proof"]
    # The right proof for a smaller tree, presented with the head of the bigger tree.
    smaller = {**receipt_doc, "inclusion_proof": [value.hex() for value in tree.inclusion_proof(6, 8)]}
    assert _wheres(verify_receipt(smaller, pub)) == ["receipt.inclusion_proof"]
    flipped = copy.deepcopy(receipt_doc)
    flipped["inclusion_proof"][1] = ("0" if flipped["inclusion_proof"][1][0] != "0" else "1") + \
        flipped["inclusion_proof"][1][1:]
    assert _wheres(verify_receipt(flipped, pub)) == ["receipt.inclusion_proof"]
    reordered = copy.deepcopy(receipt_doc)
    reordered["inclusion_proof"].reverse()
    assert _wheres(verify_receipt(reordered, pub)) == ["receipt.inclusion_proof"]


def test_tree_size_must_be_the_signed_one(receipt_doc: dict[str, Any], central_key: StationKey) -> None:
    problems = verify_receipt({**receipt_doc, "tree_size": 8}, central_key.public_key())
    assert _wheres(problems) == ["receipt.tree_size"]
    outside = {**receipt_doc, "leaf_index": 11}
    assert _wheres(verify_receipt(outside, central_key.public_key())) == ["receipt.leaf_index"]


def test_wrong_proof_length_is_named(receipt_doc: dict[str, Any], central_key: StationKey) -> None:
    doc = {**receipt_doc, "inclusion_proof": receipt_doc["inclusion_proof"][:-1]}
    problems = verify_receipt(doc, central_key.public_key())
    assert _wheres(problems) == ["receipt.inclusion_proof"]
    assert "needs 4" in problems[0].what


def test_overlong_proof_is_refused_before_decoding(
    receipt_doc: dict[str, Any], central_key: StationKey
) -> None:
    doc = {**receipt_doc, "inclusion_proof": ["zz"] * 1_000_000}
    problems = verify_receipt(doc, central_key.public_key())
    assert problems == [Problem("receipt.inclusion_proof",
                                f"expected at most {MAX_PROOF_HASHES} hashes, found 1000000")]


HOSTILE_RECEIPT_FIELDS: list[tuple[str, Any, str]] = [
    ("format", "evidence-edge/receipt/0", "receipt.format"),
    ("item", "not-a-uuid", "receipt.item"),
    ("sha256", "AB" * 32, "receipt.sha256"),
    ("station", "", "receipt.station"),
    ("leaf", "leaf", "receipt.leaf"),
    ("leaf", None, "receipt.leaf"),
    ("leaf_index", True, "receipt.leaf_index"),
    ("leaf_index", -1, "receipt.leaf_index"),
    ("leaf_index", 6.0, "receipt.leaf_index"),
    ("leaf_index", "6", "receipt.leaf_index"),
    ("tree_size", False, "receipt.tree_size"),
    ("tree_size", 2**60, "receipt.tree_size"),
    ("inclusion_proof", "ab" * 32, "receipt.inclusion_proof"),
    ("inclusion_proof", None, "receipt.inclusion_proof"),
    ("inclusion_proof", {"0": "ab" * 32}, "receipt.inclusion_proof"),
    ("inclusion_proof", ["ab" * 32, None], "receipt.inclusion_proof[1]"),
    ("inclusion_proof", ["AB" * 32], "receipt.inclusion_proof[0]"),
    ("inclusion_proof", ["ab" * 31], "receipt.inclusion_proof[0]"),
    ("tree_head", None, "receipt.tree_head"),
    ("tree_head", [], "receipt.tree_head"),
]


@pytest.mark.parametrize(("name", "value", "where"), HOSTILE_RECEIPT_FIELDS)
def test_hostile_receipt_field_is_named(receipt_doc: dict[str, Any], central_key: StationKey, name: str,
                                        value: Any, where: str) -> None:
    doc = {**receipt_doc, name: value}
    problems = verify_receipt(doc, central_key.public_key())
    assert problems and problems[0].where == where, problems
    assert all(problem.where.startswith(where.split("[")[0]) for problem in problems), problems
    with pytest.raises(ReceiptError):
        Receipt.from_dict(doc)


def test_nested_problems_carry_their_json_path(receipt_doc: dict[str, Any], central_key: StationKey) -> None:
    doc = copy.deepcopy(receipt_doc)
    doc["leaf"]["size"] = True
    doc["tree_head"]["time"] = "now"
    doc["extra"] = 1
    del doc["station"]
    problems = verify_receipt(doc, central_key.public_key())
    assert sorted(_wheres(problems)) == ["receipt", "receipt", "receipt.leaf.size", "receipt.tree_head.time"]
    assert any("'station'" in problem.what for problem in problems)
    assert any("'extra'" in problem.what for problem in problems)


def test_not_a_receipt_at_all(central_key: StationKey) -> None:
    hostile: Any
    for hostile in (None, [], "receipt", 1, True, b"{}"):
        assert _wheres(verify_receipt(hostile, central_key.public_key())) == ["receipt"]
    missing = receipt_problems({})
    assert len(missing) == 9 and set(_wheres(missing)) == {"receipt"}  # one problem per missing field


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for position, value in enumerate(doc):
            yield (*prefix, position)
            yield from _paths(value, (*prefix, position))


HOSTILE_VALUES: list[Any] = [None, True, False, 0, -1, 2**64, 1.5, "", "x" * 100_000, "ab" * 32, [], {},
                             [None], {"a": 1}, "\ud800"]


def test_every_field_replaced_by_every_hostile_value_is_refused_not_raised(
    receipt_doc: dict[str, Any], central_key: StationKey
) -> None:
    pub = central_key.public_key()
    checked = 0
    for path in list(_paths(receipt_doc)):
        for value in HOSTILE_VALUES:
            doc = copy.deepcopy(receipt_doc)
            target: Any = doc
            for step in path[:-1]:
                target = target[step]
            if target[path[-1]] == value and type(target[path[-1]]) is type(value):
                continue
            target[path[-1]] = value
            problems = verify_receipt(doc, pub)
            assert problems, (path, value)
            assert all(isinstance(problem, Problem) for problem in problems)
            assert all(len(problem.what) < 1000 for problem in problems), (path, value)
            checked += 1
    assert checked > 300


def test_make_receipt_refuses_what_a_verifier_would_refuse(
    entries: list[dict[str, Any]], tree: MemoryTree, head: TreeHead
) -> None:
    with pytest.raises(ReceiptError, match="inclusion_proof"):
        make_receipt(entries[6], 6, tree.inclusion_proof(5, 11), head)
    with pytest.raises(ReceiptError, match="leaf_index"):
        make_receipt(entries[6], 11, [], head)
    with pytest.raises(ReceiptError, match=re.escape("leaf.size")):
        make_receipt({**entries[6], "size": -1}, 6, tree.inclusion_proof(6, 11), head)
