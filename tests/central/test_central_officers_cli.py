"""`edge central officers import|list`: the agency's list issued as signed versions into the central's
database (the store's index.db, or PostgreSQL); a file with a PIN column, or any bad row, issues nothing;
`edge verify` checks every version from the database and names one rewritten or deleted below the
triggers; two issuers at once never sign the same version number."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from edge.central.backends import open_central_database
from edge.central.config import CentralConfig, PostgresIndexConfig, load_central_config
from edge.central.equipment import EquipmentStore
from edge.central.identity import load_signing_key
from edge.central.index import CentralIndexError, IssuedList
from edge.central.verify import CentralFindings, verify_central
from edge.custody.canonical import parse_json
from edge.custody.keys import load_public_key
from edge.equipment.officer_csv import parse_officer_csv
from edge.equipment.officer_list import verify_list
from tests.central.pg import PostgresDatabaseUnderTest
from tests.central.test_central_cli import _run, config_file, initialised

__all__ = ["config_file", "initialised"]

LIST = "警号,姓名,单位编号,卡号\n110001,张伟,330100000000,04A21B7C\n110002,王芳,330100000000,\n"
# A bound for a step that waits on another thread's database work on a loaded machine, not a premise.
SLOW_S = 120.0


@pytest.fixture
def initialised_on(tmp_path: Path, central_index: dict[str, Any] | None) -> Path:
    """An initialised central whose database is each backend in turn (``central_index``)."""
    path = tmp_path / "central.toml"
    index = ""
    if central_index is not None:
        index = (f'index = {{type = "postgresql", url = "{central_index["url"]}", '
                 f'password = "{central_index["password"]}"}}\n')
    path.write_text(f'[central]\nid = "central-test"\nstore_dir = "{tmp_path / "store"}"\n{index}'
                    '[server]\nport = 18443\n', encoding="utf-8")
    assert _run("init", "--config", str(path)) == 0
    return path


def issued(config_path: Path) -> list[IssuedList]:
    database = open_central_database(load_central_config(config_path))
    try:
        return EquipmentStore(database.equipment).versions()
    finally:
        database.close()


def versions(config_path: Path) -> list[int]:
    return [v.version for v in issued(config_path)]


def verify(config_path: Path) -> CentralFindings:
    config = load_central_config(config_path)
    index = config.central.index
    return verify_central(config.central.store_dir,
                          index=index if isinstance(index, PostgresIndexConfig) else None)


def test_import_issues_signed_versions_one_after_another(
    initialised_on: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = tmp_path / "agency.csv"
    csv_file.write_text(LIST, encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(initialised_on), "--by", "admin") == 0
    assert "version 1 issued from agency.csv: 2 officers" in capsys.readouterr().out
    assert _run("officers", "import", str(csv_file), "--config", str(initialised_on)) == 0
    kept = issued(initialised_on)
    assert [v.version for v in kept] == [1, 2] and kept[0].by == "admin"
    # Signed with the key the stations pinned at enrollment.
    verified = verify_list(parse_json(kept[-1].envelope),
                           load_public_key(tmp_path / "store" / "identity" / "signing.key.pub"))
    assert verified.version == 2 and [o.officer_no for o in verified.officers] == ["110001", "110002"]
    assert _run("officers", "list", "--config", str(initialised_on)) == 0
    listed = capsys.readouterr().out
    assert "version 1  2 officers" in listed and "version 2  2 officers" in listed
    # The lists are in the central's database, not in a file of their own beside it.
    assert sorted(p.name for p in (tmp_path / "store").iterdir() if p.name.startswith("equipment")) == []


@pytest.mark.parametrize("text, expected", [
    ("警号,姓名,密码\n110001,张伟,135790\n", "column pin"),
    ("警号,姓名\n110001,张伟\n110001,王芳\n", "already on line 2"),
    ("警号,姓名\n11001,张伟\n", "6 digits"),
])
def test_a_refused_file_issues_nothing_and_never_shows_a_pin(
    initialised: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    csv_file = tmp_path / "agency.csv"
    csv_file.write_text(text, encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 65
    err = capsys.readouterr().err
    assert expected in err and "135790" not in err
    assert versions(initialised) == []
    # Control: the same central takes a good file.
    csv_file.write_text(LIST, encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 0
    assert versions(initialised) == [1]


def test_a_store_never_initialised_gets_nothing_issued(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("officers", "list", "--config", str(config_file)) == 78
    assert "edge central init" in capsys.readouterr().err
    assert not (tmp_path / "store" / "index.db").exists()  # nothing made where no central was set up


def _tamper(config_path: Path, pg: PostgresDatabaseUnderTest | None, statement: str) -> None:
    """Someone with the database (not the key): the triggers refuse the change, so they are dropped
    (SQLite) or switched off as a superuser (PostgreSQL's replica role)."""
    if pg is None:
        conn = sqlite3.connect(load_central_config(config_path).layout.index_db)
        conn.execute("DROP TRIGGER officer_lists_no_update")
        conn.execute("DROP TRIGGER officer_lists_no_delete")
        conn.execute(statement)
        conn.commit()
        conn.close()
        return
    with pg.admin() as admin, admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")
        admin.execute(statement.encode())


@pytest.mark.parametrize(("sqlite_statement", "pg_statement", "named", "what"), [
    ("UPDATE officer_lists SET envelope = CAST(REPLACE(CAST(envelope AS TEXT), '王芳', '李四') AS BLOB) "
     "WHERE version = 2",
     "UPDATE officer_lists SET envelope = convert_to(replace(convert_from(envelope, 'UTF8'), '王芳', "
     "'李四'), 'UTF8') WHERE version = 2",
     "officer list version 2", "does not verify"),
    ("DELETE FROM officer_lists WHERE version = 2", "DELETE FROM officer_lists WHERE version = 2",
     "officer list version 3", "expected version 2: a version is missing"),
])
def test_central_verify_checks_every_version_signed_and_names_a_changed_one(
    initialised_on: Path, tmp_path: Path, request: pytest.FixtureRequest, sqlite_statement: str,
    pg_statement: str, named: str, what: str,
) -> None:
    csv_file = tmp_path / "agency.csv"
    csv_file.write_text(LIST, encoding="utf-8")
    for _ in range(3):
        assert _run("officers", "import", str(csv_file), "--config", str(initialised_on)) == 0
    # Control: the untouched versions verify, every one of them checked.
    findings = verify(initialised_on)
    assert findings.problems == [] and findings.checked["officer_lists"] == 3
    on_postgres = isinstance(load_central_config(initialised_on).central.index, PostgresIndexConfig)
    pg: PostgresDatabaseUnderTest | None = request.getfixturevalue("pg_database") if on_postgres else None
    _tamper(initialised_on, pg, pg_statement if on_postgres else sqlite_statement)
    problems = verify(initialised_on).problems
    assert [p.where for p in problems] == [named], problems
    assert what in problems[0].what


def test_the_database_refuses_to_rewrite_a_version_or_to_skip_a_number(initialised_on: Path) -> None:
    config = load_central_config(initialised_on)
    database = open_central_database(config)
    try:
        rows = database.equipment
        key = load_signing_key(config)
        store = EquipmentStore(rows)
        first = store.issue(parse_officer_csv(LIST.encode()), key=key, central="central-test", by="admin")
        conn: Any = rows.conn  # type: ignore[attr-defined]  # the backend's connection: the attacker's view
        for statement, args in [
            ("UPDATE officer_lists SET by = ? WHERE version = 1", ("someone",)),
            ("DELETE FROM officer_lists WHERE version = ?", (1,)),
            ("INSERT INTO officer_lists (version, sha256, issued_at, by, officers, envelope) "
             "VALUES (?, ?, ?, ?, ?, ?)", (3, first.sha256, first.issued_at, "x", 2, first.envelope)),
        ]:
            with pytest.raises(database.errors), database.transaction():
                conn.execute(statement, args)
        # An issuer whose signed list names another number than the one it was given is refused too.
        with pytest.raises(CentralIndexError, match="the next version is 2"):
            rows.issue_officer_list(lambda version: first)
        assert [v.version for v in store.versions()] == [1] and store.versions()[0].by == "admin"
        # Control: the next version, by the ordinary path.
        assert store.issue(parse_officer_csv(LIST.encode()), key=key, central="central-test",
                           by="admin").version == 2
    finally:
        database.close()


def test_two_issuers_at_once_never_sign_the_same_version(initialised_on: Path) -> None:
    """Two receivers (each its own connection to the one database) issuing at the same time: the versions
    are 1..N without a repeat or a gap, each signed with its own number."""
    config: CentralConfig = load_central_config(initialised_on)
    key = load_signing_key(config)
    rows = parse_officer_csv(LIST.encode())
    failures: list[BaseException] = []
    signed: list[int] = []
    start = threading.Barrier(2, timeout=SLOW_S)

    def issuer(name: str) -> None:
        try:
            database = open_central_database(config)
            try:
                store = EquipmentStore(database.equipment)
                start.wait()
                for _ in range(5):
                    signed.append(store.issue(rows, key=key, central="central-test", by=name).version)
            finally:
                database.close()
        except BaseException as exc:  # handed to the test thread
            failures.append(exc)

    threads = [threading.Thread(target=issuer, args=(name,)) for name in ("receiver-a", "receiver-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SLOW_S)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert sorted(signed) == list(range(1, 11))
    kept = issued(initialised_on)
    assert [v.version for v in kept] == list(range(1, 11))
    assert {v.by for v in kept} == {"receiver-a", "receiver-b"}
    public_key = key.public_key()
    assert [verify_list(parse_json(v.envelope), public_key).version for v in kept] == list(range(1, 11))
    assert verify(initialised_on).problems == []


def test_a_list_too_large_for_one_answer_to_a_station_issues_nothing(
    initialised: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wide_name, wide_unit = "张" * 16, "杭" * 16  # the recorder's 32 GBK bytes each
    lines = [f"{100000 + i},{wide_name},ABCDEFGHIJKL,{wide_unit},{i:020X}\n" for i in range(7500)]
    rows = "".join(lines)
    csv_file = tmp_path / "agency.csv"
    csv_file.write_text("警号,姓名,单位编号,单位名称,卡号\n" + rows, encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 65
    assert "one answer to a station carries at most" in capsys.readouterr().err
    assert versions(initialised) == []
    # Control: the same rows, fewer of them.
    csv_file.write_text("警号,姓名,单位编号,单位名称,卡号\n" + "".join(lines[:3000]), encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 0
    assert versions(initialised) == [1]


def test_an_unreachable_database_issues_nothing_and_says_so(
    tmp_path: Path, initialised: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PostgreSQL the command cannot reach: 75, naming where, nothing issued."""
    config_path = tmp_path / "pg.toml"
    config_path.write_text(
        f'[central]\nid = "central-test"\nstore_dir = "{tmp_path / "store"}"\n'
        'index = {type = "postgresql", url = "postgresql://edge@127.0.0.1:1/none"}\n[server]\nport = 18443\n',
        encoding="utf-8")
    csv_file = tmp_path / "agency.csv"
    csv_file.write_text(LIST, encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(config_path)) == 75
    assert "127.0.0.1:1/none" in capsys.readouterr().err
    # Control: the same file into the store's own database.
    assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 0
    assert versions(initialised) == [1]

