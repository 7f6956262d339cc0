"""Independent review 13 (rev13c): ``/readyz`` (public: load balancers probe it without a certificate, every
few seconds) probes the index off the loop (``Readiness._index``: ``parts.read``, with a time limit), but then
``Readiness._check_lock_extensions`` calls ``index.pending_lock_count()`` synchronously in the coroutine: a
PostgreSQL read on the event loop, without a time limit (and, the server being unreachable, a reconnect with
its 10 s connect timeout). ``/metrics`` reads the same count, the log size and the fleet on the loop too
(``CentralMetrics.exposition``).

Here another session holds a lock on ``lock_extensions_pending``; ``/readyz`` is asked; once its read is seen
waiting, ``/healthz`` is asked from another thread. (The wait looked for is that of the probe's count, by
its statement: the lock-extension round also reads the table, with another statement.) Expected:
answered. Control: an unrelated table locked (nothing the probe reads) leaves both answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from tests.central.conftest import postgres_index, start_http_central
from tests.central.pg import PostgresDatabaseUnderTest
from tests.central.test_review13_reads_off_the_loop import (
    HEALTHZ_BOUND_S,
    SEEN_WAITING_BOUND_S,
    Probe,
    _healthz,
)

# The readiness probe's count (edge/central/sql/lock_extensions.py), not the lock-extension round's read.
_PROBE_COUNT = "SELECT count(*) FROM lock_extensions_pending"


def _waits_on_a_lock(pg_database: PostgresDatabaseUnderTest) -> bool:
    """Whether the readiness probe's count waits on a lock (on whichever of the receiver's connections:
    on the loop's before the fix, a reader thread's after it)."""
    with pg_database.admin() as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                            "datname = current_database() AND query = %s", (_PROBE_COUNT,)).fetchone()
    return row is not None and int(str(row[0])) > 0


@pytest.mark.parametrize("table", ["lock_extensions_pending", "console_accounts"],
                         ids=["readyz-read-waits", "control-unrelated-lock"])
async def test_readyz_waiting_on_postgresql_leaves_healthz_answered(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch, table: str,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    probe = Probe()
    asked = threading.Event()

    def hold() -> None:
        with pg_database.admin() as other, other.transaction():
            other.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            probe.held.set()
            asked.wait(SEEN_WAITING_BOUND_S)
            waited_s = SEEN_WAITING_BOUND_S if table == "lock_extensions_pending" else 2.0
            deadline = time.monotonic() + waited_s
            while time.monotonic() < deadline:
                if _waits_on_a_lock(pg_database):
                    probe.read_seen_waiting = True
                    break
                time.sleep(0.05)  # polling for the wait to show, not proving an absence
            probe.healthz_status, probe.healthz_error = _healthz(central.url, HEALTHZ_BOUND_S)

    try:
        holder = threading.Thread(target=hold)
        holder.start()
        assert await asyncio.to_thread(probe.held.wait, SEEN_WAITING_BOUND_S)
        timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            readyz = asyncio.create_task(session.get(f"{central.url}/readyz"))
            asked.set()
            await asyncio.to_thread(holder.join, SEEN_WAITING_BOUND_S * 2)
            (await readyz).release()
        assert not holder.is_alive()
        if table == "lock_extensions_pending":
            assert probe.read_seen_waiting, "the readiness probe's read was never seen waiting"
        assert probe.healthz_status == 200, (
            f"/healthz was not answered while /readyz waited on {table} ({probe.healthz_error}): "
            "Readiness._check_lock_extensions reads PostgreSQL on the event loop")
    finally:
        await central.running.stop()
