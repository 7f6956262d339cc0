"""Review rev11g (896356e): a GB source's inputs now end (pump cancelled, pipes closed) before its ffmpeg is
stopped. With a healthy camera a normal stop must not cost the recording its last second(s): the joined
file's picture covers the session from its first segment's start to the stop, less no more than the live
path's delay and one frame. Real platform, real device simulator, real ffmpeg, real store."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.joined import ns_from_iso
from edge.rooms.service import RoomService
from tests.gb28181.live_env import live_env
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config
from tests.rooms.rig import original, running
from tests.rooms.test_gb_audio_room import FIELDS, GB_SOURCE, SEGMENT_S
from tests.rooms.test_gb_audio_room import media_with_sound as media_with_sound  # the module's fixture

LOSS_ALLOWED_S = 1.0  # the live path's delay (RTP, reorder, pump, pipe) and the last frame, generously


def _video_s(path: Path) -> float:
    done = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                           "stream=duration", "-of", "json", str(path)],
                          capture_output=True, text=True, check=True, timeout=60)
    return float(json.loads(done.stdout)["streams"][0]["duration"])


@pytest.mark.usefixtures("ffmpeg")
@pytest.mark.parametrize("after_s", [0.3, 1.3], ids=["stop-early-in-a-segment", "stop-late-in-a-segment"])
async def test_a_healthy_gb_camera_s_last_second_is_in_the_joined_file(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
    tmp_path: Path, after_s: float,
) -> None:
    async with live_env(media_with_sound, idle_timeout_s=10.0) as env:
        await env.device()
        config = rooms_config(GB_SOURCE, segment_time_s=SEGMENT_S, stale_margin_s=8.0)
        service = RoomService(config, store, pipeline, station_id=STATION, live=env.live)
        service.load()
        async with running(service):
            session = (await service.start("xw-1", FIELDS, by="op")).session
            await watch.until(lambda: len(watch.of("segment_sealed", source="gb")) >= 3, timeout_s=120)
            await asyncio.sleep(after_s)
            stop_ns = time.time_ns()
            await service.stop("xw-1", by="op")
    assert watch.of("gap", source="gb") == []  # healthy: nothing missing on the record
    segments = watch.of("segment_sealed", room_session=session, source="gb")
    first_ns = min(ns_from_iso(str(e.data["start_utc"])) or 0 for e in segments)
    (joined,) = watch.of("joined", room_session=session, source="gb")
    video_s = _video_s(original(store, str(joined.item), tmp_path))
    span_s = (stop_ns - first_ns) / 1e9
    print(f"span {span_s:.3f} s, joined picture {video_s:.3f} s, lost {span_s - video_s:.3f} s")
    assert span_s - video_s <= LOSS_ALLOWED_S, (span_s, video_s, [e.data for e in segments])
