"""Review 13: a receiver's reads of PostgreSQL ran on its event loop (authentication, ledger heads, the
read side, the console): a read that waits (a table locked by a migration or a DBA's maintenance, a
server that is slow or restarting) stalled every request of the receiver.

Here another session holds a lock on ``stations`` that every read of it waits for, while a station asks
for its ledger head (authentication reads its row). Once that read is seen waiting in PostgreSQL, the
receiver's ``/healthz`` is asked from another thread; the lock is released only after the answer (or
after a bound that marks the hang). Control: the same read made on the event loop itself leaves
``/healthz`` unanswered until the release.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.central.conftest import (
    FakeStation,
    answers_healthz_again,
    get_json,
    postgres_index,
    start_http_central,
)
from tests.central.lock_probe import (
    HEALTHZ_BOUND_S,
    SEEN_WAITING_BOUND_S,
    STALLED_HEALTHZ_BOUND_S,
    LockHold,
    lock_waiters,
    table_lock,
)
from tests.central.pg import PostgresDatabaseUnderTest


@pytest.mark.parametrize("on_the_loop", [False, True], ids=["read-off-the-loop", "control-read-on-the-loop"])
async def test_a_receiver_whose_read_waits_on_postgresql_still_answers_healthz(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, on_the_loop: bool,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    try:
        central.store_index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        probe = await LockHold(
            pg_database, table_lock("stations"),
            waiter=lambda: lock_waiters(pg_database, wait_event="relation") > 0, healthz_url=central.url,
            healthz_bound_s=STALLED_HEALTHZ_BOUND_S if on_the_loop else HEALTHZ_BOUND_S).start()
        if on_the_loop:
            # Control: the authentication's read made here, on the loop, as it was before.
            assert central.store_index.station(station.station_id) is not None
        else:
            timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 2)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                url = f"{central.url}/v1/stations/{station.station_id}/ledger"
                status, doc = await get_json(session, url, {"X-Edge-Station": station.station_id})
            assert status == 200, doc
        await probe.join()
        assert probe.waiter_seen, "the read was never seen waiting for the table lock"
        if on_the_loop:
            assert probe.healthz_status is None, "control: /healthz was answered while the loop was blocked"
            await answers_healthz_again(central.url)
        else:
            assert probe.healthz_status == 200, (
                f"/healthz was not answered while a station's request waited for PostgreSQL "
                f"({probe.healthz_error}): the event loop is blocked on a read")
    finally:
        await central.running.stop()
