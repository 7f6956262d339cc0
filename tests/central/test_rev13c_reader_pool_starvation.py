"""Independent review 13 (rev13c): the receiver's reads of PostgreSQL share one pool of two reader threads
(``_READER_THREADS``) between every caller: the stations' authentication (every tus HEAD/PATCH, every
registration), the registrar's reads, the auditors' read side and the console. Two auditor reads that wait
(a search over a province's items, or a table a maintenance holds) take both threads, and every station
request of that receiver waits behind them, although nothing it reads is locked or slow.

Here another session holds a lock on ``items`` only. Two auditor searches (``GET /v1/items``, which
reads ``items``) are sent and seen waiting on the lock in PostgreSQL; then a station asks for its ledger
(``GET /v1/stations/{id}/ledger``: ``stations`` and the ledger, never
``items``). Expected: the station is answered within the
bound while the auditors wait. Control: with one waiting auditor search (a reader thread left), the same
station request is answered, so the setup itself does not stall a station.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from edge.central.postgres import database as pg_database_module
from tests.central.conftest import FakeStation, get_json, postgres_index, start_http_central
from tests.central.lock_probe import SEEN_WAITING_BOUND_S, LockHold, lock_waiters, table_lock
from tests.central.pg import PostgresDatabaseUnderTest

# A ledger request on an idle receiver takes milliseconds; a bound on a loaded machine.
STATION_BOUND_S = 20.0


@pytest.mark.parametrize("auditors", [pg_database_module._READER_THREADS, 1],
                         ids=["auditors-fill-the-reader-pool", "control-one-auditor"])
async def test_waiting_auditor_reads_do_not_starve_a_stations_request(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, auditors: int,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    release = threading.Event()
    holder = LockHold(pg_database, table_lock("items"), release=release)
    try:
        central.store_index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        await holder.start()
        timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            searches = [asyncio.create_task(get_json(session, f"{central.url}/v1/items?limit=10",
                                                     {"X-Edge-Reader": f"auditor{n}"}))
                        for n in range(auditors)]
            deadline = time.monotonic() + SEEN_WAITING_BOUND_S
            while await asyncio.to_thread(lock_waiters, pg_database, query_like="%FROM items%",
                                          query_not_like="INSERT%") < auditors:
                assert time.monotonic() < deadline, "the auditors' searches were never seen waiting"
                await asyncio.sleep(0.05)  # polling for the waits to show, not proving an absence
            url = f"{central.url}/v1/stations/{station.station_id}/ledger"
            try:
                status, doc = await asyncio.wait_for(
                    get_json(session, url, {"X-Edge-Station": station.station_id}), STATION_BOUND_S)
            except TimeoutError:
                status, doc = None, None
            release.set()
            for search in searches:
                assert (await search)[0] == 200
        assert status == 200, (
            f"a station's ledger request (which reads nothing locked) was not answered within "
            f"{STATION_BOUND_S:g} s while {auditors} auditor searches waited on PostgreSQL: the shared "
            f"reader pool starves the stations ({doc})")
    finally:
        release.set()
        await holder.join()
        await central.running.stop()
