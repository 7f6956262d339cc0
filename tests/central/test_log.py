"""The central Merkle log over its SQLite store: proofs against an in-memory tree, heads, tampering."""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.central.log import MerkleLog, MerkleLogError
from edge.central.sqlite import SqliteDatabase
from edge.central.sqlite.log import SqliteLogStore, create_schema
from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.keys import StationKey
from edge.custody.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    MerkleError,
    leaf_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from edge.custody.problems import Problem
from edge.custody.receipt import TreeHead, leaf_data, make_leaf_entry, make_receipt, verify_receipt

ORIGIN = "central-hq"
TRIGGERS = (
    "merkle_leaves_extend", "merkle_leaves_no_update", "merkle_leaves_no_delete", "merkle_nodes_complete",
    "merkle_nodes_no_update", "merkle_nodes_no_delete", "merkle_tree_heads_grow",
    "merkle_tree_heads_no_update", "merkle_tree_heads_no_delete",
)


class FakeClock:
    """Ledger-format times, one microsecond apart, so heads are reproducible."""

    def __init__(self) -> None:
        self.tick = 0

    def __call__(self) -> str:
        self.tick += 1
        return f"2024-05-01T09:00:00.{self.tick:06d}Z"


def entry(number: int, station: str = "3201000001") -> dict[str, Any]:
    content = f"evidence {number}".encode()
    return make_leaf_entry(
        item=str(uuid.UUID(int=number + 1)),
        sha256=sha256_hex(content),
        size=len(content),
        station=station,
        manifest_sha256=sha256_hex(b"manifest %d" % number),
        accepted_utc="2024-05-01T09:00:00.000000Z",
    )


def _connect(path: Path, style: str) -> sqlite3.Connection:
    if style == "rows-autocommit":  # how the central index opens its database
        conn = sqlite3.connect(path, isolation_level=None)
        conn.row_factory = sqlite3.Row
    else:
        conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _store(conn: sqlite3.Connection) -> SqliteLogStore:
    """The log store on ``conn`` (the fixture's connection, which the tests also use as the attacker)."""
    return SqliteDatabase(conn).log_store


@pytest.fixture(scope="module")
def key() -> StationKey:
    return StationKey.generate()


@pytest.fixture(params=["default", "rows-autocommit"])
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = _connect(tmp_path / "index.db", request.param)
    create_schema(db)
    db.commit()
    yield db
    db.close()


@pytest.fixture
def log(conn: sqlite3.Connection, key: StationKey) -> MerkleLog:
    return MerkleLog(_store(conn), key, ORIGIN, clock=FakeClock())


def _in_transaction(conn: sqlite3.Connection) -> None:
    if conn.isolation_level is None:
        conn.execute("BEGIN IMMEDIATE")


def fill(log: MerkleLog, conn: sqlite3.Connection, start: int, stop: int, *, head_every: int = 0) -> None:
    """Append entries start..stop-1 in one transaction, signing a head every ``head_every`` leaves."""
    _in_transaction(conn)
    for number in range(start, stop):
        assert log.append(entry(number)) == number
        if head_every and (number + 1) % head_every == 0:
            log.tree_head()
    conn.commit()


def tamper(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> None:
    """What someone with write access to the file can do: drop the triggers, edit, put them back."""
    conn.commit()
    for name in TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    conn.execute(sql, params)
    create_schema(conn)
    conn.commit()


def _hashes(count: int) -> list[bytes]:
    return [leaf_hash(leaf_data(entry(number))) for number in range(count)]


# --- proofs ---------------------------------------------------------------------------------------


def test_empty_log(log: MerkleLog, key: StationKey) -> None:
    assert log.size() == 0
    assert log.root() == EMPTY_ROOT
    assert log.consistency_proof(0, 0) == []
    head = log.tree_head()
    assert (head.tree_size, head.root) == (0, EMPTY_ROOT)
    assert log.verify() == []
    with pytest.raises(MerkleError):
        log.inclusion_proof(0, 0)
    with pytest.raises(MerkleError):
        log.leaf(0)


def test_1000_leaves_prove_what_an_in_memory_tree_proves(log: MerkleLog, conn: sqlite3.Connection) -> None:
    size = 1000
    fill(log, conn, 0, size)
    hashes = _hashes(size)
    reference = MemoryTree(hashes)
    assert log.size() == size
    for tree_size in range(size + 1):
        assert log.root(tree_size) == reference.root(tree_size), tree_size
    assert log.root() == root_from_leaves(hashes)
    root = log.root()
    for index in range(size):
        proof = log.inclusion_proof(index, size)
        assert proof == reference.inclusion_proof(index, size), index
        assert verify_inclusion(hashes[index], index, size, proof, root)
    rng = random.Random(9162)
    for _ in range(300):
        tree_size = rng.randint(1, size)
        index = rng.randrange(tree_size)
        proof = log.inclusion_proof(index, tree_size)
        assert verify_inclusion(hashes[index], index, tree_size, proof, root_from_leaves(hashes[:tree_size]))
    pairs = [(rng.randint(0, size), rng.randint(0, size)) for _ in range(300)]
    pairs += [(1, size), (size - 1, size), (512, size), (511, 512), (size, size)]
    for first, second in pairs:
        first, second = min(first, second), max(first, second)
        proof = log.consistency_proof(first, second)
        assert proof == reference.consistency_proof(first, second)
        assert verify_consistency(first, second, reference.root(first), reference.root(second), proof)
    assert log.leaf(417) == entry(417)
    assert log.verify() == []


def test_proof_arguments_outside_the_log_are_refused(log: MerkleLog, conn: sqlite3.Connection) -> None:
    fill(log, conn, 0, 5)
    for call in (lambda: log.root(6), lambda: log.root(-1), lambda: log.inclusion_proof(0, 6),
                 lambda: log.inclusion_proof(5, 5), lambda: log.consistency_proof(3, 6),
                 lambda: log.consistency_proof(4, 3), lambda: log.leaf(5)):
        with pytest.raises(MerkleError):
            call()


def test_append_refuses_a_malformed_leaf_and_writes_nothing(log: MerkleLog, conn: sqlite3.Connection) -> None:
    for bad in ({**entry(0), "size": -1}, {**entry(0), "officer": "012345"}, {"item": "x"}):
        with pytest.raises(MerkleLogError, match="malformed leaf entry"):
            log.append(bad)
    assert log.size() == 0
    assert conn.execute("SELECT count(*) FROM merkle_leaves").fetchone()[0] == 0


def test_the_log_never_commits(log: MerkleLog, conn: sqlite3.Connection, tmp_path: Path) -> None:
    fill(log, conn, 0, 3)
    _in_transaction(conn)
    log.append(entry(3))
    log.tree_head()
    other = sqlite3.connect(tmp_path / "index.db")
    try:
        assert other.execute("SELECT count(*) FROM merkle_leaves").fetchone()[0] == 3
        assert other.execute("SELECT count(*) FROM merkle_tree_heads").fetchone()[0] == 0
    finally:
        other.close()
    conn.rollback()
    assert log.size() == 3
    assert log.latest_tree_head() is None
    assert log.verify() == []


# --- tree heads -----------------------------------------------------------------------------------


def test_tree_head_is_signed_stored_and_reused_until_the_tree_grows(
    log: MerkleLog, conn: sqlite3.Connection, key: StationKey
) -> None:
    fill(log, conn, 0, 10)
    first = log.tree_head()
    assert first.tree_size == 10 and first.root == log.root()
    assert first.origin == ORIGIN and first.key_id == key.key_id
    assert log.tree_head() == first  # nothing new: the stored head, no new row
    assert log.latest_tree_head() == first
    assert conn.execute("SELECT count(*) FROM merkle_tree_heads").fetchone()[0] == 1
    fill(log, conn, 10, 11)
    second = log.tree_head()
    assert second.tree_size == 11 and second != first
    assert list(log.tree_heads()) == [first, second]
    # The head a receipt carries verifies with the central key, and the receipt with it.
    receipt = make_receipt(log.leaf(4), 4, log.inclusion_proof(4, 11), second)
    assert verify_receipt(receipt.to_dict(), key.public_key(), expected_item=entry(4)["item"]) == []


def test_a_new_key_signs_a_new_head_for_the_same_tree(log: MerkleLog, conn: sqlite3.Connection) -> None:
    fill(log, conn, 0, 4)
    old = log.tree_head()
    rotated = MerkleLog(_store(conn), StationKey.generate(), ORIGIN)
    new = rotated.tree_head()
    assert new.tree_size == old.tree_size and new.root_hash == old.root_hash and new.key_id != old.key_id


def test_every_stored_head_is_consistent_with_every_later_one(
    log: MerkleLog, conn: sqlite3.Connection, key: StationKey
) -> None:
    fill(log, conn, 0, 600, head_every=37)
    log.tree_head()
    heads = list(log.tree_heads())
    assert len(heads) == 600 // 37 + 1
    assert [head.tree_size for head in heads] == sorted({head.tree_size for head in heads})
    for position, older in enumerate(heads):
        for newer in heads[position:]:
            proof = log.consistency_proof(older.tree_size, newer.tree_size)
            assert verify_consistency(older.tree_size, newer.tree_size, older.root, newer.root, proof)
    assert log.verify(key.public_key()) == []


@pytest.mark.parametrize(("head_size", "level", "index"), [(16, 4, 0), (20, 2, 4), (20, 4, 0)])
def test_tree_head_refuses_to_sign_over_an_altered_tree(
    log: MerkleLog, conn: sqlite3.Connection, head_size: int, level: int, index: int
) -> None:
    fill(log, conn, 0, head_size)
    log.tree_head()
    fill(log, conn, head_size, 27)
    tamper(conn, "UPDATE merkle_nodes SET hash = ? WHERE level = ? AND idx = ?", (b"\x07" * 32, level, index))
    with pytest.raises(MerkleLogError, match="refusing to sign"):
        log.tree_head()
    latest = log.latest_tree_head()
    assert latest is not None and latest.tree_size == head_size


# --- append-only triggers -------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "params", "message"), [
    ("UPDATE merkle_leaves SET entry = '{}' WHERE idx = 1", (), "UPDATE of a leaf refused"),
    ("DELETE FROM merkle_leaves WHERE idx = 3", (), "DELETE of a leaf refused"),
    ("INSERT INTO merkle_leaves (idx, entry, leaf_hash) VALUES (7, '{}', ?)", (b"\0" * 32,),
     "extend the log"),
    ("INSERT OR REPLACE INTO merkle_leaves (idx, entry, leaf_hash) VALUES (2, '{}', ?)", (b"\0" * 32,),
     "extend the log"),
    ("UPDATE merkle_nodes SET hash = ? WHERE level = 1 AND idx = 0", (b"\0" * 32,), "UPDATE of a node"),
    ("DELETE FROM merkle_nodes", (), "DELETE of a node refused"),
    ("INSERT INTO merkle_nodes (level, idx, hash) VALUES (1, 2, ?)", (b"\0" * 32,), "new subtree"),
    ("INSERT OR REPLACE INTO merkle_nodes (level, idx, hash) VALUES (1, 0, ?)", (b"\0" * 32,), "new subtree"),
    ("INSERT INTO merkle_nodes (level, idx, hash) VALUES (3, 0, ?)", (b"\0" * 32,), "new subtree"),
    ("UPDATE merkle_tree_heads SET tree_size = 1", (), "UPDATE refused"),
    ("DELETE FROM merkle_tree_heads", (), "DELETE refused"),
    ("INSERT INTO merkle_tree_heads (origin, tree_size, root_hash, time, key_id, signature) "
     "VALUES ('x', 6, '', '', '', '')", (), "at most the log"),
    ("INSERT INTO merkle_tree_heads (origin, tree_size, root_hash, time, key_id, signature) "
     "VALUES ('x', 2, '', '', '', '')", (), "at least the previous head"),
    ("INSERT OR REPLACE INTO merkle_tree_heads (id, origin, tree_size, root_hash, time, key_id, signature) "
     "VALUES (1, 'x', 5, '', '', '', '')", (), "tree head insert"),
])
def test_triggers_keep_the_tables_append_only(
    log: MerkleLog, conn: sqlite3.Connection, sql: str, params: tuple[Any, ...], message: str
) -> None:
    fill(log, conn, 0, 5)
    _in_transaction(conn)
    log.tree_head()
    conn.commit()
    with pytest.raises(sqlite3.DatabaseError, match=message):
        conn.execute(sql, params)
    conn.rollback()
    assert log.verify() == []


# --- verify() names the damage --------------------------------------------------------------------


@pytest.fixture
def logged(log: MerkleLog, conn: sqlite3.Connection) -> MerkleLog:
    """40 leaves with a signed head after each one, as the central signs per accepted item."""
    fill(log, conn, 0, 40, head_every=1)
    assert log.verify() == []
    return log


def _where(problems: list[Problem]) -> list[str]:
    return [problem.where for problem in problems]


def test_altered_leaf_entry_is_named(logged: MerkleLog, conn: sqlite3.Connection) -> None:
    forged = canonical_json({**entry(17), "size": 999}).decode()
    tamper(conn, "UPDATE merkle_leaves SET entry = ? WHERE idx = 17", (forged,))
    problems = logged.verify()
    assert problems[0].where == "merkle leaf 17"
    assert "the entry was altered" in problems[0].what
    # Its ancestors are not reported again; the signed heads over it are, the first one in full.
    assert _where(problems) == ["merkle leaf 17", "tree head 18 (size 18)", "tree heads"]
    assert "damaged leaf 17" in problems[1].what
    assert "22 later signed heads" in problems[2].what


def test_unreadable_leaf_entry_is_named(logged: MerkleLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "UPDATE merkle_leaves SET entry = ? WHERE idx = 3", ('{"format": "evidence-edge/leaf/1"',))
    problems = logged.verify()
    assert problems[0].where == "merkle leaf 3" and "not valid JSON" in problems[0].what
    with pytest.raises(MerkleLogError, match="merkle leaf 3"):
        logged.leaf(3)


def test_non_canonical_leaf_entry_is_named(logged: MerkleLog, conn: sqlite3.Connection) -> None:
    spaced = canonical_json(entry(5)).decode().replace(",", ", ")
    tamper(conn, "UPDATE merkle_leaves SET entry = ? WHERE idx = 5", (spaced,))
    problems = logged.verify()
    assert _where(problems) == ["merkle leaf 5"]
    assert "canonical form" in problems[0].what


def test_consistently_rewritten_leaf_is_caught_by_the_signed_heads(
    logged: MerkleLog, conn: sqlite3.Connection
) -> None:
    # The attacker rewrites the entry, its leaf hash and every stored node above it: the tables agree
    # with each other, and only the signed heads still remember the old root.
    forged = {**entry(17), "sha256": "00" * 32}
    hashes = _hashes(40)
    hashes[17] = leaf_hash(leaf_data(forged))
    rewritten = MemoryTree(hashes)
    tamper(conn, "UPDATE merkle_leaves SET entry = ?, leaf_hash = ? WHERE idx = 17",
           (canonical_json(forged).decode(), hashes[17]))
    for level in range(1, 6):
        index = 17 >> level
        if ((index + 1) << level) <= 40:
            tamper(conn, "UPDATE merkle_nodes SET hash = ? WHERE level = ? AND idx = ?",
                   (rewritten.subtree_hash(level, index), level, index))
    problems = logged.verify()
    assert _where(problems) == ["tree head 18 (size 18)", "tree heads"]
    assert "a leaf in 17..17 was altered after signing" in problems[0].what


def test_altered_node_is_named(logged: MerkleLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "UPDATE merkle_nodes SET hash = ? WHERE level = 3 AND idx = 2", (b"\x07" * 32,))
    problems = logged.verify()
    assert _where(problems) == ["merkle node level 3 index 2 (leaves 16-23)"]
    assert "the node was altered" in problems[0].what
    # Proofs that use the node (leaves 24-31 have it as a sibling) no longer lead to the signed root;
    # the others still do.
    head = logged.latest_tree_head()
    assert head is not None
    hashes = _hashes(40)
    assert not verify_inclusion(hashes[25], 25, 40, logged.inclusion_proof(25, 40), head.root)
    assert verify_inclusion(hashes[17], 17, 40, logged.inclusion_proof(17, 40), head.root)


def test_deleted_node_is_named_and_proofs_through_it_fail_loudly(
    logged: MerkleLog, conn: sqlite3.Connection
) -> None:
    tamper(conn, "DELETE FROM merkle_nodes WHERE level = 2 AND idx = 5")
    assert _where(logged.verify()) == ["merkle node level 2 index 5 (leaves 20-23)"]
    with pytest.raises(MerkleLogError, match="level 2 index 5"):
        logged.inclusion_proof(17, 40)  # leaves 16-19 have it as a sibling
    assert logged.inclusion_proof(3, 40)  # proofs that do not use it still work


def test_inserted_node_is_named(logged: MerkleLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "INSERT INTO merkle_nodes (level, idx, hash) VALUES (4, 2, ?)", (b"\0" * 32,))
    tamper(conn, "INSERT INTO merkle_nodes (level, idx, hash) VALUES (9, 0, ?)", (b"\0" * 32,))
    problems = logged.verify()
    assert _where(problems) == ["merkle node level 4 index 2 (leaves 32-47)",
                                "merkle node level 9 index 0 (leaves 0-511)"]
    assert all("beyond the 40 leaves" in problem.what for problem in problems)


def test_altered_head_is_named(logged: MerkleLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "UPDATE merkle_tree_heads SET root_hash = ? WHERE id = 12", ("00" * 32,))
    tamper(conn, "UPDATE merkle_tree_heads SET time = ? WHERE id = 30", ("garbage",))
    problems = logged.verify()
    assert _where(problems) == ["tree head 12 (size 12).signature", "tree head 30 (size 30).time"]


def test_deleted_and_reordered_heads_are_named(logged: MerkleLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "DELETE FROM merkle_tree_heads WHERE id = 7")
    assert _where(logged.verify()) == ["tree head 7"]
    tamper(conn, "UPDATE merkle_tree_heads SET id = 100 WHERE id = 3")
    problems = logged.verify()
    assert "tree head 100 (size 3)" in _where(problems)


def test_head_signed_by_another_key_is_named(logged: MerkleLog, conn: sqlite3.Connection,
                                             key: StationKey) -> None:
    MerkleLog(_store(conn), StationKey.generate(), ORIGIN).tree_head()
    conn.commit()
    assert _where(logged.verify()) == ["tree head 41 (size 40).key_id"]
    assert _where(logged.verify(key.public_key())) == ["tree head 41 (size 40).key_id"]


def test_head_for_another_origin_is_named(
    logged: MerkleLog, conn: sqlite3.Connection, key: StationKey
) -> None:
    fill(logged, conn, 40, 41)
    MerkleLog(_store(conn), key, "central-other").tree_head()
    conn.commit()
    problems = logged.verify()
    assert _where(problems) == ["tree head 41 (size 41)"]
    assert "central-other" in problems[0].what


def test_truncated_log_is_named(logged: MerkleLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "DELETE FROM merkle_leaves WHERE idx >= 38")
    problems = logged.verify()
    assert "merkle node level 1 index 19 (leaves 38-39)" in _where(problems)
    assert "tree head 39 (size 39)" in _where(problems)
    head_problem = problems[_where(problems).index("tree head 39 (size 39)")]
    assert "leaves were removed" in head_problem.what and "1 later heads" in head_problem.what


def test_deleted_leaf_in_the_middle_is_named(logged: MerkleLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "DELETE FROM merkle_leaves WHERE idx = 11")
    problems = logged.verify()
    assert problems[0].where == "merkle leaf 11"
    assert "leaves were deleted" in problems[0].what


# --- reopening ------------------------------------------------------------------------------------


def test_reopened_connection_continues_the_same_log(tmp_path: Path, key: StationKey) -> None:
    path = tmp_path / "index.db"
    conn = _connect(path, "default")
    create_schema(conn)
    log = MerkleLog(_store(conn), key, ORIGIN, clock=FakeClock())
    fill(log, conn, 0, 300, head_every=100)
    first_heads = list(log.tree_heads())
    conn.close()

    conn = _connect(path, "rows-autocommit")
    create_schema(conn)  # idempotent on an existing database
    log = MerkleLog(_store(conn), key, ORIGIN, clock=FakeClock())
    assert log.size() == 300
    assert list(log.tree_heads()) == first_heads
    fill(log, conn, 300, 777, head_every=100)
    _in_transaction(conn)
    final = log.tree_head()
    conn.commit()
    assert final.tree_size == 777
    assert log.root() == root_from_leaves(_hashes(777))
    for older in first_heads:
        proof = log.consistency_proof(older.tree_size, final.tree_size)
        assert verify_consistency(older.tree_size, 777, older.root, final.root, proof)
    assert log.verify() == []
    conn.close()


def test_repr_shows_no_key_material(log: MerkleLog, key: StationKey) -> None:
    assert repr(log) == f"MerkleLog(origin='central-hq', key_id='{key.key_id}')"
    with pytest.raises(MerkleLogError):
        MerkleLog(_store(sqlite3.connect(":memory:")), key, "")


def test_heads_are_tree_heads(logged: MerkleLog) -> None:
    assert all(isinstance(head, TreeHead) for head in logged.tree_heads())
