"""Review 27: two disc exports at once each check the free space alone, and together take the store's
reserve (the room every recording and docking on the station counts on).

edge.rooms.export.export_session reads the free space, compares it with what this export needs above
`reserve_bytes`, and stages; nothing counts what an export still running will take (nor the image it
leaves for its caller), and RoomService.export does not serialise exports. Two `edge room export` at once
(two operators, or one who ran it again when the first seemed slow) both pass the check on the same
figure. Here a real 64 MiB file system (tmpfs, as review 25's test) with room for one export above the
reserve, not for two: both are exported and the disk is left below the reserve.

Control: one export alone on the same free space goes through and leaves the reserve."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms import export
from edge.rooms.export import ExportRefused, export_session, space_needed
from tests.rooms.conftest import STATION, LedgerWatch
from tests.rooms.test_attach_export import FIELDS, _session, agent_api
from tests.rooms.test_review25_export_space import _leave_free, small_disk, xorriso

__all__ = ["small_disk", "xorriso"]  # fixtures, imported to be used here

pytestmark = pytest.mark.usefixtures("ffmpeg")

MIB = 1 << 20


async def test_two_exports_at_once_do_not_take_the_stores_reserve(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, small_disk: Path, xorriso: str
) -> None:
    socket = Path(tempfile.mkdtemp(prefix="edge-rooms-", dir="/tmp"))
    try:
        async with agent_api(store, pipeline, socket / "api.sock") as service:
            session = await _session(service, watch)
            work = small_disk / "work"
            sizes = [r.size for e in watch.of("joined", room_session=session)
                     if (r := pipeline.repository.item(str(e.item))) is not None]
            needed = space_needed(sizes)
            reserve = needed.staging_bytes + 2 * MIB  # two exports fit the disk, not above the reserve

            async def export_once() -> export.ExportedDisc | ExportRefused:
                try:
                    return await export_session(pipeline, session, case_number=FIELDS["case_number"],
                                                station_id=STATION, by="op", work_dir=work, xorriso=xorriso,
                                                reserve_bytes=reserve)
                except ExportRefused as exc:
                    return exc

            _leave_free(small_disk, needed.staging_bytes + reserve + MIB)
            # Control: one export alone goes through, and the reserve is still free after it.
            alone = await export_once()
            assert isinstance(alone, export.ExportedDisc), alone
            assert shutil.disk_usage(small_disk).free >= reserve
            alone.path.unlink()
            _leave_free(small_disk, needed.staging_bytes + reserve + MIB)
            # Two at once, on the same free space.
            results = await asyncio.gather(export_once(), export_once())
            exported = [r for r in results if isinstance(r, export.ExportedDisc)]
            for disc in exported:
                disc.path.unlink()
    finally:
        shutil.rmtree(socket, ignore_errors=True)
    # FAILS today: both are exported, though by the export's own estimate (what it promises to keep above
    # the reserve) only one fits: each checked the same free figure alone. (Here the files are small and
    # the estimate's slack large, so the disk itself did not fill; with a session of gigabytes the second
    # export stages into the reserve, or fills the disk under the recordings.)
    assert len(exported) <= 1, [type(r).__name__ for r in results]
