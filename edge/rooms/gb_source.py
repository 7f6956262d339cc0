"""A GB/T 28181 channel as a room source: its live Play (edge.gb28181.live) read by the room's ffmpeg.

A source configured with ``[rooms.room.source.gb28181]`` (device id, channel id) has no ffmpeg inputs of
its own. While its session records, :class:`GbRoomChannel` holds the channel (`LiveStreams.open`: one Play
shared by every holder), and each ffmpeg run of the source starts once media flows
(:meth:`GbRoomChannel.ready`) with a feed of its own (:mod:`edge.rooms.gb_feed`): the agent reads the
channel and writes its video (``-f mpeg``, stream-copied) and the camera's G.711 sound (raw, ``-f
alaw|mulaw``, aligned with the video and encoded to AAC in the segments) to two pipes only that ffmpeg
has. A camera without audio in its PSM records video only. A hole in the sound is filled with silence of
its length; sound lost (0.2 s of silence on end, or a second of sound more than half silence) is a gap of
its own (``reason`` ``audio-lost: ...``, ``audio`` ``lost``: the picture went on, the sound is silence
there), opened as soon as it is found (the lamp blinks) and closed when the sound is back, or at the run's
end or the session's stop (``silence_s``), unless a gap is open already (one found meanwhile opens at the
next segment if it still lasts).

Gaps. The room's ``gap`` entries (with ``room_session``) are the authoritative record of what a session
lacks: the session manifest lists them. The live layer writes its own ``gap`` entries (``source``
gb28181, ``live`` interrupted / stalled / lost, no ``room_session``): they describe the channel for every
holder and are not counted in the session. One outage is one room gap:

* interrupted (the Play ended: the device's BYE, its media idle, the device offline): the live layer
  ends the run's reader, the feed closes its pipes, ffmpeg ends its last segment and exits; the room's
  gap for that run opens as every run's gap does (``from`` = the end of the source's last segment), with
  the live layer's reason in place of "ffmpeg exited" and ``live_from`` (the last packet's arrival); the
  first segment after the channel resumed closes it;
* stalled (media stopped `stall_s` or longer and came again in the same Play, ffmpeg still running): a
  gap of its own (``live`` stalled: picture and sound lost), ``from``/``to`` the stall's arrival times,
  unless a run's gap is open already (a stall longer than the liveness timeout: the supervisor restarted
  ffmpeg and its gap covers it). The sound's gap (``audio`` lost) does not take it in: the two overlap,
  each saying what was lost, and the sound's gap gives the part of it the stream stalled (``stalled_s``:
  its ``duration_s`` is its ``silence_s`` and its ``stalled_s``, give or take the packets' arrival). A
  device's timestamps do not jump over a stall, so the segments around it count on in stream time: the
  gap is what says where station time and stream time part;
* stalled at the session's stop (media stopped `stall_s` or longer when the stop was asked: the live
  layer would tell it only once media came again): a gap from the last media to the stop (``to_stop``);
  the sound's gap open then ends at the stop as well;
* media lost (RTP packets lost, their bytes not in the stream; reported at most every 10 s by the live
  layer): a gap of zero length at the report's time with the count, unless a run's gap is open already.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from edge.config.rooms import RoomGbChannelConfig
from edge.gb28181.live import LiveError, LiveEvent, LiveHandle, LiveStreams
from edge.rooms.gb_audio import AudioGapEvent
from edge.rooms.gb_feed import GbFeedEnded, GbRunFeed, SoundRestartGate

log = logging.getLogger(__name__)

NOT_RUNNING = ("GB/T 28181 live streams are not running on this station ([gb28181] is not enabled, or its "
               "live sockets could not be made: see the ledger)")


class GbSourceUnavailable(Exception):
    """The channel cannot be read now; the message says why (a gap's reason)."""


def gb_metadata(config: RoomGbChannelConfig) -> dict[str, str]:
    """What each segment of the source says of its camera (MP4 tags, beside the case metadata)."""
    return {"gb28181_device": config.device_id, "gb28181_channel": config.channel_id}


def ns_from_wall_text(text: str | None) -> int | None:
    """Nanoseconds since the epoch of a live event's time (``2026-01-02T03:04:05.123456Z``), or None."""
    if not text:
        return None
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


class GbRoomChannel:
    """One room source's hold on its live channel, for as long as its session records."""

    def __init__(self, live: LiveStreams | None, config: RoomGbChannelConfig,
                 on_event: Callable[[LiveEvent], None]) -> None:
        self.live = live
        self.config = config
        self._on_event = on_event
        self._handle: LiveHandle | None = None
        self._sound_restarts = SoundRestartGate()  # this room's channel, across its runs

    def __repr__(self) -> str:
        return f"GbRoomChannel({self.config.device_id}/{self.config.channel_id})"

    async def ready(self, on_audio_gap: Callable[[AudioGapEvent], None]) -> GbRunFeed:
        """The run's feed, once media flows (the channel is opened first if it is not held), prepared (its
        first key frame's stream map read: video only, or video and sound): waits while the channel is
        interrupted. `GbSourceUnavailable` when it cannot be held or stopped meanwhile. The caller closes
        the feed after the run."""
        if self.live is None:
            raise GbSourceUnavailable(NOT_RUNNING)
        if self._handle is None:
            try:
                handle = self.live.open(self.config.device_id, self.config.channel_id)
                await handle.__aenter__()
            except LiveError as exc:
                raise GbSourceUnavailable(f"GB/T 28181 channel {self.config.device_id}/"
                                          f"{self.config.channel_id} cannot be opened: {exc}") from None
            handle.add_listener(self._on_event)
            self._handle = handle
        try:
            await self._handle.wait_streaming()
            reader = self._handle.reader()
        except LiveError as exc:
            self.close()  # a stopped channel is held again at the next run
            raise GbSourceUnavailable(str(exc)) from None
        feed = GbRunFeed(reader, what=f"GB/T 28181 channel {self.config.device_id}/{self.config.channel_id}",
                         on_audio_gap=on_audio_gap, sound_restarts=self._sound_restarts)
        try:
            await feed.prepare()
        except GbFeedEnded as exc:
            feed.close()
            raise GbSourceUnavailable(f"the live stream ended before its first key frame: {exc}") from None
        except BaseException:
            feed.close()
            raise
        return feed

    def stalled_since_ns(self) -> int | None:
        """When media last came (station ns), while the channel's media has stopped for its stall threshold
        or longer and its Play goes on (a stall the live layer tells only once media comes again); None
        when media flows, the channel is interrupted, or it is not held."""
        if self._handle is None:
            return None
        try:
            return ns_from_wall_text(self._handle.stalled_since())
        except LiveError:
            return None

    def close(self) -> None:
        """Let go of the channel (its Play stops after the live layer's linger if nobody else holds it)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
