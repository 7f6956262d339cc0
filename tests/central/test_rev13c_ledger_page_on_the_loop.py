"""Independent review 13 (rev13c): ``GET /v1/stations/{station}/ledger`` authenticates off the event loop,
but its answer (``StationLedgerRead.page``: the station's row, its ledger head, its entries) is read on the
loop itself (``station_ledger_read.py``, ``get``: ``self.page(...)`` called in the coroutine). The loop guard
test does not see it (a plain method called from a coroutine), and the off-the-loop test locks ``stations``,
which the authentication reads first, so the page's reads never wait there.

Here another session holds a lock on ``station_ledger`` (a maintenance, a DBA's ``VACUUM FULL`` or a slow
server), which only the page reads; a station asks for its ledger; once the read is seen waiting in
PostgreSQL, the receiver's ``/healthz`` is asked from another thread. Expected: answered (the loop free).
Control: the same request with ``stations`` locked (the authentication's read, off the loop) leaves
``/healthz`` answered, so the probe itself works.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.central.conftest import FakeStation, get_json, postgres_index, start_http_central
from tests.central.lock_probe import SEEN_WAITING_BOUND_S, LockHold, lock_waiters, table_lock
from tests.central.pg import PostgresDatabaseUnderTest


@pytest.mark.parametrize("table", ["station_ledger", "stations"],
                         ids=["page-read-waits", "control-auth-read-waits"])
async def test_a_ledger_read_waiting_on_postgresql_leaves_healthz_answered(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, table: str,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    try:
        central.store_index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        probe = await LockHold(pg_database, table_lock(table),
                               waiter=lambda: lock_waiters(pg_database, wait_event="relation") > 0,
                               healthz_url=central.url).start()
        timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            status, doc = await get_json(session, f"{central.url}/v1/stations/{station.station_id}/ledger",
                                         {"X-Edge-Station": station.station_id})
        assert status == 200, doc
        await probe.join()
        assert probe.waiter_seen, "the read was never seen waiting for the table lock"
        assert probe.healthz_status == 200, (
            f"/healthz was not answered while a station's ledger read waited on {table} "
            f"({probe.healthz_error}): StationLedgerRead.page runs on the event loop")
    finally:
        await central.running.stop()
