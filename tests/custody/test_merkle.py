"""RFC 9162 Merkle trees: the published CT test vectors, an independent oracle, and tampered proofs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from edge.custody.merkle import (
    EMPTY_ROOT,
    MAX_TREE_SIZE,
    MemoryTree,
    MerkleError,
    consistency_proof,
    consistency_proof_length,
    inclusion_proof,
    inclusion_proof_length,
    leaf_hash,
    node_hash,
    range_hash_from_subtrees,
    root_from_inclusion_proof,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)

# The Certificate Transparency reference data (RFC 6962 test tree), as published in
# transparency-dev/merkle testonly/constants.go and proof/verify_test.go.
CT_LEAVES = [bytes.fromhex(text) for text in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]
CT_ROOTS = [bytes.fromhex(text) for text in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
# Complete subtree hashes by level, then index within the level.
CT_NODES = [[bytes.fromhex(text) for text in level] for level in (
    ("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
     "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
     "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
     "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
     "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
     "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
     "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
     "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
     "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
     "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
     "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
     "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",),
)]
# (leaf index, tree size, audit path); the Go file numbers leaves from 1, these from 0.
CT_INCLUSION = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
# The node layout of proofs in transparency-dev/merkle proof/proof_test.go, written as leaf ranges
# [start, end); a "rehash" there (nodes folded into one) is one range here.
EXPECTED_INCLUSION_RANGES = [
    (0, 2, [(1, 2)]),
    (1, 2, [(0, 1)]),
    (1, 3, [(0, 1), (2, 3)]),
    (0, 7, [(1, 2), (2, 4), (4, 7)]),
    (2, 7, [(3, 4), (0, 2), (4, 7)]),
    (4, 7, [(5, 6), (6, 7), (0, 4)]),
    (6, 7, [(4, 6), (0, 4)]),
    (3, 5, [(2, 3), (0, 2), (4, 5)]),
    (3, 6, [(2, 3), (0, 2), (4, 6)]),
    (10, 15, [(11, 12), (8, 10), (12, 15), (0, 8)]),
    (24, 31, [(25, 26), (26, 28), (28, 31), (16, 24), (0, 16)]),
    (81, 95, [(80, 81), (82, 84), (84, 88), (88, 95), (64, 80), (0, 64)]),
]
EXPECTED_CONSISTENCY_RANGES = [
    (1, 2, [(1, 2)]),
    (1, 4, [(1, 2), (2, 4)]),
    (1, 6, [(1, 2), (2, 4), (4, 6)]),
    (2, 3, [(2, 3)]),
    (2, 8, [(2, 4), (4, 8)]),
    (3, 7, [(2, 3), (3, 4), (0, 2), (4, 7)]),
    (4, 7, [(4, 7)]),
    (5, 7, [(4, 5), (5, 6), (6, 7), (0, 4)]),
    (6, 7, [(4, 6), (6, 7), (0, 4)]),
    (7, 8, [(6, 7), (7, 8), (4, 6), (0, 4)]),
    (2, 4, [(2, 4)]),
    (3, 5, [(2, 3), (3, 4), (0, 2), (4, 5)]),
    (4, 6, [(4, 6)]),
    (1, 7, [(1, 2), (2, 4), (4, 7)]),
    (10, 15, [(8, 10), (10, 12), (12, 15), (0, 8)]),
    (24, 31, [(16, 24), (24, 31), (0, 16)]),
    (81, 95, [(80, 81), (81, 82), (82, 84), (84, 88), (88, 95), (64, 80), (0, 64)]),
]

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
MAX_EXHAUSTIVE = 64


# --- an independent oracle: RFC 9162 section 2.1 written as the recursive definitions -------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def oracle_mth(data: Sequence[bytes]) -> bytes:
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = _k(len(data))
    return hashlib.sha256(b"\x01" + oracle_mth(data[:k]) + oracle_mth(data[k:])).digest()


def oracle_path(m: int, data: Sequence[bytes]) -> list[bytes]:
    if len(data) == 1:
        return []
    k = _k(len(data))
    if m < k:
        return [*oracle_path(m, data[:k]), oracle_mth(data[k:])]
    return [*oracle_path(m - k, data[k:]), oracle_mth(data[:k])]


def oracle_subproof(m: int, data: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(data)
    if m == n:
        return [] if b else [oracle_mth(data)]
    k = _k(n)
    if m <= k:
        return [*oracle_subproof(m, data[:k], b), oracle_mth(data[k:])]
    return [*oracle_subproof(m - k, data[k:], False), oracle_mth(data[:k])]


@pytest.fixture(scope="module")
def data64() -> list[bytes]:
    return [f"leaf {index}".encode() for index in range(MAX_EXHAUSTIVE)]


@pytest.fixture(scope="module")
def tree64(data64: list[bytes]) -> MemoryTree:
    return MemoryTree([leaf_hash(value) for value in data64])


@pytest.fixture(scope="module")
def roots64(data64: list[bytes]) -> list[bytes]:
    return [oracle_mth(data64[:size]) for size in range(MAX_EXHAUSTIVE + 1)]


def _ct_tree() -> MemoryTree:
    return MemoryTree([leaf_hash(value) for value in CT_LEAVES])


def _recording(tree: MemoryTree) -> tuple[Callable[[int, int], bytes], list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []

    def source(start: int, end: int) -> bytes:
        calls.append((start, end))
        return tree.range_hash(start, end)

    return source, calls


# --- published vectors ---------------------------------------------------------------------------


def test_hashing_primitives() -> None:
    assert leaf_hash(b"") == CT_ROOTS[1]
    assert node_hash(CT_NODES[0][0], CT_NODES[0][1]) == CT_NODES[1][0]
    assert EMPTY_ROOT == CT_ROOTS[0] == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_ct_roots(size: int) -> None:
    hashes = [leaf_hash(value) for value in CT_LEAVES[:size]]
    assert root_from_leaves(hashes) == CT_ROOTS[size]
    assert _ct_tree().root(size) == CT_ROOTS[size]
    assert MemoryTree(hashes).root() == CT_ROOTS[size]


def test_ct_complete_subtrees() -> None:
    tree = _ct_tree()
    for level, hashes in enumerate(CT_NODES):
        for index, expected in enumerate(hashes):
            assert tree.subtree_hash(level, index) == expected, (level, index)
            assert tree.range_hash(index << level, (index + 1) << level) == expected


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_inclusion_vectors(index: int, size: int, path: list[str]) -> None:
    tree = _ct_tree()
    expected = [bytes.fromhex(value) for value in path]
    assert tree.inclusion_proof(index, size) == expected
    assert verify_inclusion(leaf_hash(CT_LEAVES[index]), index, size, expected, CT_ROOTS[size])
    assert root_from_inclusion_proof(leaf_hash(CT_LEAVES[index]), index, size, expected) == CT_ROOTS[size]
    for probe in _inclusion_probes(leaf_hash(CT_LEAVES[index]), index, size, expected, CT_ROOTS[size]):
        assert not verify_inclusion(*probe.args), probe.desc


@pytest.mark.parametrize(("first", "second", "path"), CT_CONSISTENCY)
def test_ct_consistency_vectors(first: int, second: int, path: list[str]) -> None:
    tree = _ct_tree()
    expected = [bytes.fromhex(value) for value in path]
    assert tree.consistency_proof(first, second) == expected
    assert verify_consistency(first, second, CT_ROOTS[first], CT_ROOTS[second], expected)
    if expected:
        for probe in _consistency_probes(first, second, CT_ROOTS[first], CT_ROOTS[second], expected):
            assert not verify_consistency(*probe.args), probe.desc


@pytest.mark.parametrize(("index", "size", "ranges"), EXPECTED_INCLUSION_RANGES)
def test_inclusion_proof_asks_for_the_reference_nodes(
    index: int, size: int, ranges: list[tuple[int, int]]
) -> None:
    tree = MemoryTree([leaf_hash(bytes([value])) for value in range(size)])
    source, calls = _recording(tree)
    inclusion_proof(index, size, source)
    assert sorted(calls) == sorted(ranges)
    assert inclusion_proof(index, size, source) == [tree.range_hash(*span) for span in ranges]


@pytest.mark.parametrize(("first", "second", "ranges"), EXPECTED_CONSISTENCY_RANGES)
def test_consistency_proof_asks_for_the_reference_nodes(
    first: int, second: int, ranges: list[tuple[int, int]]
) -> None:
    tree = MemoryTree([leaf_hash(bytes([value])) for value in range(second)])
    source, calls = _recording(tree)
    proof = consistency_proof(first, second, source)
    assert calls[::-1] == ranges
    assert proof == [tree.range_hash(*span) for span in ranges]


# --- exhaustive properties against the oracle ----------------------------------------------------


def test_roots_match_the_oracle_for_every_size(data64: list[bytes], tree64: MemoryTree,
                                               roots64: list[bytes]) -> None:
    for size in range(MAX_EXHAUSTIVE + 1):
        hashes = [leaf_hash(value) for value in data64[:size]]
        assert root_from_leaves(hashes) == roots64[size]
        assert tree64.root(size) == roots64[size]


def test_every_inclusion_proof_up_to_64(
    data64: list[bytes], tree64: MemoryTree, roots64: list[bytes]
) -> None:
    for size in range(1, MAX_EXHAUSTIVE + 1):
        for index in range(size):
            proof = tree64.inclusion_proof(index, size)
            assert proof == oracle_path(index, data64[:size]), (index, size)
            assert len(proof) == inclusion_proof_length(index, size)
            assert verify_inclusion(leaf_hash(data64[index]), index, size, proof, roots64[size])


def test_every_consistency_proof_up_to_64(
    tree64: MemoryTree, data64: list[bytes], roots64: list[bytes]
) -> None:
    for second in range(MAX_EXHAUSTIVE + 1):
        for first in range(second + 1):
            proof = tree64.consistency_proof(first, second)
            expected = [] if first in (0, second) else oracle_subproof(first, data64[:second], True)
            assert proof == expected, (first, second)
            assert len(proof) == consistency_proof_length(first, second)
            assert verify_consistency(first, second, roots64[first], roots64[second], proof), (first, second)


class Probe:
    def __init__(self, desc: str, *args: Any) -> None:
        self.desc = desc
        self.args = args


def _flip(value: bytes, mask: int) -> bytes:
    return bytes([value[0] ^ mask]) + value[1:]


def _inclusion_probes(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> list[Probe]:
    probes = [
        Probe("index - 1", leaf, index - 1, size, proof, root),
        Probe("index + 1", leaf, index + 1, size, proof, root),
        Probe("index ^ 2", leaf, index ^ 2, size, proof, root),
        Probe("size * 2", leaf, index, size * 2, proof, root),
        Probe("size // 2", leaf, index, size // 2, proof, root),
        Probe("wrong leaf", leaf_hash(b"WrongLeaf"), index, size, proof, root),
        Probe("empty root", leaf, index, size, proof, EMPTY_ROOT),
        Probe("random root", leaf, index, size, proof, SOME_HASH),
        Probe("trailing garbage", leaf, index, size, [*proof, b""], root),
        Probe("trailing root", leaf, index, size, [*proof, root], root),
        Probe("preceding garbage", leaf, index, size, [b"", *proof], root),
        Probe("preceding root", leaf, index, size, [root, *proof], root),
    ]
    if proof:
        probes.append(Probe("leaf as root", leaf, index, size, proof, leaf))
    for position in range(len(proof)):
        wrong = list(proof)
        wrong[position] = _flip(wrong[position], 8)
        probes.append(Probe(f"proof[{position}] bit 3 flipped", leaf, index, size, wrong, root))
    if proof:
        probes.append(Probe("removed last", leaf, index, size, proof[:-1], root))
        probes.append(Probe("removed first", leaf, index, size, proof[1:], root))
    if len(proof) > 1:
        probes.append(Probe("inserted", leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root))
        probes.append(Probe("swapped", leaf, index, size, [proof[1], proof[0], *proof[2:]], root))
    return probes


def _consistency_probes(
    first: int, second: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> list[Probe]:
    probes = [
        Probe("first - 1", first - 1, second, root1, root2, proof),
        Probe("first + 1", first + 1, second, root1, root2, proof),
        Probe("first ^ 2", first ^ 2, second, root1, root2, proof),
        Probe("second * 2", first, second * 2, root1, root2, proof),
        Probe("second // 2", first, second // 2, root1, root2, proof),
        Probe("wrong root1", first, second, SOME_HASH, root2, proof),
        Probe("wrong root2", first, second, root1, SOME_HASH, proof),
        Probe("swapped roots", first, second, root2, root1, proof),
        Probe("empty proof", first, second, root1, root2, []),
        Probe("trailing garbage", first, second, root1, root2, [*proof, b""]),
        Probe("trailing root1", first, second, root1, root2, [*proof, root1]),
        Probe("trailing root2", first, second, root1, root2, [*proof, root2]),
        Probe("preceding garbage", first, second, root1, root2, [b"", *proof]),
        Probe("preceding root1", first, second, root1, root2, [root1, *proof]),
        Probe("preceding root2", first, second, root1, root2, [root2, *proof]),
        Probe("preceding proof[0]", first, second, root1, root2, [proof[0], *proof]),
        Probe("truncated", first, second, root1, root2, proof[:-1]),
    ]
    for position in range(len(proof)):
        wrong = list(proof)
        wrong[position] = _flip(wrong[position], 16)
        probes.append(Probe(f"proof[{position}] bit 4 flipped", first, second, root1, root2, wrong))
    if len(proof) > 1:
        probes.append(Probe("swapped", first, second, root1, root2, [proof[1], proof[0], *proof[2:]]))
    return probes


def test_tampered_inclusion_proofs_fail_for_every_position_up_to_64(
    data64: list[bytes], tree64: MemoryTree, roots64: list[bytes]
) -> None:
    for size in range(1, MAX_EXHAUSTIVE + 1):
        for index in range(size):
            leaf = leaf_hash(data64[index])
            proof = tree64.inclusion_proof(index, size)
            for probe in _inclusion_probes(leaf, index, size, proof, roots64[size]):
                assert not verify_inclusion(*probe.args), (index, size, probe.desc)
            # The proof of one leaf never proves another leaf at the same place.
            other = leaf_hash(data64[(index + 1) % MAX_EXHAUSTIVE])
            assert not verify_inclusion(other, index, size, proof, roots64[size])


def test_tampered_consistency_proofs_fail_for_every_pair_up_to_64(
    tree64: MemoryTree, roots64: list[bytes]
) -> None:
    for second in range(2, MAX_EXHAUSTIVE + 1):
        for first in range(1, second):
            proof = tree64.consistency_proof(first, second)
            for probe in _consistency_probes(first, second, roots64[first], roots64[second], proof):
                assert not verify_consistency(*probe.args), (first, second, probe.desc)
            # A tree that was rewritten (leaf 0 replaced) is never consistent with the old root.
            assert not verify_consistency(first, second, leaf_hash(b"other"), roots64[second], proof)


def test_consistency_edge_cases(roots64: list[bytes]) -> None:
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 5, EMPTY_ROOT, roots64[5], [])
    assert not verify_consistency(0, 0, EMPTY_ROOT, SOME_HASH, [])
    assert not verify_consistency(0, 5, SOME_HASH, roots64[5], [])  # size 0 has one root
    assert not verify_consistency(0, 5, EMPTY_ROOT, roots64[5], [EMPTY_ROOT])
    assert verify_consistency(5, 5, roots64[5], roots64[5], [])
    assert not verify_consistency(5, 5, roots64[5], roots64[4], [])
    assert not verify_consistency(5, 5, roots64[5], roots64[5], [roots64[5]])  # same size: empty proof only
    assert not verify_consistency(5, 4, roots64[5], roots64[4], [])
    assert not verify_consistency(1, 2, roots64[1], roots64[2], [])


def test_single_leaf_tree() -> None:
    leaf = leaf_hash(b"data")
    assert verify_inclusion(leaf, 0, 1, [], leaf)
    assert not verify_inclusion(leaf, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], leaf)
    assert not verify_inclusion(leaf, 0, 1, [], EMPTY_ROOT)
    for index, size in ((0, 0), (1, 0), (1, 1), (2, 1)):
        assert not verify_inclusion(leaf, index, size, [], leaf)
        assert not verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)


# --- malformed (attacker) input is refused, never raised on ---------------------------------------

GOOD = _ct_tree()
GOOD_PROOF = GOOD.inclusion_proof(5, 8)
GOOD_LEAF = leaf_hash(CT_LEAVES[5])
GOOD_CONSISTENCY = GOOD.consistency_proof(6, 8)

MALFORMED_INCLUSION: list[tuple[str, tuple[Any, ...]]] = [
    ("index == size", (GOOD_LEAF, 8, 8, GOOD_PROOF, CT_ROOTS[8])),
    ("index > size", (GOOD_LEAF, 9, 8, GOOD_PROOF, CT_ROOTS[8])),
    ("negative index", (GOOD_LEAF, -3, 8, GOOD_PROOF, CT_ROOTS[8])),
    ("negative size", (GOOD_LEAF, 5, -8, GOOD_PROOF, CT_ROOTS[8])),
    ("bool index", (GOOD_LEAF, True, 8, GOOD_PROOF, CT_ROOTS[8])),
    ("bool size", (leaf_hash(CT_LEAVES[0]), 0, True, [], CT_ROOTS[1])),
    ("float index", (GOOD_LEAF, 5.0, 8, GOOD_PROOF, CT_ROOTS[8])),
    ("str size", (GOOD_LEAF, 5, "8", GOOD_PROOF, CT_ROOTS[8])),
    ("None size", (GOOD_LEAF, 5, None, GOOD_PROOF, CT_ROOTS[8])),
    ("huge size", (GOOD_LEAF, 5, 2**200, GOOD_PROOF, CT_ROOTS[8])),
    ("size beyond uint64", (GOOD_LEAF, 2**64 - 1, 2**64, [SOME_HASH] * 64, CT_ROOTS[8])),
    ("proof None", (GOOD_LEAF, 5, 8, None, CT_ROOTS[8])),
    ("proof bytes", (GOOD_LEAF, 5, 8, b"".join(GOOD_PROOF), CT_ROOTS[8])),
    ("proof dict", (GOOD_LEAF, 5, 8, {0: GOOD_PROOF[0]}, CT_ROOTS[8])),
    ("proof of hex strings", (GOOD_LEAF, 5, 8, [value.hex() for value in GOOD_PROOF], CT_ROOTS[8])),
    ("31-byte node", (GOOD_LEAF, 5, 8, [GOOD_PROOF[0][:31], *GOOD_PROOF[1:]], CT_ROOTS[8])),
    ("33-byte node", (GOOD_LEAF, 5, 8, [GOOD_PROOF[0] + b"\0", *GOOD_PROOF[1:]], CT_ROOTS[8])),
    ("bytearray node", (GOOD_LEAF, 5, 8, [bytearray(GOOD_PROOF[0]), *GOOD_PROOF[1:]], CT_ROOTS[8])),
    ("None node", (GOOD_LEAF, 5, 8, [None, *GOOD_PROOF[1:]], CT_ROOTS[8])),
    ("too long", (GOOD_LEAF, 5, 8, [*GOOD_PROOF, SOME_HASH], CT_ROOTS[8])),
    ("very long", (GOOD_LEAF, 5, 8, [SOME_HASH] * 10_000, CT_ROOTS[8])),
    ("short leaf", (GOOD_LEAF[:16], 5, 8, GOOD_PROOF, CT_ROOTS[8])),
    ("str leaf", (GOOD_LEAF.hex(), 5, 8, GOOD_PROOF, CT_ROOTS[8])),
    ("str root", (GOOD_LEAF, 5, 8, GOOD_PROOF, CT_ROOTS[8].hex())),
    ("None root", (GOOD_LEAF, 5, 8, GOOD_PROOF, None)),
    ("long root", (GOOD_LEAF, 5, 8, GOOD_PROOF, CT_ROOTS[8] + b"\0")),
]


def test_the_good_inclusion_proof_verifies() -> None:
    assert verify_inclusion(GOOD_LEAF, 5, 8, GOOD_PROOF, CT_ROOTS[8])
    assert verify_inclusion(GOOD_LEAF, 5, 8, tuple(GOOD_PROOF), CT_ROOTS[8])


@pytest.mark.parametrize(("desc", "args"), MALFORMED_INCLUSION, ids=[desc for desc, _ in MALFORMED_INCLUSION])
def test_malformed_inclusion_input_returns_false(desc: str, args: tuple[Any, ...]) -> None:
    assert verify_inclusion(*args) is False
    assert root_from_inclusion_proof(*args[:4]) is None or desc.endswith("root")


MALFORMED_CONSISTENCY: list[tuple[str, tuple[Any, ...]]] = [
    ("first > second", (8, 6, CT_ROOTS[8], CT_ROOTS[6], GOOD_CONSISTENCY)),
    ("negative first", (-6, 8, CT_ROOTS[6], CT_ROOTS[8], GOOD_CONSISTENCY)),
    ("bool first", (True, 8, CT_ROOTS[1], CT_ROOTS[8], GOOD.consistency_proof(1, 8))),
    ("float second", (6, 8.0, CT_ROOTS[6], CT_ROOTS[8], GOOD_CONSISTENCY)),
    ("str second", (6, "8", CT_ROOTS[6], CT_ROOTS[8], GOOD_CONSISTENCY)),
    ("huge second", (6, 2**70, CT_ROOTS[6], CT_ROOTS[8], GOOD_CONSISTENCY)),
    ("proof None", (6, 8, CT_ROOTS[6], CT_ROOTS[8], None)),
    ("proof str", (6, 8, CT_ROOTS[6], CT_ROOTS[8], "proof")),
    ("hex nodes", (6, 8, CT_ROOTS[6], CT_ROOTS[8], [value.hex() for value in GOOD_CONSISTENCY])),
    ("short node", (6, 8, CT_ROOTS[6], CT_ROOTS[8], [GOOD_CONSISTENCY[0][:31], *GOOD_CONSISTENCY[1:]])),
    ("very long", (6, 8, CT_ROOTS[6], CT_ROOTS[8], [SOME_HASH] * 10_000)),
    ("short root1", (6, 8, CT_ROOTS[6][:31], CT_ROOTS[8], GOOD_CONSISTENCY)),
    ("str root2", (6, 8, CT_ROOTS[6], CT_ROOTS[8].hex(), GOOD_CONSISTENCY)),
    ("None roots", (6, 8, None, None, GOOD_CONSISTENCY)),
    ("same size, str proof", (8, 8, CT_ROOTS[8], CT_ROOTS[8], "")),
    ("empty tree, None proof", (0, 8, EMPTY_ROOT, CT_ROOTS[8], None)),
]


def test_the_good_consistency_proof_verifies() -> None:
    assert verify_consistency(6, 8, CT_ROOTS[6], CT_ROOTS[8], GOOD_CONSISTENCY)


@pytest.mark.parametrize(("desc", "args"), MALFORMED_CONSISTENCY,
                         ids=[desc for desc, _ in MALFORMED_CONSISTENCY])
def test_malformed_consistency_input_returns_false(desc: str, args: tuple[Any, ...]) -> None:
    assert verify_consistency(*args) is False


# --- generation side ------------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (8, 7), (-1, 5)])
def test_inclusion_proof_refuses_positions_outside_the_tree(index: int, size: int) -> None:
    with pytest.raises(MerkleError, match="leaf index"):
        inclusion_proof(index, size, GOOD.range_hash)
    with pytest.raises(MerkleError):
        inclusion_proof_length(index, size)


@pytest.mark.parametrize(("first", "second"), [(5, 0), (9, 8), (-1, 3)])
def test_consistency_proof_refuses_shrinking_trees(first: int, second: int) -> None:
    with pytest.raises(MerkleError, match="first <= second"):
        consistency_proof(first, second, GOOD.range_hash)
    with pytest.raises(MerkleError):
        consistency_proof_length(first, second)


def test_memory_tree_refuses_sizes_beyond_its_leaves() -> None:
    tree = _ct_tree()
    with pytest.raises(MerkleError):
        tree.root(9)
    with pytest.raises(MerkleError):
        tree.inclusion_proof(0, 9)
    with pytest.raises(MerkleError):
        tree.consistency_proof(1, 9)
    with pytest.raises(MerkleError):
        tree.subtree_hash(3, 1)
    with pytest.raises(MerkleError):
        tree.append(b"short")
    with pytest.raises(MerkleError):
        range_hash_from_subtrees(3, 3, tree.subtree_hash)


def test_memory_tree_defaults_to_its_full_size() -> None:
    tree = _ct_tree()
    assert tree.size == 8
    assert tree.root() == CT_ROOTS[8]
    assert tree.inclusion_proof(5) == GOOD_PROOF
    assert tree.consistency_proof(6) == GOOD_CONSISTENCY
    assert MemoryTree().root() == EMPTY_ROOT


def test_proofs_need_only_logarithmic_subtree_reads() -> None:
    size = 1000
    tree = MemoryTree([leaf_hash(index.to_bytes(4, "big")) for index in range(size)])
    reads: list[tuple[int, int]] = []

    def counting(level: int, index: int) -> bytes:
        reads.append((level, index))
        return tree.subtree_hash(level, index)

    def source(start: int, end: int) -> bytes:
        return range_hash_from_subtrees(start, end, counting)

    bound = 2 * size.bit_length() + 2
    for index in (0, 1, 499, 511, 512, 997, 999):
        reads.clear()
        assert inclusion_proof(index, size, source) == tree.inclusion_proof(index, size)
        assert len(reads) <= bound, (index, len(reads))
    for first in (1, 7, 512, 513, 998, 999):
        reads.clear()
        assert consistency_proof(first, size, source) == tree.consistency_proof(first, size)
        assert len(reads) <= bound, (first, len(reads))
    reads.clear()
    assert source(0, size) == tree.root()
    assert len(reads) == bin(size).count("1")


def test_range_hash_of_an_unaligned_range_is_still_its_mth() -> None:
    data = [bytes([value]) for value in range(20)]
    tree = MemoryTree([leaf_hash(value) for value in data])
    for start in range(20):
        for end in range(start + 1, 21):
            assert tree.range_hash(start, end) == oracle_mth(data[start:end]), (start, end)


def test_length_formulas_match_generation_beyond_the_exhaustive_range() -> None:
    size = 300
    tree = MemoryTree([leaf_hash(index.to_bytes(2, "big")) for index in range(size)])
    for second in (65, 127, 128, 129, 255, 256, 257, 300):
        for first in range(0, second + 1, 7):
            assert len(tree.consistency_proof(first, second)) == consistency_proof_length(first, second)
        for index in range(0, second, 5):
            assert len(tree.inclusion_proof(index, second)) == inclusion_proof_length(index, second)
    assert MAX_TREE_SIZE == 2**64 - 1
