"""Review rev11f (issue 11, a GB room source's stalls), MEDIUM: the media receiver hands the live layer every
RTP packet's payload, an empty one too (edge.gb28181.media `_payload`: no length check), and the channel's
fan-out queues it for each consumer (edge.gb28181.live `_Channel._take` -> `LiveReader._offer`). Two
effects of a device that sends RTP packets with no payload (RFC 6263's keepalive for NAT bindings, a device
"lying" that media flows, or a hostile sender on the media port):

* the stall clock is reset by them (`_take` takes any bytes as media), so a camera whose picture and sound
  stopped is never "stalled": no stall gap, and at the session's stop no gap from its last media to the
  stop (`stalled_since()` is None: the rev11e fix does not see it);
* `LiveReader.read()` returns the empty chunk when it is alone in the queue, and b"" is the reader's end of
  stream: the room's GB feed (edge.rooms.gb_feed pump: `if not chunk: break`) ends its run as if the live
  stream had ended, although the channel goes on (a gap and an ffmpeg restart per keepalive).

Real LiveReader and PS packs from the real muxer; the channel is the reader's owner, used only when the
reader ends. Control: a reader whose channel ended returns b"" (its real end)."""

from __future__ import annotations

import asyncio
from typing import cast

from drivers.gb28181.ps import Codec, PsMuxer
from drivers.gb28181.rtp import RtpPacket, parse_rtp
from edge.gb28181.live import LiveReader, _Channel

IDR = b"\x00\x00\x00\x01\x65" + b"\x88" * 200


class _Owner:
    """The reader's channel as far as the reader uses it: told when the reader ends."""

    def __init__(self) -> None:
        self.detached: list[LiveReader] = []

    def _detach(self, reader: LiveReader) -> None:
        self.detached.append(reader)


def _reader() -> LiveReader:
    reader = LiveReader(cast(_Channel, _Owner()), limit_bytes=1 << 20, what="room xw-1 source gb")
    reader._offer(PsMuxer(Codec.H264, None).video_frame(IDR, 90000, key=True))  # joined at a key frame
    return reader


async def test_control_a_reader_whose_channel_ended_reads_its_end() -> None:
    reader = _reader()
    assert await asyncio.wait_for(reader.read(), 30)  # the key frame
    reader._end("the live stream stopped")
    assert await asyncio.wait_for(reader.read(), 30) == b""


async def test_an_empty_rtp_payload_is_not_the_end_of_the_stream() -> None:
    reader = _reader()
    assert await asyncio.wait_for(reader.read(), 30)
    keepalive = RtpPacket(payload_type=96, sequence=7, timestamp=90000, ssrc=0x0100_0001).to_bytes()
    assert parse_rtp(keepalive).payload == b""  # a header-only packet parses: its payload is empty
    reader._offer(parse_rtp(keepalive).payload)  # as the receiver hands it on
    read = asyncio.ensure_future(reader.read())
    done, _ = await asyncio.wait([read], timeout=0.5)
    if done:
        assert read.result() != b"", (
            "an empty RTP payload is read as b'', the live reader's end of stream, while the channel goes "
            f"on (ended: {reader.ended!r}): the room's GB feed ends its run on it")
    read.cancel()
