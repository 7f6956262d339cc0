"""Review rev11e (issue 11, GB/T 28181 room sound), MEDIUM: a stall of the camera's stream (media stopped
for seconds, picture and sound, then going on in the same Play) while its sound is already lost is not on the
record as a gap of its own: recording._live_gap only keeps its reason as the open audio gap's `last_reason`.
The room's record then says of that stretch only "the camera's sound was missing ... while its picture went
on": the seconds the picture was lost, and their times, are nowhere in the session's gaps (the live layer's
own `gap` entry, without room_session, is not counted in the session: gb_source's docstring).

Real platform, the real device simulator (extended in this branch: `late-stall=N`, a stall a whole file's
length after halfway, so that it falls inside `audio-drop`), real ffmpeg, real store. Control: the same stall
with the sound whole is a room gap of its own with the live layer's times."""

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

STALL_S = 3


async def _record(media: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
                  *faults: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A session of the GB camera with `faults`, until the live layer's stall is over and the sound back:
    the room's closed gaps of the source, and the live layer's stall entries."""
    async with live_env(media, idle_timeout_s=10.0) as env:
        await env.device(*faults)
        config = rooms_config(GB_SOURCE, segment_time_s=SEGMENT_S, stale_margin_s=8.0)
        service = RoomService(config, store, pipeline, station_id=STATION, live=env.live)
        service.load()
        async with running(service):
            await service.start("xw-1", FIELDS, by="op")
            await watch.until(lambda: [d for _, d in env.ledger.entries if d.get("live") == "stalled"],
                              timeout_s=120)
            # The sound (when dropped) is back at 12 s of stream time plus the stall: its gap closes then.
            await watch.until(lambda: len(watch.of("segment_sealed", source="gb")) >= 10, timeout_s=120)
            await service.stop("xw-1", by="op")
        stalls = [data for _, data in env.ledger.entries if data.get("live") == "stalled"]
    return [e.data for e in watch.of("gap", source="gb", state="closed")], stalls


def _covering(gaps: list[dict[str, Any]], stall: dict[str, Any]) -> list[dict[str, Any]]:
    """The room gaps that say the picture was lost over the live layer's stall (not an audio-only gap)."""
    return [gap for gap in gaps if gap.get("audio") != "lost" and gap["from"] <= stall["to"]
            and gap["to"] >= stall["from"]]


@pytest.mark.usefixtures("ffmpeg")
async def test_control_a_stall_with_the_sound_whole_is_a_room_gap_of_its_own(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    gaps, stalls = await _record(media_with_sound, store, pipeline, watch, f"late-stall={STALL_S}")
    assert len(stalls) == 1
    assert _covering(gaps, stalls[0]), (gaps, stalls)


@pytest.mark.usefixtures("ffmpeg")
async def test_a_stall_while_the_sound_is_lost_is_a_room_gap_of_its_own(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    # The sound missing from 2 s to 12 s of the stream; the stream stalls 3 s at 6 s, inside that.
    gaps, stalls = await _record(media_with_sound, store, pipeline, watch, "audio-drop=10",
                                 f"late-stall={STALL_S}")
    assert len(stalls) == 1
    audio = [gap for gap in gaps if gap.get("audio") == "lost"]
    assert audio, gaps  # the sound's loss is on the record
    assert _covering(gaps, stalls[0]), (
        f"the live layer's stall ({stalls[0]['from']} to {stalls[0]['to']}: picture and sound lost) is in "
        f"no room gap that says the picture was lost; the room's gaps: {gaps}")
