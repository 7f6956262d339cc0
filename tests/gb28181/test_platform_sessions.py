"""The platform's media sessions over real sockets: INVITE (Download, Playback, Play) with the SDP offer,
ACK, BYE, MediaStatus 121 in the dialog, the device's y= over ours, and the end on the receiver's side,
with a test receiver that counts the bytes it gets on a real socket (the real one is edge.gb28181.media)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.gb28181.sdp import SessionKind, parse_sdp
from edge.gb28181.platform import GbPlatform
from edge.gb28181.sessions import EndReason, MediaRequest, SessionError

from .platform_peer import (
    PLATFORM_ID,
    FakeClock,
    Ledger,
    ReceiverFactory,
    TestDevice,
    offered_media,
    platform_settings,
    send_udp,
)

DEVICE = "34020000001320000001"
CHANNEL = "34020000001310000001"
PASSWORD = "12345678"
START, END = 1_764_550_800, 1_764_551_100


@pytest.fixture
def receivers() -> ReceiverFactory:
    return ReceiverFactory()


@pytest.fixture
async def platform(receivers: ReceiverFactory) -> AsyncIterator[GbPlatform]:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=Ledger(), clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=receivers)
    await platform.start()
    try:
        yield platform
    finally:
        await platform.close()


async def registered(platform: GbPlatform, **kw: object) -> TestDevice:
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port, **kw).start()  # type: ignore[arg-type]
    assert (await device.register()).status == 200
    return device


def download(
    tmp_path: Path, transport: str = "udp", kind: SessionKind = SessionKind.DOWNLOAD
) -> MediaRequest:
    return MediaRequest(DEVICE, CHANNEL, kind, transport, tmp_path / "raw.ps", START, END,
                        speed=4 if kind is SessionKind.DOWNLOAD else None)


async def test_download_over_udp_ends_on_media_status_121(platform: GbPlatform, receivers: ReceiverFactory,
                                                          tmp_path: Path) -> None:
    device = await registered(platform)
    try:
        session = await platform.start_session(download(tmp_path))
        invite = device.invites[0]
        # The offer: Subject, s=Download, u=, t= Unix seconds, downloadspeed, y= (history flag 1), PS.
        subject = f"{CHANNEL}:{session.ssrc_offered:010d},{PLATFORM_ID}:0"
        assert invite.request.headers.get("Subject") == subject
        offer = parse_sdp(invite.request.body)
        assert offer.kind is SessionKind.DOWNLOAD and offer.uri == f"{CHANNEL}:0"
        assert (offer.start_time, offer.stop_time) == (START, END)
        assert offer.video.download_speed == 4 and offer.video.transport == "RTP/AVP"
        assert offer.ssrc == session.ssrc_offered and str(session.ssrc_offered).startswith("1")
        host, port = offered_media(invite)
        receiver = receivers.made[0]
        assert port == receiver.local_port
        await send_udp(host, port, b"\x80" * 1200)
        await receiver.got_bytes.wait()
        view = platform.snapshot()["devices"][0]["sessions"]
        assert [(s["kind"], s["state"], s["channel_id"]) for s in view] == [
            ("Download", "streaming", CHANNEL)]
        assert (await device.send_media_status(invite)).status == 200
        result = await session.wait()
        assert result.end_reason is EndReason.FILE_END
        assert result.outcome.bytes == 1200
        assert result.ssrc_used == session.ssrc_offered and result.file_size_bytes == 4096
        await device.bye_received.wait()  # the platform hung up after 121
        assert device.byes[0].call_id == invite.request.call_id
        assert platform.snapshot()["devices"][0]["sessions"] == []
    finally:
        await device.close()


async def test_download_over_tcp_passive(
    platform: GbPlatform, receivers: ReceiverFactory, tmp_path: Path
) -> None:
    device = await registered(platform)
    try:
        session = await platform.start_session(download(tmp_path, "tcp-passive"))
        offer = parse_sdp(device.invites[0].request.body)
        assert offer.video.transport == "TCP/RTP/AVP" and offer.video.setup is not None
        assert offer.video.setup.value == "passive"
        host, port = offered_media(device.invites[0])
        _, writer = await asyncio.open_connection(host, port)  # the device connects (Annex L default)
        writer.write(b"\x00\x04RTP!")
        await writer.drain()
        await receivers.made[0].got_bytes.wait()
        writer.close()
        await device.send_media_status(device.invites[0])
        result = await session.wait()
        assert result.end_reason is EndReason.FILE_END and result.outcome.bytes == 6
    finally:
        await device.close()


async def test_download_over_tcp_active_connects_to_the_device(
    platform: GbPlatform, receivers: ReceiverFactory, tmp_path: Path
) -> None:
    device = await registered(platform)
    await device.listen_for_media()
    try:
        session = await platform.start_session(download(tmp_path, "tcp-active"))
        offer = parse_sdp(device.invites[0].request.body)
        assert offer.video.setup is not None and offer.video.setup.value == "active"
        await receivers.made[0].got_bytes.wait()  # it connected to the port the device answered with
        session.stop()
        result = await session.wait()
        assert result.end_reason is EndReason.STOPPED and result.outcome.bytes == 18
        await device.bye_received.wait()
    finally:
        await device.close()


@pytest.mark.parametrize("answered", ["0200001234", None])
async def test_the_devices_ssrc_wins_and_a_missing_one_keeps_ours(
    platform: GbPlatform, receivers: ReceiverFactory, tmp_path: Path, answered: str | None
) -> None:
    device = await registered(platform, answer_ssrc=answered)
    try:
        session = await platform.start_session(download(tmp_path))
        receivers.made[0].end_of_stream()  # the stream stops: the receiver's idle end
        result = await session.wait()
        assert result.end_reason is EndReason.RECEIVER_ENDED
        assert result.ssrc_answer_text == answered
        if answered is None:
            assert result.ssrc_answered is None and result.ssrc_used == session.ssrc_offered
            assert receivers.made[0].expected_ssrcs == []
        else:
            assert result.ssrc_answered == result.ssrc_used == 200001234 != session.ssrc_offered
            assert receivers.made[0].expected_ssrcs == [200001234]
        await device.bye_received.wait()  # a stalled stream is hung up too (Annex M a)
    finally:
        await device.close()


async def test_device_bye_ends_a_live_play(platform: GbPlatform, receivers: ReceiverFactory,
                                           tmp_path: Path) -> None:
    device = await registered(platform)
    try:
        session = await platform.start_session(download(tmp_path, kind=SessionKind.PLAY))
        offer = parse_sdp(device.invites[0].request.body)
        assert offer.kind is SessionKind.PLAY and (offer.start_time, offer.stop_time) == (0, 0)
        assert str(session.ssrc_offered).zfill(10).startswith("0")
        assert (await device.send_bye(device.invites[0])).status == 200
        result = await session.wait()
        assert result.end_reason is EndReason.DEVICE_BYE
        assert device.byes == []  # the platform does not hang up a call the device ended
        assert receivers.made[0].closed.is_set()
    finally:
        await device.close()


async def test_a_refused_invite_closes_the_receiver(platform: GbPlatform, receivers: ReceiverFactory,
                                                    tmp_path: Path) -> None:
    device = await registered(platform)

    async def busy(req: object, peer: object) -> object:
        from drivers.gb28181.sip import response_to

        return response_to(req, 486, to_tag="busy")  # type: ignore[arg-type]

    device._handle = busy  # type: ignore[assignment,method-assign]
    await device.rebind()  # the handler is taken by the transport when it starts
    assert (await device.register()).status == 200  # a new port: its REGISTER moves it there
    try:
        with pytest.raises(SessionError, match="device answered 486"):
            await platform.start_session(download(tmp_path))
        assert receivers.made[0].closed.is_set()
        assert platform.sessions.sessions == {}
        assert platform.snapshot()["devices"][0]["sessions"] == []  # the operator view forgets it too
    finally:
        await device.close()


async def test_sessions_need_an_online_device(platform: GbPlatform, tmp_path: Path) -> None:
    with pytest.raises(SessionError, match="not online"):
        await platform.start_session(download(tmp_path))


async def test_a_platform_without_a_receiver_refuses_sessions(tmp_path: Path) -> None:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=Ledger(), clock_trusted=lambda: True,
                          clock=FakeClock())
    await platform.start()
    device = await registered(platform)
    try:
        with pytest.raises(SessionError, match="no media receiver"):
            await platform.start_session(download(tmp_path))
        assert device.invites == []
    finally:
        await device.close()
        await platform.close()


async def test_a_device_going_offline_ends_its_sessions(platform: GbPlatform, receivers: ReceiverFactory,
                                                       tmp_path: Path) -> None:
    device = await registered(platform)
    try:
        session = await platform.start_session(download(tmp_path))
        clock = platform._clock
        assert isinstance(clock, FakeClock)
        clock.now += platform.settings.keepalive_interval_s * platform.settings.keepalive_timeout_count
        platform.check()
        result = await session.wait()
        assert result.end_reason is EndReason.STOPPED
        await device.bye_received.wait()
    finally:
        await device.close()


async def test_media_status_outside_the_dialog_finds_the_devices_download(
    platform: GbPlatform, receivers: ReceiverFactory, tmp_path: Path
) -> None:
    """Some devices send MediaStatus 121 with a Call-ID of its own: the device's one history session."""
    from drivers.gb28181.manscdp import build_media_status

    device = await registered(platform)
    try:
        session = await platform.start_session(download(tmp_path))
        assert (await device.message(build_media_status(90, DEVICE))).status == 200
        result = await session.wait()
        assert result.end_reason is EndReason.FILE_END
    finally:
        await device.close()


async def test_media_status_outside_the_dialog_ends_nothing_when_ambiguous(
    platform: GbPlatform, receivers: ReceiverFactory, tmp_path: Path
) -> None:
    """Two downloads from one device: which one ended cannot be told, so neither is ended by it."""
    from drivers.gb28181.manscdp import build_media_status

    device = await registered(platform)
    try:
        first = await platform.start_session(download(tmp_path))
        second = await platform.start_session(download(tmp_path / "second"))
        assert (await device.message(build_media_status(91, DEVICE))).status == 200
        assert first.end_reason is None and second.end_reason is None
        assert (await device.send_media_status(device.invites[1])).status == 200  # in its dialog: that one
        assert (await second.wait()).end_reason is EndReason.FILE_END
        assert first.end_reason is None
        first.stop()
        assert (await first.wait()).end_reason is EndReason.STOPPED
    finally:
        await device.close()


async def test_download_takes_a_recording_as_record_info_gave_it(
    platform: GbPlatform, receivers: ReceiverFactory, tmp_path: Path
) -> None:
    """The ingest source's seam: device-local times as RecordInfo wrote them (Beijing), t= in Unix seconds,
    and the session's facts for the ledger."""
    device = await registered(platform)
    try:
        running = asyncio.ensure_future(platform.download(
            DEVICE, CHANNEL, "2026-12-01T09:00:00", "2026-12-01T09:05:00", tmp_path / "raw.ps",
            transport="udp", speed=2))
        await device.invited.wait()
        offer = parse_sdp(device.invites[0].request.body)
        utc = (datetime(2026, 12, 1, 1, 0, tzinfo=UTC), datetime(2026, 12, 1, 1, 5, tzinfo=UTC))
        assert (offer.start_time, offer.stop_time) == tuple(int(t.timestamp()) for t in utc)
        assert offer.video.download_speed == 2
        await device.send_media_status(device.invites[0])
        result = await running
        facts = result.facts()
        assert facts["end_reason"] == "media status 121"
        assert facts["call_id"] == device.invites[0].request.call_id
        assert facts["ssrc_used"] == facts["ssrc_offered"] and facts["file_size_bytes"] == 4096
    finally:
        await device.close()


async def test_a_receiver_that_cannot_open_is_a_session_error(platform: GbPlatform, tmp_path: Path) -> None:
    async def failing(*args: object, **kw: object) -> object:
        raise OSError("no free port in 30000-30000")

    platform.sessions._open_receiver = failing  # type: ignore[assignment]
    device = await registered(platform)
    try:
        with pytest.raises(SessionError, match="no media receiver: no free port"):
            await platform.start_session(download(tmp_path))
        assert device.invites == []
    finally:
        await device.close()


async def test_closing_gives_up_on_a_silent_device_and_still_closes_the_receiver(
    platform: GbPlatform, receivers: ReceiverFactory, tmp_path: Path
) -> None:
    """A stopping station does not wait out a BYE transaction (32 s) on a device that went silent."""
    device = await registered(platform)
    try:
        session = await platform.start_session(download(tmp_path))
        await device.close()  # gone: the BYE will never be answered
        await platform.sessions.close(timeout_s=0.2)
        assert receivers.made[0].closed.is_set()
        assert platform.sessions.sessions == {}
        assert session._done is not None and session._done.done()
    finally:
        await device.close()
