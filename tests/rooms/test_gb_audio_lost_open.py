"""A GB/T 28181 room camera's sound lost while its picture goes on (edge.rooms.gb_audio, gb_feed, recording)
is a gap the moment it is found, not only once the sound is back: the `audio-lost` gap entry is open while
the session records on, the source's status says it is not recording (the room's lamp blinks: it is steady
only while every source records) with that reason, and once the sound is back the gap is closed with the
silence put in it and the source records again (the control: the same status with the sound whole). Real
platform, real device simulator, real ffmpeg, real store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.service import RoomService
from tests.gb28181.live_env import live_env
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config
from tests.rooms.rig import running
from tests.rooms.test_gb_audio_room import FIELDS, GB_SOURCE, SEGMENT_S
from tests.rooms.test_gb_audio_room import media_with_sound as media_with_sound  # the module's fixture


def _gb_status(service: RoomService) -> dict[str, Any]:
    recording = service.recording("xw-1")
    assert recording is not None
    (found,) = [source for source in recording.status() if source["source"] == "gb"]
    return found


@pytest.mark.usefixtures("ffmpeg")
async def test_lost_sound_is_an_open_gap_while_the_session_records_and_closed_when_it_is_back(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    def lost(state: str) -> list[dict[str, Any]]:
        return [e.data for e in watch.of("gap", source="gb", state=state)
                if str(e.data.get("reason", "")).startswith("audio-lost")]

    # From halfway through the camera's first loop (2 s into its stream), 5 s of its sound are not sent.
    async with live_env(media_with_sound, idle_timeout_s=10.0) as env:
        await env.device("audio-drop=5")
        config = rooms_config(GB_SOURCE, segment_time_s=SEGMENT_S, stale_margin_s=8.0)
        service = RoomService(config, store, pipeline, station_id=STATION, live=env.live)
        service.load()
        async with running(service):
            await service.start("xw-1", FIELDS, by="op")
            await watch.until(lambda: lost("open"), timeout_s=120)
            during = _gb_status(service)
            closed_during = lost("closed")
            await watch.until(lambda: lost("closed"), timeout_s=60)
            await watch.until(lambda: _gb_status(service)["recording"], timeout_s=60)
            after = _gb_status(service)
            await service.stop("xw-1", by="op")
    # While the sound was missing (the gap open, 5 s before it can close): not recording, the reason.
    assert not closed_during, closed_during
    assert not during["recording"] and during["gap"]["reason"].startswith("audio-lost"), during
    assert during["gb_feed"]["audio_lost"] is True, during
    (opened,), (closed,) = lost("open"), lost("closed")
    assert opened["audio"] == "lost" and opened["from"] == closed["from"]
    assert 4.5 <= closed["silence_s"] <= 5.6, closed
    assert closed["reason"].startswith("audio-lost: the camera's sound was missing for "), closed
    # Control: with the sound back, the source records again and shows no gap.
    assert after["gap"] is None and after["gb_feed"]["audio_lost"] is False, after
    assert not [e for e in watch.of("gap", source="gb") if not e.data["reason"].startswith("audio-lost")]
