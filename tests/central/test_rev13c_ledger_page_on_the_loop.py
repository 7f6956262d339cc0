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

import asyncio
import threading
from pathlib import Path

import aiohttp
import pytest

from tests.central.conftest import FakeStation, get_json, postgres_index, start_http_central
from tests.central.pg import PostgresDatabaseUnderTest
from tests.central.test_review13_reads_off_the_loop import (
    HEALTHZ_BOUND_S,
    SEEN_WAITING_BOUND_S,
    Probe,
    _a_read_waits_on_a_table_lock,
    _healthz,
)


def _lock(pg_database: PostgresDatabaseUnderTest, table: str, url: str, probe: Probe) -> None:
    import time
    with pg_database.admin() as other, other.transaction():
        other.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        probe.held.set()
        deadline = time.monotonic() + SEEN_WAITING_BOUND_S
        while time.monotonic() < deadline:
            if _a_read_waits_on_a_table_lock(pg_database):
                probe.read_seen_waiting = True
                break
            time.sleep(0.05)  # polling for the wait to show, not proving an absence
        probe.healthz_status, probe.healthz_error = _healthz(url, HEALTHZ_BOUND_S)


@pytest.mark.parametrize("table", ["station_ledger", "stations"],
                         ids=["page-read-waits", "control-auth-read-waits"])
async def test_a_ledger_read_waiting_on_postgresql_leaves_healthz_answered(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, table: str,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    try:
        central.store_index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        probe = Probe()
        holder = threading.Thread(target=_lock, args=(pg_database, table, central.url, probe))
        holder.start()
        assert await asyncio.to_thread(probe.held.wait, SEEN_WAITING_BOUND_S)
        timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            status, doc = await get_json(session, f"{central.url}/v1/stations/{station.station_id}/ledger",
                                         {"X-Edge-Station": station.station_id})
        assert status == 200, doc
        await asyncio.to_thread(holder.join, SEEN_WAITING_BOUND_S * 2)
        assert not holder.is_alive()
        assert probe.read_seen_waiting, "the read was never seen waiting for the table lock"
        assert probe.healthz_status == 200, (
            f"/healthz was not answered while a station's ledger read waited on {table} "
            f"({probe.healthz_error}): StationLedgerRead.page runs on the event loop")
    finally:
        await central.running.stop()
