"""The central's PostgreSQL backend: migrations, append-only history and the Merkle log's store, against
a real PostgreSQL server (tests/central/pg.py)."""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edge.central.log import MerkleLog
from edge.central.postgres import PostgresDatabase, SchemaError, apply_migrations, known_migrations
from edge.central.postgres.migrations import Migration, schema_version
from edge.central.storage import Index, LogStore, UnitOfWork
from edge.custody.canonical import sha256_hex
from edge.custody.keys import StationKey
from edge.custody.merkle import MemoryTree, leaf_hash, verify_consistency, verify_inclusion
from edge.custody.receipt import leaf_data, make_leaf_entry
from tests.central.pg import PostgresDatabaseUnderTest

ORIGIN = "central-hq"


def entry(number: int) -> dict[str, Any]:
    content = f"evidence {number}".encode()
    return make_leaf_entry(
        item=str(uuid.UUID(int=number + 1)), sha256=sha256_hex(content), size=len(content),
        station="3201000001", manifest_sha256=sha256_hex(b"manifest %d" % number),
        accepted_utc="2024-05-01T09:00:00.000000Z",
    )


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> StationKey:
    return StationKey.load_or_create(tmp_path_factory.mktemp("key") / "signing.key")


@pytest.fixture
def database(pg_database: PostgresDatabaseUnderTest) -> Any:
    opened = PostgresDatabase.open(pg_database.url, password=pg_database.password)
    yield opened
    opened.close()


# --- connection and migrations --------------------------------------------------------------------


def test_the_password_comes_from_outside_the_url(pg_database: PostgresDatabaseUnderTest) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        PostgresDatabase.open(pg_database.url, password="not-" + pg_database.password)
    opened = PostgresDatabase.open(pg_database.url, password=pg_database.password)  # control
    try:
        assert pg_database.password not in repr(opened) and pg_database.password not in repr(opened.log_store)
        assert pg_database.name in repr(opened)
    finally:
        opened.close()


def test_migrations_are_applied_once_and_recorded(pg_database: PostgresDatabaseUnderTest) -> None:
    newest = known_migrations()[-1].version
    PostgresDatabase.open(pg_database.url, password=pg_database.password).close()
    PostgresDatabase.open(pg_database.url, password=pg_database.password).close()  # again: nothing to do
    with pg_database.admin() as admin:
        assert schema_version(admin) == newest
        rows = admin.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
        assert rows == [(m.version, m.name) for m in known_migrations()]
        assert admin.execute("SELECT to_regclass('merkle_leaves') IS NOT NULL").fetchone() == (True,)


def test_a_database_newer_than_the_code_is_refused(pg_database: PostgresDatabaseUnderTest) -> None:
    PostgresDatabase.open(pg_database.url, password=pg_database.password).close()
    newest = known_migrations()[-1].version
    with pg_database.admin() as admin:
        admin.execute("INSERT INTO schema_version (version, name) VALUES (%s, 'from_the_future')",
                      (newest + 1,))
    with pytest.raises(SchemaError, match=f"version {newest + 1}, newer than this code's {newest}"):
        PostgresDatabase.open(pg_database.url, password=pg_database.password)


def test_a_failing_migration_leaves_the_database_as_it_was(pg_database: PostgresDatabaseUnderTest) -> None:
    version = len(known_migrations()) + 1
    broken = [*known_migrations(), Migration(version, "broken",
                                             "CREATE TABLE later (x integer); SELECT no_such_function();")]
    with pg_database.admin() as admin:
        with pytest.raises(SchemaError, match=re.escape(f"{version:04d}_broken.sql failed")):
            apply_migrations(admin, broken)
        assert schema_version(admin) == 0
        assert admin.execute("SELECT to_regclass('merkle_leaves') IS NULL").fetchone() == (True,)
        assert apply_migrations(admin) == known_migrations()[-1].version  # control: the real ones apply


# --- append-only, in the database itself -----------------------------------------------------------


def _history(admin: psycopg.Connection[tuple[object, ...]]) -> None:
    admin.execute(
        "INSERT INTO station_ledger (station, seq, time, type, item, data, prev, hash, accepted_utc) "
        "VALUES ('3201000001', 1, 't', 'acquired', 'i1', '{}', %s, %s, 'now')", ("0" * 64, "a" * 64))
    admin.execute(
        "INSERT INTO items (item, sha256, size, station, manifest, manifest_sha256, acquired_utc, chain_seq, "
        "leaf_index, accepted_utc) VALUES ('i1', %s, 1, '3201000001', '{}', %s, 't', 1, 0, 'now')",
        ("b" * 64, "c" * 64))
    with admin.transaction():  # a trail row is refused at COMMIT without its seal (0003_console.sql)
        admin.execute("INSERT INTO access_log (time, reader, what) VALUES ('t', 'auditor', 'item')")
        admin.execute("INSERT INTO trail_seals (seq, tbl, row_id) VALUES (1, 'access_log', 1)")


@pytest.mark.parametrize("change", [
    "UPDATE station_ledger SET data = '{\"forged\": 1}'",
    "DELETE FROM station_ledger",
    "TRUNCATE station_ledger",
    "UPDATE items SET sha256 = repeat('d', 64)",
    "DELETE FROM items",
    "UPDATE access_log SET reader = 'nobody'",
    "DELETE FROM access_log",
    "UPDATE merkle_leaves SET entry = '{}'",
    "DELETE FROM merkle_leaves",
    "TRUNCATE merkle_nodes",
    "UPDATE merkle_tree_heads SET tree_size = 0",
    "DELETE FROM merkle_tree_heads",
])
def test_history_refuses_update_delete_and_truncate_even_from_a_superuser(
    database: PostgresDatabase, pg_database: PostgresDatabaseUnderTest, key: StationKey, change: str
) -> None:
    log = MerkleLog(database.log_store, key, ORIGIN)
    with database.transaction():
        log.append(entry(0))
        log.append(entry(1))
        log.tree_head()
    with pg_database.admin() as admin:
        _history(admin)
        with pytest.raises(psycopg.Error, match="is append-only") as refused:
            admin.execute(change.encode())
        assert refused.value.sqlstate == "EE002"
        assert admin.execute("SELECT count(*) FROM merkle_leaves").fetchone() == (2,)
        assert admin.execute("SELECT count(*) FROM station_ledger").fetchone() == (1,)
    assert log.verify(key.public_key()) == []


def test_derived_directories_are_upserted(database: PostgresDatabase,
                                          pg_database: PostgresDatabaseUnderTest) -> None:
    """The control: tables derived from history (officers, devices, cases, an item's current case) may
    change; the triggers guard history only."""
    with pg_database.admin() as admin:
        _history(admin)
        for seen in ("2024-05-01", "2024-05-02"):
            admin.execute(
                "INSERT INTO officers (officer_no, officer_name, first_seen_utc, last_seen_utc) "
                "VALUES ('000123', 'Li', %s, %s) ON CONFLICT (officer_no) DO UPDATE SET "
                "last_seen_utc = excluded.last_seen_utc", (seen, seen))
        admin.execute("INSERT INTO item_case (item, updated_utc) VALUES ('i1', 't')")
        admin.execute("UPDATE item_case SET case_number = 'A-1' WHERE item = 'i1'")
        assert admin.execute("SELECT first_seen_utc, last_seen_utc FROM officers").fetchone() == (
            "2024-05-01", "2024-05-02")
        assert admin.execute("SELECT case_number FROM item_case").fetchone() == ("A-1",)


def test_a_station_ledger_row_must_extend_the_head(database: PostgresDatabase,
                                                   pg_database: PostgresDatabaseUnderTest) -> None:
    insert = ("INSERT INTO station_ledger (station, seq, time, type, data, prev, hash, accepted_utc) "
              "VALUES ('3201000001', %s, 't', 'x', '{}', %s, %s, 'now')")
    with pg_database.admin() as admin:
        admin.execute(insert, (1, "0" * 64, "a" * 64))
        for seq, prev in ((3, "a" * 64), (2, "f" * 64), (1, "0" * 64)):
            with pytest.raises(psycopg.Error, match="must extend the head") as refused:
                admin.execute(insert, (seq, prev, "b" * 64))
            assert refused.value.sqlstate == "EE001"
        admin.execute(insert, (2, "a" * 64, "b" * 64))  # control: the real next entry
        assert admin.execute("SELECT max(seq) FROM station_ledger").fetchone() == (2,)


# --- the Merkle log on PostgreSQL --------------------------------------------------------------------


def test_the_log_proves_what_an_in_memory_tree_proves(database: PostgresDatabase, key: StationKey) -> None:
    log = MerkleLog(database.log_store, key, ORIGIN)
    tree = MemoryTree()
    hashes: list[bytes] = []
    heads = []
    for number in range(70):
        with database.transaction():
            assert log.append(entry(number)) == number
            if number % 9 == 0:
                heads.append(log.tree_head())
        hashes.append(leaf_hash(leaf_data(entry(number))))
        tree.append(hashes[-1])
    assert log.size() == 70 and log.root() == tree.root()
    for index in (0, 1, 31, 64, 69):
        proof = log.inclusion_proof(index, 70)
        assert verify_inclusion(hashes[index], index, 70, proof, tree.root())
    for first in heads:
        proof = log.consistency_proof(first.tree_size, 70)
        assert verify_consistency(first.tree_size, 70, first.root, tree.root(), proof)
    assert [row[0] for row in database.log_store.heads()] == list(range(1, len(heads) + 1))
    assert log.verify(key.public_key()) == []


def test_a_rolled_back_append_leaves_nothing(database: PostgresDatabase, key: StationKey) -> None:
    log = MerkleLog(database.log_store, key, ORIGIN)
    with database.transaction():
        log.append(entry(0))
        log.tree_head()
    with pytest.raises(RuntimeError), database.transaction():
        log.append(entry(1))
        log.tree_head()
        raise RuntimeError("the item's index rows failed")
    assert log.size() == 1
    with database.transaction():  # the next head takes id 2: no gap for the rolled-back one
        log.append(entry(1))
        log.tree_head()
    assert [row[0] for row in database.log_store.heads()] == [1, 2]
    assert log.verify(key.public_key()) == []


def test_a_leaf_or_head_that_does_not_extend_the_log_is_a_conflict(
    database: PostgresDatabase, key: StationKey
) -> None:
    log = MerkleLog(database.log_store, key, ORIGIN)
    with database.transaction():
        log.append(entry(0))
    store = database.log_store
    data = leaf_data(entry(5))
    with database.transaction():
        with pytest.raises(Exception, match="must extend the log") as refused:
            store.append_leaf(5, data.decode(), leaf_hash(data))
        assert type(refused.value).__name__ == "LogStoreConflict"
        store.append_leaf(1, data.decode(), leaf_hash(data))  # control: the savepoint kept the transaction
    assert log.size() == 2


def test_tampering_below_the_triggers_is_named_by_verification(
    database: PostgresDatabase, pg_database: PostgresDatabaseUnderTest, key: StationKey
) -> None:
    """The triggers stop the central's own code; a superuser can switch them off. The signed heads and
    the recomputation are the defence, as with SQLite."""
    log = MerkleLog(database.log_store, key, ORIGIN)
    with database.transaction():
        for number in range(4):
            log.append(entry(number))
        log.tree_head()
    assert log.verify(key.public_key()) == []
    with pg_database.admin() as admin:
        admin.execute("ALTER TABLE merkle_leaves DISABLE TRIGGER USER")
        admin.execute("UPDATE merkle_leaves SET entry = %s WHERE idx = 2", (leaf_data(entry(9)).decode(),))
    problems = log.verify(key.public_key())
    assert any("leaf 2" in problem.where for problem in problems), problems


def _wait_until_blocked_on_a_lock(admin: psycopg.Connection[tuple[object, ...]],
                                  database: PostgresDatabase) -> None:
    """Until the writer's connection of ``database`` (opened by the transaction in another thread) waits
    for a lock (a generous bound: a loaded machine is slow, never wrong)."""
    for _ in range(600):
        pid = database.writer_backend_pid
        row = None if pid is None else admin.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row is not None and row[0] == "Lock":
            return
        time.sleep(0.05)
    pytest.fail(f"the writer's connection (backend {database.writer_backend_pid}) never waited for the log "
                f"writer's lock")


def test_a_second_writer_waits_for_the_first_and_then_extends_its_tree(
    database: PostgresDatabase, pg_database: PostgresDatabaseUnderTest, key: StationKey
) -> None:
    """Two receivers' connections: while one holds a transaction, the other's waits in the database (not
    reading a size that is about to change); when the first commits, the second appends after its leaf
    and signs a head that covers it."""
    second = PostgresDatabase.open(pg_database.url, password=pg_database.password)
    first_log = MerkleLog(database.log_store, key, ORIGIN)
    second_log = MerkleLog(second.log_store, key, ORIGIN)
    appended: list[int] = []

    def second_receiver() -> None:
        with second.transaction():
            appended.append(second_log.append(entry(1)))
            second_log.tree_head()

    try:
        with pg_database.admin() as admin, database.transaction():
            assert first_log.append(entry(0)) == 0
            first_head = first_log.tree_head()
            thread = threading.Thread(target=second_receiver)
            thread.start()
            _wait_until_blocked_on_a_lock(admin, second)
            assert appended == []
        thread.join(timeout=60)
        assert not thread.is_alive() and appended == [1]
        heads = list(first_log.tree_heads())
        assert (heads[0].tree_size, heads[0].root_hash) == (1, first_head.root_hash)
        assert heads[-1].tree_size == 2 and first_log.verify(key.public_key()) == []
    finally:
        second.close()


def _receiver(url: str, password: str, key_path: str, first: int, count: int, start: Any, out: Any) -> None:
    """One receiver process: each acceptance appends a leaf and signs a head in one transaction."""
    database = PostgresDatabase.open(url, password=password)
    try:
        log = MerkleLog(database.log_store, StationKey.load_or_create(Path(key_path)), ORIGIN)
        start.wait(timeout=120)  # both processes connected: their appends contend from the first
        indexes = []
        for number in range(first, first + count):
            with database.transaction():
                indexes.append(log.append(entry(number)))
                log.tree_head()
        out.put(indexes)
    finally:
        database.close()


def test_two_receiver_processes_append_one_consistent_log(
    database: PostgresDatabase, pg_database: PostgresDatabaseUnderTest, key: StationKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    assert key.path is not None
    key_path = str(key.path)
    per_process = 60
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_receiver, args=(pg_database.url, pg_database.password, key_path,
                                                         base * 1000, per_process, start, out))
                 for base in (1, 2)]
    for process in processes:
        process.start()
    try:
        results = [out.get(timeout=300) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert sorted(results[0] + results[1]) == list(range(2 * per_process))  # none taken twice or skipped
    log = MerkleLog(database.log_store, key, ORIGIN)
    heads = list(log.tree_heads())
    # One head per acceptance, each a larger tree than the one before: no two heads of one size, and
    # verification proves every head consistent with every later one.
    assert [head.tree_size for head in heads] == list(range(1, 2 * per_process + 1))
    assert log.verify(key.public_key()) == []


def test_time_stamps_of_heads_are_kept_and_append_only(
    database: PostgresDatabase, pg_database: PostgresDatabaseUnderTest, key: StationKey
) -> None:
    log = MerkleLog(database.log_store, key, ORIGIN)
    store = database.log_store
    assert store.newest_head_unstamped() is None  # no head yet
    with database.transaction():
        log.append(entry(0))
        first = log.tree_head()
    assert store.newest_head_unstamped() == (1, first)
    with database.transaction():
        store.append_timestamp(1, first, "note", b"\x30\x03\x02\x01\x00", "20240501090000Z", "now")
    assert store.newest_head_unstamped() is None  # the newest is stamped
    with database.transaction():
        log.append(entry(1))
        second = log.tree_head()
    assert store.newest_head_unstamped() == (2, second)
    with pg_database.admin() as admin:
        token = admin.execute("SELECT token FROM merkle_head_timestamps").fetchone()
        assert token == (b"\x30\x03\x02\x01\x00",)
        with pytest.raises(psycopg.Error, match="append-only"):
            admin.execute("UPDATE merkle_head_timestamps SET token = '\\x00'")


def test_a_snapshot_sees_one_state_while_the_index_moves_on(
    database: PostgresDatabase, key: StationKey
) -> None:
    index = database.index
    index.record_rejection(station="st", code="ledger_gap", detail="first")
    with index.snapshot() as view:
        assert [row["detail"] for row in view.rejections()] == ["first"]
        index.record_rejection(station="st", code="ledger_gap", detail="second")  # committed meanwhile
        assert [row["detail"] for row in view.rejections()] == ["first"]  # the snapshot's state
        with pytest.raises(psycopg.Error, match="read-only"):
            view.record_rejection(station="st", code="x", detail="written through a snapshot")
    assert [row["detail"] for row in index.rejections()] == ["first", "second"]


def test_the_backend_implements_the_storage_protocols(database: PostgresDatabase) -> None:
    """mypy checks these assignments against the protocols; the run checks they are the same objects."""
    unit: UnitOfWork = database
    index: Index = database.index
    store: LogStore = database.log_store
    assert index.unit is unit and store.unit is unit and unit.errors == (psycopg.Error,)
