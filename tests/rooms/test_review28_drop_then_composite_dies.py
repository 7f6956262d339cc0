"""Review 28 (issue 11, #2): a composite that dies in the middle of a feed drop had the last piece of the
drop (under the 10 s a drop is reported in) absorbed into its own gap: the relay reported the drop only
when the next run took a new pipe (edge.rooms.feed_relay.FeedRelay._detach_output), by when the
composite's gap was open and SessionRecording._feed_dropped left the drop out. Now the drop is recorded
before the composite's gap is opened: both are on the record.

Real ffmpeg, real pipes: the composite stopped (SIGSTOP) for a few seconds, its feeds dropped meanwhile,
then killed (SIGKILL) while stopped. Control: the composite's own gap is on the record too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import FEED_DROPPED_REASON
from tests.rooms.conftest import LedgerWatch
from tests.rooms.test_composite_relay import _feeds, _recording, _sealed, small_relay

__all__ = ["small_relay"]  # the fixture, imported to be used here

pytestmark = pytest.mark.usefixtures("ffmpeg", "small_relay")

STOPPED_S = 5.0  # a drop under DROP_SPLIT_SETTLES x DROP_SETTLE_S (10 s): not reported while it goes on


async def test_a_drop_going_on_when_the_composite_dies_is_on_the_record_with_its_gap(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    # Liveness 1 + 40 s: the stopped composite is not restarted by the supervisor; the kill ends it.
    recording = _recording(store, pipeline, stale_margin_s=40.0)
    task = asyncio.create_task(recording.run())
    pid = None
    try:
        await watch.until(lambda: all(_sealed(watch, s) >= 2 for s in ("a", "b", "composite")), timeout_s=90)
        pid = recording.sources["composite"].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(STOPPED_S)
        feeds_stopped = _feeds(recording)
        os.kill(pid, signal.SIGKILL)
        pid = None
        await watch.until(lambda: recording.sources["composite"].runs >= 2
                          and watch.of("gap", source="composite", state="closed"), timeout_s=90)
        await asyncio.sleep(1.0)  # whatever the relays report as the next run takes its pipes
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        recording.stop()
        await asyncio.wait_for(task, 90)
    assert all(feed["dropping"] and feed["packets_dropped"] > 0 for feed in feeds_stopped.values()), (
        feeds_stopped)
    gaps = [e.data for e in watch.of("gap", source="composite", state="closed")]
    dropped = [g for g in gaps if g["reason"].startswith(FEED_DROPPED_REASON)]
    own = [g for g in gaps if not g["reason"].startswith(FEED_DROPPED_REASON)]
    # Control: the composite's own outage (its ffmpeg killed) is a gap.
    assert own, gaps
    # The drop going on when it died is on the record for each feed, before the composite's gap.
    assert {g["feed"] for g in dropped} >= {"a", "b"}, [g["reason"][:70] for g in gaps]
    assert all(g["dropped_packets"] > 0 for g in dropped), dropped
