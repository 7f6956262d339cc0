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

import asyncio
import http.client
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.central.conftest import (
    FakeStation,
    answers_healthz_again,
    get_json,
    postgres_index,
    start_http_central,
)
from tests.central.pg import PostgresDatabaseUnderTest

# Bounds on a loaded machine, not premises.
SEEN_WAITING_BOUND_S = 60.0
HEALTHZ_BOUND_S = 20.0
# The control's /healthz cannot be answered before the release whatever the bound: a short one suffices.
STALLED_HEALTHZ_BOUND_S = 5.0


@dataclass
class Probe:
    held: threading.Event = field(default_factory=threading.Event)
    read_seen_waiting: bool = False
    healthz_status: int | None = None
    healthz_error: str | None = None


def _healthz(url: str, bound_s: float) -> tuple[int | None, str | None]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=bound_s)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status, None
    except OSError as exc:  # socket.timeout included: no answer within the bound
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


def _a_read_waits_on_a_table_lock(pg_database: PostgresDatabaseUnderTest) -> bool:
    with pg_database.admin() as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND wait_event = 'relation' AND datname = current_database()").fetchone()
    return row is not None and int(str(row[0])) > 0


def _lock_the_stations(
    pg_database: PostgresDatabaseUnderTest, url: str, probe: Probe, bound_s: float
) -> None:
    """A maintenance's hold on ``stations``: lock it, wait for a read to queue behind, ask /healthz, then
    commit (releasing the lock)."""
    with pg_database.admin() as other, other.transaction():
        other.execute("LOCK TABLE stations IN ACCESS EXCLUSIVE MODE")
        probe.held.set()
        deadline = time.monotonic() + SEEN_WAITING_BOUND_S
        while time.monotonic() < deadline:
            if _a_read_waits_on_a_table_lock(pg_database):
                probe.read_seen_waiting = True
                break
            time.sleep(0.05)  # polling for the wait to show, not proving an absence
        probe.healthz_status, probe.healthz_error = _healthz(url, bound_s)


@pytest.mark.parametrize("on_the_loop", [False, True], ids=["read-off-the-loop", "control-read-on-the-loop"])
async def test_a_receiver_whose_read_waits_on_postgresql_still_answers_healthz(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, on_the_loop: bool,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    try:
        central.store_index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        probe = Probe()
        bound_s = STALLED_HEALTHZ_BOUND_S if on_the_loop else HEALTHZ_BOUND_S
        holder = threading.Thread(target=_lock_the_stations, args=(pg_database, central.url, probe, bound_s))
        holder.start()
        assert await asyncio.to_thread(probe.held.wait, SEEN_WAITING_BOUND_S)
        if on_the_loop:
            # Control: the authentication's read made here, on the loop, as it was before.
            assert central.store_index.station(station.station_id) is not None
        else:
            timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 2)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                url = f"{central.url}/v1/stations/{station.station_id}/ledger"
                status, doc = await get_json(session, url, {"X-Edge-Station": station.station_id})
            assert status == 200, doc
        await asyncio.to_thread(holder.join, SEEN_WAITING_BOUND_S * 2)
        assert not holder.is_alive()
        assert probe.read_seen_waiting, "the read was never seen waiting for the table lock"
        if on_the_loop:
            assert probe.healthz_status is None, "control: /healthz was answered while the loop was blocked"
            await answers_healthz_again(central.url)
        else:
            assert probe.healthz_status == 200, (
                f"/healthz was not answered while a station's request waited for PostgreSQL "
                f"({probe.healthz_error}): the event loop is blocked on a read")
    finally:
        await central.running.stop()
