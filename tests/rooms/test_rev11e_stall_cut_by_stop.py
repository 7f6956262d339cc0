"""Review rev11e (issue 11, GB/T 28181 room sources), MEDIUM: a camera's stream that stalls (no media, picture
and sound) and is still stalled when the operator stops the session leaves the seconds from the stall to the
stop in no gap. A GB source's run does not report stalls itself (`report_stalls=False`: "told by its live
layer"), and the live layer tells a stall only once media comes again in the same Play, which a stop cuts
off. The record claims the source recorded up to the stop. With the camera's sound lost meanwhile it is worse
said: the audio-lost gap is closed "until the session stopped" (`to_stop`) at the last frame's arrival,
seconds before the stop.

Real platform, real device simulator (its `late-stall=N` fault, added in this branch), real ffmpeg, real
store; the stall's start is read from the simulator (its sender's `stalled_s`, set as the pause begins).
Control: the same stall stopped after it ended is a room gap with its times."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.gb_source import ns_from_wall_text
from edge.rooms.service import RoomService
from tests.gb28181.live_env import live_env
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config
from tests.rooms.rig import running
from tests.rooms.test_gb_audio_room import FIELDS, GB_SOURCE, SEGMENT_S
from tests.rooms.test_gb_audio_room import media_with_sound as media_with_sound  # the module's fixture

SECOND_NS = 1_000_000_000


async def _stopped_in_or_after_a_stall(
    media: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, *faults: str,
    stop_during: bool,
) -> tuple[list[dict[str, Any]], int, int]:
    """A session whose camera stalls; stopped 4 s into the stall (`stop_during`) or once it is over. The
    room's closed gaps of the source, when the stall began and when the stop was asked (station ns)."""
    async with live_env(media, idle_timeout_s=30.0) as env:
        device = await env.device(*faults)
        # The liveness timeout well beyond the 4 s: the stall stays a stall, not a restarted run.
        config = rooms_config(GB_SOURCE, segment_time_s=SEGMENT_S, stale_margin_s=20.0)
        service = RoomService(config, store, pipeline, station_id=STATION, live=env.live)
        service.load()
        async with running(service):
            await service.start("xw-1", FIELDS, by="op")
            async with asyncio.timeout(120):
                while not any(s.sender.stats.stalled_s for s in device.sessions.values()):
                    await asyncio.sleep(0.05)
            stall_began_ns = time.time_ns()
            if stop_during:
                await asyncio.sleep(4.0)
            else:
                await watch.until(lambda: [d for _, d in env.ledger.entries if d.get("live") == "stalled"],
                                  timeout_s=60)
                await asyncio.sleep(2.0)
            stop_ns = time.time_ns()
            await service.stop("xw-1", by="op")
    return [e.data for e in watch.of("gap", source="gb", state="closed")], stall_began_ns, stop_ns


def _covered_until(gaps: list[dict[str, Any]], from_ns: int) -> int:
    """How far the room's gaps that began by `from_ns` (give or take a second) reach."""
    reach = from_ns
    for gap in gaps:
        began, ended = ns_from_wall_text(gap["from"]), ns_from_wall_text(gap["to"])
        assert began is not None and ended is not None
        if began <= reach + SECOND_NS and ended > reach:
            reach = ended
    return reach


@pytest.mark.usefixtures("ffmpeg")
async def test_control_a_stall_over_before_the_stop_is_a_room_gap(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    gaps, began_ns, _ = await _stopped_in_or_after_a_stall(media_with_sound, store, pipeline, watch,
                                                           "late-stall=3", stop_during=False)
    assert _covered_until(gaps, began_ns) >= began_ns + 2 * SECOND_NS, gaps


@pytest.mark.usefixtures("ffmpeg")
async def test_a_stall_cut_by_the_stop_is_a_room_gap_up_to_the_stop(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    gaps, began_ns, stop_ns = await _stopped_in_or_after_a_stall(media_with_sound, store, pipeline, watch,
                                                                 "late-stall=30", stop_during=True)
    reach = _covered_until(gaps, began_ns)
    assert reach >= stop_ns - SECOND_NS, (
        f"the camera stalled {(stop_ns - began_ns) / 1e9:.1f} s before the stop; the room's gaps reach "
        f"{(reach - began_ns) / 1e9:.1f} s into it: {gaps}")


@pytest.mark.usefixtures("ffmpeg")
async def test_a_lost_sound_gap_said_to_last_until_the_stop_ends_at_the_stop(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    gaps, _, stop_ns = await _stopped_in_or_after_a_stall(media_with_sound, store, pipeline, watch,
                                                          "audio-drop=600", "late-stall=30", stop_during=True)
    (audio,) = [gap for gap in gaps if gap.get("audio") == "lost"]
    ended = ns_from_wall_text(audio["to"])
    assert ended is not None
    assert not audio.get("to_stop") or ended >= stop_ns - SECOND_NS, (
        f"the audio-lost gap says it lasted until the session stopped, yet ends "
        f"{(stop_ns - ended) / 1e9:.1f} s before the stop was asked: {audio}")
