"""Review rev11g (896356e): a GB session stopped during its camera's stall seals a last segment holding no
picture (ffprobe 0.0 s); the join leaves it out of the joined file (or joins nothing) while the `joined` entry
still lists it. `edge verify` of the station's own, untouched store must then find nothing wrong: every
sealed segment accounted for, the packet counts matching what was joined. Control: the stall over before the
stop (no 0.0 s segment). Real platform, real device simulator, real ffmpeg, real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.verify.station import verify_store
from tests.rooms.conftest import LedgerWatch
from tests.rooms.test_gb_audio_room import media_with_sound as media_with_sound  # the module's fixture
from tests.rooms.test_rev11e_stall_cut_by_stop import _stopped_in_or_after_a_stall


@pytest.mark.usefixtures("ffmpeg")
@pytest.mark.parametrize(("fault", "stop_during"), [
    ("stall=3", False), ("late-stall=30", True), ("stall=30", True), ("stall=25", False)],
    ids=["control-stall-over", "later-stall-cut-by-the-stop", "stopped-in-an-early-stall",
         "early-stall-over-then-stopped"])
async def test_an_untouched_store_with_a_no_picture_segment_verifies(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
    fault: str, stop_during: bool,
) -> None:
    await _stopped_in_or_after_a_stall(media_with_sound, store, pipeline, watch, fault,
                                       stop_during=stop_during)
    assert len(watch.of("session_stopped")) == 1
    report = verify_store(store.layout.root)
    assert [(p.where, p.what) for p in report.problems] == []
