"""A shared-store commit that raised (review revsl #1): its parts are deleted only when the database, read
back, does not reference them; none when that cannot be told.

tests/central/test_revsl_shared_commit_answer_lost.py covers the commit applied and its answer lost (the
parts are kept). Here, on the store itself with real PostgreSQL and Ceph RGW: a commit the server refused
on a live connection (a conflicting part row: rolled back, read back on that connection), a commit on a
connection whose session the server ended (read back on a new one once the lock is free), and one whose
outcome cannot be read back in time (another session holds the upload's lock: nothing is deleted; the
upload's removal deletes what was left, the control).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from edge.central.postgres.tus_shared_store import SharedTusStore, _lock_key
from edge.central.service import start_central
from edge.central.tus_contract import UploadStoreUnavailableError
from tests.central.pg import PostgresDatabaseUnderTest
from tests.central.receivers import PART_MB, ReceiverSite
from tests.central.receivers import site as site
from tests.central.test_tus_shared_store import _staged_keys

STATION = "station-unknown"
PART = PART_MB << 20
UNKNOWN = r"the database failed during the commit of bytes 0-\d+ .*whether it was applied is not known"



def _write_backend(pg: PostgresDatabaseUnderTest) -> int:
    """The server process of the one session holding an upload's advisory lock (the write's)."""
    with pg.admin() as admin:
        rows = admin.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted").fetchall()
    assert len(rows) == 1, rows
    pid = rows[0][0]
    assert isinstance(pid, int)
    return pid


def _fail_a_commit(store: SharedTusStore, pg: PostgresDatabaseUnderTest, upload: str, case: str) -> None:
    """One part written on a handle whose commit fails as ``case`` says; the handle closed."""
    data = os.urandom(PART)
    admin = pg.admin()
    try:
        with store.begin_write(upload, offset=0) as write:
            if case == "rolled-back":
                # The server refuses the commit's INSERT (the part's row is taken): the transaction is rolled
                # back and the connection stays usable.
                admin.execute("INSERT INTO tus_upload_parts (upload_id, part, start_offset, size, "
                              "version_id) VALUES (%s, 1, 0, %s, 'planted')", (upload, PART))
            else:
                admin.execute("SELECT pg_terminate_backend(%s)", (_write_backend(pg),))
                if case == "cannot-tell":
                    admin.execute("SELECT pg_advisory_lock(%s)", (_lock_key(upload),))
            with pytest.raises(UploadStoreUnavailableError, match=UNKNOWN):
                write.write(data)
    finally:
        admin.close()  # ends its session: a lock it took is given back


@pytest.mark.parametrize("case", ["rolled-back", "connection-lost", "cannot-tell"])
async def test_a_failed_commit_deletes_only_parts_the_database_does_not_reference(
    site: ReceiverSite, pg_database: PostgresDatabaseUnderTest, case: str
) -> None:
    running = await start_central(site.config("a", uploads="max_size_mb = 64\nstation_quota_mb = 64\n"))
    try:
        store = running.parts.uploads
        assert isinstance(store, SharedTusStore)
        upload = (await asyncio.to_thread(store.create, STATION, 2 * PART)).upload_id
        await asyncio.to_thread(_fail_a_commit, store, pg_database, upload, case)
        info = await asyncio.to_thread(store.get, upload)
        assert info is not None and info.offset == 0, "the failed commit was not applied"
        left = _staged_keys(site, upload)
        if case == "cannot-tell":
            # Whether the commit was applied could not be read back in time: its part is kept ...
            assert left == [f"uploads/{upload}/00001"], left
            # ... and the upload's removal deletes every version under it (control).
            assert await asyncio.to_thread(store.remove, upload)
            assert _staged_keys(site, upload) == []
        else:
            # The database, read back, does not reference the part: deleted.
            assert left == [], left
            with pg_database.admin() as admin:
                rows = admin.execute("SELECT version_id FROM tus_upload_parts WHERE upload_id = %s",
                                     (upload,)).fetchall()
            assert rows == ([("planted",)] if case == "rolled-back" else [])
    finally:
        await running.stop()
