"""Review 19: a live channel learns of an interruption only after the platform's BYE transaction ends, so
for a device that vanished its consumers hang and its state says "streaming" for an idle timeout *plus*
the BYE's 32 s (edge.gb28181.live `_play`, edge.gb28181.sessions `_run`).

`_play` waits `session.wait()`; `Sessions._run` sends BYE and awaits its transaction (`_bye`) before it
closes the receiver and returns. A device that vanished (power, coverage) answers no BYE: Timer F, 32 s.
With the defaults the channel is interrupted 15 + 32 = 47 s after the last packet; until then ffmpeg gets
neither bytes nor an end, `handle.streaming` is set, the status (and the rooms' lamp built on it) shows
"streaming", and the re-INVITE waits too.

Real simulator: `die-mid-stream` (the RTP stops, no BYE from the device) and it answers no BYE (what a
vanished device does). Control: the same device answering the BYE is interrupted at the idle timeout.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from drivers.gb28181.sip import SipRequest, SipResponse
from drivers.gb28181.sip_transport import Peer
from edge.gb28181.live import LiveEventKind
from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.stream import MediaSender
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import live_env, make_recording, next_event

IDLE_TIMEOUT_S = 3.0
TOLERANCE_S = 3.0  # far below the BYE transaction's 32 s


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("review19-detection"))


async def seconds_to_interruption(media: Path, monkeypatch: pytest.MonkeyPatch, *,
                                  answers_bye: bool) -> float:
    """From the device's last packet to the channel's `interrupted` event (the consumers' end)."""
    last_sent: list[float] = []
    write = MediaSender._write
    handle_request = SimulatedDevice._handle

    async def timed_write(self: MediaSender, packet: bytes) -> None:
        await write(self, packet)
        last_sent.append(time.monotonic())

    async def maybe_deaf(self: SimulatedDevice, req: SipRequest, peer: Peer) -> SipResponse | None:
        if req.method == "BYE" and not answers_bye:
            return None  # gone: nothing answers
        return await handle_request(self, req, peer)

    monkeypatch.setattr(MediaSender, "_write", timed_write)
    monkeypatch.setattr(SimulatedDevice, "_handle", maybe_deaf)
    async with live_env(media, idle_timeout_s=IDLE_TIMEOUT_S) as env:
        # A vanished device keeps no timer that would end its side of the dialog (and answer 481).
        await env.device("die-mid-stream", bye_wait_s=120.0)
        async with env.open() as handle:
            await handle.wait_streaming()
            reader = handle.reader()
            async with asyncio.timeout(90):
                while await reader.read():
                    pass  # the consumer's stream ends at the interruption
            ended_at = time.monotonic()
            await next_event(handle, LiveEventKind.INTERRUPTED, timeout_s=5)
            assert reader.ended is not None and reader.ended.startswith("interrupted")
    return ended_at - last_sent[-1]


async def test_review19_a_vanished_device_is_interrupted_only_after_the_bye_transaction(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDIUM: consumers hang and the channel says "streaming" for the idle timeout plus 32 s."""
    late = await seconds_to_interruption(media, monkeypatch, answers_bye=False)
    assert late <= IDLE_TIMEOUT_S + TOLERANCE_S, f"the consumer's stream ended {late:.1f} s after the media"


async def test_review19_control_a_device_answering_bye_is_interrupted_at_the_idle_timeout(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    late = await seconds_to_interruption(media, monkeypatch, answers_bye=True)
    assert IDLE_TIMEOUT_S - 1 <= late <= IDLE_TIMEOUT_S + TOLERANCE_S, late
