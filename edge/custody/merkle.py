"""RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing and proofs, as pure functions.

The tree over leaves ``D[0:n]`` is the one of RFC 9162 section 2.1.1 (unchanged from RFC 6962):
``MTH({}) = SHA-256()``, ``MTH({d}) = SHA-256(0x00 || d)`` and
``MTH(D[0:n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`` with ``k`` the largest power of two below
``n``. The 0x00/0x01 prefixes keep a leaf from ever being taken for an inner node (second preimages), and
the split never duplicates an unpaired node (the flaw of CVE-2012-2459).

Proof generation does not need the leaves: it asks a :data:`RangeHash` for ``MTH(D[start:end])`` of the
ranges the proof consists of. Those ranges always start at a multiple of a power of two at least as large
as the range, so a store that keeps the hash of every complete aligned subtree (like
:class:`edge.central.log.MerkleLog`) answers each with O(log n) lookups through
:func:`range_hash_from_subtrees`. :class:`MemoryTree` is the same thing in memory.

Verification (:func:`verify_inclusion`, :func:`verify_consistency`) follows the algorithms of RFC 9162
sections 2.1.3.2 and 2.1.4.2 step by step. It takes data from the network, so it returns False for any
malformed input (wrong types, wrong proof length, impossible sizes, hashes that are not 32 bytes) and
never raises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from edge.custody.errors import CustodyError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "MemoryTree",
    "MerkleError",
    "RangeHash",
    "SubtreeHash",
    "consistency_proof",
    "consistency_proof_length",
    "inclusion_proof",
    "inclusion_proof_length",
    "leaf_hash",
    "node_hash",
    "range_hash_from_subtrees",
    "root_from_inclusion_proof",
    "root_from_leaves",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
# Tree sizes and indices are uint64 in RFC 9162; anything larger is malformed input, not a big tree.
MAX_TREE_SIZE = 2**64 - 1

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

RangeHash = Callable[[int, int], bytes]
"""``range_hash(start, end)`` returns ``MTH(D[start:end])`` for ``0 <= start < end <= size``."""

SubtreeHash = Callable[[int, int], bytes]
"""``subtree_hash(level, index)`` returns the hash of the complete subtree of ``2**level`` leaves that
starts at leaf ``index * 2**level`` (level 0: the leaf hashes)."""


class MerkleError(CustodyError, ValueError):
    """A proof or root was requested for sizes or indices that do not exist in the tree."""


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an inner node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of a sequence of leaf hashes (the empty tree hashes to ``SHA-256()``).

    Folds complete subtrees on a stack, so it runs in O(n) time and O(log n) memory.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    # stack of (subtree size, hash); sizes strictly decrease from bottom to top.
    stack: list[tuple[int, bytes]] = []
    for value in leaf_hashes:
        size, current = 1, value
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, current = left_size + size, node_hash(left, current)
        stack.append((size, current))
    return _fold_right(stack)


def _fold_right(stack: Sequence[tuple[int, bytes]]) -> bytes:
    """Combine complete subtrees of decreasing size (left to right) into one MTH."""
    current = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        current = node_hash(left, current)
    return current


def range_hash_from_subtrees(start: int, end: int, subtree_hash: SubtreeHash) -> bytes:
    """``MTH(D[start:end])`` computed from complete aligned subtree hashes.

    For the ranges proofs ask for (``start`` aligned to a power of two at least ``end - start``) this
    makes at most ``log2(end - start) + 1`` calls to ``subtree_hash``; other ranges are still answered
    correctly, with more calls. Raises :class:`MerkleError` for an empty or negative range.
    """
    if not 0 <= start < end:
        raise MerkleError(f"expected a range 0 <= start < end, found [{start}, {end})")
    size = end - start
    if size & (size - 1) == 0 and start % size == 0:
        return subtree_hash(size.bit_length() - 1, start // size)
    split = start + _largest_power_of_two_below(size)
    return node_hash(
        range_hash_from_subtrees(start, split, subtree_hash),
        range_hash_from_subtrees(split, end, subtree_hash),
    )


def inclusion_proof(index: int, size: int, range_hash: RangeHash) -> list[bytes]:
    """The audit path ``PATH(index, D[0:size])`` of RFC 9162 section 2.1.3.1, leaf end first.

    Raises :class:`MerkleError` unless ``0 <= index < size``.
    """
    if not 0 <= index < size:
        raise MerkleError(f"expected a leaf index 0 <= index < tree size {size}, found {index}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        split = start + _largest_power_of_two_below(end - start)
        if index < split:
            path.append(range_hash(split, end))
            end = split
        else:
            path.append(range_hash(start, split))
            start = split
    path.reverse()
    return path


def consistency_proof(first: int, second: int, range_hash: RangeHash) -> list[bytes]:
    """``PROOF(first, D[0:second])`` of RFC 9162 section 2.1.4.1, leaf end first.

    Empty when ``first`` is 0 or equals ``second`` (nothing to prove). Raises :class:`MerkleError`
    unless ``0 <= first <= second``.
    """
    if not 0 <= first <= second:
        raise MerkleError(f"expected tree sizes 0 <= first <= second, found first {first}, second {second}")
    if first in (0, second):
        return []
    proof: list[bytes] = []
    start, end = 0, second
    # SUBPROOF's flag b: true while the old tree's root is itself a node of the current subtree's
    # left edge, in which case the verifier already knows it and it is left out.
    old_root_known = True
    while True:
        if first - start == end - start:
            if not old_root_known:
                proof.append(range_hash(start, end))
            break
        split = start + _largest_power_of_two_below(end - start)
        if first <= split:
            proof.append(range_hash(split, end))
            end = split
        else:
            proof.append(range_hash(start, split))
            start = split
            old_root_known = False
    proof.reverse()
    return proof


def inclusion_proof_length(index: int, size: int) -> int:
    """The number of hashes in the audit path of leaf ``index`` in a tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise MerkleError(f"expected a leaf index 0 <= index < tree size {size}, found {index}")
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def consistency_proof_length(first: int, second: int) -> int:
    """The number of hashes in the consistency proof between trees of ``first`` and ``second`` leaves."""
    if not 0 <= first <= second:
        raise MerkleError(f"expected tree sizes 0 <= first <= second, found first {first}, second {second}")
    if first in (0, second):
        return 0
    # Below the lowest set bit of first, the old tree's right edge is one complete subtree: seen from
    # that level, the proof is the audit path of the old tree's last node, plus that node itself
    # unless it is the whole old tree (first a power of two), which the verifier already holds.
    shift = (first & -first).bit_length() - 1
    index, size = (first - 1) >> shift, ((second - 1) >> shift) + 1
    inner = (index ^ (size - 1)).bit_length()
    return (0 if first == 1 << shift else 1) + inner + (index >> inner).bit_count()


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TREE_SIZE


def _proof_hashes(proof: object, expected_length: int) -> list[bytes] | None:
    if not isinstance(proof, list | tuple) or len(proof) != expected_length:
        return None
    if not all(_is_hash(element) for element in proof):
        return None
    return list(proof)


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root an inclusion proof implies for ``leaf`` at ``index`` (RFC 9162 2.1.3.2 steps 1-4).

    None when the input is malformed (the proof cannot belong to a tree of ``size`` leaves).
    """
    if not (_is_hash(leaf) and _is_size(index) and _is_size(size) and index < size):
        return None
    hashes = _proof_hashes(proof, inclusion_proof_length(index, size))
    if hashes is None:
        return None
    fn, sn = index, size - 1
    r = leaf
    for p in hashes:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True when ``proof`` shows the leaf with hash ``leaf`` at ``index`` of the tree ``(size, root)``.

    RFC 9162 section 2.1.3.2. False (never an exception) for any malformed argument.
    """
    if not _is_hash(root):
        return False
    computed = root_from_inclusion_proof(leaf, index, size, proof)
    return computed is not None and computed == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True when ``proof`` shows the tree ``(first, first_root)`` is a prefix of ``(second, second_root)``.

    RFC 9162 section 2.1.4.2, plus the cases it leaves to the caller: equal sizes need an empty proof
    and equal roots; an empty first tree needs an empty proof and the empty-tree root. False (never an
    exception) for any malformed argument.
    """
    if not (_is_size(first) and _is_size(second) and first <= second):
        return False
    if not (_is_hash(first_root) and _is_hash(second_root)):
        return False
    if first == 0:
        return first_root == EMPTY_ROOT and _proof_hashes(proof, 0) is not None and (
            second > 0 or second_root == EMPTY_ROOT
        )
    if first == second:
        return first_root == second_root and _proof_hashes(proof, 0) is not None
    hashes = _proof_hashes(proof, consistency_proof_length(first, second))
    if not hashes:  # step 1: an empty path never proves anything here
        return False
    if first & (first - 1) == 0:  # step 2
        hashes.insert(0, first_root)
    fn, sn = first - 1, second - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = hashes[0]  # step 5
    for c in hashes[1:]:  # step 6
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root  # step 7


class MemoryTree:
    """An append-only Merkle tree in memory that keeps every complete subtree hash.

    The reference for tests and small tools; :class:`edge.central.log.MerkleLog` stores the same
    hashes in SQLite.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        # _levels[k][i] = hash of the complete subtree of 2**k leaves starting at leaf i * 2**k
        self._levels: list[list[bytes]] = [[]]
        for value in leaf_hashes:
            self.append(value)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; returns its index. Amortised O(1)."""
        if not _is_hash(leaf):
            raise MerkleError(f"expected a {HASH_SIZE}-byte leaf hash, found {type(leaf).__name__} "
                              f"of length {len(leaf) if isinstance(leaf, bytes) else '-'}")
        index = len(self._levels[0])
        self._levels[0].append(leaf)
        level, position, current = 0, index, leaf
        while position & 1:
            current = node_hash(self._levels[level][position - 1], current)
            level, position = level + 1, position >> 1
            if len(self._levels) == level:
                self._levels.append([])
            self._levels[level].append(current)
        return index

    def subtree_hash(self, level: int, index: int) -> bytes:
        try:
            return self._levels[level][index]
        except IndexError:
            raise MerkleError(f"no complete subtree at level {level} index {index} in a tree of "
                              f"{self.size} leaves") from None

    def range_hash(self, start: int, end: int) -> bytes:
        if end > self.size:
            raise MerkleError(f"expected a range within the {self.size} leaves, found [{start}, {end})")
        return range_hash_from_subtrees(start, end, self.subtree_hash)

    def root(self, size: int | None = None) -> bytes:
        """``MTH`` of the first ``size`` leaves (all leaves by default)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise MerkleError(f"expected a tree size 0..{self.size}, found {size}")
        return EMPTY_ROOT if size == 0 else self.range_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        if size > self.size:
            raise MerkleError(f"expected a tree size 0..{self.size}, found {size}")
        return inclusion_proof(index, size, self.range_hash)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        second = self.size if second is None else second
        if second > self.size:
            raise MerkleError(f"expected a tree size 0..{self.size}, found {second}")
        return consistency_proof(first, second, self.range_hash)
