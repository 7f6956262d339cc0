"""Review revs13d of the recorded prefix digests (edge.ingest.prefix_digests, edge.uplink.tus_client).

A refused chunk sent with its recorded digest is judged by hashing the stored copy from byte 0 through the
chunk's end, once per refused chunk, and the hasher so built is dropped when the copy gives the digest
(wire damage). On a link that damages many chunks the station re-reads the copy from its start for every
one of them: quadratic in the item's size (a 256 GiB item at 1 MiB chunks, one chunk in a thousand
damaged: about 33 TiB read from disk), where hashing as it sends re-hashes only the refused chunk.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edge.central.tus_store import TusUploadStore
from edge.ingest.prefix_digests import DIGEST_BYTES, PrefixDigests
from edge.ingest.repository import load_prefix_digests, record_prefix_digests
from edge.ingest.store import StationStore
from edge.uplink.spool import Spool
from tests.uplink.test_tus_client import (  # noqa: F401 (fixtures, found by their names)
    CHUNK,
    Served,
    TcpProxy,
    central,
    evidence,
    session,
    store,
    stored,
)
from tests.uplink.test_tus_prefix_digests import (  # noqa: F401 (fixtures, found by their names)
    Hashing,
    hashing,
    prefix_client,
    recorded,
)

pytestmark = pytest.mark.timeout(120)

CHUNKS = 12


class _EveryChunkProxy(TcpProxy):
    """The TcpProxy flipping one byte in each of several markers in turn (each once): the next marker is
    armed when the proxy clears the one it just used."""

    def __init__(self, target_port: int, markers: list[bytes]) -> None:
        self._markers = list(markers)
        super().__init__(target_port)

    @property
    def _marker(self) -> bytes | None:
        return self._markers[0] if self._markers else None

    @_marker.setter
    def _marker(self, value: bytes | None) -> None:
        if value is None and self._markers:
            self._markers.pop(0)


@pytest.fixture
async def damaging(central: Served) -> AsyncIterator[list[_EveryChunkProxy]]:  # noqa: F811
    made: list[_EveryChunkProxy] = []
    yield made
    for p in made:
        await p.close()


async def _start(central: Served, made: list[_EveryChunkProxy], data: bytes) -> _EveryChunkProxy:  # noqa: F811
    p = _EveryChunkProxy(central.port, [data[k * CHUNK + 500 : k * CHUNK + 532] for k in range(1, CHUNKS)])
    await p.start()
    made.append(p)
    return p


async def test_wire_damage_on_many_chunks_costs_no_more_hashing_with_recorded_digests_than_without(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    hashing: Hashing, damaging: list[_EveryChunkProxy],  # noqa: F811
) -> None:
    size = CHUNK * CHUNKS
    path, data = evidence(tmp_path, size, seed=131)
    sealed = hashlib.sha256(data).hexdigest()

    # Control: hashed as it is sent, each chunk but the first damaged once on the wire: only the
    # refused chunk is hashed again.
    link = await _start(central, damaging, data)
    client = prefix_client(session, link.origin)
    plain = await client.upload(None, path, size, {}, expected_sha256=sealed)
    assert link.corrupted >= CHUNKS // 2 and plain.checksum_retries == link.corrupted
    assert stored(store, plain.url) == data
    without = hashing.bytes
    assert without <= 2 * size

    # The same damage with the digests recorded at offload: each refusal re-reads the copy from byte 0.
    hashing.bytes = hashing.checks = 0
    link = await _start(central, damaging, data)
    client = prefix_client(session, link.origin)
    result = await client.upload(None, path, size, {}, expected_sha256=sealed, recorded=recorded(data))
    assert link.corrupted >= CHUNKS // 2 and result.checksum_retries == link.corrupted
    assert stored(store, result.url) == data
    assert hashing.bytes <= without, (
        f"{hashing.checks} refused chunks judged by hashing {hashing.bytes} bytes of a {size}-byte copy "
        f"({hashing.bytes / size:.1f} times it; {without} bytes hashed without recorded digests)"
    )


# -- the digests of a purged item stay in state.db for good ---------------------------------------------
#
# Nothing deletes a row of prefix_digests but a recorded digest proved wrong: not the receipt, not the
# purge of the local copy. 32 bytes per MiB of everything the station ever offloaded (an 8 MiB blob for a
# 256 GiB item at 1 MiB steps; ~32 MB per TB) stay in state.db on the store's disk, for items whose copy
# is gone and will never be uploaded again.


def test_a_purged_items_prefix_digests_do_not_stay_in_state_db(tmp_path: Path) -> None:
    station = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        data = random.Random(7).randbytes(CHUNK * 4 + 11)
        digests = recorded(data)
        sealed = hashlib.sha256(data).hexdigest()
        with station.transaction() as conn:
            record_prefix_digests(conn, "item-purged", digests)
        # Control: while the copy is kept, its digests are there and used.
        assert load_prefix_digests(station.conn, "item-purged", sealed, len(data)) == digests
        Spool(station).mark_purged("item-purged", ["items/2026/12/06/item-purged.mp4"])
        left = station.conn.execute(
            "SELECT length(digests) FROM prefix_digests WHERE item=?", ("item-purged",)
        ).fetchall()
        assert left == [], f"the purged item's {left[0][0]} bytes of prefix digests stay in state.db"
    finally:
        station.close()


# -- what the re-read records, the uplink refuses to load -------------------------------------------------
#
# PrefixRecorder keeps a digest at every step of any copy ([offload] max_file_bytes has no upper bound),
# and the verified transaction writes them all; load_prefix_digests refuses more than MAX_DIGESTS (1 MiB
# steps of 256 GiB) as "an impossible step": an item of more than 256 GiB at chunk_mb = 1 has its 8 MiB of
# digests written at offload and is then hashed byte for byte at upload.


def test_digests_the_verification_records_for_a_large_item_are_the_ones_the_uplink_loads(
    tmp_path: Path,
) -> None:
    step = 1 << 20
    sealed = hashlib.sha256(b"the sealed copy").digest()
    station = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        for item, size in (("control-256-gib", 256 << 30), ("large-257-gib", 257 << 30)):
            count = -(-size // step)
            # The shape PrefixRecorder.finish() gives for `size` bytes at `step` (digest values aside).
            digests = PrefixDigests(step, size, bytes(DIGEST_BYTES * (count - 1)) + sealed)
            with station.transaction() as conn:
                record_prefix_digests(conn, item, digests)
            loaded = load_prefix_digests(station.conn, item, sealed.hex(), size)
            assert loaded == digests, f"{item}: {count} digests recorded at offload, not loaded to upload"
    finally:
        station.close()
