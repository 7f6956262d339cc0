"""Independent review 13 (rev13c): every read-side and console request looks its session cookie up with
``parts.write(session_of, ...)``: on the receiver's one writer thread, before anything is authenticated. A
request carrying any cookie value (no account needed) whose look-up waits on PostgreSQL (``console_sessions``
held by a maintenance, a slow server) holds that thread, and every registration commit, ledger acceptance and
signed tree head of the receiver (``run_writes``) queues behind it, although nothing they touch is locked.

Here another session holds a lock on ``console_sessions`` only; an anonymous ``GET /v1/items`` with a made-up
console cookie is sent and seen waiting in PostgreSQL; then a station asks for the log's tree head
(``/v1/log/tree-head``: its authentication in a reader thread, the signed head on the writer). Expected:
answered within the bound. Control: without the anonymous request the same tree head is answered.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from edge.central.console.sessions import COOKIE_NAME
from tests.central.conftest import FakeStation, get_json, postgres_index, start_http_central
from tests.central.lock_probe import SEEN_WAITING_BOUND_S, LockHold, lock_waiters, table_lock
from tests.central.pg import PostgresDatabaseUnderTest

STATION_BOUND_S = 20.0


@pytest.mark.parametrize("anonymous", [True, False], ids=["anonymous-cookie-waits", "control-none"])
async def test_an_anonymous_session_lookup_does_not_hold_the_writer(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, anonymous: bool,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    release = threading.Event()
    holder = LockHold(pg_database, table_lock("console_sessions"), release=release)
    try:
        central.store_index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        await holder.start()
        timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            lookups = []
            if anonymous:
                cookie = {"Cookie": f"{COOKIE_NAME}={secrets.token_urlsafe(32)}"}
                lookups.append(asyncio.create_task(session.get(f"{central.url}/v1/items", headers=cookie)))
                deadline = time.monotonic() + SEEN_WAITING_BOUND_S
                while await asyncio.to_thread(lock_waiters, pg_database,
                                              query_like="%FROM console_sessions%") < 1:
                    assert time.monotonic() < deadline, "the session look-up was never seen waiting"
                    await asyncio.sleep(0.05)  # polling for the wait to show, not proving an absence
            try:
                status, doc = await asyncio.wait_for(
                    get_json(session, f"{central.url}/v1/log/tree-head",
                             {"X-Edge-Station": station.station_id}),
                    STATION_BOUND_S)
            except TimeoutError:
                status, doc = None, None
            release.set()
            for lookup in lookups:
                (await lookup).release()
        assert status == 200, (
            f"a station's tree-head request was not answered within {STATION_BOUND_S:g} s while an "
            f"anonymous request's session look-up waited on PostgreSQL in the writer thread ({doc})")
    finally:
        release.set()
        await holder.join()
        await central.running.stop()
