"""Review 19: why an interruption lasts is on no record once the channel has started (edge.gb28181.live
`_Channel._problem`).

`_problem` writes its `error` entry only before the channel first streamed ("once: a device that stays
away would fill the ledger"). After an interruption, every re-INVITE the device refuses (486 Busy Here: its
sessions taken by another platform or a download; 404; no answer) is only logged and kept as
`last_problem` in memory. The ledger shows the interruption's first reason and, maybe hours later, its end:
what kept the room's recording from resuming, and that the station kept trying, is not in the record that
issue 11 wants complete ("nothing unexplained").

Real simulator: `die-mid-stream` for its first Play, then every INVITE answered 486 (a device whose
session slots are taken). Control: the same refusal before the channel first streamed is on the ledger.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.sip import SipRequest, SipResponse, response_to
from drivers.gb28181.sip_transport import Peer
from edge.gb28181.live import LiveEventKind
from simulators.gb28181.device import SimulatedDevice
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import CHANNEL, LiveEnv, live_env, make_recording, next_event

REFUSED_INVITES = 3


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("review19-retry"))


def busy_after(monkeypatch: pytest.MonkeyPatch, accepted: int) -> asyncio.Event:
    """The simulator answers its first `accepted` INVITEs, then 486 to each; the event: enough refused."""
    on_invite = SimulatedDevice._on_invite
    seen = 0
    refused_enough = asyncio.Event()

    async def busy(self: SimulatedDevice, req: SipRequest, peer: Peer) -> SipResponse:
        nonlocal seen
        seen += 1
        if seen <= accepted:
            return await on_invite(self, req, peer)
        if seen - accepted >= REFUSED_INVITES:
            refused_enough.set()
        return response_to(req, 486)

    monkeypatch.setattr(SimulatedDevice, "_on_invite", busy)
    return refused_enough


def errors_naming_486(env: LiveEnv) -> list[dict[str, Any]]:
    return [data for kind, data in env.ledger.entries
            if kind == "error" and data.get("channel_id") == CHANNEL and "486" in str(data.get("reason"))]


async def test_review19_refused_reinvites_during_an_interruption_are_on_no_record(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LOW: after the first start, what keeps an interruption open is only in memory."""
    refused_enough = busy_after(monkeypatch, accepted=1)
    async with live_env(media, idle_timeout_s=2.0) as env:
        await env.device("die-mid-stream")
        async with env.open() as handle:
            await next_event(handle, LiveEventKind.INTERRUPTED, timeout_s=60)
            async with asyncio.timeout(60):
                await refused_enough.wait()
            assert handle.state == "interrupted"
            view = env.live.snapshot()
            assert "486" in str(view[next(iter(view))][0]["last_problem"])  # known, in memory
        # In any form (an error, the attempts in the stopped entry ...): some entry of the channel says so.
        naming = [data for _, data in env.ledger.entries
                  if data.get("channel_id") == CHANNEL and "486" in str(data)]
        assert naming, "no ledger entry says the device refused the re-INVITEs"


async def test_review19_control_a_refusal_before_the_first_start_is_recorded(
        media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused_enough = busy_after(monkeypatch, accepted=0)
    async with live_env(media) as env:
        await env.device()
        async with env.open():
            async with asyncio.timeout(60):
                await refused_enough.wait()
        assert errors_naming_486(env)
