"""Issue 13 (scale): a receiver on PostgreSQL waiting for the cross-process writer lock must keep serving.

Every write transaction of a receiver on PostgreSQL first takes the log writer's advisory lock, shared by
every receiver of the database. When the transaction ran on the receiver's event loop, a receiver whose
write waited for another receiver's transaction served nothing meanwhile (no tus PATCH, no ledger push, no
health check), and connections that could not send their headers in time were closed: at 100 stations the
load bench saw dropped connections and registration p50 of 18-62 s.

Here another session holds the writer lock (as another receiver's long transaction would) while a station
pushes a ledger segment to the receiver; once that push is seen waiting for the lock in PostgreSQL, the
receiver's ``/healthz`` is asked from another thread. The lock is released only after that answer (or
after a bound that marks the hang), so the answer is evidence of a loop that kept running.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.central.conftest import FakeStation, post_json, postgres_index, start_http_central
from tests.central.lock_probe import LockHold, healthz, lock_waiters
from tests.central.pg import PostgresDatabaseUnderTest

# Bounds on a loaded machine, not premises.
SLOW_S = 120.0


@pytest.mark.parametrize("lock_held", [True, False], ids=["writer-lock-held", "control-no-lock"])
async def test_a_receiver_waiting_for_the_writer_lock_still_answers_healthz(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, lock_held: bool,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    try:
        central.store_index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        station.acquire(b"a clip pushed while another receiver writes " * 100)
        headers = {"X-Edge-Station": station.station_id}
        url = f"{central.url}/v1/stations/{station.station_id}/ledger"
        # Another writer's transaction: it takes the lock, waits for the push to queue behind it, asks
        # /healthz, then commits (releasing the lock).
        probe = LockHold(pg_database, "SELECT edge_log_writer_lock()",
                         waiter=lambda: lock_waiters(pg_database, wait_event="advisory") > 0,
                         healthz_url=central.url)
        if lock_held:
            await probe.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SLOW_S)) as session:
            status, doc = await post_json(session, url, station.segment(0), headers)
        assert status == 200, doc
        assert doc["seq"] == 3
        if not lock_held:
            # Control: nothing holds the lock, the push is answered at once and /healthz too.
            answered, error = await asyncio.to_thread(healthz, central.url)
            assert answered == 200, error
            return
        await probe.join(SLOW_S)
        assert probe.released.is_set()
        assert probe.waiter_seen, "the push was never seen waiting for the writer lock"
        assert probe.healthz_status == 200, (
            f"/healthz was not answered while the receiver's push waited for the writer lock "
            f"({probe.healthz_error}): the event loop is blocked on PostgreSQL")
    finally:
        await central.running.stop()
