"""Review rev11e (issue 11, GB/T 28181 room sound), MEDIUM: a camera that switches its sound from G.711 A-law
to µ-law mid-stream (a new PSM at a key frame, stream type 0x90 -> 0x91: an operator changing the encoding
in the camera's web page, a firmware that renegotiates after a reconnect of its microphone). The feed keeps
the codec of the first PSM for the whole run and drops every later audio PES as "unlisted"; the timeline
fills silence in its place and the ledger's gap says "the camera's sound was missing". The sound was
received: G.711 µ-law converts to A-law sample by sample (ITU-T G.711 tables), or the run could end and start
again with the new codec. The same when the new PSM renumbers the sound's stream (0xC0 -> 0xC1): the
feed keeps taking only the first PSM's stream id. Feed over real pipes with the scripted reader of
tests.rooms.test_gb_feed.

Control: the same stream staying A-law records all of its sound."""

from __future__ import annotations

from drivers.gb28181.ps import Codec, PsMuxer
from edge.rooms.gb_audio import AudioGap
from tests.rooms.test_gb_feed import FRAME, IDR, SLICE, record_a_law_sound

ALAW_TONE = 0x2A
ULAW_TONE = 0x35
ALAW_SILENCE = 0xD5


class _SecondAudioIdMuxer(PsMuxer):
    """A camera whose new PSM lists its (A-law) sound as stream 0xC1 (a firmware's renumbering)."""

    AUDIO_ID = 0xC1


def _stream(seconds: float, *, switch_at_s: float | None, renumbered: bool = False) -> list[bytes]:
    """A key frame a second with its PSM; 40 ms of sound with each frame; µ-law from `switch_at_s` on
    (`renumbered`: still A-law, as stream 0xC1)."""
    alaw = PsMuxer(Codec.H264, Codec.G711A)
    ulaw = _SecondAudioIdMuxer(Codec.H264, Codec.G711A) if renumbered else PsMuxer(Codec.H264, Codec.G711U)
    chunks = []
    for frame in range(round(seconds * 25)):
        pts = 90000 + frame * FRAME
        switched = switch_at_s is not None and frame >= switch_at_s * 25
        muxer = ulaw if switched else alaw
        chunk = muxer.video_frame(IDR if frame % 25 == 0 else SLICE, pts, key=frame % 25 == 0)
        tone = ULAW_TONE if switched and not renumbered else ALAW_TONE
        chunk += muxer.audio_frame(bytes([tone]) * 320, pts)
        chunks.append(chunk)
    return chunks


async def test_control_a_camera_staying_a_law_records_all_its_sound() -> None:
    sound, _, events = await record_a_law_sound(_stream(6.0, switch_at_s=None))
    assert sound == bytes([ALAW_TONE]) * (6 * 8000) and events == []


async def test_sound_received_after_a_switch_to_mu_law_is_recorded_not_replaced_by_silence() -> None:
    sound, feed, events = await record_a_law_sound(_stream(6.0, switch_at_s=2.0))
    after = sound[2 * 8000:]
    silence_s = after.count(ALAW_SILENCE) / 8000
    gaps = [event for event in events if isinstance(event, AudioGap)]
    assert silence_s <= 0.1, (
        f"4.0 s of µ-law sound received after the camera's PSM switched, {silence_s:.2f} s of it recorded as "
        f"silence ({feed.unlisted_audio_pes} audio PES dropped as unlisted); the ledger's gaps say the sound "
        f"was missing: {gaps}")


async def test_sound_received_after_the_psm_renumbers_its_audio_stream_is_recorded() -> None:
    # The new PSM lists the same A-law sound as stream 0xC1 (and no longer lists 0xC0).
    sound, feed, events = await record_a_law_sound(_stream(6.0, switch_at_s=2.0, renumbered=True))
    after = sound[2 * 8000:]
    silence_s = after.count(ALAW_SILENCE) / 8000
    assert silence_s <= 0.1, (
        f"4.0 s of A-law sound received on the stream the camera's new PSM lists (0xC1), {silence_s:.2f} s "
        f"of it recorded as silence ({feed.unlisted_audio_pes} audio PES dropped as unlisted): {events}")
