"""Review 19: the station stopping while a live channel's INVITE is unanswered abandons the live task, so
the channel's `session_stopped` (which closes its open interruption) is not on the ledger when the
supervisor is done (edge.gb28181.live, edge.station).

A device that vanished (4G coverage lost, an IPC powered off) stays "online" until its keepalives are
missed (minutes); meanwhile its interrupted channel re-INVITEs it, and each INVITE waits the SIP
transaction's 32 s (64*T1) for a final answer after the device's `100 Trying`. `_Channel.stop` waits
`STOP_TIMEOUT_S` (10 s) for that INVITE before cancelling it, then drains; the station runs the live task
with the supervisor's default `stop_timeout_s` (10 s), so the supervisor abandons it: what follows
(closing the store, the process exiting) cuts off its `session_stopped`, and with it the end of the
interruption an auditor would look for.

The real supervisor (edge.runtime.supervise) runs `LiveStreams.run` as station.py adds it; the device
is the test-side SIP peer (real sockets) that registers, answers `100 Trying` to the INVITE, then nothing.
Control: the same stop with a device that answers and streams (the simulator) leaves `session_stopped`
on the ledger by the time the supervisor returns.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.sip import SipRequest, SipResponse
from drivers.gb28181.sip_transport import Peer
from edge.runtime.supervise import Supervisor, TaskSpec
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import DEVICE, PASSWORD, LiveEnv, live_env, make_recording
from .platform_peer import TestDevice


class SilentDevice(TestDevice):
    """Registers, then answers an INVITE only with the transport's `100 Trying`."""

    __test__ = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.invite_seen = asyncio.Event()

    def _invite(self, req: SipRequest, peer: Peer) -> SipResponse:
        self.invite_seen.set()
        return None  # type: ignore[return-value]  # no final answer, ever


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("review19-shutdown"))


async def stop_station_while_held(env: LiveEnv, started: asyncio.Event) -> list[dict[str, Any]]:
    """The live task under the real supervisor, as station.py adds it; stopped while a handle holds the
    channel, once `started` (the INVITE in flight, or media flowing). The live `stopped` entries on the
    ledger when the supervisor returned (the station then closes its store)."""
    supervisor = Supervisor(notify_ready=False)
    supervisor.add(TaskSpec("gb28181-live", env.live.run, critical=False))
    stop = asyncio.Event()
    running = asyncio.ensure_future(supervisor.run(stop))
    try:
        async with env.open():
            async with asyncio.timeout(30):
                await started.wait()
            stop.set()
            async with asyncio.timeout(60):
                await asyncio.shield(running)
            return env.ledger_live("stopped")  # at once: nothing else ran since the supervisor returned
    finally:
        stop.set()
        await asyncio.gather(running, return_exceptions=True)


async def test_review19_stop_during_an_unanswered_invite_leaves_no_session_stopped(media: Path) -> None:
    """LOW: the live task outlives the supervisor's stop timeout; its session_stopped comes too late."""
    async with live_env(media) as env:
        device = SilentDevice(DEVICE, PASSWORD, env.platform.transport.port)
        await device.start()
        try:
            assert (await device.register()).status == 200
            stopped = await stop_station_while_held(env, device.invite_seen)
        finally:
            await device.close()
        assert stopped, "the supervisor returned without the live channel's session_stopped"


async def test_review19_control_stop_while_streaming_records_session_stopped(media: Path) -> None:
    async with live_env(media) as env:
        await env.device()
        flowing = asyncio.Event()
        env.live.add_listener(lambda event: flowing.set())  # started: media flows
        (stopped,) = await stop_station_while_held(env, flowing)
        assert stopped["reason"] == "the station is stopping"
