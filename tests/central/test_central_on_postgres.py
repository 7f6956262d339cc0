"""The central on PostgreSQL end to end: `edge central init|enroll|revoke`, a receiver serving stations
over mutual TLS, `edge verify` of the configuration, and the faults of issue 13: the server restarted in
the middle of a registration, two receivers appending to one log, tampering below the triggers."""

from __future__ import annotations

import argparse
import asyncio
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central.cli import add_central_parser
from edge.central.config import PostgresIndexConfig, load_central_config
from edge.central.index import Role
from edge.central.log import MerkleLog
from edge.central.postgres import PostgresDatabase, PostgresIndex
from edge.central.registration import Rejection
from edge.central.service import start_central
from edge.central.verify import verify_central_store
from edge.cli import main as edge_main
from edge.custody.keys import StationKey
from edge.custody.problems import Problem
from edge.custody.receipt import verify_receipt
from tests.central.conftest import (
    PG_PASSWORD_ENV,
    TUS,
    CentralParts,
    FakeStation,
    free_port,
    make_central_parts,
    post_json,
    postgres_index,
    register_over_http,
    start_http_central,
    tls_session,
    tus_upload,
)
from tests.central.pg import PostgresDatabaseUnderTest

# The time a step with a server restart in it may take on a loaded machine: a bound, not a premise.
SLOW_S = 120.0


def _run_central_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge")
    add_central_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["central", *argv])
    status: int = args.func(args)
    return status


def _config_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "central.toml"
    path.write_text(
        f'[central]\nid = "central-pg"\nstore_dir = "{tmp_path / "store"}"\n'
        f'index = {{type = "postgresql", url = "{url}", password = "env:{PG_PASSWORD_ENV}"}}\n'
        f'[server]\nlisten = "127.0.0.1"\nport = {free_port()}\nnames = ["localhost", "127.0.0.1"]\n',
        encoding="utf-8")
    return path


async def test_init_enroll_run_revoke_and_verify_on_postgresql(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, capsys: pytest.CaptureFixture[str],
) -> None:
    postgres_index(pg_database, monkeypatch)
    config_file = _config_file(tmp_path, pg_database.url)
    assert _run_central_cli("init", "--config", str(config_file)) == 0
    pub = tmp_path / "station.pub"
    pub.write_bytes(station.key.public_pem())
    bundle = tmp_path / "bundle"
    assert _run_central_cli("enroll", station.station_id, "--config", str(config_file), "--signing-key",
                            str(pub), "--out", str(bundle)) == 0
    out, err = capsys.readouterr()
    assert pg_database.url in out + err and pg_database.password not in out + err
    config = load_central_config(config_file)
    assert not config.layout.index_db.exists(), "the index is in PostgreSQL, not in the store"

    running = await start_central(config)
    try:
        key = running.parts.signing_key.public_key()
        acquired = station.acquire(b"clip on postgres " * 4000)
        async with tls_session(bundle) as session:
            status, doc = await register_over_http(session, running.url, station, acquired)
            assert status == 201, doc
            assert verify_receipt(doc["receipt"], key, expected_item=acquired.item,
                                  expected_sha256=acquired.sha256, expected_station=station.station_id) == []
            # `edge central revoke` beside the running receiver: it writes the shared database, and the
            # receiver refuses the station at its next request.
            assert _run_central_cli("revoke", station.station_id, "--config", str(config_file),
                                    "--reason", "dock stolen") == 0
            async with session.post(f"{running.url}/v1/uploads",
                                    headers={**TUS, "Upload-Length": "100"}) as refused:
                assert refused.status == 403
                assert (await refused.json())["error"] == "station_revoked"
    finally:
        await running.stop()
    with pg_database.admin() as admin:
        assert admin.execute("SELECT count(*) FROM items").fetchone() == (1,)
        assert admin.execute("SELECT event FROM enrolment_events ORDER BY id").fetchall() == [
            ("enrolled",), ("revoked",)]

    # `edge verify` of the configuration: the store's files and the index in PostgreSQL.
    capsys.readouterr()
    assert edge_main(["verify", str(config_file)]) == 0
    out, _ = capsys.readouterr()
    assert pg_database.url in out and pg_database.password not in out


async def _registered_store(tmp_path: Path, pg_database: PostgresDatabaseUnderTest,
                            station: FakeStation, n: int) -> tuple[CentralParts, list[str]]:
    """A central store on PostgreSQL with ``n`` items of ``station`` accepted through the registrar."""
    database = PostgresDatabase.open(pg_database.url, password=pg_database.password)
    parts = make_central_parts(tmp_path / "central", database=database)
    parts.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
    items = []
    for number in range(n):
        acquired = station.acquire(f"item {number} ".encode() * 100)
        body = {"upload": parts.upload(station.station_id, acquired.content), "manifest": acquired.manifest,
                "ledger": station.segment(parts.index.ledger_head(station.station_id)[0])}
        await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
        items.append(acquired.item)
    return parts, items


def _verify(parts: CentralParts, pg_database: PostgresDatabaseUnderTest,
            monkeypatch: pytest.MonkeyPatch) -> list[Problem]:
    index = PostgresIndexConfig.model_validate(postgres_index(pg_database, monkeypatch))
    return verify_central_store(parts.root, central_public_key=parts.signing_key.public_key(), index=index)


def _tamper(pg_database: PostgresDatabaseUnderTest, statement: str) -> None:
    """As the tables' owner with superuser rights: triggers switched off for the session (replica role),
    which is what it takes; the ordinary refusal is tested in test_postgres_store.py."""
    with pg_database.admin() as admin, admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")
        admin.execute(statement.encode())


@pytest.mark.parametrize(("statement", "named"), [
    ("DELETE FROM items WHERE leaf_index = 1", "leaf 1"),
    ("UPDATE merkle_leaves SET entry = replace(entry, '\"size\":', '\"size\":1') WHERE idx = 2", "leaf 2"),
    ("DELETE FROM rejections WHERE id = 1", "rejections"),
])
async def test_verify_names_rows_deleted_or_edited_below_the_triggers(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, statement: str, named: str,
) -> None:
    parts, _ = await _registered_store(tmp_path, pg_database, station, 3)
    for _ in range(2):  # two refusals, so that deleting the first leaves a gap
        parts.index.record_rejection(station=station.station_id, code="bad_request", detail="test")
    parts.index.close()
    assert _verify(parts, pg_database, monkeypatch) == []  # the control: the untouched store verifies
    _tamper(pg_database, statement)
    problems = _verify(parts, pg_database, monkeypatch)
    assert problems, "the tampering went unnoticed"
    assert any(named in f"{p.where} {p.what}" for p in problems), problems


async def test_a_console_trail_row_edited_below_the_triggers_is_named(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    try:
        console = central.console_store
        console.grant("wang.audit", Role.SUPERVISOR, (), by="admin", reason="audit of unit 3201")
        central.store_index.log_access(reader="wang.audit", what="search", item=None, query="q", remote=None)
        parts_root = central.config.central.store_dir
        key = central.central_public_key
    finally:
        await central.running.stop()
    index = PostgresIndexConfig.model_validate(postgres_index(pg_database, monkeypatch))
    assert verify_central_store(parts_root, central_public_key=key, index=index) == []
    _tamper(pg_database, "UPDATE grant_events SET reason = 'nothing to see' WHERE id = 1")
    problems = verify_central_store(parts_root, central_public_key=key, index=index)
    assert [p.where for p in problems] == ["grant_events"], problems
    assert "row 1 was edited" in problems[0].what


_HISTORY = ("station_ledger", "station_checkpoints", "items", "item_case", "metadata_history",
            "merkle_leaves", "merkle_nodes", "merkle_tree_heads")


def _counts(pg_database: PostgresDatabaseUnderTest) -> dict[str, int]:
    with pg_database.admin() as admin:
        counts = {}
        for table in _HISTORY:
            row = admin.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
            assert row is not None
            counts[table] = int(str(row[0]))
        return counts


async def test_postgresql_restarted_mid_registration_leaves_nothing_and_the_retry_gets_its_receipt(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    try:
        index = central.store_index
        assert isinstance(index, PostgresIndex)
        index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        headers = {"X-Edge-Station": station.station_id}
        insert_item = index.insert_item
        restarted = threading.Event()

        def restart_then_insert(*args: Any, **kwargs: Any) -> Any:
            # Inside the registration's transaction, after its ledger rows were written: the server goes
            # away (every session cut), so the insert and the commit fail.
            if not restarted.is_set():
                restarted.set()
                pg_database.server.restart()
            return insert_item(*args, **kwargs)

        monkeypatch.setattr(index, "insert_item", restart_then_insert)
        acquired = station.acquire(b"registered across a restart " * 1000)
        timeout = aiohttp.ClientTimeout(total=SLOW_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            upload = await tus_upload(session, central.url, acquired.content, headers)
            body = {"upload": upload, "manifest": acquired.manifest, "ledger": station.segment(0)}
            url = f"{central.url}/v1/stations/{station.station_id}/items"
            before = _counts(pg_database)
            status, doc = await post_json(session, url, body, headers)
            assert restarted.is_set()
            assert status == 503 and doc["error"] == "index_unavailable", doc
            after = _counts(pg_database)
            # The ledger segment is accepted in a transaction of its own, before the item's (and whole:
            # its three entries and its checkpoint); of the item, nothing was kept.
            assert (after.pop("station_ledger"), after.pop("station_checkpoints")) == (3, 1)
            del before["station_ledger"], before["station_checkpoints"]
            assert after == before, "nothing of the item's registration was kept"
            assert before["items"] == before["merkle_leaves"] == 0
            # The station retries with the same upload and the same segment: accepted, with its receipt.
            status, doc = await post_json(session, url, body, headers)
            assert status == 201, doc
            assert verify_receipt(doc["receipt"], central.central_public_key, expected_item=acquired.item,
                                  expected_sha256=acquired.sha256) == []
    finally:
        await central.running.stop()


def test_two_receivers_appending_at_once_sign_one_consistent_history(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest,
) -> None:
    """Two receivers (each its own process's connection and registrar, one database) register items of
    two stations at the same time: every tree head either signs verifies against the one log, and each
    head is consistent with every later one."""
    key = StationKey.generate()
    origin = "central-pg"

    def receiver(name: str, count: int, failures: list[BaseException]) -> None:
        try:
            fake = FakeStation(f"st-{name}")  # its SQLite ledger is used in this thread only
            database = PostgresDatabase.open(pg_database.url, password=pg_database.password)
            parts = make_central_parts(tmp_path / name, origin=origin, database=database, signing_key=key)
            parts.index.enroll_station(fake.station_id, fake.key.public_key_b64, "c" * 64)

            async def register_all() -> None:
                for number in range(count):
                    acquired = fake.acquire(f"{name} {number} ".encode() * 50)
                    body = {"upload": parts.upload(fake.station_id, acquired.content),
                            "manifest": acquired.manifest,
                            "ledger": fake.segment(parts.index.ledger_head(fake.station_id)[0])}
                    try:
                        await parts.registrar.register_item(parts.caller(fake.station_id), fake.station_id,
                                                            body)
                    except Rejection as exc:
                        raise AssertionError(f"{name}: {exc}") from exc

            asyncio.run(register_all())
            database.close()
        except BaseException as exc:  # handed to the test thread
            failures.append(exc)

    failures: list[BaseException] = []
    threads = [threading.Thread(target=receiver, args=(name, 6, failures)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SLOW_S)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    database = PostgresDatabase.open(pg_database.url, password=pg_database.password)
    try:
        log = MerkleLog(database.log_store, key, origin)
        assert log.size() == 12
        assert log.verify(key.public_key()) == []
        heads = list(database.log_store.heads())
        assert len(heads) >= 12
        assert [int(str(head[0])) for head in heads] == list(range(1, len(heads) + 1))
        sizes = [int(str(head[2])) for head in heads]
        assert sizes == sorted(sizes), "a later head never covers fewer leaves"
    finally:
        database.close()


def test_an_unreachable_database_stops_the_start_with_75_naming_it_without_the_password(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A store initialised on a reachable server (as in the end-to-end test, which then runs), started
    with its database's URL on a port where no server listens."""
    postgres_index(pg_database, monkeypatch)
    assert _run_central_cli("init", "--config", str(_config_file(tmp_path, pg_database.url))) == 0
    secret = "not-for-the-log-7f3a"
    monkeypatch.setenv(PG_PASSWORD_ENV, secret)
    url = f"postgresql://edge@127.0.0.1:{free_port()}/central"
    config_file = _config_file(tmp_path, url)
    capsys.readouterr()
    assert _run_central_cli("run", "--config", str(config_file)) == 75
    _, err = capsys.readouterr()
    assert url in err and secret not in err
    assert "cannot be used" in err
