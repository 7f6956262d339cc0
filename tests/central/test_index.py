"""The index on both backends (SQLite, and PostgreSQL on a throwaway server): enrolment, append-only
history, station ledgers, items, metadata history, queries."""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edge.central.index import (
    CentralIndexError,
    ItemQuery,
    ReaderScope,
    Role,
    indexable_case,
    validate_reader_name,
    validate_station_id,
)
from edge.central.postgres import PostgresDatabase, PostgresIndex
from edge.central.sql import index as sql_index_module
from edge.central.sqlite import SqliteIndex
from edge.custody.keys import StationKey
from edge.custody.ledger import GENESIS_PREV
from tests.central.conftest import CERT_SHA, FakeStation, enroll

EVERYTHING = ReaderScope("test-supervisor", Role.SUPERVISOR, frozenset())
BackendIndex = SqliteIndex | PostgresIndex
# What each backend raises when the database itself refuses a write (a trigger, a constraint).
REFUSED = (sqlite3.IntegrityError, psycopg.Error)


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendIndex]:
    """The same tests hold each backend to the same behaviour."""
    if request.param == "sqlite":
        embedded = SqliteIndex.open(tmp_path / "index.db")
        yield embedded
        embedded.close()
        return
    server = request.getfixturevalue("pg_database")
    database = PostgresDatabase.open(server.url, password=server.password)
    yield database.index
    database.close()


def sql(index: BackendIndex, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run SQL below the index (the attacker with database access), ``?`` placeholders on both."""
    if isinstance(index, SqliteIndex):
        return [tuple(row) for row in index.conn.execute(query, args).fetchall()]
    cursor = index.conn.execute(query, args)  # the index's own ? dialect on PostgreSQL
    return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


@pytest.mark.parametrize("good", ["st-0001", "A", "a.b_c-d", "9" * 64])
def test_valid_station_ids(good: str) -> None:
    assert validate_station_id(good) == good
    assert validate_reader_name(good) == good


@pytest.mark.parametrize("bad", ["", ".", "..", "-rf", "a/b", "a b", "站", "x" * 65, None, 7, "a\n"])
def test_invalid_station_ids(bad: object) -> None:
    with pytest.raises(CentralIndexError):
        validate_station_id(bad)


def test_enrol_revoke_and_re_enrol(index: BackendIndex, station: FakeStation) -> None:
    assert index.station(station.station_id) is None
    enroll(index, station)
    record = index.station(station.station_id)
    assert record is not None and record.active and record.key_id == station.key.key_id
    index.revoke_station(station.station_id, "stolen")
    revoked = index.station(station.station_id)
    assert revoked is not None and not revoked.active and revoked.revoke_reason == "stolen"
    new_key = StationKey.generate()
    index.enroll_station(station.station_id, new_key.public_key_b64, "d" * 64)
    again = index.station(station.station_id)
    assert again is not None and again.active and again.key_id == new_key.key_id
    assert again.cert_sha256 == "d" * 64
    assert set(index.station_keys(station.station_id)) == {station.key.key_id, new_key.key_id}
    events = sql(index, "SELECT event FROM enrolment_events ORDER BY id")
    assert [e[0] for e in events] == ["enrolled", "revoked", "enrolled"]


def test_enrol_refuses_bad_arguments(index: BackendIndex) -> None:
    key = StationKey.generate()
    with pytest.raises(CentralIndexError):
        index.enroll_station("../x", key.public_key_b64, CERT_SHA)
    with pytest.raises(CentralIndexError):
        index.enroll_station("st", "not base64!", CERT_SHA)
    with pytest.raises(CentralIndexError):
        index.enroll_station("st", key.public_key_b64, "xyz")
    with pytest.raises(CentralIndexError, match="not enrolled"):
        index.revoke_station("nobody", "why")


def test_readers(index: BackendIndex) -> None:
    index.enroll_reader("auditor1", CERT_SHA)
    reader = index.reader("auditor1")
    assert reader is not None and reader.active
    index.revoke_reader("auditor1", "left")
    reader = index.reader("auditor1")
    assert reader is not None and not reader.active


def test_station_ledger_is_append_only_and_must_extend_the_head(
    index: BackendIndex, station: FakeStation
) -> None:
    enroll(index, station)
    a = station.acquire(b"one")
    station.record("error", None, {"reason": "x"})
    entries = list(station.ledger.entries())
    with index.transaction():
        index.insert_ledger_entries(station.station_id, entries[:2], "2024-01-01T00:00:00.000000Z")
    assert index.ledger_head(station.station_id) == (2, entries[1].hash)
    assert index.ledger_head("other") == (0, GENESIS_PREV)
    with pytest.raises(REFUSED, match="extend the head"), index.transaction():
        index.insert_ledger_entries(station.station_id, entries[3:], "t")
    with pytest.raises(REFUSED, match="append-only"), index.transaction():
        sql(index, "UPDATE station_ledger SET type = 'x'")
    with pytest.raises(REFUSED, match="append-only"), index.transaction():
        sql(index, "DELETE FROM station_ledger")
    entry = index.ledger_entry(station.station_id, 1)
    assert entry == entries[0]
    assert [e.seq for e in index.ledger_entries(station.station_id, item=a.item)] == [1, 2]


@pytest.mark.parametrize("page_rows", [3, 10_000], ids=["pages-of-3", "control-one-page"])
def test_ledger_entries_read_page_by_page_are_the_whole_filtered_range(
    index: BackendIndex, station: FakeStation, monkeypatch: pytest.MonkeyPatch, page_rows: int
) -> None:
    # Each statement reads at most page_rows entries (a disclosure package may walk a station's whole
    # ledger, and both backends take a statement's rows whole): the pages joined are the same entries as one
    # statement would give, with every filter, whatever the page size (control: one page).
    monkeypatch.setattr(sql_index_module, "LEDGER_PAGE_ROWS", page_rows)
    statements: list[str] = []
    enroll(index, station)
    items = [station.acquire(f"clip {n}".encode()).item for n in range(5)]
    for n in range(3):
        station.record("error", None, {"reason": f"r{n}"})
    entries = list(station.ledger.entries())
    with index.transaction():
        index.insert_ledger_entries(station.station_id, entries, "t")
    real_conn: Any = inspect.getattr_static(index, "conn")  # the backend's property

    class Counting:
        def __init__(self, conn: Any) -> None:
            self._conn = conn

        def execute(self, query: str, args: Any = ()) -> Any:
            if "FROM station_ledger" in query:
                statements.append(query)
            return self._conn.execute(query, args)

    monkeypatch.setattr(type(index), "conn", property(lambda self: Counting(real_conn.fget(self))))
    assert [e.seq for e in index.ledger_entries(station.station_id)] == [e.seq for e in entries]
    # The whole ledger: one statement a page (the last one short), one statement in all for the control.
    assert len(statements) == len(entries) // page_rows + 1, (len(entries), statements)
    assert [e.seq for e in index.ledger_entries(station.station_id, 4, end_seq=9)] == list(range(4, 10))
    assert ([e.item for e in index.ledger_entries(station.station_id, item=items[3])]
            == [e.item for e in entries if e.item == items[3]])
    assert ([e.seq for e in index.ledger_entries(station.station_id, type_="error")]
            == [e.seq for e in entries if e.type == "error"])


def _accept(index: BackendIndex, station: FakeStation, leaf: int, **kwargs: str) -> str:
    acquired = station.acquire(f"content {leaf}".encode(), **kwargs)
    head = index.ledger_head(station.station_id)[0]
    with index.transaction():
        index.insert_ledger_entries(station.station_id, list(station.ledger.entries(head + 1)), "t")
        index.insert_item(acquired.manifest, station_id=station.station_id, leaf_index=leaf,
                          accepted_utc=f"2024-02-01T00:00:0{leaf}.000000Z")
    return acquired.item


def test_items_are_append_only_and_carry_their_metadata(index: BackendIndex, station: FakeStation) -> None:
    enroll(index, station)
    item = _accept(index, station, 0)
    record = index.item(item)
    assert record is not None and record.station == station.station_id and record.leaf_index == 0
    assert record.officer_no == "001234" and record.device_serial == "DSJ-0001"
    assert index.current_case(item)["case_number"] == "A-2024-001"
    assert sql(index, "SELECT officer_name FROM officers WHERE officer_no = '001234'") == [("张三",)]
    assert sql(index, "SELECT count(*) FROM cases") == [(1,)]
    with pytest.raises(REFUSED, match="append-only"), index.transaction():
        sql(index, "UPDATE items SET sha256 = ?", ("0" * 64,))
    with pytest.raises(REFUSED, match="append-only"), index.transaction():
        sql(index, "DELETE FROM metadata_history")
    # The control: a derived directory is upserted, in the database as through the index.
    with index.transaction():
        sql(index, "UPDATE officers SET officer_name = ? WHERE officer_no = '001234'", ("李四",))
    assert sql(index, "SELECT officer_name FROM officers WHERE officer_no = '001234'") == [("李四",)]


def test_tags_before_and_after_acceptance_fold_into_history(
    index: BackendIndex, station: FakeStation
) -> None:
    enroll(index, station)
    acquired = station.acquire(b"tagged content")
    station.tag(acquired.item, {"case_number": "B-9"})
    with index.transaction():
        index.insert_ledger_entries(station.station_id, list(station.ledger.entries()), "t")
        index.insert_item(acquired.manifest, station_id=station.station_id, leaf_index=0,
                          accepted_utc="2024-02-01T00:00:00.000000Z")
    assert index.current_case(acquired.item)["case_number"] == "B-9"
    later = station.tag(acquired.item, {"important": True, "retention": "permanent", "bogus": "x"})
    with index.transaction():
        index.insert_ledger_entries(station.station_id, [later], "t")
        assert index.apply_tag(station.station_id, later, "t2")
        assert not index.apply_tag(station.station_id, later, "t3")  # replay adds nothing
    case = index.current_case(acquired.item)
    assert case["important"] is True and case["retention"] == "permanent" and case["case_number"] == "B-9"
    history = index.metadata_history(acquired.item)
    assert [h["source"] for h in history] == ["manifest", "ledger", "ledger"]
    assert history[2]["changes"] == {"important": True, "retention": "permanent"}


def test_tag_from_another_station_is_not_applied(
    index: BackendIndex, station: FakeStation, other_station: FakeStation
) -> None:
    enroll(index, station)
    item = _accept(index, station, 0)
    foreign = other_station.tag(item, {"case_number": "HIJACK"})
    with index.transaction():
        assert not index.apply_tag(other_station.station_id, foreign, "t")
    assert index.current_case(item)["case_number"] == "A-2024-001"


def test_query_filters_and_cursor(index: BackendIndex, station: FakeStation) -> None:
    enroll(index, station)
    items = [
        _accept(index, station, n, case_number="C-1" if n % 2 else "C-2", officer_no=f"00{n % 3}",
                acquired_utc=f"2024-03-0{n + 1}T00:00:00.000000Z")
        for n in range(7)
    ]
    page, cursor = index.query_items(ItemQuery(limit=3), EVERYTHING)
    assert [p["item"] for p in page] == items[:3] and cursor is not None
    page2, cursor2 = index.query_items(ItemQuery(limit=3, after=cursor), EVERYTHING)
    assert [p["item"] for p in page2] == items[3:6]
    page3, cursor3 = index.query_items(ItemQuery(limit=3, after=cursor2), EVERYTHING)
    assert [p["item"] for p in page3] == items[6:] and cursor3 is None
    by_case, _ = index.query_items(ItemQuery(case_number="C-1"), EVERYTHING)
    assert [p["item"] for p in by_case] == [items[1], items[3], items[5]]
    by_officer, _ = index.query_items(ItemQuery(officer_no="000"), EVERYTHING)
    assert [p["item"] for p in by_officer] == [items[0], items[3], items[6]]
    ranged, _ = index.query_items(ItemQuery(time_from="2024-03-02T00:00:00.000000Z",
                                            time_to="2024-03-04T00:00:00.000000Z"), EVERYTHING)
    assert [p["item"] for p in ranged] == items[1:3]
    none, _ = index.query_items(ItemQuery(station="other"), EVERYTHING)
    assert none == []


def test_rejections_and_access_log_are_append_only(index: BackendIndex) -> None:
    index.record_rejection(station="st", code="ledger_gap", detail="expected seq 5, found 7")
    index.log_access(reader="aud", what="content", item="i", query=None, remote="127.0.0.1")
    assert index.rejections()[0]["code"] == "ledger_gap"
    assert index.access_log()[0]["what"] == "content"
    for table in ("rejections", "access_log"):
        with pytest.raises(REFUSED, match="append-only"), index.transaction():
            sql(index, f"DELETE FROM {table}")


def test_reopen_keeps_everything(tmp_path: Path, station: FakeStation) -> None:
    first = SqliteIndex.open(tmp_path / "i.db")
    enroll(first, station)
    first.close()
    second = SqliteIndex.open(tmp_path / "i.db")
    try:
        assert second.station(station.station_id) is not None
    finally:
        second.close()


def test_room_collector_no_is_kept_quietly_and_an_unknown_case_field_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A room session's case block carries collector_no (indexed as the item's officer_no): no warning per
    item for it; a field the index does not know is still named in the log (the control)."""
    with caplog.at_level("WARNING", logger="edge.central.index"):
        kept = indexable_case({"case_number": "A-1", "collector_no": "012345"}, "item x")
    assert kept == {"case_number": "A-1"}
    assert "not indexed" not in caplog.text
    with caplog.at_level("WARNING", logger="edge.central.index"):
        indexable_case({"case_number": "A-1", "badge_colour": "red"}, "item y")
    assert "'badge_colour'" in caplog.text and "not indexed" in caplog.text
