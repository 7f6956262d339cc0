"""`edge central migrate`: a site's embedded central (SQLite and a local folder, filled through the real
registration path over mutual TLS) moved into a real PostgreSQL database and a real Ceph bucket with Object
Lock, and what it refuses: a tampered source object, a non-empty target, a running source, a table it does
not know; an interrupted run completed by running it again."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.central.config import load_central_config
from edge.central.index import Role
from edge.central.migration import tables as migration_tables
from edge.central.objects import FileObjectStore
from edge.central.postgres import PostgresDatabase
from edge.central.s3_objects import S3ObjectStore
from edge.central.service import RunningCentral, start_central
from edge.cli import main as edge_main
from edge.custody.keys import load_public_key
from edge.custody.merkle import verify_consistency
from edge.custody.receipt import TreeHead, verify_receipt, verify_tree_head
from tests.central.ceph import CephGateway
from tests.central.conftest import (
    PG_PASSWORD_ENV,
    FakeStation,
    free_port,
    get_json,
    register_over_http,
    tls_session,
)
from tests.central.pg import PostgresDatabaseUnderTest, SplitRoles
from tests.central.s3 import SECRET_ENV, new_bucket
from tests.central.tsa import LocalTsa


@dataclass
class Site:
    """An embedded central with accepted items, and the configuration of its PostgreSQL and S3 target."""

    source: Path
    target: Path
    bundle: Path
    bucket: str
    receipts: list[dict[str, Any]]
    shas: list[str]
    items: list[str]
    accepted_to: int

    @property
    def store(self) -> Path:
        return load_central_config(self.source).central.store_dir


def _single_role_index(pg: PostgresDatabaseUnderTest) -> dict[str, str]:
    """The target index of a single-role install: the receivers' role owns the tables."""
    return {"type": "postgresql", "url": pg.url, "password": f"env:{PG_PASSWORD_ENV}"}


def _inline_table(values: dict[str, Any]) -> str:
    return "{" + ", ".join(f'{key} = "{value}"' for key, value in values.items()) + "}"


def _write_configs(tmp_path: Path, gateway: CephGateway, index: dict[str, Any],
                   bucket: str, tsa: LocalTsa | None = None) -> tuple[Path, Path]:
    common = (f'[central]\nid = "central-site"\nstore_dir = "{tmp_path / "store"}"\n')
    server = f'[server]\nlisten = "127.0.0.1"\nport = {free_port()}\nnames = ["localhost", "127.0.0.1"]\n'
    if tsa is not None:  # checkpoints time-stamped: rows with an identity column (merkle_head_timestamps)
        root = tmp_path / "tsa-root.pem"
        root.write_bytes(tsa.root_pem())
        server += f'[log]\ntsa_url = "{tsa.url}"\ntsa_root_cert = "{root}"\ntsa_interval_s = 0.05\n'
    source = tmp_path / "central.toml"
    source.write_text(common + server, encoding="utf-8")
    target = tmp_path / "central-agency.toml"
    target.write_text(
        common
        + f"index = {_inline_table(index)}\n"
        + f'objects = {{type = "s3", endpoint = "{gateway.endpoint}", bucket = "{bucket}", '
          f'region = "default", access_key_id = "{gateway.access_key_id}", '
          f'secret_access_key = "env:{SECRET_ENV}", part_size_mb = 5}}\n'
        + server, encoding="utf-8")
    return source, target


@pytest.fixture
def gateway(ceph_gateway: CephGateway, monkeypatch: pytest.MonkeyPatch,
            pg_database: PostgresDatabaseUnderTest) -> CephGateway:
    monkeypatch.setenv(SECRET_ENV, ceph_gateway.secret_access_key)
    monkeypatch.setenv(PG_PASSWORD_ENV, pg_database.password)
    return ceph_gateway


async def _register(running: RunningCentral, bundle: Path, station: FakeStation, content: bytes,
                    after: int) -> tuple[dict[str, Any], str, str]:
    acquired = station.acquire(content)
    async with tls_session(bundle) as session:
        status, doc = await register_over_http(session, running.url, station, acquired, after=after)
    assert status == 201, doc
    return doc["receipt"], acquired.sha256, acquired.item


@pytest.fixture
async def site(tmp_path: Path, gateway: CephGateway, pg_database: PostgresDatabaseUnderTest,
               station: FakeStation) -> Site:
    """Two items accepted by an embedded central over mutual TLS (the first tagged permanent evidence
    afterwards), a supervisor granted on its console (a sealed trail row); the target a single-role
    PostgreSQL install."""
    return await _make_site(tmp_path, gateway, station, _single_role_index(pg_database))


async def _make_site(tmp_path: Path, gateway: CephGateway, station: FakeStation,
                     index: dict[str, Any], tsa: LocalTsa | None = None) -> Site:
    bucket = new_bucket(gateway)
    source, target = _write_configs(tmp_path, gateway, index, bucket, tsa)
    assert edge_main(["central", "init", "--config", str(source)]) == 0
    pub = tmp_path / "station.pub"
    pub.write_bytes(station.key.public_pem())
    bundle = tmp_path / "bundle"
    assert edge_main(["central", "enroll", station.station_id, "--config", str(source), "--signing-key",
                      str(pub), "--out", str(bundle)]) == 0
    running = await start_central(load_central_config(source))
    try:
        first, first_sha, first_item = await _register(running, bundle, station, b"first clip " * 3000, 0)
        if tsa is not None:
            # The stamper stamps only the newest unstamped head (it covers the older ones): the first head
            # is stamped before the second exists, or a loaded machine leaves one stamp, not two.
            await _stamps_reach(source, 1)
        accepted_to = station.ledger.head()[0]
        station.tag(first_item, {"retention": "permanent", "case_number": "A-2026-7"})
        second, second_sha, second_item = await _register(running, bundle, station, os.urandom(600_000),
                                                          accepted_to)
        accepted_to = station.ledger.head()[0]
        running.parts.console.grant("auditor-1", Role.SUPERVISOR, (), by="admin", reason="migration test")
        if tsa is not None:
            await _stamps_reach(source, 2)
    finally:
        await running.stop()
    return Site(source, target, bundle, bucket, [first, second], [first_sha, second_sha],
                [first_item, second_item], accepted_to)


async def _stamps_reach(source: Path, count: int) -> None:
    """Wait (bounded) until the running embedded central has time-stamped `count` checkpoints."""
    async with asyncio.timeout(60):
        while _stamped(load_central_config(source).layout.index_db) < count:
            await asyncio.sleep(0.05)


def _stamped(index_db: Path) -> int:
    """The checkpoints the running embedded central has time-stamped so far."""
    conn = sqlite3.connect(f"file:{index_db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT count(*) FROM merkle_head_timestamps").fetchone()
    finally:
        conn.close()
    return int(row[0]) if row is not None else 0


@pytest.fixture
async def tsa() -> AsyncIterator[LocalTsa]:
    authority = LocalTsa()
    await authority.start()
    yield authority
    await authority.stop()


def _migrate(site: Site) -> int:
    return edge_main(["central", "migrate", "--config", str(site.source), "--to", str(site.target)])


def _target_rows(pg: PostgresDatabaseUnderTest, table: str = "items") -> int:
    """The rows of ``table`` in the target database (0 when the migration never made its schema)."""
    with pg.admin() as admin:
        exists = admin.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        if not (exists and exists[0]):
            return 0
        row = admin.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]


def _bucket_store(site: Site) -> S3ObjectStore:
    config = load_central_config(site.target)
    objects = config.central.objects
    assert objects.type == "s3"
    return S3ObjectStore(objects, objects.secret_access_key.resolve())


async def test_a_migrated_central_runs_on_postgresql_and_s3_and_old_receipts_stay_consistent(
    site: Site, station: FakeStation, pg_database: PostgresDatabaseUnderTest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    assert _migrate(site) == 0
    out, err = capsys.readouterr()
    assert "verify on the target: OK" in out, out + err
    assert "merkle_tree_heads:" in out and "items: 2 rows" in out and "2 copied" in out, out
    assert "objects: 2 to copy" in err  # progress on stderr
    assert pg_database.password not in out + err
    # Every table the source holds, row for row (the migration compared them itself; here two by hand).
    assert _target_rows(pg_database, "grant_events") == 1 and _target_rows(pg_database, "trail_seals") >= 1
    # Locks as each item's class requires: the permanent one under a legal hold.
    bucket = _bucket_store(site)
    mode, until, held = bucket.retention_of(site.shas[0])
    assert mode == "COMPLIANCE" and held and until is not None
    mode, until, held = bucket.retention_of(site.shas[1])
    assert mode == "COMPLIANCE" and not held and until is not None
    # The default class, 183 days from acceptance (a few minutes ago).
    assert until - datetime.now(UTC) > timedelta(days=182), until
    # `edge verify` of the target configuration, on its own.
    capsys.readouterr()
    assert edge_main(["verify", str(site.target)]) == 0, capsys.readouterr()

    # The central starts on the target and signs on from the migrated log.
    key = load_public_key(site.store / "identity" / "signing.key.pub")
    old = TreeHead.from_dict(site.receipts[1]["tree_head"])
    running = await start_central(load_central_config(site.target))
    try:
        third, _, _ = await _register(running, site.bundle, station, b"after the move " * 2000,
                                      site.accepted_to)
        new = TreeHead.from_dict(third["tree_head"])
        # A trail row appended on PostgreSQL: its seal continues the migrated seals' numbering.
        running.parts.console.grant("auditor-2", Role.READER, ("320100",), by="admin", reason="moved")
        async with tls_session(site.bundle) as session:
            status, proof = await get_json(
                session, f"{running.url}/v1/log/consistency?first={old.tree_size}&second={new.tree_size}")
    finally:
        await running.stop()
    assert status == 200, proof
    assert verify_tree_head(new, key) == [] and new.tree_size > old.tree_size
    assert verify_consistency(old.tree_size, new.tree_size, old.root, new.root,
                              [bytes.fromhex(h) for h in proof["proof"]])
    # The receipts issued before the move still verify, unchanged.
    for receipt, sha in zip(site.receipts, site.shas, strict=True):
        assert verify_receipt(receipt, key, expected_sha256=sha) == []
    # Control: a head that is not a prefix of the new one fails the same check.
    assert not verify_consistency(old.tree_size, new.tree_size, bytes(32), new.root,
                                  [bytes.fromhex(h) for h in proof["proof"]])
    # The migrated history and what the new central added since verify as one store.
    capsys.readouterr()
    assert edge_main(["verify", str(site.target)]) == 0, capsys.readouterr()
    assert _target_rows(pg_database, "grant_events") == 2


async def test_a_tampered_source_object_is_refused_and_named_then_a_rerun_completes(
    site: Site, pg_database: PostgresDatabaseUnderTest, capsys: pytest.CaptureFixture[str],
) -> None:
    local = FileObjectStore(site.store / "objects")
    path = local.path_of(site.shas[0])
    original = path.read_bytes()
    os.chmod(path, 0o600)
    path.write_bytes(b"X" + original[1:])  # same size, other bytes
    capsys.readouterr()
    assert _migrate(site) == 1
    out, err = capsys.readouterr()
    named = [line for line in out.splitlines() if line.startswith("refused:")]
    assert len(named) == 1 and site.shas[0] in named[0] and site.items[0] in named[0], out
    assert "the migration is NOT done" in err and "verify on the target: not run" in out
    assert _target_rows(pg_database) == 0, "nothing of the index is claimed"
    bucket = _bucket_store(site)
    assert not bucket.exists(site.shas[0])  # the altered bytes never became an object
    assert bucket.exists(site.shas[1])  # control: the intact one was copied

    path.write_bytes(original)  # restored from backup
    capsys.readouterr()
    assert _migrate(site) == 0
    out, _ = capsys.readouterr()
    assert "1 copied" in out and "1 already in the bucket" in out, out  # resumed, not sent again
    assert "verify on the target: OK" in out


async def test_a_non_empty_target_is_refused(
    site: Site, pg_database: PostgresDatabaseUnderTest, station: FakeStation,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = PostgresDatabase.open(pg_database.url, password=pg_database.password)
    try:
        other.index.enroll_station("st-elsewhere", station.key.public_key_b64, "d" * 64)
    finally:
        other.close()
    capsys.readouterr()
    assert _migrate(site) == 1
    _, err = capsys.readouterr()
    assert "is not empty and does not hold this store's index" in err and "table stations" in err, err
    assert _target_rows(pg_database) == 0 and _target_rows(pg_database, "stations") == 1
    assert not _bucket_store(site).exists(site.shas[0]), "refused before any object was sent"
    # (The control, an empty target accepted, is the first test.)


async def test_an_interrupted_migration_completes_when_run_again(
    site: Site, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_copy = migration_tables.copy_tables

    def interrupted(source: Any, target: Any, plans: Any, progress: Any) -> Any:
        def stop_in_the_log(table: str, rows: int) -> None:
            if table == "merkle_leaves":
                raise KeyboardInterrupt  # Ctrl-C (or the power) in the middle of the index copy
            progress(table, rows)
        return real_copy(source, target, plans, stop_in_the_log)

    with monkeypatch.context() as patched:
        patched.setattr("edge.central.migration.run.copy_tables", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _migrate(site)
    assert _target_rows(pg_database) == 0, "the uncommitted copy left nothing behind"
    capsys.readouterr()
    assert _migrate(site) == 0
    out, _ = capsys.readouterr()
    assert "2 already in the bucket" in out and "verify on the target: OK" in out, out
    # Run once more after it finished: the committed copy is recognised, not copied twice.
    assert _migrate(site) == 0
    out, _ = capsys.readouterr()
    assert "already copied by an earlier run" in out and "verify on the target: OK" in out, out


async def test_a_running_source_is_refused(
    site: Site, pg_database: PostgresDatabaseUnderTest, capsys: pytest.CaptureFixture[str],
) -> None:
    running = await start_central(load_central_config(site.source))
    try:
        capsys.readouterr()
        assert _migrate(site) == 75
        _, err = capsys.readouterr()
        assert str(os.getpid()) in err, err  # the holder is named
    finally:
        await running.stop()
    assert _target_rows(pg_database) == 0
    assert not _bucket_store(site).exists(site.shas[0])


async def test_a_table_the_migrator_does_not_know_stops_it(
    site: Site, pg_database: PostgresDatabaseUnderTest, capsys: pytest.CaptureFixture[str],
) -> None:
    import sqlite3

    conn = sqlite3.connect(site.store / "index.db")
    conn.execute("CREATE TABLE pending_surprises (id INTEGER PRIMARY KEY, what TEXT)")
    conn.execute("INSERT INTO pending_surprises (what) VALUES ('a row nobody decided about')")
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert _migrate(site) == 1
    _, err = capsys.readouterr()
    assert "pending_surprises" in err and "does not know" in err, err
    assert _target_rows(pg_database) == 0
    assert not _bucket_store(site).exists(site.shas[0])
    # Control: the same store without the table migrates (and the list knows every table it has).
    conn = sqlite3.connect(site.store / "index.db")
    conn.execute("DROP TABLE pending_surprises")
    conn.commit()
    conn.close()
    assert "pending_surprises" not in migration_tables.COPIED_TABLES
    assert _migrate(site) == 0



def _runtime_sequence_privilege(split: SplitRoles, privilege: str) -> dict[str, bool]:
    """Whether the runtime role holds ``privilege`` on each sequence of the target database."""
    with split.database.admin() as admin:
        rows = admin.execute(
            "SELECT sequencename, "
            "has_sequence_privilege(%s, format('%%I.%%I', schemaname, sequencename), %s) "
            "FROM pg_sequences WHERE schemaname = current_schema()", (split.runtime, privilege)).fetchall()
    return {str(name): bool(held) for name, held in rows}


def _last_value(split: SplitRoles, sequence: str) -> int | None:
    """The last value ``sequence`` gave or was set to (None: it gives its first value next)."""
    with split.database.admin() as admin:
        row = admin.execute("SELECT last_value FROM pg_sequences WHERE sequencename = %s",
                            (sequence,)).fetchone()
    assert row is not None, f"no sequence {sequence}"
    return None if row[0] is None else int(str(row[0]))


async def test_split_roles_the_runtime_copies_the_rows_and_the_owner_continues_the_sequences(
    tmp_path: Path, gateway: CephGateway, split_roles: SplitRoles, station: FakeStation, tsa: LocalTsa,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    site = await _make_site(tmp_path, gateway, station, split_roles.index(monkeypatch), tsa)
    capsys.readouterr()
    assert _migrate(site) == 0
    out, err = capsys.readouterr()
    assert "verify on the target: OK" in out, out + err
    stamped = int(out.split("merkle_head_timestamps: ")[1].split(" rows")[0])
    assert stamped >= 2, out
    assert split_roles.owner_password not in out + err and split_roles.runtime_password not in out + err
    # Least privilege holds after the migration: the receivers' role may draw from the sequences, never
    # set them (the owner did).
    assert not any(_runtime_sequence_privilege(split_roles, "UPDATE").values())
    usage = _runtime_sequence_privilege(split_roles, "USAGE")
    assert "merkle_head_timestamps_id_seq" in usage and all(usage.values())  # control: it sees a grant
    # The owner moved the identity's sequence past the copied ids: the next id drawn is a new one.
    assert _last_value(split_roles, "merkle_head_timestamps_id_seq") == stamped
    # A run that stopped between its committed copy and the owner's step: the rerun completes it.
    with split_roles.database.admin() as admin:
        admin.execute("SELECT setval('merkle_head_timestamps_id_seq', 1, false)")
    assert _last_value(split_roles, "merkle_head_timestamps_id_seq") is None  # control: as if never set
    assert _migrate(site) == 0
    out, _ = capsys.readouterr()
    assert "already copied by an earlier run" in out and "verify on the target: OK" in out, out
    assert _last_value(split_roles, "merkle_head_timestamps_id_seq") == stamped
    # The receivers go on time-stamping checkpoints on the migrated log, each under the next id.
    running = await start_central(load_central_config(site.target))
    try:
        await _register(running, site.bundle, station, b"after the move " * 2000, site.accepted_to)
        async with asyncio.timeout(60):
            while _target_rows(split_roles.database, "merkle_head_timestamps") == stamped:
                await asyncio.sleep(0.05)
    finally:
        await running.stop()
    with split_roles.database.admin() as admin:
        rows = admin.execute("SELECT id FROM merkle_head_timestamps ORDER BY id").fetchall()
    ids = [row[0] for row in rows]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) > stamped, ids


async def test_a_target_given_only_the_runtime_role_is_refused_before_anything_is_copied(
    tmp_path: Path, gateway: CephGateway, split_roles: SplitRoles, station: FakeStation, tsa: LocalTsa,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # The owner made the schema (`edge central migrate-schema`); the migration is given the receivers' URL.
    PostgresDatabase.open(split_roles.url(split_roles.runtime), password=split_roles.runtime_password,
                          owner_url=split_roles.url(split_roles.owner),
                          owner_password=split_roles.owner_password).close()
    site = await _make_site(tmp_path, gateway, station, split_roles.index(monkeypatch, with_owner=False),
                            tsa)
    capsys.readouterr()
    assert _migrate(site) == 78
    _, err = capsys.readouterr()
    assert "central.index.owner_url" in err and split_roles.runtime in err, err
    assert _target_rows(split_roles.database) == 0
    assert not _bucket_store(site).exists(site.shas[0]), "refused before any object was sent"
    # Control: the same target with the owner's URL added migrates.
    text = site.target.read_text(encoding="utf-8")
    index = split_roles.index(monkeypatch)
    site.target.write_text(text.replace(_inline_table(split_roles.index(monkeypatch, with_owner=False)),
                                        _inline_table(index)), encoding="utf-8")
    assert "owner_url" in site.target.read_text(encoding="utf-8")
    assert _migrate(site) == 0
    assert _target_rows(split_roles.database) == 2


def test_configurations_that_are_not_an_embedded_store_and_its_copy_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "store"
    server = f'[server]\nlisten = "127.0.0.1"\nport = {free_port()}\nnames = ["localhost"]\n'
    source = tmp_path / "central.toml"
    source.write_text(f'[central]\nid = "central-site"\nstore_dir = "{store}"\n' + server, encoding="utf-8")
    other = tmp_path / "other.toml"
    other.write_text(f'[central]\nid = "central-other"\nstore_dir = "{tmp_path / "elsewhere"}"\n'
                     'index = {type = "postgresql", url = "postgresql://edge@127.0.0.1:1/edge"}\n' + server,
                     encoding="utf-8")
    assert edge_main(["central", "migrate", "--config", str(source), "--to", str(other)]) == 78
    _, err = capsys.readouterr()
    assert "--to must name an S3 bucket" in err and "the central id differs" in err
    assert "the store_dir differs" in err
    assert not store.exists() and not (tmp_path / "elsewhere").exists(), "nothing was made"


async def test_a_migration_killed_while_it_copies_completes_when_run_again(
    site: Site, pg_database: PostgresDatabaseUnderTest, capsys: pytest.CaptureFixture[str],
) -> None:
    """kill -9 of the real command once it has begun copying objects (wherever it then is: the rerun must
    finish from any point); the kernel releases the store's lock with the process."""
    migrating = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "central", "migrate", "--config", str(site.source), "--to",
         str(site.target)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert migrating.stderr is not None
        seen = b""
        while b"objects:" not in seen:
            line = migrating.stderr.readline()
            if not line:
                break
            seen += line
        assert b"objects:" in seen, seen
    finally:
        migrating.kill()
        migrating.wait(timeout=60)
        if migrating.stderr is not None:
            migrating.stderr.close()
    capsys.readouterr()
    assert _migrate(site) == 0
    out, _ = capsys.readouterr()
    assert "verify on the target: OK" in out and "items: 2 rows" in out, out
