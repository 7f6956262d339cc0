"""The row copy of `edge central migrate` (edge.central.migration.tables) on a real SQLite index filled by
the registrar and a real PostgreSQL database: ids and identities carried over, the target's triggers in
force, a source whose history was cut refused; and the lock each object gets (migration.objects)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.central.config import RetentionSection
from edge.central.migration.objects import objects_to_copy
from edge.central.migration.tables import (
    COPIED_TABLES,
    NOT_COPIED,
    CopyRefused,
    compare_table,
    continue_identities,
    copy_tables,
    plan_tables,
)
from edge.central.postgres import PostgresDatabase
from edge.central.retention import RetentionPolicy, parse_utc
from tests.central.conftest import CentralParts, FakeStation, make_central_parts
from tests.central.pg import PostgresDatabaseUnderTest


async def _filled(tmp_path: Path, station: FakeStation, n: int = 3) -> CentralParts:
    parts = make_central_parts(tmp_path / "central")
    parts.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
    for number in range(n):
        acquired = station.acquire(f"item {number} ".encode() * 100)
        body = {"upload": parts.upload(station.station_id, acquired.content), "manifest": acquired.manifest,
                "ledger": station.segment(parts.index.ledger_head(station.station_id)[0])}
        await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
    for code in ("bad_request", "content_mismatch", "bad_request"):
        parts.index.record_rejection(station=station.station_id, code=code, detail="test")
    return parts


def _copy(source: Path, pg: PostgresDatabaseUnderTest) -> tuple[PostgresDatabase, list[str]]:
    """Plan, copy, continue the identities and compare, as the migration does (a single-role install: the
    URL's role owns the tables); returns the target and the differences."""
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    target = PostgresDatabase.open(pg.url, password=pg.password)
    try:
        plans = plan_tables(conn, target.conn)
        copy_tables(conn, target.conn, plans, lambda table, rows: None)
        continue_identities(target.conn, plans)
        differences = [f"{plan.name}: {d}" for plan in plans
                       if (d := compare_table(conn, target.conn, plan)) is not None]
    except BaseException:
        target.close()
        raise
    finally:
        conn.close()
    return target, differences


async def test_identity_ids_are_carried_over_and_the_runtime_continues_after_them(
    tmp_path: Path, station: FakeStation, pg_database: PostgresDatabaseUnderTest,
) -> None:
    parts = await _filled(tmp_path, station)
    with parts.index.transaction():
        newest = parts.merkle.tree_head()
        for number in range(2):  # time-stamps: the one table whose id PostgreSQL generates itself
            parts.merkle.store.append_timestamp(1, newest, f"note {number}", b"token", "20260101000000Z",
                                                "2026-01-01T00:00:00Z")
    parts.index.close()
    target, differences = _copy(tmp_path / "central" / "index.db", pg_database)
    try:
        assert differences == []
        with target.transaction():  # the running central's next time-stamp: id 3, not a clash with 1
            target.log_store.append_timestamp(2, newest, "note 2", b"token", "20260101000000Z",
                                              "2026-01-01T00:00:01Z")
        rows = target.conn.execute("SELECT id, note FROM merkle_head_timestamps ORDER BY id").fetchall()
        assert rows == [(1, "note 0"), (2, "note 1"), (3, "note 2")]
        # The append-only rules held during the copy and hold after it.
        with pytest.raises(Exception, match="append-only"):
            target.conn.execute("DELETE FROM rejections WHERE id = 1")
    finally:
        target.close()


async def test_a_source_whose_trail_was_cut_is_refused(
    tmp_path: Path, station: FakeStation, pg_database: PostgresDatabaseUnderTest,
) -> None:
    parts = await _filled(tmp_path, station)
    parts.index.close()
    db = tmp_path / "central" / "index.db"
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER rejections_no_delete")  # what it takes, below the triggers
    conn.execute("DELETE FROM rejections WHERE id = 2")
    conn.commit()
    conn.close()
    # The target numbers trail rows itself (max + 1): the copy cannot carry the gap, and says so.
    target, differences = _copy(db, pg_database)
    target.close()
    assert differences and differences[0].startswith("rejections: row 2 (id=3) differs"), differences


async def test_every_table_of_a_fresh_store_is_known(tmp_path: Path, station: FakeStation) -> None:
    """The control of the unknown-table refusal: a store made by this release has no table the migrator
    does not know (a new table must be listed as copied or not)."""
    parts = await _filled(tmp_path, station, n=1)
    conn = parts.sqlite_index.conn
    tables = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    parts.index.close()
    assert tables <= set(COPIED_TABLES) | set(NOT_COPIED), tables - set(COPIED_TABLES) - set(NOT_COPIED)
    assert not set(COPIED_TABLES) & set(NOT_COPIED)


def test_a_column_the_target_lacks_stops_the_plan(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest,
) -> None:
    parts = make_central_parts(tmp_path / "central")
    parts.sqlite_index.conn.execute("ALTER TABLE rejections ADD COLUMN extra TEXT")
    parts.index.close()
    conn = sqlite3.connect(f"file:{tmp_path / 'central' / 'index.db'}?mode=ro", uri=True)
    target = PostgresDatabase.open(pg_database.url, password=pg_database.password)
    try:
        with pytest.raises(CopyRefused, match=r"table rejections: the columns differ .*source: extra"):
            plan_tables(conn, target.conn)
    finally:
        target.close()
        conn.close()


async def test_each_object_is_locked_for_the_strongest_class_its_items_ever_had(
    tmp_path: Path, station: FakeStation,
) -> None:
    """Permanent once, permanent for good (a later shorter class keeps the hold); a class this central
    does not know gets the longest configured lock; one content held by two items gets the stronger."""
    parts = make_central_parts(tmp_path / "central")
    parts.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
    head = 0

    async def register(content: bytes) -> str:
        nonlocal head
        acquired = station.acquire(content)
        body = {"upload": parts.upload(station.station_id, acquired.content), "manifest": acquired.manifest,
                "ledger": station.segment(head)}
        await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
        head = station.ledger.head()[0]
        return acquired.item

    demoted = await register(b"made permanent, then demoted " * 50)
    station.tag(demoted, {"retention": "permanent"})
    station.tag(demoted, {"retention": "6-months"})
    unknown = await register(b"a class nobody configured " * 50)
    station.tag(unknown, {"retention": "3-decades"})
    plain = await register(b"the default class " * 50)
    await register(b"the default class " * 50)  # the same content again, as another item
    station.tag(plain, {"retention": "2-years"})
    await register(b"pushes the tags " * 50)
    conn = parts.sqlite_index.conn
    policy = RetentionPolicy.from_config(RetentionSection(class_days={"6-months": 183, "2-years": 731}))
    found = {wanted.sha256: wanted for wanted in objects_to_copy(conn, policy)}
    sha_of = {str(item): str(sha) for item, sha in conn.execute("SELECT item, sha256 FROM items")}
    accepted = {str(item): parse_utc(str(at))
                for item, at in conn.execute("SELECT item, accepted_utc FROM items")}
    parts.index.close()

    def lock(item: str) -> tuple[int, bool]:
        retention = found[sha_of[item]].retention
        assert retention is not None
        return (retention.until - accepted[item]).days, retention.legal_hold

    assert lock(demoted) == (183, True)
    assert lock(unknown) == (731, False)  # the longest configured, never less
    assert lock(plain) == (731, False)
    assert len(found[sha_of[plain]].items) == 2  # one object, both items named
    assert len(found) == 4
