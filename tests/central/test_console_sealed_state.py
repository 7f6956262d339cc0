"""The console's sealed state after the second review: a NULL seal written after the seals began is
tampering (R14); a console.key that is not the store's stops the start; a session's last request is under
its row's seal; a TOTP secret put back from a backup is refused (R8).

Each finding has a reproduction (it failed on the code before the fix) and a control showing that the
check can fail the other way."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.central.cli import add_central_parser
from edge.central.config import CentralConfig, CentralLayout
from edge.central.console.credentials import hash_password
from edge.central.console.secret_key import ConsoleSecretKey, SealedSecretError, prepare_console_key
from edge.central.console.sessions import AuthMethod, SessionStore
from edge.central.identity import init_central
from edge.central.index import Role
from edge.central.service import start_central
from edge.central.sqlite import SqliteDatabase
from edge.central.verify import verify_central_store
from edge.pki.names import IdentityError
from tests.central.conftest import HttpCentral, central_config, make_central_parts, start_http_central
from tests.central.test_console_at_rest import PASSWORD, _code, _sign_in
from tests.central.test_verify_console_trails import Console, _attacker, _seal_of
from tests.central.test_verify_console_trails import console as console

# -- R14: a NULL seal after the seals began ------------------------------------------------------------


def test_an_edited_row_whose_seal_was_emptied_is_named_as_tampering(console: Console) -> None:
    seal = _seal_of(console, "access_log", 2)
    conn = _attacker(console.root / "index.db")
    try:
        conn.execute("UPDATE access_log SET reader = 'someone.else' WHERE id = 2")
        conn.execute("UPDATE trail_seals SET mac = NULL WHERE seq = ?", (seal,))
    finally:
        conn.close()
    problems = console.verify()
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"access_log: row 2: its seal {seal} has no MAC, though the seals began")
    assert "tampering, not a key outage" in problems[0]
    assert "unusable" not in problems[0]


def test_control_a_null_seal_from_before_the_seals_began_is_a_key_outage(tmp_path: Path) -> None:
    """A store whose first trail row was appended while it had no key (before any start sealed it)."""
    root = tmp_path / "central"
    parts = make_central_parts(root)
    layout = CentralLayout(root)
    key_text = layout.console_key.read_bytes()
    layout.console_key.unlink()
    database = parts.index.unit
    assert isinstance(database, SqliteDatabase)
    database.console.create_account("li.legal", "$argon2id$not-a-real-hash", by="admin")  # NULL seal
    layout.console_key.write_bytes(key_text)
    layout.console_key.chmod(0o600)
    assert prepare_console_key(layout.console_key, database.console, by="central-start") is not None
    parts.index.close()
    problems = [str(p) for p in verify_central_store(root, central_public_key=parts.signing_key.public_key())]
    assert problems == ["account_events: row 1 was appended without a seal (the console key was unusable "
                        "then, before the seals began)"]


def test_once_the_seals_began_a_row_without_a_key_is_refused_not_left_unsealed(console: Console) -> None:
    CentralLayout(console.root).console_key.unlink()
    database = SqliteDatabase.open(console.root / "index.db")  # an administration command's connection
    try:
        with pytest.raises(sqlite3.Error):
            database.console.grant("zhao.clerk", Role.READER, ["330106000000"], by="admin", reason="case")
        assert database.console.grant_of("zhao.clerk") is None
        nulls = database.conn.execute("SELECT count(*) FROM trail_seals WHERE mac IS NULL").fetchone()[0]
        assert nulls == 0
    finally:
        database.close()


def test_control_a_store_not_sealed_yet_appends_without_a_key(tmp_path: Path) -> None:
    (tmp_path / "identity").mkdir()
    database = SqliteDatabase.open(tmp_path / "index.db")
    try:
        database.console.grant("zhao.clerk", Role.READER, ["330106000000"], by="admin", reason="case")
        assert database.console.grant_of("zhao.clerk") is not None
        assert [tuple(r) for r in database.conn.execute("SELECT mac FROM trail_seals")] == [(None,)]
    finally:
        database.close()


# -- a console.key that is not the store's --------------------------------------------------------------


def _another_key(path: Path) -> None:
    """A well-formed key of another store (format v2, as a sealed store's key is), put at ``path``."""
    path.unlink()
    ConsoleSecretKey.create(path).record_trails_sealed()


async def _started_once(tmp_path: Path) -> CentralConfig:
    config = central_config(tmp_path / "store", dev=False)
    init_central(config)
    running = await start_central(config)  # the first start seals the trails (writes the check value)
    running.parts.console.create_account("li.legal", "$argon2id$not-a-real-hash", by="admin")
    await running.stop()
    return config


async def test_a_central_with_another_stores_console_key_does_not_start(tmp_path: Path) -> None:
    config = await _started_once(tmp_path)
    key = CentralLayout(config.central.store_dir).console_key
    _another_key(key)
    with pytest.raises(IdentityError, match=r"console\.key .* is not the key this store's console trails"):
        running = await start_central(config)
        await running.stop()  # reached only when the start wrongly succeeds


async def test_control_the_stores_own_key_restored_starts(tmp_path: Path) -> None:
    config = await _started_once(tmp_path)
    key = CentralLayout(config.central.store_dir).console_key
    own = key.read_bytes()
    _another_key(key)
    key.write_bytes(own)  # the right backup restored
    running = await start_central(config)
    await running.stop()


async def test_edge_central_run_exits_78_on_another_stores_key(tmp_path: Path) -> None:
    config = await _started_once(tmp_path)
    store = config.central.store_dir
    config_path = tmp_path / "central.toml"
    config_path.write_text(f'[central]\nid = "central-test"\nstore_dir = "{store}"\n'
                           '[server]\nlisten = "127.0.0.1"\nport = 1\nnames = ["localhost"]\n',
                           encoding="utf-8")
    key = CentralLayout(store).console_key
    _another_key(key)
    done = subprocess.run([sys.executable, "-m", "edge.cli", "central", "run", "--config", str(config_path)],
                          capture_output=True, check=False, timeout=60)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 78, stderr
    assert str(key) in stderr and "is not the key this store's console trails were sealed with" in stderr


def test_verify_names_another_stores_key_once_not_every_row(console: Console) -> None:
    assert console.verify() == []  # control: the store's own key
    _another_key(CentralLayout(console.root).console_key)
    problems = console.verify()
    assert len(problems) == 1, problems
    assert problems[0].startswith("file identity/console.key: it is not the key this store's console trails")


def test_control_an_edited_check_value_alone_is_not_a_wrong_key(console: Console) -> None:
    """The marker edited by a DB writer: the rows still check with the key, so the start goes on and
    `edge verify` names the marker, not the key."""
    conn = _attacker(console.root / "index.db")
    try:
        conn.execute("UPDATE trail_seals SET mac = ? WHERE tbl = '(seals begin)'", ("0" * 64,))
    finally:
        conn.close()
    database = SqliteDatabase.open(console.root / "index.db")
    try:
        assert prepare_console_key(CentralLayout(console.root).console_key, database.console,
                                   by="central-start") is not None
    finally:
        database.close()
    problems = console.verify()
    assert len(problems) == 1 and "(where the seals begin) was edited" in problems[0], problems


# -- a session's last request is under its row's seal -------------------------------------------------

T = 1_800_000_000.0
IDLE_S = 15 * 60.0
SECRET = b"s" * 32


class Clock:
    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> float:
        return self.now


def _sessions(database: SqliteDatabase, clock: Clock) -> SessionStore:
    return SessionStore(database.console, idle_s=IDLE_S, absolute_s=8 * 3600.0, clock=clock, secret=SECRET)


def _last_seen(database: SqliteDatabase) -> float:
    return float(database.conn.execute("SELECT last_seen_s FROM console_sessions").fetchone()[0])


@pytest.fixture
def database(tmp_path: Path) -> Iterator[SqliteDatabase]:
    db = SqliteDatabase.open(tmp_path / "index.db")
    yield db
    db.close()


def test_an_idle_session_is_not_revived_by_moving_its_last_request_in_the_database(
    database: SqliteDatabase,
) -> None:
    clock = Clock()
    token, _ = _sessions(database, clock).create("li.legal", AuthMethod.PASSWORD)
    clock.now += IDLE_S + 60  # the reviewer walked away from a shared screen
    writer = sqlite3.connect(database.path or "")  # whoever writes index.db without console.key
    try:
        with writer:
            writer.execute("UPDATE console_sessions SET last_seen_s = ?", (clock.now,))
    finally:
        writer.close()
    assert _sessions(database, clock).get(token) is None, "an idle session was revived by a database edit"
    assert database.console.session_count() == 0  # ended, not merely refused once


def test_control_a_session_in_use_lives_on_and_its_touches_are_sealed(database: SqliteDatabase) -> None:
    clock = Clock()
    store = _sessions(database, clock)
    token, _ = store.create("li.legal", AuthMethod.PASSWORD)
    for _ in range(6):  # an hour and a half of use, a request every quarter hour less a minute
        clock.now += IDLE_S - 60
        assert store.get(token) is not None
    assert _last_seen(database) == clock.now
    # A restarted central (a new store, the same key) accepts the row the touches re-sealed.
    assert _sessions(database, clock).get(token) is not None


def test_requests_within_the_touch_interval_write_nothing(database: SqliteDatabase) -> None:
    clock = Clock()
    store = _sessions(database, clock)
    token, _ = store.create("li.legal", AuthMethod.PASSWORD)
    clock.now += store.touch_every_s / 2
    assert store.get(token) is not None
    assert _last_seen(database) == T  # no write for this request
    clock.now += store.touch_every_s
    assert store.get(token) is not None
    assert _last_seen(database) == clock.now


# -- R8: a sealed TOTP secret put back from a backup ------------------------------------------------------


class Enrolled:
    """A running central with a console account, administered by the real `edge central account`."""

    def __init__(self, central: HttpCentral, config_path: Path) -> None:
        self.central = central
        self.config_path = config_path

    def admin(self, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
        parser = argparse.ArgumentParser(prog="edge")
        add_central_parser(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["central", "account", *argv, "--config", str(self.config_path)])
        capsys.readouterr()
        assert args.func(args) == 0
        return capsys.readouterr().out

    def enrol(self, capsys: pytest.CaptureFixture[str]) -> str:
        """`enrol-totp li.legal`: the secret of the URI it prints once."""
        return str(pyotp.parse_uri(self.admin(capsys, "enrol-totp", "li.legal").strip()).secret)

    def stored(self) -> str:
        account = self.central.console.account("li.legal")
        assert account is not None and account.totp_secret is not None
        return account.totp_secret

    def put_back(self, stored: str) -> None:
        """Whoever writes index.db without console.key: an older row's secret, its code step unspent."""
        db = sqlite3.connect(self.central.config.layout.index_db)
        try:
            with db:
                db.execute("UPDATE console_accounts SET totp_secret = ?, totp_last_step = NULL "
                           "WHERE name = 'li.legal'", (stored,))
        finally:
            db.close()

    async def sign_in(self, secret: str) -> int:
        config = self.central.config
        return (await _sign_in(self.central.console_url, config.layout.ca_cert, "li.legal",
                               _code(secret)))[0]

    def verify(self) -> list[str]:
        store = self.central.config.central.store_dir
        public_key = self.central.central_public_key
        return [str(p) for p in verify_central_store(store, central_public_key=public_key)]


async def running_enrolled(tmp_path: Path, **console: Any) -> AsyncIterator[Enrolled]:
    """A central with one supervisor account (``[console]`` settings as given), stopped afterwards."""
    central = await start_http_central(tmp_path, dev=False, **({"console": console} if console else {}))
    config_path = tmp_path / "central.toml"
    store = central.config.central.store_dir
    config_path.write_text(f'[central]\nid = "central-test"\nstore_dir = "{store}"\n[server]\nport = 18443\n',
                           encoding="utf-8")
    central.console.create_account("li.legal", hash_password(PASSWORD), by="admin")
    central.console.grant("li.legal", Role.SUPERVISOR, (), by="admin", reason="test")
    yield Enrolled(central, config_path)
    await central.running.stop()


@pytest.fixture
async def enrolled(tmp_path: Path) -> AsyncIterator[Enrolled]:
    async for running in running_enrolled(tmp_path):
        yield running


async def test_a_secret_put_back_after_a_re_enrolment_is_refused(
    enrolled: Enrolled, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    old = enrolled.enrol(capsys)  # the phone that was lost
    old_row = enrolled.stored()   # ...as last night's backup of index.db holds it
    new = enrolled.enrol(capsys)  # the administrator re-enrols the account
    new_row = enrolled.stored()
    enrolled.put_back(old_row)
    with caplog.at_level(logging.ERROR):
        status = await enrolled.sign_in(old)
    assert status == 401, "the codes of a secret replaced by a re-enrolment work again once it is put back"
    assert "it is not the account's current secret (put back into index.db" in caplog.text
    old_id, new_id = _enrolment_of(enrolled, old_row), _enrolment_of(enrolled, new_row)
    events = enrolled.central.console.account_events("li.legal")
    assert events[-2]["event"] == "totp_refused" and f"of enrolment {old_id}" in events[-2]["detail"]
    assert f"records enrolment {new_id}" in events[-2]["detail"] and old not in events[-2]["detail"]
    named = f"console_accounts li.legal: the sealed TOTP secret of li.legal is of enrolment {old_id}, but "
    assert any(p.startswith(named) and f"records enrolment {new_id}" in p for p in enrolled.verify())
    enrolled.put_back(new_row)  # control: the current secret signs in, and the store verifies
    assert await enrolled.sign_in(new) == 200
    assert not any(p.startswith("console_accounts") for p in enrolled.verify())


async def test_a_secret_put_back_after_its_removal_is_refused(
    enrolled: Enrolled, capsys: pytest.CaptureFixture[str]
) -> None:
    old = enrolled.enrol(capsys)
    old_row = enrolled.stored()
    enrolled.admin(capsys, "remove-totp", "li.legal")
    enrolled.put_back(old_row)
    assert await enrolled.sign_in(old) == 401
    enrolled.admin(capsys, "enrol-totp", "li.legal")  # control: enrolled again, a new secret works
    assert await enrolled.sign_in(enrolled_secret_from_store(enrolled)) == 200


def _enrolment_of(enrolled: Enrolled, stored: str) -> int | None:
    return ConsoleSecretKey.load(enrolled.central.config.layout.console_key).open_totp("li.legal", stored)[1]


async def _stopped_central_with_account(tmp_path: Path) -> CentralConfig:
    """The configuration of a central that made the supervisor account li.legal and stopped."""
    first = await start_http_central(tmp_path, dev=False)
    first.console.create_account("li.legal", hash_password(PASSWORD), by="admin")
    first.console.grant("li.legal", Role.SUPERVISOR, (), by="admin", reason="test")
    await first.running.stop()
    return first.config


def enrolled_secret_from_store(enrolled: Enrolled) -> str:
    key = ConsoleSecretKey.load(enrolled.central.config.layout.console_key)
    return key.open_totp("li.legal", enrolled.stored())[0]


async def test_a_plain_secret_planted_in_a_numbered_store_is_not_sealed_by_the_next_start(
    tmp_path: Path,
) -> None:
    config = await _stopped_central_with_account(tmp_path)
    planted = pyotp.random_base32()  # the attacker's own secret, written as an older central stored one
    db = sqlite3.connect(config.layout.index_db)
    try:
        with db:
            db.execute("UPDATE console_accounts SET totp_secret = ? WHERE name = 'li.legal'", (planted,))
    finally:
        db.close()
    again = await start_http_central(tmp_path, dev=False, server={"port": config.server.port})
    try:
        status, _ = await _sign_in(again.console_url, config.layout.ca_cert, "li.legal", _code(planted))
        assert status == 401, "a secret planted in plain text was sealed by the next start and signs in"
        account = again.console.account("li.legal")
        assert account is not None and account.totp_secret == planted  # left as found, for the record
    finally:
        await again.running.stop()


def _sealed_v1(key_path: Path, account: str, secret: str) -> str:
    """A secret as the central before the enrolment numbers sealed it (bound to the account only)."""
    text = key_path.read_bytes().strip()
    raw_key = base64.urlsafe_b64decode(text.partition(b":")[2])
    nonce = os.urandom(12)
    context = b"edge-console totp-secret v1\x00" + account.encode()
    sealed = AESGCM(raw_key).encrypt(nonce, secret.encode(), context)
    return "sealed-v1:" + base64.urlsafe_b64encode(nonce + sealed).decode()


async def test_a_store_sealed_before_the_numbers_is_numbered_at_its_first_start_and_then_refuses_v1(
    tmp_path: Path,
) -> None:
    config = await _stopped_central_with_account(tmp_path)
    secret = pyotp.random_base32()
    v1 = _sealed_v1(config.layout.console_key, "li.legal", secret)
    (config.layout.identity_dir / "console-enrolments").unlink()  # the store as the older central left it
    db = sqlite3.connect(config.layout.index_db)
    try:
        with db:
            db.execute("UPDATE console_accounts SET totp_secret = ? WHERE name = 'li.legal'", (v1,))
    finally:
        db.close()
    again = await start_http_central(tmp_path, dev=False, server={"port": config.server.port})
    try:
        account = again.console.account("li.legal")
        assert account is not None and account.totp_secret is not None
        assert account.totp_secret.startswith("sealed-v2:")  # numbered: a new random enrolment id
        key = ConsoleSecretKey.load(config.layout.console_key)
        enrolment = key.open_totp("li.legal", account.totp_secret)[1]
        assert enrolment is not None and enrolment > 2**128
        record = json.loads((config.layout.identity_dir / "console-enrolments").read_text())
        assert record["accounts"] == {"li.legal": {"enrolment": enrolment, "totp": True}}
        assert (await _sign_in(again.console_url, config.layout.ca_cert, "li.legal", _code(secret)))[0] == 200
        # The v1 row put back (a backup from before the upgrade): never numbered again, refused.
        db = sqlite3.connect(config.layout.index_db)
        try:
            with db:
                db.execute("UPDATE console_accounts SET totp_secret = ?, totp_last_step = NULL "
                           "WHERE name = 'li.legal'", (v1,))
        finally:
            db.close()
        assert (await _sign_in(again.console_url, config.layout.ca_cert, "li.legal", _code(secret)))[0] == 401
    finally:
        await again.running.stop()


def test_an_enrolment_number_edited_in_the_stored_text_does_not_open(tmp_path: Path) -> None:
    """The number is in the associated data: changing it to the recorded one does not revive the secret."""
    path = tmp_path / "console.key"
    key = ConsoleSecretKey.create(path)
    stored = key.seal_totp("li.legal", "JBSWY3DPEHPK3PXP", enrolment=1)
    assert key.open_totp("li.legal", stored) == ("JBSWY3DPEHPK3PXP", 1)  # control
    with pytest.raises(SealedSecretError, match="enrolment id or text was changed"):
        key.open_totp("li.legal", stored.replace("sealed-v2:1:", "sealed-v2:2:"))
