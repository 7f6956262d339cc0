"""A leftover segment's pins (review rev11c): two different pins refuse it; none seals it, but as suspect."""

from __future__ import annotations

import pytest

from edge.custody.ledger import EntryType
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.capture import PINS_FILE
from edge.rooms.recording import leftover_segments
from edge.rooms.sealing import SegmentSealer
from edge.rooms.session import RoomSession, new_session
from tests.rooms.conftest import STATION, LedgerWatch
from tests.rooms.test_rev11c_changed_segment_pin import NAME, _listed_segment

pytestmark = pytest.mark.usefixtures("ffmpeg")


def _session() -> RoomSession:
    return new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                       fields={"case_number": "A3301062026000997", "collector": "张三",
                               "subject": "询问过程"},
                       started_utc="2026-12-06T01:00:00.000000Z", started_by="operator")


@pytest.mark.parametrize("second", ["same", "different"])
async def test_two_different_pins_for_one_segment_refuse_it(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, second: str
) -> None:
    session = _session()
    run_dir = _listed_segment(store, session.session)
    line = (run_dir / PINS_FILE).read_text()
    if second == "different":
        line = line.replace(f"{NAME} ", f"{NAME} 1", 1)
    with open(run_dir / PINS_FILE, "a") as out:
        out.write(line)
    sealer = SegmentSealer(pipeline, session, source="a", source_name="source a", station_id=STATION,
                           clock_synchronised=True)
    (segment,) = leftover_segments(run_dir)
    sealed = await sealer.seal(segment)
    if second == "same":  # control: the same pin twice is one pin
        assert sealed is not None
        return
    assert sealed is None and (run_dir / NAME).exists()
    (error,) = watch.of(EntryType.ERROR, segment=NAME)
    assert "two different pins" in error.data["reason"] and error.data["changed"] is True


async def test_a_listed_segment_without_a_pin_is_sealed_as_suspect(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    session = _session()
    run_dir = _listed_segment(store, session.session)
    (run_dir / PINS_FILE).unlink()
    sealer = SegmentSealer(pipeline, session, source="a", source_name="source a", station_id=STATION,
                           clock_synchronised=True)
    (segment,) = leftover_segments(run_dir)
    sealed = await sealer.seal(segment)
    assert sealed is not None  # its bytes are kept
    (entry,) = watch.of(EntryType.SEGMENT_SEALED, segment=NAME)
    assert "without a pin" in entry.data["unpinned"]
    (error,) = watch.of(EntryType.ERROR, segment=NAME)
    assert error.data["unpinned"] is True and sealed.item in error.data["reason"]
