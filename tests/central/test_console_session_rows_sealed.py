"""Console session rows are keyed by an HMAC of the token and sealed under console.key: a row written or
changed without the key is no session. A session whose times lie in the future (the clock stepped back)
ends. Reproductions from the review of the console hardening (R2, R3)."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central.console.credentials import hash_password
from edge.central.console.sessions import AuthMethod, SessionStore
from edge.central.console.state import CONSOLE
from edge.central.index import Role
from edge.central.sqlite import SqliteDatabase
from tests.central.conftest import HttpCentral, start_http_central

HEADERS = {"X-Edge-Console": "1"}


@pytest.fixture
async def central(tmp_path: Path) -> AsyncIterator[HttpCentral]:
    running = await start_http_central(tmp_path, dev=False)
    for name in ("wang.chief", "zhao.clerk"):
        running.console.create_account(name, hash_password("a long enough console password"), by="admin")
        running.console.grant(name, Role.SUPERVISOR, (), by="admin", reason="test")
    yield running
    await running.running.stop()


async def _session(central: HttpCentral, token: str) -> tuple[int, Any]:
    context = ssl.create_default_context(cafile=str(central.config.layout.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                     cookie_jar=aiohttp.DummyCookieJar()) as session, \
            session.get(f"{central.console_url}/console/api/session",
                        headers={**HEADERS, "Cookie": f"__Host-edge-console={token}"}) as response:
        return response.status, await response.json(content_type=None)


def _db(central: HttpCentral) -> sqlite3.Connection:
    """The attacker: plain sqlite3 on index.db, no console.key."""
    return sqlite3.connect(central.config.layout.index_db)


async def test_control_an_unknown_token_is_refused(central: HttpCentral) -> None:
    assert (await _session(central, secrets.token_urlsafe(32)))[0] == 401


async def test_a_session_row_written_without_the_key_is_no_session(central: HttpCentral) -> None:
    token = secrets.token_urlsafe(32)
    now = time.time()
    db = _db(central)
    try:
        with db:
            # The row key as the central before the seals computed it (the attacker knows no other).
            db.execute("INSERT INTO console_sessions (token_sha256, reader, method, cert_sha256, created_s, "
                       "last_seen_s, expires_s) VALUES (?, 'wang.chief', 'password', NULL, ?, ?, ?)",
                       (hashlib.sha256(token.encode()).digest(), now, now, now + 8 * 3600))
    finally:
        db.close()
    status, doc = await _session(central, token)
    assert status == 401, f"a session planted in index.db signs the attacker in as {doc.get('reader')!r}"


async def test_a_session_row_changed_without_the_key_ends(central: HttpCentral) -> None:
    store = central.running.app[CONSOLE].sessions
    token, _ = store.create("zhao.clerk", AuthMethod.PASSWORD)
    status, doc = await _session(central, token)
    assert status == 200 and doc["reader"] == "zhao.clerk"  # control: the session as made
    db = _db(central)
    try:
        with db:
            assert db.execute("UPDATE console_sessions SET reader = 'wang.chief'").rowcount == 1
    finally:
        db.close()
    assert (await _session(central, token))[0] == 401
    assert store.get(token) is None  # ended, not merely refused once


# -- R3: the clock stepped back -------------------------------------------------------------------------

T = 1_800_000_000.0
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(tmp_path: Path) -> Iterator[SqliteDatabase]:
    db = SqliteDatabase.open(tmp_path / "index.db")
    yield db
    db.close()


def _store(database: SqliteDatabase, clock: Clock) -> SessionStore:
    return SessionStore(database.console, idle_s=15 * 60, absolute_s=8 * HOUR, clock=clock)


def test_control_an_idle_session_is_refused(database: SqliteDatabase) -> None:
    clock = Clock()
    store = _store(database, clock)
    token, _ = store.create("li.legal", AuthMethod.PASSWORD)
    clock.now += 10 * 60
    assert store.get(token) is not None  # within the idle limit
    clock.now += 2 * HOUR
    assert store.get(token) is None


def test_a_clock_stepped_back_ends_the_session(database: SqliteDatabase) -> None:
    clock = Clock()
    store = _store(database, clock)
    token, _ = store.create("li.legal", AuthMethod.PASSWORD)
    clock.now -= 24 * HOUR  # NTP corrects a clock that was a day ahead
    clock.now += 2 * HOUR  # two hours without a request: idle limit 15 minutes
    assert store.get(token) is None, "a session idle for 2 h is accepted after the clock stepped back"


def test_a_small_step_back_keeps_the_session(database: SqliteDatabase) -> None:
    clock = Clock()
    store = _store(database, clock)
    token, _ = store.create("li.legal", AuthMethod.PASSWORD)
    clock.now -= 5  # NTP slewing a few seconds
    assert store.get(token) is not None


def test_sessions_of_a_central_before_the_row_seals_end_at_their_next_use(tmp_path: Path) -> None:
    # console_sessions as the central before the seals made it: no mac column, one live session.
    token = secrets.token_urlsafe(32)
    db = sqlite3.connect(tmp_path / "index.db")
    try:
        with db:
            db.execute("CREATE TABLE console_sessions (token_sha256 BLOB PRIMARY KEY CHECK "
                       "(length(token_sha256) = 32), reader TEXT NOT NULL, method TEXT NOT NULL, "
                       "cert_sha256 TEXT, created_s REAL NOT NULL, last_seen_s REAL NOT NULL, "
                       "expires_s REAL NOT NULL) STRICT")
            db.execute("INSERT INTO console_sessions VALUES (?, 'li.legal', 'password', NULL, ?, ?, ?)",
                       (hashlib.sha256(token.encode()).digest(), T, T, T + HOUR))
    finally:
        db.close()
    database = SqliteDatabase.open(tmp_path / "index.db")
    try:
        clock = Clock()
        store = _store(database, clock)
        assert store.get(token) is None
        fresh, _ = store.create("li.legal", AuthMethod.PASSWORD)  # control: the migrated table works
        assert store.get(fresh) is not None
    finally:
        database.close()


class _CountingRows:
    """The console store's session rows, counting the writes (review 13, rev13c: a look-up must write
    nothing, so that it can run in a reader rather than on the writer)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name in ("touch_session", "end_session"):
            self.writes.append(name)
        return attribute


def test_a_look_up_writes_nothing_and_settle_writes_only_what_is_due(database: SqliteDatabase) -> None:
    clock = Clock()
    rows = _CountingRows(database.console)
    store = SessionStore(rows, idle_s=15 * 60, absolute_s=8 * HOUR, clock=clock)
    token, _ = store.create("li.legal", AuthMethod.PASSWORD)
    rows.writes.clear()
    assert store.look_up(secrets.token_urlsafe(32)) is None  # a made-up cookie: nothing to settle
    fresh = store.look_up(token)
    assert fresh is not None and fresh.session is not None and fresh.touch is None
    assert store.settle(fresh) is fresh.session and rows.writes == []  # nothing due, nothing written
    clock.now += 10 * 60
    due = store.look_up(token)
    assert due is not None and due.touch is not None and rows.writes == []
    settled = store.settle(due)
    assert settled is not None and settled.last_seen == clock.now and rows.writes == ["touch_session"]
    clock.now += 2 * HOUR
    idle = store.look_up(token)
    assert idle is not None and idle.session is None and rows.writes == ["touch_session"]
    assert store.settle(idle) is None and rows.writes == ["touch_session", "end_session"]
    assert store.look_up(token) is None  # ended
