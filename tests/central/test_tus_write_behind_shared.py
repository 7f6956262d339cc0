"""The tus write-behind on the shared store (PostgreSQL and a Ceph bucket): a corrupt TLS record mid-body
while the block in flight is the one that stores a part (``put_part``) never runs a second call on the
upload beside it (review revs13c: the storage-failure handler's ``discard`` deleted staged parts while
the block in flight was still storing one).

The real tus routes over TLS, the store of a real central (its migrations made the tables), its
``begin_write`` wrapped to count the calls running at once and to hold the block that fills the first
part. The control that the watch sees a call beside the held block is the local store's
(test_tus_write_behind_review.py, and the mutation of ``_WriteBehind`` in test_tus_write_behind.py):
run here, the old path's close beside the part being stored loses the request's database connection,
which surfaces as an unraisable ResourceWarning in whatever test collects it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.central import tus
from edge.central.postgres.tus_shared_store import SharedTusStore
from edge.central.service import start_central
from edge.central.tus_store import ChunkChecksum
from tests.central.receivers import PART_MB, ReceiverSite
from tests.central.receivers import site as site
from tests.central.test_tus_shared_store import _staged_keys
from tests.central.test_tus_write_behind_review import (
    STATION,
    HeldWrite,
    TlsClient,
    Watch,
    _tls_server_context,
    patch_head,
    serving,
)
from tests.central.tus_fixtures import wait_event

MIB = 1024 * 1024
PART = PART_MB * MIB
HELD_BLOCK = PART // tus._WRITE_BLOCK_BYTES  # the 1-based block whose write fills the first part


class PartHeldWrite(HeldWrite):
    """Holds the write of block ``HELD_BLOCK`` (it stores part 1); says when the upload is released."""

    def __init__(self, inner: Any, watch: Watch, released: threading.Event) -> None:
        super().__init__(inner, watch)
        self._blocks = 0
        self._released = released

    def write_pieces(self, pieces: Sequence[bytes]) -> None:
        self._blocks += 1
        if self._blocks == HELD_BLOCK:
            self._watch.write_gate.clear()
        super().write_pieces(pieces)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._released.set()


async def _body_error_while_a_part_is_stored(
    tmp_path: Path, site: ReceiverSite, leaked: list[str]
) -> tuple[Watch, int, str, bytes]:
    """A PATCH whose block storing part 1 is held while a corrupt TLS record fails the body's read;
    ``leaked``: the database connections lost by then."""
    running = await start_central(site.config("a", uploads="max_size_mb = 64\nstation_quota_mb = 64\n"))
    try:
        store = running.parts.uploads
        assert isinstance(store, SharedTusStore)
        watch, released = Watch(), threading.Event()
        real_begin = store.begin_write

        def held_begin(upload_id: str, *, offset: int, checksum: ChunkChecksum | None = None) -> Any:
            return PartHeldWrite(real_begin(upload_id, offset=offset, checksum=checksum), watch, released)

        store.begin_write = held_begin  # type: ignore[method-assign]
        size = 2 * PART
        data = os.urandom(size)
        upload_id = (await asyncio.to_thread(store.create, STATION, size)).upload_id
        sent = PART + MIB // 2  # blocks 1..HELD_BLOCK, then half a block collected behind the held one
        async with serving(store, ssl_context=_tls_server_context(tmp_path)) as served:
            client = await asyncio.to_thread(TlsClient, served.port)
            try:
                await asyncio.to_thread(client.send, patch_head(upload_id, length=size) + data[:sent])
                await wait_event(watch.writing)
                await asyncio.sleep(1.0)  # the rest of what was sent reaches the loop; the block still held
                await asyncio.to_thread(client.send_corrupt_record)
                for _ in range(50):  # up to 5 s for a call beside the held one
                    if watch.most_at_once > 1:
                        break
                    await asyncio.sleep(0.1)
            finally:
                watch.write_gate.set()
                client.sock.close()
            await wait_event(released)
            for _ in range(300):  # every call ended (the control's lets a block run past close)
                if watch.active == 0:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)
        info = await asyncio.to_thread(store.get, upload_id)  # before the store's connections close
        assert info is not None
        return watch, info.offset, upload_id, data
    finally:
        await running.stop()
        # A connection the store lost is found here, not at a random later collection.
        with warnings.catch_warnings(record=True) as lost:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
        leaked.extend(str(w.message) for w in lost if "psycopg" in str(w.message))



async def test_a_corrupt_tls_record_while_a_part_is_stored_runs_nothing_beside_it(
    tmp_path: Path, site: ReceiverSite
) -> None:
    leaked: list[str] = []
    watch, offset, upload_id, data = await _body_error_while_a_part_is_stored(tmp_path, site, leaked)
    assert leaked == []
    assert watch.end_calls >= 1, "control: the TLS error reached the handler (it kept or discarded)"
    assert watch.most_at_once == 1, "a call ran on the upload beside the block storing a part"
    # What arrived before the corrupt record is kept like a disconnect's: the whole part, not the half
    # block after it (a part is stored whole or not at all).
    assert offset == PART
    assert len(_staged_keys(site, upload_id)) == 1
    assert len(data) == 2 * PART
