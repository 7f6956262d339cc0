"""Review 27: a composite that reads its feeds slower than real time (a weak room PC: here a real ffmpeg
told to read its inputs at half speed, ``-readrate 0.5``) loses the sources' packets all session long,
shows a picture that freezes and jumps, and nothing of it reaches the ledger.

The relay reports a drop only once packets have gone through DROP_SETTLE_S (2 s) without another
(edge.rooms.feed_relay.FeedRelay._offer): a composite always behind drops at every burst of the feed, so
the drop never settles and is never reported while the session runs. At the stop the relays are closed
after the runs (SessionRecording.run's finally: composite.close() -> FeedRelay.end_drop -> on_drop), and
SessionRecording._feed_dropped returns at once when the stop is set: that report is thrown away too.

Control: tests/rooms/test_composite_relay.py::test_a_stopped_composite_holds_up_no_source_and_its_lost_
picture_is_a_gap (a composite that stops, then reads again for more than DROP_SETTLE_S: a gap)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import FEED_DROPPED_REASON
from tests.rooms.conftest import LedgerWatch
from tests.rooms.test_composite_relay import _feeds, _recording, _sealed, small_relay

__all__ = ["small_relay"]  # the fixture, imported to be used here

pytestmark = pytest.mark.usefixtures("ffmpeg", "small_relay")

SLOW_S = 40.0

# The room PC's ffmpeg, except that a composite (the one command with a filter graph) reads each input at
# half its native rate: a composite that cannot keep up, as on an under-powered station.
SLOW_COMPOSITE = """#!/bin/bash
args=()
composite=0
for a in "$@"; do [ "$a" = "-filter_complex" ] && composite=1; done
for a in "$@"; do
  if [ "$composite" = 1 ] && [ "$a" = "-i" ]; then args+=("-readrate" "0.5"); fi
  args+=("$a")
done
exec {ffmpeg} "${{args[@]}}"
"""


async def test_a_composite_that_cannot_keep_up_has_its_lost_picture_on_the_ledger(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path
) -> None:
    wrapper = tmp_path / "ffmpeg-slow-composite"
    wrapper.write_text(SLOW_COMPOSITE.format(ffmpeg=shutil.which("ffmpeg")))
    wrapper.chmod(0o755)
    recording = _recording(store, pipeline, stale_margin_s=40.0, ffmpeg=str(wrapper))
    task = asyncio.create_task(recording.run())
    try:
        await watch.until(lambda: all(_sealed(watch, s) >= 2 for s in ("a", "b", "composite")), timeout_s=90)
        await asyncio.sleep(SLOW_S)
        feeds = _feeds(recording)
        during = [e.data["reason"][:60] for e in watch.of("gap", source="composite")]
        sealed = _sealed(watch, "composite")
    finally:
        recording.stop()
        await asyncio.wait_for(task, 90)
    assert recording.composite is not None
    dropped_total = {s: relay.packets_dropped for s, relay in recording.composite.feeds.items()}
    # Control: the composite recorded on (segments sealed), and the relay dropped packets of its feeds.
    assert sealed >= 5, sealed
    assert any(feed["packets_dropped"] > 0 for feed in feeds.values()), feeds
    # FAILS today: the composite lost packets for most of the 40 s; the drops on the ledger (if any: a
    # drop is reported only when 2 s of packets went through after it, which a composite always behind
    # rarely gives) account for a part of them, and the drop still going on at the stop is thrown away.
    reported = {s: sum(e.data["dropped_packets"] for e in watch.of("gap", source="composite", state="closed")
                       if e.data["reason"].startswith(FEED_DROPPED_REASON) and e.data["feed"] == s)
                for s in dropped_total}
    # (Drops while the composite was in a gap of its own are rightly not reported: half is the bound.)
    assert all(reported[s] >= dropped_total[s] / 2 for s in dropped_total), (reported, dropped_total, during,
                                       [(e.data["state"], e.data["reason"][:60])
                                        for e in watch.of("gap", source="composite")])
