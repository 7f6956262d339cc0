"""What the console keeps at rest: TOTP secrets sealed with the central's console key (outside index.db),
and sessions that survive a restart of the central process while a copy of index.db yields no cookie.

Sign-ins go over real HTTPS to the console's own listener; the session tests run `edge central run` as
a real process, stop it (SIGTERM) and start it again on the same store."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import logging
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest

from edge.central.cli import add_central_parser
from edge.central.config import CentralConfig, load_central_config
from edge.central.console.credentials import hash_password
from edge.central.console.enrolments import enrol_totp
from edge.central.console.secret_key import ConsoleSecretKey
from edge.central.console.sessions import session_row_mac, token_row_key
from edge.central.console.state import CONSOLE
from edge.central.index import Role
from edge.central.sqlite import SqliteDatabase
from edge.pki.names import IdentityError
from tests.central.conftest import HttpCentral, free_port, start_http_central

PASSWORD = "a long enough console password"
HEADERS = {"X-Edge-Console": "1"}


def _db_bytes(config: CentralConfig) -> bytes:
    """Every byte of index.db as it lies on disk, with its WAL."""
    db = config.layout.index_db
    return b"".join(path.read_bytes() for path in (db, db.with_name("index.db-wal")) if path.exists())


async def _sign_in(url: str, cafile: Path, name: str, totp: str | None, *,
                   jar: aiohttp.CookieJar | None = None) -> tuple[int, dict[str, Any]]:
    body = {"name": name, "password": PASSWORD, **({"totp": totp} if totp else {})}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(cafile))),
        cookie_jar=jar if jar is not None else aiohttp.CookieJar(unsafe=True),
    ) as session, session.post(f"{url}/console/api/sign-in", json=body,
                               headers={**HEADERS, "Origin": url}) as response:
        return response.status, await response.json(content_type=None)


def _account(console: Any, name: str, sealed_with: ConsoleSecretKey | None) -> str:
    """An account with TOTP; its secret stored sealed with ``sealed_with``, or in plain text as the
    central before the console key stored it (``None``)."""
    console.create_account(name, hash_password(PASSWORD), by="admin")
    console.grant(name, Role.SUPERVISOR, (), by="admin", reason="test")
    secret = pyotp.random_base32()
    if sealed_with is None:
        console.set_totp(name, secret, by="admin")
    else:
        enrol_totp(console, sealed_with, name, secret, by="admin")
    return secret


def _code(secret: str) -> str:
    return pyotp.TOTP(secret).now()


@pytest.fixture
async def central(tmp_path: Path) -> AsyncIterator[HttpCentral]:
    running = await start_http_central(tmp_path, dev=False)
    yield running
    await running.running.stop()


def _key(central: HttpCentral) -> ConsoleSecretKey:
    key = central.running.app[CONSOLE].secret_key
    assert key is not None
    return key


async def test_a_totp_secret_is_not_in_the_database_file_and_still_signs_in(central: HttpCentral) -> None:
    secret = _account(central.running.parts.console, "li.legal", _key(central))
    cafile = central.config.layout.ca_cert
    status, doc = await _sign_in(central.console_url, cafile, "li.legal", _code(secret))
    assert status == 200, doc  # control: the sealed secret opens for its account
    stored = central.running.parts.console.account("li.legal")
    assert stored is not None and stored.totp_secret is not None
    on_disk = _db_bytes(central.config)
    assert stored.totp_secret.encode() in on_disk  # control: the file holds what the index stores...
    for form in (secret, secret.lower(), base64.b32decode(secret).hex()):
        assert form.encode() not in on_disk  # ...and no form of the secret itself
    mode = central.config.layout.console_key.stat().st_mode & 0o777
    assert mode == 0o600


async def test_a_sealed_secret_moved_to_another_account_does_not_open(
    central: HttpCentral, caplog: pytest.LogCaptureFixture
) -> None:
    console = central.running.parts.console
    li = _account(console, "li.legal", _key(central))
    _account(console, "wang.legal", _key(central))
    # An attacker who can write index.db copies li's sealed secret (whose codes they have) onto wang.
    db = sqlite3.connect(central.config.layout.index_db)
    with db:
        db.execute("UPDATE console_accounts SET totp_secret = (SELECT totp_secret FROM console_accounts "
                   "WHERE name = 'li.legal') WHERE name = 'wang.legal'")
    db.close()
    cafile = central.config.layout.ca_cert
    with caplog.at_level(logging.ERROR):
        status, _ = await _sign_in(central.console_url, cafile, "wang.legal", _code(li))
    assert status == 401
    assert any("wang.legal" in r.getMessage() and "moved from another account" in r.getMessage()
               for r in caplog.records)
    # Control: the same sealed secret on its own account signs in (a fresh code step is not needed: the
    # refused attempt above spent nothing of li's).
    assert (await _sign_in(central.console_url, cafile, "li.legal", _code(li)))[0] == 200


async def test_plain_secrets_of_an_older_central_are_sealed_at_the_first_start(tmp_path: Path) -> None:
    # A store as the central before the console key left it: plain TOTP secrets, no console.key, no
    # enrolment record and no trail seals (a key is never replaced while rows are sealed with it).
    first = await start_http_central(tmp_path, dev=False)
    config = first.config
    secret = _account(first.running.parts.console, "li.legal", None)
    await first.running.stop()
    config.layout.console_key.unlink()
    (config.layout.identity_dir / "console-enrolments").unlink()
    db = sqlite3.connect(config.layout.index_db)
    try:
        db.execute("DROP TABLE trail_seals")
    finally:
        db.close()
    assert secret.encode() in _db_bytes(config)  # control: the old store holds the secret in plain text

    again = await start_http_central(tmp_path, dev=False, server={"port": config.server.port})
    try:
        assert secret.encode() not in _db_bytes(again.config)
        events = again.running.parts.console.account_events("li.legal")
        assert [e["event"] for e in events][-1] == "totp_sealed" and events[-1]["by"] == "central-start"
        status, doc = await _sign_in(again.console_url, config.layout.ca_cert, "li.legal", _code(secret))
        assert status == 200, doc
    finally:
        await again.running.stop()


async def test_a_missing_key_stops_the_start_and_so_does_a_wrong_one(tmp_path: Path) -> None:
    first = await start_http_central(tmp_path, dev=False)
    config = first.config
    secret = _account(first.running.parts.console, "li.legal", _key(first))
    await first.running.stop()
    key_path = config.layout.console_key
    kept = key_path.read_bytes()

    key_path.unlink()
    # Like a missing signing key (exit 78): the central does not run with sealed rows it cannot check.
    with pytest.raises(IdentityError, match=f"{key_path} is missing"):
        await start_http_central(tmp_path, dev=False, server={"port": config.server.port})
    assert not key_path.exists()  # not replaced by a new key the sealed secret would not open with

    wrong = ConsoleSecretKey.create(key_path)  # another key at the same path (restored from the wrong backup)
    # It used to be accepted (TOTP refused, every trail row named as edited): it stops the start now.
    with pytest.raises(IdentityError, match="is not the key this store's console trails were sealed with"):
        await start_http_central(tmp_path, dev=False, server={"port": config.server.port})
    assert ConsoleSecretKey.load(key_path).fingerprint == wrong.fingerprint  # left for the operator

    key_path.unlink()
    key_path.write_bytes(kept)
    key_path.chmod(0o600)
    right = await start_http_central(tmp_path, dev=False, server={"port": config.server.port})
    try:  # control: the right key back, the same account signs in
        status, doc = await _sign_in(right.console_url, config.layout.ca_cert, "li.legal", _code(secret))
        assert status == 200, doc
    finally:
        await right.running.stop()


# -- sessions across a restart of the central process -----------------------------------------------


class CentralProcess:
    """`edge central run` as a process of its own, on fixed ports so that a restart serves the same URL."""

    def __init__(self, workdir: Path) -> None:
        self.config_path = workdir / "central.toml"
        port, console_port = free_port(), free_port()
        self.config_path.write_text(
            f'[central]\nid = "central-test"\nstore_dir = "{workdir / "store"}"\n'
            f'[server]\nlisten = "127.0.0.1"\nport = {port}\nnames = ["localhost", "127.0.0.1"]\n'
            f'[console]\nlisten = "127.0.0.1"\nport = {console_port}\nallow_password_only = true\n'
            'session_idle_min = 1\n',
            encoding="utf-8",
        )
        self.config = load_central_config(self.config_path)
        self.console_url = f"https://127.0.0.1:{console_port}"
        self.log = workdir / "central.log"
        self.process: subprocess.Popen[bytes] | None = None

    def init(self) -> None:
        parser = argparse.ArgumentParser(prog="edge")
        add_central_parser(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["central", "init", "--config", str(self.config_path)])
        assert args.func(args) == 0

    async def start(self) -> None:
        assert self.process is None
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge.cli", "central", "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        context = ssl.create_default_context(cafile=str(self.config.layout.ca_cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            for _ in range(300):
                assert self.process.poll() is None, self.log.read_text(errors="replace")
                try:
                    async with session.get(f"{self.console_url}/console/") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)  # polling for the listener to come up, not proving an absence
        raise AssertionError(f"the central did not come up: {self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=30) == 0, self.log.read_text(errors="replace")
            self.process = None


@pytest.fixture
def process(tmp_path: Path) -> Iterator[CentralProcess]:
    central = CentralProcess(tmp_path)
    central.init()
    database = SqliteDatabase.open(central.config.layout.index_db)
    try:
        for name in ("li.legal", "wang.legal", "zhao.legal"):
            database.console.create_account(name, hash_password(PASSWORD), by="admin")
            database.console.grant(name, Role.SUPERVISOR, (), by="admin", reason="test")
    finally:
        database.close()
    yield central
    if central.process is not None and central.process.poll() is None:
        central.process.kill()
        central.process.wait()


class Browser:
    """A browser's cookie, kept by the test: after sign-out it is still sent, as an attacker who copied it
    would send it."""

    def __init__(self, central: CentralProcess) -> None:
        self.url = central.console_url
        self.cafile = central.config.layout.ca_cert
        self.token = ""
        self.csrf = ""

    async def sign_in(self, name: str) -> None:
        jar = aiohttp.CookieJar(unsafe=True)
        status, doc = await _sign_in(self.url, self.cafile, name, None, jar=jar)
        assert status == 200, doc
        self.csrf = doc["csrf"]
        (cookie,) = [c for c in jar if c.key == "__Host-edge-console"]
        self.token = cookie.value

    async def call(self, method: str, path: str) -> tuple[int, Any]:
        headers = {**HEADERS, "Origin": self.url, "X-CSRF-Token": self.csrf,
                   "Cookie": f"__Host-edge-console={self.token}"}
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(self.cafile))),
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as session, session.request(method, f"{self.url}{path}", headers=headers) as response:
            return response.status, await response.json(content_type=None)


def _row_key(config: CentralConfig, token: str) -> bytes:
    return token_row_key(ConsoleSecretKey.load(config.layout.console_key).session_key, token)


def _stored_sessions(config: CentralConfig) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{config.layout.index_db}?mode=ro", uri=True)
    try:
        return db.execute("SELECT token_sha256, reader, created_s, last_seen_s, expires_s "
                          "FROM console_sessions").fetchall()
    finally:
        db.close()


async def test_a_session_survives_a_restart_and_a_signed_out_or_expired_one_does_not(
    process: CentralProcess,
) -> None:
    await process.start()
    kept, signed_out, idle, revoked = (Browser(process) for _ in range(4))
    for browser, name in ((kept, "li.legal"), (signed_out, "wang.legal"), (idle, "wang.legal"),
                          (revoked, "zhao.legal")):
        await browser.sign_in(name)
        assert (await browser.call("GET", "/console/api/session"))[0] == 200
    assert (await signed_out.call("POST", "/console/api/sign-out"))[0] == 200
    process.stop()
    # The administrator disables zhao.legal while the central is down: its session ends with it.
    parser = argparse.ArgumentParser(prog="edge")
    add_central_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["central", "account", "disable", "zhao.legal", "--reason", "left",
                              "--config", str(process.config_path)])
    assert args.func(args) == 0

    # What index.db keeps: the token's hash only, never the cookie or its CSRF token.
    rows = _stored_sessions(process.config)
    assert sorted(r[1] for r in rows) == ["li.legal", "wang.legal"]
    on_disk = _db_bytes(process.config)
    for browser in (kept, idle):
        assert browser.token.encode() not in on_disk and browser.csrf.encode() not in on_disk
        assert _row_key(process.config, browser.token) in {r[0] for r in rows}
    # The idle session: its last request two minutes ago (session_idle_min = 1), written as a clock
    # moving on would leave it (re-sealed with the key: the last request is under the row's seal).
    db = sqlite3.connect(process.config.layout.index_db)
    with db:
        idle_key = _row_key(process.config, idle.token)
        reader, method, cert, created, last_seen, expires = db.execute(
            "SELECT reader, method, cert_sha256, created_s, last_seen_s, expires_s FROM console_sessions "
            "WHERE token_sha256 = ?", (idle_key,)).fetchone()
        secret = ConsoleSecretKey.load(process.config.layout.console_key).session_key
        db.execute("UPDATE console_sessions SET last_seen_s = ?, mac = ? WHERE token_sha256 = ?",
                   (last_seen - 120, session_row_mac(secret, idle_key, reader, method, cert, created, expires,
                                                     last_seen - 120), idle_key))
    db.close()

    await process.start()
    status, doc = await kept.call("GET", "/console/api/session")
    assert status == 200 and doc["reader"] == "li.legal" and doc["csrf"] == kept.csrf
    assert (await kept.call("GET", "/console/api/items"))[0] == 200
    assert (await signed_out.call("GET", "/console/api/session"))[0] == 401
    assert (await idle.call("GET", "/console/api/session"))[0] == 401
    assert (await revoked.call("GET", "/console/api/session"))[0] == 401

    # A database-read attacker: the stored hash as a cookie is no session.
    forged = Browser(process)
    hashed = base64.urlsafe_b64encode(hashlib.sha256(kept.token.encode()).digest()).decode().rstrip("=")
    for value in (hashed, hashlib.sha256(kept.token.encode()).hexdigest()):
        forged.token = value
        assert (await forged.call("GET", "/console/api/session"))[0] == 401
    # Signing out after the restart ends it for good, across the next restart as well.
    assert (await kept.call("POST", "/console/api/sign-out"))[0] == 200
    process.stop()
    await process.start()
    assert (await kept.call("GET", "/console/api/session"))[0] == 401
    process.stop()
    assert os.path.exists(process.config.layout.console_key)
