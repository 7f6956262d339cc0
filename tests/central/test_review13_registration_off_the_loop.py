"""Review 13 #4: registration's calls of the shared tus store (get, claim, remove) ran on the event loop.

On PostgreSQL and S3 each of them may wait: the claim of a complete upload waits for the upload's lock
while a purge (or a request) holds it, a query for a server that restarts. On the loop, the receiver
served nothing meanwhile. Here another session holds the upload's lock while the station registers; once
the registration's claim is seen waiting for it in PostgreSQL, the receiver's /healthz is asked from
another thread, and the lock is released only after that answer (or after a bound that marks the hang).
Control: the same claim made on the event loop itself leaves /healthz unanswered until the release.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from edge.central.postgres.tus_shared_store import SharedTusStore, _lock_key
from tests.central.conftest import FakeStation, answers_healthz_again
from tests.central.receivers import ReceiverSite
from tests.central.test_postgres_writer_off_the_loop import _waiting_on_advisory_lock
from tests.central.test_tus_shared_store import (
    PART,
    Pair,
    _create,
    _enrol,
    _patch,
    _prefix_checksum,
    _register,
)
from tests.central.test_tus_shared_store import pair as pair  # fixture
from tests.central.test_tus_shared_store import site as site  # fixture

# Bounds on a loaded machine, not premises.
SEEN_WAITING_BOUND_S = 60.0
HEALTHZ_BOUND_S = 20.0
# The control's /healthz cannot be answered before the release whatever the bound: a short one suffices.
STALLED_HEALTHZ_BOUND_S = 5.0


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


@dataclass
class Probe:
    held: threading.Event = field(default_factory=threading.Event)
    claim_seen_waiting: bool = False
    healthz_status: int | None = None
    healthz_error: str | None = None


def _hold_the_upload(site: ReceiverSite, upload: str, url: str, probe: Probe, healthz_bound_s: float) -> None:
    """A purge's hold on the upload: take its lock, wait for the claim to queue behind it, ask /healthz,
    then release."""
    with site.pg.admin() as other:
        other.execute("SELECT pg_advisory_lock(%s)", (_lock_key(upload),))
        probe.held.set()
        try:
            deadline = time.monotonic() + SEEN_WAITING_BOUND_S
            while time.monotonic() < deadline:
                if _waiting_on_advisory_lock(site.pg):
                    probe.claim_seen_waiting = True
                    break
                time.sleep(0.05)  # polling for the wait to show, not proving an absence
            probe.healthz_status, probe.healthz_error = _healthz(url, healthz_bound_s)
        finally:
            other.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(upload),))


async def _complete(pair: Pair, station: FakeStation, content: bytes) -> tuple[str, dict[str, str]]:
    headers = _enrol(pair.a, station)
    async with aiohttp.ClientSession() as session:
        upload = await _create(session, pair.url("a"), headers, len(content))
        status, _, text = await _patch(session, pair.url("a"), upload, headers, 0, content,
                                       _prefix_checksum(content))
        assert status == 204, text
    return upload, headers


def _holder(site: ReceiverSite, upload: str, url: str, probe: Probe, bound_s: float) -> threading.Thread:
    holder = threading.Thread(target=_hold_the_upload, args=(site, upload, url, probe, bound_s))
    holder.start()
    return holder


async def _started(holder: threading.Thread, probe: Probe) -> None:
    assert await asyncio.to_thread(probe.held.wait, SEEN_WAITING_BOUND_S), "the upload's lock was never taken"


async def test_a_registration_waiting_for_its_upload_still_lets_the_receiver_answer_healthz(
    pair: Pair, site: ReceiverSite, station: FakeStation,
) -> None:
    content = os.urandom(PART + 99)
    acquired = station.acquire(content)
    upload, headers = await _complete(pair, station, content)
    probe = Probe()
    holder = _holder(site, upload, pair.url("a"), probe, HEALTHZ_BOUND_S)
    await _started(holder, probe)
    timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await _register(session, pair.url("a"), pair.a, station, upload, acquired, headers)
    await asyncio.to_thread(holder.join, SEEN_WAITING_BOUND_S * 2)
    assert not holder.is_alive()
    assert probe.claim_seen_waiting, "the registration's claim was never seen waiting for the upload's lock"
    assert probe.healthz_status == 200, (
        f"/healthz was not answered while the registration waited for its upload ({probe.healthz_error}): "
        "the event loop is blocked on the upload store")
    assert pair.a.parts.objects.verify(acquired.sha256) is None


async def test_control_the_same_claim_on_the_event_loop_stalls_the_receiver(
    pair: Pair, site: ReceiverSite, station: FakeStation,
) -> None:
    upload, _ = await _complete(pair, station, os.urandom(PART + 99))
    probe = Probe()
    holder = _holder(site, upload, pair.url("a"), probe, STALLED_HEALTHZ_BOUND_S)
    await _started(holder, probe)
    store = pair.a.parts.uploads
    assert isinstance(store, SharedTusStore)
    claim: Callable[[str], object] = store.staged
    claim(upload)  # on the loop, as registration called it before: blocks until the holder lets go
    await asyncio.to_thread(holder.join, SEEN_WAITING_BOUND_S * 2)
    assert probe.claim_seen_waiting
    assert probe.healthz_status is None, "control: /healthz was answered while the loop was blocked"
    await answers_healthz_again(pair.url("a"))

