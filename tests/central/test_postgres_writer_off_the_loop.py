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
import http.client
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.central.conftest import FakeStation, post_json, postgres_index, start_http_central
from tests.central.pg import PostgresDatabaseUnderTest

# Bounds on a loaded machine, not premises: how long the push may take to be seen waiting on the lock,
# and how long /healthz may take before the receiver is taken as stalled.
SEEN_WAITING_BOUND_S = 60.0
HEALTHZ_BOUND_S = 20.0
SLOW_S = 120.0


@dataclass
class Probe:
    """What the thread holding the lock saw: whether the push waited on it, and /healthz's answer."""

    push_seen_waiting: bool = False
    healthz_status: int | None = None
    healthz_error: str | None = None
    released: threading.Event = field(default_factory=threading.Event)


def _healthz(url: str) -> tuple[int | None, str | None]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HEALTHZ_BOUND_S)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status, None
    except OSError as exc:  # socket.timeout included: the receiver did not answer within the bound
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


def _waiting_on_advisory_lock(pg_database: PostgresDatabaseUnderTest) -> bool:
    with pg_database.admin() as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND wait_event = 'advisory' AND datname = current_database()").fetchone()
    return row is not None and int(str(row[0])) > 0


def _hold_the_writer_lock(pg_database: PostgresDatabaseUnderTest, url: str, probe: Probe,
                          held: threading.Event) -> None:
    """Another writer's transaction: take the lock, wait for the receiver's push to queue behind it, ask
    /healthz, then commit (releasing the lock)."""
    with pg_database.admin() as other, other.transaction():
        other.execute("SELECT edge_log_writer_lock()")
        held.set()
        deadline = time.monotonic() + SEEN_WAITING_BOUND_S
        while time.monotonic() < deadline:
            if _waiting_on_advisory_lock(pg_database):
                probe.push_seen_waiting = True
                break
            time.sleep(0.05)
        probe.healthz_status, probe.healthz_error = _healthz(url)
    probe.released.set()


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
        probe = Probe()
        holder: threading.Thread | None = None
        if lock_held:
            held = threading.Event()
            holder = threading.Thread(target=_hold_the_writer_lock,
                                      args=(pg_database, central.url, probe, held))
            holder.start()
            assert await asyncio.to_thread(held.wait, SLOW_S)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SLOW_S)) as session:
            status, doc = await post_json(session, url, station.segment(0), headers)
        assert status == 200, doc
        assert doc["seq"] == 3
        if holder is None:
            # Control: nothing holds the lock, the push is answered at once and /healthz too.
            probe.healthz_status, probe.healthz_error = await asyncio.to_thread(_healthz, central.url)
            assert probe.healthz_status == 200, probe.healthz_error
            return
        await asyncio.to_thread(holder.join, SLOW_S)
        assert probe.released.is_set()
        assert probe.push_seen_waiting, "the push was never seen waiting for the writer lock"
        assert probe.healthz_status == 200, (
            f"/healthz was not answered while the receiver's push waited for the writer lock "
            f"({probe.healthz_error}): the event loop is blocked on PostgreSQL")
    finally:
        await central.running.stop()
