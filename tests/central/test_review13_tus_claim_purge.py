"""Review 13 #6 and #7: the shared tus store (edge/central/postgres/tus_shared_store.py) on real PostgreSQL
and Ceph.

#6: the expiry purge (any receiver) looked at an expired upload, then deleted its parts and record; a
registration on another receiver claiming the upload in between (its lease) got the parts as they were
deleted. The claim now holds the upload's lock, which the purge holds from its last look to the deletion:
the two are interleaved here by the purge's hook (events, no sleeps) with the claim issued while the purge
sits between its look and its deletion. Control: the same interleaving without the claim's lock loses the
claimed upload.

#7: what a receiver remembers per upload (running hashes, completed hashes) is bounded and leaves with the
upload's expiry; losing it costs only a read-back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import aiohttp
import pytest

from edge.central.postgres.tus_shared_store import SharedTusStore, StagedUpload
from edge.central.tus_store import UploadNotFoundError
from edge.central.upload_memory import UploadMemory
from tests.central.conftest import FakeStation
from tests.central.lock_probe import lock_waiters
from tests.central.receivers import ReceiverSite
from tests.central.test_tus_shared_store import (
    PART,
    Pair,
    _complete_upload,
    _create,
    _enrol,
    _patch,
    _prefix_checksum,
    _register,
    _staged_keys,
)
from tests.central.test_tus_shared_store import pair as pair  # fixture
from tests.central.test_tus_shared_store import site as site  # fixture

# Bounds on a loaded machine, not premises.
BOUND_S = 60.0


def _store(store: object) -> SharedTusStore:
    assert isinstance(store, SharedTusStore)
    return store


def _expire(site: ReceiverSite, upload: str) -> None:
    """The upload's expiry moved into the past (as hours without a registration would)."""
    with site.pg.admin() as admin:
        admin.execute("UPDATE tus_uploads SET expires = now() - interval '1 minute' WHERE upload_id = %s",
                      (upload,))


@dataclass
class Interleaving:
    """The purge stopped between its last look at the upload and its deletion, a claim issued there."""

    at_drop: threading.Event = field(default_factory=threading.Event)
    go_on: threading.Event = field(default_factory=threading.Event)
    purged: list[int] = field(default_factory=list)
    claimed: list[StagedUpload] = field(default_factory=list)
    claim_refused: list[Exception] = field(default_factory=list)
    claim_done: threading.Event = field(default_factory=threading.Event)

    def hold_the_purge(self, upload_id: str) -> None:
        self.at_drop.set()
        assert self.go_on.wait(BOUND_S), "the test never let the purge go on"

    def purge(self, store: SharedTusStore) -> None:
        self.purged.append(store.purge_expired())

    def claim(self, store: SharedTusStore, upload: str) -> None:
        try:
            self.claimed.append(store.staged(upload))
        except UploadNotFoundError as exc:
            self.claim_refused.append(exc)
        finally:
            self.claim_done.set()


def _interleave(
    site: ReceiverSite, purging: SharedTusStore, claiming: SharedTusStore, upload: str
) -> Interleaving:
    run = Interleaving()
    purging.before_purge_drop = run.hold_the_purge
    purger = threading.Thread(target=run.purge, args=(purging,))
    purger.start()
    assert run.at_drop.wait(BOUND_S), "the purge never reached the upload"
    claimer = threading.Thread(target=run.claim, args=(claiming, upload))
    claimer.start()
    # The claim either waits for the purge's lock (seen in PostgreSQL) or, without it, is done.
    deadline = time.monotonic() + BOUND_S
    while not (run.claim_done.is_set() or lock_waiters(site.pg, wait_event="advisory") > 0):
        assert time.monotonic() < deadline, "the claim neither finished nor waited for the upload's lock"
        time.sleep(0.02)  # polling for a state to show, not proving an absence
    run.go_on.set()
    purger.join(BOUND_S)
    claimer.join(BOUND_S)
    assert not purger.is_alive() and not claimer.is_alive()
    return run


@pytest.mark.parametrize("claim_locks", [True, False], ids=["claim-holds-the-lock", "control-no-lock"])
async def test_a_claim_during_the_purge_never_gets_an_upload_the_purge_deletes(
    pair: Pair, site: ReceiverSite, station: FakeStation, monkeypatch: pytest.MonkeyPatch, claim_locks: bool,
) -> None:
    content = os.urandom(PART + 321)
    upload, _ = await _complete_upload(pair, station, content)
    _expire(site, upload)
    if not claim_locks:
        monkeypatch.setattr(SharedTusStore, "_hold_for_claim", staticmethod(lambda conn, upload_id: None))
    run = _interleave(site, _store(pair.b.parts.uploads), _store(pair.a.parts.uploads), upload)
    assert run.purged == [1]
    assert _store(pair.a.parts.uploads).get(upload) is None and _staged_keys(site, upload) == []
    if claim_locks:
        # The purge won: the claim, which waited for it, finds no upload (the station uploads again).
        assert run.claimed == [] and len(run.claim_refused) == 1
        assert upload in str(run.claim_refused[0])
    else:
        # Control: without the lock the claim got a lease on parts that were then deleted.
        assert len(run.claimed) == 1 and run.claim_refused == []


async def test_an_upload_claimed_before_the_purge_looks_again_is_kept_and_registers(
    pair: Pair, site: ReceiverSite, station: FakeStation,
) -> None:
    content = os.urandom(PART + 321)
    acquired = station.acquire(content)
    upload, headers = await _complete_upload(pair, station, content)
    _expire(site, upload)
    claimed = _store(pair.a.parts.uploads).staged(upload)
    assert claimed.info.sha256 == acquired.sha256
    # The purge of another receiver sees the lease and leaves the upload.
    assert _store(pair.b.parts.uploads).purge_expired() == 0
    assert len(_staged_keys(site, upload)) == 2  # its two parts
    async with aiohttp.ClientSession() as session:
        await _register(session, pair.url("a"), pair.a, station, upload, acquired, headers)
    assert pair.a.parts.objects.verify(acquired.sha256) is None


# -- #7: bounded memory -----------------------------------------------------------------------------------


def test_upload_memory_forgets_at_expiry_and_beyond_its_capacity() -> None:
    now = [1000.0]
    memory: UploadMemory[str] = UploadMemory(3, lambda: now[0])
    for n in range(5):
        memory.put(f"u{n}", f"v{n}", until_s=now[0] + 100 + n)
    assert len(memory) == 3
    assert [memory.get(f"u{n}") for n in range(5)] == [None, None, "v2", "v3", "v4"]
    now[0] += 102  # u2's expiry
    assert memory.get("u2") is None and memory.get("u3") == "v3"
    memory.put("u5", "v5", until_s=now[0] + 100)
    now[0] += 2
    assert len(memory) == 1 and memory.get("u5") == "v5"
    memory.pop("u5")
    assert len(memory) == 0


async def test_a_receiver_remembers_a_bounded_number_of_uploads_and_a_forgotten_one_still_completes(
    pair: Pair, site: ReceiverSite, station: FakeStation, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store = _store(pair.a.parts.uploads)
    store._hashers = UploadMemory(2, time.time)
    store._vouched = UploadMemory(2, time.time)
    content = os.urandom(2 * PART)
    acquired = station.acquire(content)
    headers = _enrol(pair.a, station)
    async with aiohttp.ClientSession() as session:
        first = await _create(session, pair.url("a"), headers, len(content))
        status, _, text = await _patch(session, pair.url("a"), first, headers, 0, content[:PART])
        assert status == 204, text
        # Uploads created after it (begun and left, on this receiver) push it out of the memory.
        others = [await _create(session, pair.url("a"), headers, 1) for _ in range(3)]
        assert len(store._hashers) == 2
        assert store._hashers.get(first) is None
        assert all(store._hashers.get(u) is not None for u in others[1:])
        # The forgotten upload goes on: its running hash is rebuilt from the bucket once.
        status, _, text = await _patch(session, pair.url("a"), first, headers, PART, content[PART:],
                                       _prefix_checksum(content))
        assert status == 204, text
        assert any("rebuilt by reading" in r.getMessage() and first in r.getMessage() for r in caplog.records)
        for other in others:
            status, _, text = await _patch(session, pair.url("a"), other, headers, 0, b"x")
            assert status == 204, text
        assert len(store._vouched) == 2 and store._vouched.get(first) is None
        await _register(session, pair.url("a"), pair.a, station, first, acquired, headers)
    # Registered here, but not vouched any more: the parts were read back once before the copy.
    assert any("read back and hashed" in r.getMessage() for r in caplog.records)
    assert pair.a.parts.objects.verify(acquired.sha256) is None

