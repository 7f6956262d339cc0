"""A GB camera that stalls early in its stream (halfway through its first loop), the session stopped during
the stall: the run's last segment holds almost no picture (ffprobe gives its video a duration of 0.0 s), and
the join placed each file by its video's duration, refusing 0.0 with a ValueError `service.stop()` raised: the
stop failed, the session's products were never made. A stop must always end the session: a segment that
holds no picture adds nothing to the join, and a source whose every segment holds none is not joined, said on
the ledger. Controls: the same stall over before the stop, and a later stall cut by the stop, are joined.
Real platform, real device simulator, real ffmpeg, real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from tests.rooms.conftest import LedgerWatch
from tests.rooms.test_gb_audio_room import media_with_sound as media_with_sound  # the module's fixture
from tests.rooms.test_rev11e_stall_cut_by_stop import _stopped_in_or_after_a_stall


@pytest.mark.usefixtures("ffmpeg")
@pytest.mark.parametrize(("fault", "stop_during", "picture"), [
    ("stall=30", True, False), ("stall=3", False, True), ("late-stall=30", True, True)],
    ids=["stopped-in-an-early-stall", "control-stall-over", "control-later-stall-cut-by-the-stop"])
async def test_a_session_stopped_in_an_early_stall_ends_with_its_products(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
    fault: str, stop_during: bool, picture: bool,
) -> None:
    await _stopped_in_or_after_a_stall(media_with_sound, store, pipeline, watch, fault,
                                       stop_during=stop_during)
    (stopped,) = watch.of("session_stopped")  # the stop ended the session (it raised before)
    session = stopped.data["room_session"]
    joined = watch.of("joined", room_session=session, source="gb")
    refused = [e.data["reason"] for e in watch.of("error", room_session=session, source="gb")
               if e.data.get("stage") == "room join"]
    if not picture:
        assert not joined and len(refused) == 1 and "holds no picture" in refused[0], refused
    else:
        assert len(joined) == 1 and joined[0].item is not None and not refused, refused
