"""Review 19: an interruption's `from` (the last byte before it) is the time it was *detected* when the
stream died just after a lost packet (edge.gb28181.live `_Channel._take`, edge.gb28181.media `_finish`).

Over UDP the RTP reorder buffer holds the packets that came after a hole (up to its window) until the hole
fills or the window passes. When the device dies right after a loss (a 4G link degrading, then gone), those
packets stay held until the session ends at the idle timeout (15 s by default); the receiver's `_finish`
then flushes them into the sink, and live.py stamps `_last_byte_at` with *that* moment. The `gap` entry
and the `interrupted` event then say media flowed until the interruption was noticed: its start is put
an idle timeout late, and the gap an auditor reads is that much shorter than the one the device left.

Real simulator (`die-mid-stream` after 2 s of Play; `loss=0.2` so that a hole lies among the last
packets), real receiver over UDP; the moment the device sent its last packet is taken from the
simulator's own sender. Control: without loss `from` is that moment.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from edge.gb28181.live import LiveEventKind
from simulators.gb28181.stream import MediaSender
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import live_env, make_recording, next_event

IDLE_TIMEOUT_S = 4.0
TOLERANCE_S = 1.0  # well below the idle timeout


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("review19-from"))


async def interruption_began_late_by(media: Path, monkeypatch: pytest.MonkeyPatch, *faults: str) -> float:
    """Seconds between the device's last packet and the `from` the live channel recorded."""
    last_sent: list[float] = []
    write = MediaSender._write

    async def timed_write(self: MediaSender, packet: bytes) -> None:
        await write(self, packet)
        last_sent.append(time.time())

    monkeypatch.setattr(MediaSender, "_write", timed_write)
    async with live_env(media, idle_timeout_s=IDLE_TIMEOUT_S) as env:
        await env.device("die-mid-stream", *faults)
        async with env.open() as handle:
            event = await next_event(handle, LiveEventKind.INTERRUPTED, timeout_s=60)
            sent_until = last_sent[-1]
    assert event.interruption is not None and "idle" in event.reason
    began = datetime.fromisoformat(event.interruption.began_at).timestamp()
    detected = datetime.fromisoformat(event.interruption.detected_at).timestamp()
    assert detected - sent_until >= IDLE_TIMEOUT_S - TOLERANCE_S  # noticed at the idle timeout
    gap = env.ledger_live("interrupted")[0]
    assert gap["from"] == event.interruption.began_at
    return began - sent_until


async def test_review19_interruption_from_is_the_detection_time_after_a_loss(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HIGH: the recorded start of the interruption is an idle timeout after the device's last packet."""
    late = await interruption_began_late_by(media, monkeypatch, "loss=0.2")
    assert late <= TOLERANCE_S, f"the interruption's from is {late:.1f} s after the device's last packet"


async def test_review19_control_interruption_from_without_loss(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    late = await interruption_began_late_by(media, monkeypatch)
    assert late <= TOLERANCE_S, late
