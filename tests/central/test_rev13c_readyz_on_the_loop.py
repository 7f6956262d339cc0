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
from pathlib import Path

import aiohttp
import pytest

from tests.central.conftest import postgres_index, start_http_central
from tests.central.lock_probe import SEEN_WAITING_BOUND_S, LockHold, lock_waiters, table_lock
from tests.central.pg import PostgresDatabaseUnderTest

# The readiness probe's count (edge/central/sql/lock_extensions.py), not the lock-extension round's read.
_PROBE_COUNT = "SELECT count(*) FROM lock_extensions_pending"


@pytest.mark.parametrize("table", ["lock_extensions_pending", "console_accounts"],
                         ids=["readyz-read-waits", "control-unrelated-lock"])
async def test_readyz_waiting_on_postgresql_leaves_healthz_answered(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch, table: str,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    asked = threading.Event()
    # Whether the readiness probe's count waits on a lock (on whichever of the receiver's connections: on the
    # loop's before the fix, a reader thread's after it); with the unrelated lock it never does: a short look.
    probe = LockHold(pg_database, table_lock(table),
                     waiter=lambda: lock_waiters(pg_database, query=_PROBE_COUNT) > 0, look_after=asked,
                     look_for_s=SEEN_WAITING_BOUND_S if table == "lock_extensions_pending" else 2.0,
                     healthz_url=central.url)
    try:
        await probe.start()
        timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            readyz = asyncio.create_task(session.get(f"{central.url}/readyz"))
            asked.set()
            await probe.join()
            (await readyz).release()
        if table == "lock_extensions_pending":
            assert probe.waiter_seen, "the readiness probe's read was never seen waiting"
        assert probe.healthz_status == 200, (
            f"/healthz was not answered while /readyz waited on {table} ({probe.healthz_error}): "
            "Readiness._check_lock_extensions reads PostgreSQL on the event loop")
    finally:
        await central.running.stop()
