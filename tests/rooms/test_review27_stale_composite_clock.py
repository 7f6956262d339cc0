"""Review 27: after the composite falls behind (stopped 15 s here: a busy or swapped-out room PC), it
renders the pictures the relay kept for it, up to 4 MiB of each feed (a minute of a small camera's
picture), as fast as it can, and burns into every one of them the station's clock at rendering
(`%{localtime}`: edge.rooms.overlay_text.CLOCK_TEXT), not the time the source captured it. So the
composite shows the room as it was at 10:00:00 under a clock saying 10:00:15, and its ledger says the
composite recorded nothing over those 15 s (a source-stalled gap) while its next segments hold exactly
those pictures.

The relay keeps the oldest packets and drops the newest when its buffer is full
(edge.rooms.feed_relay.FeedRelay._offer): for a picture with a burnt-in clock this keeps what is most out
of date. Measured here from the ledger: the stream seconds of the composite's segments listed (closed_utc)
within a few station seconds after it runs again, against those station seconds. Control: the same
measure before the stop (the composite in step, as many stream seconds as station seconds)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from datetime import datetime

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from tests.rooms.conftest import LedgerWatch
from tests.rooms.test_composite_relay import _recording, _sealed

pytestmark = pytest.mark.usefixtures("ffmpeg")

STOPPED_S = 15.0
WINDOW_S = 6.0
SLACK_S = 3.0  # listing latency, an encoder's lookahead, a loaded machine
# Right after it runs again the composite also renders what waited in the pipes and its own input buffers
# while it was stopped (some seconds of picture; 10.0 measured once in a full run on a loaded machine). The
# backlog this guards against is STOPPED_S + WINDOW_S (21 s) of stream in the window.
RESUME_SLACK_S = 6.0


def _ns(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)


def _stream_seconds_listed(watch: LedgerWatch, from_ns: int, to_ns: int) -> float:
    return sum(float(e.data["stream_end_s"]) - float(e.data["stream_start_s"]) for e in watch.of(
        "segment_sealed", source="composite") if from_ns <= _ns(e.data["closed_utc"]) < to_ns)


async def test_the_composite_never_burns_a_later_clock_into_pictures_it_rendered_late(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    # Liveness 1 + 40 s: the composite stopped for 15 s is not restarted. The relay's sizes as shipped.
    recording = _recording(store, pipeline, stale_margin_s=40.0)
    task = asyncio.create_task(recording.run())
    stopped_pid = None
    try:
        await watch.until(lambda: all(_sealed(watch, s) >= 3 for s in ("a", "b", "composite")), timeout_s=90)
        control_from = time.time_ns()
        await asyncio.sleep(WINDOW_S)
        control_to = time.time_ns()
        stopped_pid = recording.sources["composite"].pid
        assert stopped_pid is not None
        os.kill(stopped_pid, signal.SIGSTOP)
        await asyncio.sleep(STOPPED_S)
        os.kill(stopped_pid, signal.SIGCONT)
        stopped_pid = None
        resumed_ns = time.time_ns()
        await asyncio.sleep(WINDOW_S + 4.0)  # and time to seal what was listed in the window
        await watch.until(lambda: _stream_seconds_listed(watch, control_from, control_to) > 0, timeout_s=30)
    finally:
        if stopped_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped_pid, signal.SIGCONT)
        recording.stop()
        await asyncio.wait_for(task, 90)
    in_step = _stream_seconds_listed(watch, control_from, control_to)
    after_stop = _stream_seconds_listed(watch, resumed_ns, resumed_ns + int(WINDOW_S * 1e9))
    gaps = [(e.data["reason"][:50], e.data.get("duration_s")) for e in watch.of("gap", source="composite")
            if e.data["state"] == "closed"]
    # Control: in step, the composite renders about as many stream seconds as station seconds pass.
    assert in_step <= WINDOW_S + SLACK_S, (in_step, after_stop, gaps)
    # Without the fix, in the seconds after it runs again it rendered the whole backlog (about STOPPED_S more
    # stream seconds than station seconds), each of those pictures under the clock of its rendering.
    assert after_stop <= WINDOW_S + RESUME_SLACK_S < STOPPED_S + WINDOW_S, (in_step, after_stop, gaps)
