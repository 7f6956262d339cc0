"""Review 13 #4: registration's calls of the shared tus store (get, claim, remove) ran on the event loop.

On PostgreSQL and S3 each of them may wait: the claim of a complete upload waits for the upload's lock
while a purge (or a request) holds it, a query for a server that restarts. On the loop, the receiver
served nothing meanwhile. Here another session holds the upload's lock while the station registers; once
the registration's claim is seen waiting for it in PostgreSQL, the receiver's /healthz is asked from
another thread, and the lock is released only after that answer (or after a bound that marks the hang).
Control: the same claim made on the event loop itself leaves /healthz unanswered until the release.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import aiohttp

from edge.central.postgres.tus_shared_store import SharedTusStore, _lock_key
from tests.central.conftest import FakeStation, answers_healthz_again
from tests.central.lock_probe import (
    HEALTHZ_BOUND_S,
    SEEN_WAITING_BOUND_S,
    STALLED_HEALTHZ_BOUND_S,
    LockHold,
    lock_waiters,
)
from tests.central.receivers import ReceiverSite
from tests.central.test_tus_shared_store import PART, Pair, _complete_upload, _register
from tests.central.test_tus_shared_store import pair as pair  # fixture
from tests.central.test_tus_shared_store import site as site  # fixture


async def _hold_the_upload(site: ReceiverSite, upload: str, url: str, healthz_bound_s: float) -> LockHold:
    """A purge's hold on the upload: its lock taken; once the claim is seen queued behind it, /healthz asked,
    then the lock released."""
    return await LockHold(site.pg, "SELECT pg_advisory_xact_lock(%s)", (_lock_key(upload),),
                          waiter=lambda: lock_waiters(site.pg, wait_event="advisory") > 0,
                          healthz_url=url, healthz_bound_s=healthz_bound_s).start()


async def test_a_registration_waiting_for_its_upload_still_lets_the_receiver_answer_healthz(
    pair: Pair, site: ReceiverSite, station: FakeStation,
) -> None:
    content = os.urandom(PART + 99)
    acquired = station.acquire(content)
    upload, headers = await _complete_upload(pair, station, content)
    probe = await _hold_the_upload(site, upload, pair.url("a"), HEALTHZ_BOUND_S)
    timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await _register(session, pair.url("a"), pair.a, station, upload, acquired, headers)
    await probe.join()
    assert probe.waiter_seen, "the registration's claim was never seen waiting for the upload's lock"
    assert probe.healthz_status == 200, (
        f"/healthz was not answered while the registration waited for its upload ({probe.healthz_error}): "
        "the event loop is blocked on the upload store")
    assert pair.a.parts.objects.verify(acquired.sha256) is None


async def test_control_the_same_claim_on_the_event_loop_stalls_the_receiver(
    pair: Pair, site: ReceiverSite, station: FakeStation,
) -> None:
    upload, _ = await _complete_upload(pair, station, os.urandom(PART + 99))
    probe = await _hold_the_upload(site, upload, pair.url("a"), STALLED_HEALTHZ_BOUND_S)
    store = pair.a.parts.uploads
    assert isinstance(store, SharedTusStore)
    claim: Callable[[str], object] = store.staged
    claim(upload)  # on the loop, as registration called it before: blocks until the holder lets go
    await probe.join()
    assert probe.waiter_seen
    assert probe.healthz_status is None, "control: /healthz was answered while the loop was blocked"
    await answers_healthz_again(pair.url("a"))

