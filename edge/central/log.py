"""The central's append-only Merkle log of accepted items, with signed tree heads.

The log's algorithms live here; its rows live in a :class:`edge.central.storage.LogStore` (SQLite today:
:mod:`edge.central.sqlite.log`):

* the leaves: index, the leaf entry as canonical JSON, and its RFC 9162 leaf hash;
* the nodes: the hash of every complete subtree of ``2**level`` leaves (level >= 1), written as soon as
  its last leaf arrives. Any range a proof needs is a handful of these, so roots and proofs cost
  O(log n) point reads and an append writes amortised one node;
* the tree heads: every tree head the central signed, in signing order;
* the time-stamps: RFC 3161 tokens over checkpoints, when a TSA is configured
  (:mod:`edge.central.timestamp`).

The log never commits: the caller wraps the acceptance of an item (index rows, leaf, tree head) in one
transaction of the unit of work the log store shares with the index, so a crash leaves all of it or
none. The store refuses updates, deletes and writes that do not extend the log, which stops our own
code from rewriting history by accident; against someone with write access to the database, the signed
tree heads (held by stations in their receipts) and :meth:`MerkleLog.verify` are the defence.

A log must never sign a head inconsistent with one it signed before (C2SP tlog-checkpoint): before
signing, :meth:`MerkleLog.tree_head` proves the new tree consistent with the previous signed head from
the stored nodes, and refuses when the storage under the old head changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.storage import LogStore, LogStoreConflict, UnitOfWork
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError, CustodyError
from edge.custody.keys import StationKey
from edge.custody.ledger import station_time_now
from edge.custody.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_hash_from_subtrees,
    verify_consistency,
)
from edge.custody.problems import Problem
from edge.custody.receipt import (
    TREE_HEAD_FIELDS,
    ReceiptError,
    TreeHead,
    leaf_data,
    leaf_entry_problems,
    sign_tree_head,
    tree_head_problems,
    verify_tree_head,
)

__all__ = ["MerkleLog", "MerkleLogError"]

log = logging.getLogger(__name__)

_ZERO_HASH = bytes(HASH_SIZE)
# A badly damaged table would otherwise yield one problem per row; past this many of one kind, count.
_MAX_LISTED = 20


class MerkleLogError(CustodyError):
    """The log cannot do what was asked: a damaged row, an invalid leaf, or an unsafe tree head."""


def _leaves_label(level: int, index: int) -> str:
    first = index << level
    return f"leaves {first}-{first + (1 << level) - 1}"


def _node_where(level: int, index: int) -> str:
    return f"merkle node level {level} index {index} ({_leaves_label(level, index)})"


class MerkleLog:
    """Appends to, proves from and signs heads of the Merkle log kept in a :class:`LogStore`.

    Never commits. State is read from the store on every call (no cache), so a rolled-back
    transaction cannot leave a stale size or node behind. Arguments outside the log (an index or size
    beyond it) raise :class:`edge.custody.merkle.MerkleError` (a ``ValueError``); damaged rows and
    refused operations raise :class:`MerkleLogError`.
    """

    def __init__(
        self,
        store: LogStore,
        key: StationKey,
        origin: str,
        *,
        clock: Callable[[], str] = station_time_now,
    ) -> None:
        if not isinstance(origin, str) or not origin:
            raise MerkleLogError(f"expected a non-empty log origin (the central id), found {origin!r}")
        self.store = store
        self._key = key
        self.origin = origin
        self._clock = clock

    @property
    def unit(self) -> UnitOfWork:
        """The unit of work the log writes in (the index of the same database shares it)."""
        return self.store.unit

    def __repr__(self) -> str:
        return f"MerkleLog(origin={self.origin!r}, key_id={self._key.key_id!r})"

    # --- reading ---------------------------------------------------------------------------------

    def size(self) -> int:
        """The number of leaves."""
        last = self.store.last_leaf_index()
        if last is None:
            return 0
        if not isinstance(last, int) or isinstance(last, bool) or last < 0:
            raise MerkleLogError(f"merkle_leaves has a damaged index {last!r}")
        return last + 1

    def _subtree_hash(self, level: int, index: int) -> bytes:
        if level == 0:
            value = self.store.leaf_hash(index)
            where = f"merkle leaf {index}"
        else:
            value = self.store.node_hash(level, index)
            where = _node_where(level, index)
        if value is None:
            raise MerkleLogError(f"{where} is missing from the log; run verify()")
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise MerkleLogError(f"{where} has a damaged hash (expected {HASH_SIZE} bytes); run verify()")
        return value

    def _range_hash(self, start: int, end: int) -> bytes:
        return range_hash_from_subtrees(start, end, self._subtree_hash)

    def _check_size(self, size: int, what: str = "tree size") -> int:
        current = self.size()
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= current:
            raise MerkleError(f"expected a {what} 0..{current} (the log has {current} leaves), "
                              f"found {size!r}")
        return current

    def root(self, size: int | None = None) -> bytes:
        """The RFC 9162 root of the first ``size`` leaves (all leaves by default)."""
        if size is None:
            size = self.size()
        else:
            self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of the first ``size`` leaves."""
        self._check_size(size)
        return inclusion_proof(index, size, self._range_hash)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """The proof that the tree of ``first`` leaves is a prefix of the tree of ``second`` leaves."""
        self._check_size(second, "second tree size")
        return consistency_proof(first, second, self._range_hash)

    def leaf(self, index: int) -> dict[str, Any]:
        """The leaf entry at ``index`` as stored."""
        stored = self.store.leaf_entry(index)
        if stored is None:
            raise MerkleError(f"expected a leaf index 0..{self.size() - 1}, found {index!r}")
        try:
            entry = parse_json(stored) if isinstance(stored, str) else None
        except CanonicalJsonError:
            entry = None
        if not isinstance(entry, dict):
            raise MerkleLogError(f"merkle leaf {index} holds a damaged entry; run verify()")
        return entry

    def latest_tree_head(self) -> TreeHead | None:
        """The most recently signed tree head, None before the first."""
        row = self.store.latest_head()
        return None if row is None else self._head_from_row(row, "latest tree head")

    def tree_heads(self) -> Iterator[TreeHead]:
        """Every signed tree head, in signing order."""
        for row in self.store.heads():
            yield self._head_from_row(row[1:], f"tree head {row[0]}")

    @staticmethod
    def _head_from_row(row: Any, where: str) -> TreeHead:
        try:
            return TreeHead.from_dict(dict(zip(TREE_HEAD_FIELDS, tuple(row), strict=True)))
        except ReceiptError as exc:
            raise MerkleLogError(f"{where} is damaged: {exc}") from None

    # --- writing ---------------------------------------------------------------------------------

    def append(self, leaf_entry: Mapping[str, Any]) -> int:
        """Add a leaf for an accepted item in the caller's transaction; returns its index.

        Writes the leaf and the hashes of the subtrees it completes (amortised one). Raises
        :class:`MerkleLogError` for a malformed leaf entry or when another writer took the index.
        """
        try:
            data = leaf_data(leaf_entry)
        except ReceiptError as exc:
            raise MerkleLogError(f"refusing to log a malformed leaf entry: {exc}") from None
        index = self.size()
        current = leaf_hash(data)
        try:
            self.store.append_leaf(index, data.decode("utf-8"), current)
            level, position = 0, index
            # A leaf at an odd position completes its parent; that parent, if odd, its own; and so on.
            while position & 1:
                current = node_hash(self._subtree_hash(level, position - 1), current)
                level, position = level + 1, position >> 1
                self.store.append_node(level, position, current)
        except LogStoreConflict as exc:
            raise MerkleLogError(f"merkle leaf {index} was taken by another writer: {exc}") from exc
        log.debug("merkle leaf %d item=%s", index, leaf_entry.get("item"))
        return index

    def tree_head(self, *, time: str | None = None) -> TreeHead:
        """Sign and store a head for the current tree, in the caller's transaction.

        Returns the latest stored head when it already covers the current tree with this key and origin
        (so a replay or a timer adds no rows). Raises :class:`MerkleLogError` rather than sign a head
        that is not provably consistent with the previous one.
        """
        size = self.size()
        root = self.root(size)
        latest = self.latest_tree_head()
        if latest is not None:
            if (latest.tree_size, latest.root_hash, latest.origin, latest.key_id) == (
                size, root.hex(), self.origin, self._key.key_id
            ):
                return latest
            self._check_consistent(latest, size, root)
        head = sign_tree_head(self.origin, size, root, time or self._clock(), self._key)
        try:
            self.store.append_head(head)
        except LogStoreConflict as exc:
            raise MerkleLogError(f"tree head of {size} leaves refused by the log store: {exc}") from exc
        log.info("signed tree head size %d root %s with key %s", head.tree_size, head.root_hash, head.key_id)
        return head

    def _check_consistent(self, previous: TreeHead, size: int, root: bytes) -> None:
        if previous.tree_size > size:
            raise MerkleLogError(
                f"the log has {size} leaves but a head for {previous.tree_size} was signed: leaves were "
                f"removed; refusing to sign"
            )
        if self.root(previous.tree_size) != previous.root:
            raise MerkleLogError(
                f"the stored tree of {previous.tree_size} leaves no longer has the signed root "
                f"{previous.root_hash}: the log was altered; refusing to sign an inconsistent head"
            )
        proof = self.consistency_proof(previous.tree_size, size)
        if not verify_consistency(previous.tree_size, size, previous.root, root, proof):
            raise MerkleLogError(
                f"the tree of {size} leaves is not provably consistent with the signed head of "
                f"{previous.tree_size}: the stored nodes are damaged; refusing to sign"
            )

    # --- verification ----------------------------------------------------------------------------

    def verify(self, public_key: Ed25519PublicKey | None = None) -> list[Problem]:
        """Recompute the whole log from the leaf entries and report every difference.

        Checks each leaf entry (shape, canonical form, stored leaf hash), every stored subtree hash
        (missing, altered, or beyond the leaves), and every signed tree head (shape, origin, signature
        with ``public_key`` or the log's own key, root against the recomputed tree, sizes never
        shrinking). Each problem names the leaf index, node or head. Empty means the log verifies.
        """
        return _Verifier(self.store, self.origin, public_key or self._key.public_key()).run()


@dataclass
class _Pending:
    """A complete subtree on the right edge of the tree being rebuilt."""

    level: int
    hash: bytes
    tainted: bool  # it covers a leaf already reported as damaged


class _Verifier:
    """One streaming pass over leaves, nodes (one cursor per level) and heads; memory O(log n)."""

    def __init__(self, store: LogStore, origin: str, public_key: Ed25519PublicKey) -> None:
        self._store = store
        self._origin = origin
        self._public_key = public_key
        self.problems: list[Problem] = []
        self._stack: list[_Pending] = []
        self._node_cursors: dict[int, Iterator[Any]] = {}
        self._node_next: dict[int, Any] = {}
        self._size = 0
        self._damaged_leaves: list[int] = []
        self._last_matching_head_size = 0
        self._mismatched_heads: list[tuple[int, int]] = []

    def run(self) -> list[Problem]:
        heads = self._store.heads(by_size=True)
        head = next(heads, None)
        head = self._check_heads_at(0, lambda: EMPTY_ROOT, head, heads)
        gap = False
        for row in self._store.leaves():
            index = row[0]
            if index != self._size:
                self.problems.append(Problem(
                    f"merkle leaf {self._size}",
                    f"missing: the next stored leaf has index {index!r}; leaves were deleted, so nothing "
                    f"after leaf {self._size - 1} can be checked",
                ))
                gap = True
                break
            value, tainted = self._check_leaf(index, row[1], row[2])
            self._push(value, tainted)
            self._size += 1
            head = self._check_heads_at(self._size, self._root, head, heads)
        if not gap:
            self._check_extra_nodes()
        beyond: list[Any] = []
        while head is not None:
            if not self._head_shape_problems(head):
                beyond.append(head)
            head = next(heads, None)
        for row in beyond[:1]:
            self.problems.append(Problem(self._head_where(row), (
                f"covers {row[2]} leaves but the log has only {self._size} checkable: leaves were removed "
                f"after this head was signed"
                + (f" ({len(beyond) - 1} later heads likewise)" if len(beyond) > 1 else "")
            )))
        self._summarise_heads()
        self._check_head_order()
        return self.problems

    # leaves and nodes

    def _check_leaf(self, index: int, entry_text: object, stored: object) -> tuple[bytes, bool]:
        where = f"merkle leaf {index}"
        recomputed: bytes | None = None
        what: str | None = None
        try:
            entry = parse_json(entry_text) if isinstance(entry_text, str) else None
        except CanonicalJsonError as exc:
            entry, what = None, f"entry is not valid JSON ({exc})"
        if entry is None and what is None:
            what = f"entry column holds {type(entry_text).__name__}, expected JSON text"
        elif entry is not None:
            problems = leaf_entry_problems(entry)
            if problems:
                what = "entry is not a valid leaf entry: " + "; ".join(str(p) for p in problems[:3])
            else:
                data = canonical_json(entry)
                recomputed = leaf_hash(data)
                if data.decode("utf-8") != entry_text:
                    what = "entry is not in canonical form: the row was rewritten"
        if what is None and recomputed is not None and stored != recomputed:
            shown = stored.hex() if isinstance(stored, bytes) else repr(stored)[:80]
            what = (f"entry hashes to {recomputed.hex()} but the stored leaf hash is {shown}: the entry "
                    f"was altered")
        if what is None:
            assert recomputed is not None
            return recomputed, False
        self.problems.append(Problem(where, what))
        self._damaged_leaves.append(index)
        if recomputed is not None:
            return recomputed, True
        # Without a readable entry the stored hash is the best stand-in, so its ancestors stay checkable.
        if isinstance(stored, bytes) and len(stored) == HASH_SIZE:
            return stored, True
        return _ZERO_HASH, True

    def _push(self, value: bytes, tainted: bool) -> None:
        current = _Pending(0, value, tainted)
        position = self._size
        while self._stack and self._stack[-1].level == current.level:
            left = self._stack.pop()
            position >>= 1
            current = _Pending(current.level + 1, node_hash(left.hash, current.hash),
                               left.tainted or current.tainted)
            self._check_node(current, position)
        self._stack.append(current)

    def _next_stored(self, level: int) -> Any:
        if level not in self._node_cursors:
            self._node_cursors[level] = iter(self._store.nodes(level))
            self._node_next[level] = next(self._node_cursors[level], None)
        return self._node_next[level]

    def _check_node(self, node: _Pending, index: int) -> None:
        level = node.level
        stored = self._next_stored(level)
        while stored is not None and isinstance(stored[0], int) and stored[0] < index:
            # Rows we have passed without producing them cannot belong to this tree.
            self.problems.append(Problem(_node_where(level, stored[0]), "is not a node of the tree"))
            stored = self._node_next[level] = next(self._node_cursors[level], None)
        if stored is None or stored[0] != index:
            self.problems.append(Problem(_node_where(level, index), "is missing from merkle_nodes: the row "
                                                                    "was deleted; proofs over it fail"))
            return
        self._node_next[level] = next(self._node_cursors[level], None)
        if stored[1] != node.hash and not node.tainted:
            shown = stored[1].hex() if isinstance(stored[1], bytes) else repr(stored[1])[:80]
            self.problems.append(Problem(
                _node_where(level, index),
                f"stored hash {shown} but its leaves hash to {node.hash.hex()}: the node was altered, so "
                f"proofs through it fail",
            ))

    def _check_extra_nodes(self) -> None:
        extra: list[tuple[Any, Any]] = []
        for level, cursor in self._node_cursors.items():
            stored = self._node_next[level]
            while stored is not None:
                extra.append((level, stored[0]))
                stored = next(cursor, None)
        top = max(self._node_cursors, default=0)
        for row in self._store.nodes_outside(1, top):
            extra.append((row[0], row[1]))
        for level, index in extra[:_MAX_LISTED]:
            where = (_node_where(level, index) if isinstance(level, int) and isinstance(index, int)
                     else f"merkle node level {level!r} index {index!r}")
            self.problems.append(Problem(where, f"lies beyond the {self._size} leaves of the log: the row "
                                                f"was inserted, or leaves were removed"))
        if len(extra) > _MAX_LISTED:
            self.problems.append(Problem("merkle_nodes", f"{len(extra) - _MAX_LISTED} more nodes lie beyond "
                                                         f"the leaves"))

    def _root(self) -> bytes:
        current = self._stack[-1].hash
        for pending in reversed(self._stack[:-1]):
            current = node_hash(pending.hash, current)
        return current

    # tree heads

    @staticmethod
    def _head_where(row: Any) -> str:
        return f"tree head {row[0]} (size {row[2]!r})"

    def _check_heads_at(self, size: int, root: Callable[[], bytes], head: Any, heads: Iterator[Any]) -> Any:
        # Rows are in tree_size order; a damaged size (negative, not an integer) must not stall the walk.
        while head is not None and not (isinstance(head[2], int) and head[2] > size):
            if head[2] == size:
                self._check_head(head, root())
            else:
                self._head_shape_problems(head)
            head = next(heads, None)
        return head

    def _head_shape_problems(self, row: Any) -> bool:
        """Report a head whose row is malformed; True when it was."""
        doc = dict(zip(TREE_HEAD_FIELDS, tuple(row)[1:], strict=True))
        problems = tree_head_problems(doc, self._head_where(row))
        self.problems += problems
        return bool(problems)

    def _check_head(self, row: Any, root: bytes) -> None:
        where = self._head_where(row)
        doc = dict(zip(TREE_HEAD_FIELDS, tuple(row)[1:], strict=True))
        problems = verify_tree_head(doc, self._public_key, where=where)
        if problems:
            self.problems += problems
            return
        if doc["origin"] != self._origin:
            self.problems.append(Problem(where, f"signed for log {doc['origin']!r}, expected "
                                                f"{self._origin!r}"))
        size = doc["tree_size"]
        if doc["root_hash"] == root.hex():
            self._last_matching_head_size = max(self._last_matching_head_size, size)
            return
        if self._mismatched_heads:
            self._mismatched_heads.append((row[0], size))
            return
        self._mismatched_heads.append((row[0], size))
        damaged = [index for index in self._damaged_leaves if index < size]
        cause = (f"damaged leaf {damaged[0]} (reported above)" if damaged else
                 f"a leaf in {self._last_matching_head_size}..{size - 1} was altered after signing (the last "
                 f"head that matches covers {self._last_matching_head_size} leaves)")
        self.problems.append(Problem(
            where, f"signed root {doc['root_hash']} but the leaves recompute to {root.hex()}: {cause}"
        ))

    def _summarise_heads(self) -> None:
        later = self._mismatched_heads[1:]
        if later:
            self.problems.append(Problem(
                "tree heads", f"{len(later)} later signed heads (ids {later[0][0]}-{later[-1][0]}, sizes "
                              f"{later[0][1]}-{later[-1][1]}) do not match the leaves either",
            ))

    def _check_head_order(self) -> None:
        # Row ids are max(id) + 1 (no AUTOINCREMENT, and rollbacks do not consume ids), so a gap means a
        # head was deleted; sizes never shrink in signing order.
        previous: tuple[int, int] | None = None
        for row in self._store.heads():
            head_id, size = cast(int, row[0]), row[2]  # the id is the store's own key, always an integer
            expected_id = 1 if previous is None else previous[0] + 1
            if head_id != expected_id:
                self.problems.append(Problem(
                    f"tree head {expected_id}",
                    f"missing: head ids jump from {expected_id - 1} to {head_id}; signed heads were deleted",
                ))
            if not isinstance(size, int):
                previous = (head_id, previous[1] if previous else 0)
                continue  # reported as a shape problem
            if previous is not None and size < previous[1]:
                self.problems.append(Problem(
                    f"tree head {head_id} (size {size})",
                    f"covers fewer leaves than the earlier head {previous[0]} (size {previous[1]}): heads "
                    f"were reordered or inserted",
                ))
            previous = (head_id, size)
