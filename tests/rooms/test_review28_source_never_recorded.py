"""Review 28: a source that recorded nothing in a session leaves the whole session without a disc.

A room with a camera and a second source (a USB microphone left unplugged, an IP camera whose switch port
was down) that never delivered during the session: the source's time is one gap from start to stop, on
the ledger and in the statement, and the other source recorded and sealed everything. At the stop the
join of the empty source finds "no segment was sealed for this source", so its joined item is None; then
edge.rooms.export.disc_contents refuses the export of the session ("source b has no joined recording
... and no sealed segment: nothing to put on a disc for it"): the camera's recording, the statement and
the documents cannot reach a court on a disc because of the source that was away.

Source b is ffmpeg reading a TCP port nobody listens on (the camera that is not there). Control: the
same room with b recording (a test source): exported."""

from __future__ import annotations

from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.service import RoomRefused, RoomService
from tests.prerequisites import require_tool
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running
from tests.rooms.test_attach_export import FIELDS

pytestmark = pytest.mark.usefixtures("ffmpeg")


@pytest.mark.parametrize("b_there", [True, False])
async def test_a_source_that_recorded_nothing_leaves_the_rest_of_the_session_a_disc(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, unused_tcp_port: int, b_there: bool
) -> None:
    require_tool("xorriso")
    absent: dict[str, Any] = {"id": "b", "name": "microphone b", "codec": "copy",
                              "input": [{"url": f"tcp://127.0.0.1:{unused_tcp_port}"}]}
    b = lavfi_source("b") if b_there else absent
    service = RoomService(rooms_config(lavfi_source("a"), b), store, pipeline, station_id=STATION)
    service.load()
    async with running(service):
        session = (await service.start("xw-1", FIELDS, by="op")).session
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 3, timeout_s=90)
        if b_there:
            await watch.until(lambda: watch.of("segment_sealed", source="b"), timeout_s=90)
        await service.stop("xw-1", by="op")
        try:
            disc = await service.export(session, by="op")
        except RoomRefused as exc:
            pytest.fail(f"no disc (b there: {b_there}): {exc}")  # FAILS today without b
    disc.path.unlink()
    paths = [f.path for f in disc.files]
    assert "recordings/a.mp4" in paths, paths
    # Control of the cause: b recorded nothing (a gap) or everything.
    assert bool(watch.of("segment_sealed", source="b")) == b_there
    if not b_there:
        assert watch.of("gap", room_session=session, source="b")
        assert "recordings/b-NOT-RECORDED.txt" in paths, paths  # says so on the disc
