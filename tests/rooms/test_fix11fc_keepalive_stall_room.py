"""Review rev11f (MEDIUM), end to end: a room's GB camera whose picture and sound stop while it goes on
sending RTP packets without payload (the device simulator's `keepalive-only=N`: RFC 6263 keepalives in the
stream's numbering, every other one all padding). They are no media: the room's GB feed does not end its
run on them (an empty chunk was its reader's end of stream), and the stall is the live layer's stall, a room
gap, up to the stop when the stop cuts it (`stalled_since()`: the keepalives do not reset the stall clock).

Real platform, real device simulator, real ffmpeg, real store; the same rig as the rev11e stall tests (whose
`late-stall=N` are the controls: a stall without keepalives)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from tests.rooms.conftest import LedgerWatch
from tests.rooms.test_gb_audio_room import media_with_sound as media_with_sound  # the module's fixture
from tests.rooms.test_rev11e_stall_cut_by_stop import SECOND_NS, _covered_until, _stopped_in_or_after_a_stall


@pytest.mark.usefixtures("ffmpeg")
async def test_a_keepalive_only_stall_over_before_the_stop_is_one_room_gap(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    gaps, began_ns, _ = await _stopped_in_or_after_a_stall(media_with_sound, store, pipeline, watch,
                                                           "keepalive-only=3", stop_during=False)
    assert _covered_until(gaps, began_ns) >= began_ns + 2 * SECOND_NS, gaps
    assert [gap for gap in gaps if gap.get("live") == "stalled"], gaps


@pytest.mark.usefixtures("ffmpeg")
async def test_a_keepalive_only_stall_cut_by_the_stop_is_a_room_gap_up_to_the_stop(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    gaps, began_ns, stop_ns = await _stopped_in_or_after_a_stall(media_with_sound, store, pipeline, watch,
                                                                 "keepalive-only=30", stop_during=True)
    reach = _covered_until(gaps, began_ns)
    assert reach >= stop_ns - SECOND_NS, (
        f"the camera sent only keepalives for {(stop_ns - began_ns) / 1e9:.1f} s before the stop; the room's "
        f"gaps reach {(reach - began_ns) / 1e9:.1f} s into it: {gaps}")
    # Told as the live layer's stall (its `stalled_since()` at the stop), not as the feed's run ending.
    assert [gap for gap in gaps if gap.get("live") == "stalled"], gaps
