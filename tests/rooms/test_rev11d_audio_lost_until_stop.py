"""Review rev11d (issue 11, GB/T 28181 room sound): a camera whose sound stops for good mid-session (its
microphone unplugged, its audio muted) while its picture goes on. The agent fills the rest of the session
with silence, and the session's stop cancels the feed's pump, so `AudioTimeline.finish()` never runs and
the ongoing silence is never reported. The joined file then holds seconds of silence that no gap accounts
for: sound claimed but never received. (The control is the existing test_gb_audio_room drop of 2 s, where
the sound comes back and the gap is recorded; here the silence in the file is measured, so the loss is
shown to be real.) Real platform, real device simulator, real ffmpeg, real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from tests.gb28181.live_env import live_env
from tests.rooms.conftest import LedgerWatch
from tests.rooms.rig import original
from tests.rooms.test_gb_audio_room import _session, _silences, _streams
from tests.rooms.test_gb_audio_room import media_with_sound as media_with_sound  # the module's fixture


@pytest.mark.usefixtures("ffmpeg")
async def test_sound_lost_until_the_stop_is_a_gap_in_the_record(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
    tmp_path: Path,
) -> None:
    # From halfway through the camera's first loop (2 s into its stream) its sound is no longer sent at all.
    async with live_env(media_with_sound, idle_timeout_s=10.0) as env:
        device = await env.device("audio-drop=600")
        session, _, _ = await _session(env, store, pipeline, watch, 5)
        sent = [s.sender.stats for s in [*device.finished_sessions, *device.sessions.values()]]
    assert sum(s.audio_dropped for s in sent) >= 200  # several seconds of 20 ms frames left out
    (joined,) = watch.of("joined", room_session=session, source="gb")
    joined_path = original(store, str(joined.item), tmp_path)
    assert set(_streams(joined_path)) == {"video", "audio"}
    _, silences = _silences(joined_path)
    silent_s = sum(length for _, length in silences)
    assert silent_s >= 4.0, silences  # the file holds seconds of silence put in place of the sound
    # ... and the record must say so: an audio-lost gap covering it (the run's end being the session's stop).
    lost = [e.data for e in watch.of("gap", room_session=session, source="gb")
            if str(e.data.get("reason", "")).startswith("audio-lost")]
    assert lost, ("silence written in place of the camera's sound with no gap on the ledger",
                  silences, [e.data for e in watch.of("gap", room_session=session, source="gb")])
    assert sum(float(d.get("silence_s", 0)) for d in lost if d.get("state") == "closed") >= silent_s - 1.0
