"""Benchmark of room recording: K concurrent 1080p sources, each segment sealed as it closes.

    python tests/bench/rooms.py [--sources 4] [--seconds 60] [--segment-seconds 10] [--json]

What runs: the agent's own room code (edge.rooms.recording.SessionRecording under its supervisor, with
edge.rooms.capture, the segment sealer and the real ingest pipeline, store and ledger, fsync and all) in
this process; one real ffmpeg per source. So that the figure measures the agent and not a 1080p encoder on
a 2-core machine, each source is a pre-encoded 1080p H.264 file (testsrc2 1920x1080, 25 fps, about
4 Mbit/s, key frame every second; made once in the work directory) read at its own rate (``-re``) and
stream-copied (``codec = "copy"``), as a camera delivering H.264 is. The file is as long as the run (a
10 s encode concatenated by stream copy), since the room's inputs take no ``-stream_loop``.

Baseline, in the same run: the same ffmpeg commands (the argv the agent builds, the same segment muxer
and list) for the same time with no agent: what ffmpeg alone costs. Reported:

* ``seal_latency_p50_s``, ``seal_latency_p99_s``, ``seal_latency_max_s`` (nearest rank) over every
  segment's ``seal_latency_s`` on the ledger (ffmpeg listing the segment to its ``sealed`` entry
  committed), and ``segments``;
* ``agent_cpu_s``: this process's CPU (user + system, every thread), its child processes excluded,
  ``agent_cpu_s_per_source_s`` and ``agent_cores``;
* ``children_cpu_s``: the child processes under the agent (ffmpeg, and the sealer's ffprobe of segments
  its in-process readers do not take); ``baseline_ffmpeg_cpu_s``: ffmpeg alone; their difference
  ``sealing_children_cpu_s`` (ffmpeg does the same work in both runs) and ``agent_with_children_cpu_s``
  (the agent's whole cost beyond ffmpeg);
* ``peak_rss_mb``: this process's peak resident set (VmHWM);
* ``gaps``: gap entries (0 expected), ``target_met``: p99 under 1 s with no gap.

Target (issue 11): 4 sources, p99 seal latency under 1 s. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from edge.config.rooms import RoomsSection  # noqa: E402
from edge.custody.ledger import EntryType  # noqa: E402
from edge.ingest.pipeline import IngestPipeline, IngestSettings  # noqa: E402
from edge.ingest.store import StationStore  # noqa: E402
from edge.rooms.argv import Coding, SegmentPlan, segment_argv  # noqa: E402
from edge.rooms.recording import SessionRecording  # noqa: E402
from edge.rooms.session import new_session  # noqa: E402
from edge.rooms.state import SessionFiles  # noqa: E402

STATION = "BENCH-ROOM-PC"
CHUNK_S = 10


def make_media(directory: Path, seconds: float) -> Path:
    """A 1080p H.264 file at least `seconds` long (kept between runs in `directory`)."""
    chunks = int(seconds // CHUNK_S) + 2
    path = directory / f"src-1080p-{chunks * CHUNK_S}s.mp4"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    chunk = directory / "chunk-1080p.mp4"
    if not chunk.is_file():
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc2=size=1920x1080:rate=25", "-t", str(CHUNK_S), "-c:v", "libx264", "-preset",
                        "veryfast", "-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M", "-g", "25",
                        "-pix_fmt", "yuv420p", str(chunk)], check=True, timeout=600)
    listing = directory / "concat.txt"
    listing.write_text("".join(f"file '{chunk}'\n" for _ in range(chunks)))
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0",
                    "-i", str(listing), "-c", "copy", str(path)], check=True, timeout=600)
    return path


def rooms_section(media: Path, sources: int, segment_s: float) -> RoomsSection:
    return RoomsSection.model_validate({
        "segment_time_s": segment_s, "start_min_free_bytes": 0, "stop_timeout_s": 15,
        "room": [{"id": "bench", "name": "benchmark room", "address": "here", "source": [
            {"id": f"cam{n + 1}", "codec": "copy", "input": [{"url": str(media), "realtime": True}]}
            for n in range(sources)]}],
    })


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: ffmpeg
    return usage.ru_utime + usage.ru_stime


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("/proc/self/status has no VmHWM")


def _rank(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(-(-fraction * len(ordered) // 1)) - 1))]


async def baseline(config: RoomsSection, seconds: float, workdir: Path) -> dict[str, Any]:
    """The agent's ffmpeg commands alone for `seconds` (SIGTERM then, as the agent stops them)."""
    cpu_before = _children_cpu_s()
    processes = []
    for source in config.room[0].source:
        run_dir = workdir / "baseline" / source.id
        run_dir.mkdir(parents=True, exist_ok=True)
        plan = SegmentPlan(config.segment_time_s, config.mp4_layout, Coding.COPY, Coding.COPY)
        argv = segment_argv(config.ffmpeg, source.input, plan, run_dir)
        processes.append(await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL))
    await asyncio.sleep(seconds)
    for process in processes:
        process.terminate()
    codes = [await process.wait() for process in processes]
    segments = sum(len(list((workdir / "baseline" / s.id).glob("seg-*.mp4"))) for s in config.room[0].source)
    shutil.rmtree(workdir / "baseline", ignore_errors=True)
    return {"ffmpeg_cpu_s": _children_cpu_s() - cpu_before, "segments": segments, "exit_codes": codes}


async def with_agent(config: RoomsSection, seconds: float, workdir: Path) -> dict[str, Any]:
    store = StationStore(workdir / "store", STATION, purpose="room benchmark")
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        files = SessionFiles(store.layout.root)
        files.prepare()
        session = new_session(room="bench", room_name="benchmark room", address="here",
                              fields={"case_number": "BENCH-0001", "collector": "bench", "subject": "bench",
                                      "persons": []},
                              started_utc="2026-12-05T10:00:00.000000Z", started_by="bench")
        recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
        cpu_before, children_before = _self_cpu_s(), _children_cpu_s()
        began = time.monotonic()
        task = asyncio.create_task(recording.run())
        await asyncio.sleep(seconds)
        recording.stop()
        await task
        elapsed = time.monotonic() - began
        cpu, ffmpeg_cpu = _self_cpu_s() - cpu_before, _children_cpu_s() - children_before
        entries = list(store.ledger.entries_of_types([EntryType.SEGMENT_SEALED, EntryType.GAP]))
    finally:
        store.close()
    latencies = [float(e.data["seal_latency_s"]) for e in entries if e.type == EntryType.SEGMENT_SEALED]
    sealed = [e for e in entries if e.type == EntryType.SEGMENT_SEALED]
    return {"agent_cpu_s": cpu, "children_cpu_s": ffmpeg_cpu, "elapsed_s": elapsed, "latencies": latencies,
            "gaps": sum(1 for e in entries if e.type == EntryType.GAP),
            "partial": sum(1 for e in sealed if e.data.get("partial"))}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-rooms-"))
    media = make_media(workdir / "media", args.seconds + 5)
    config = rooms_section(media, args.sources, args.segment_seconds)
    try:
        alone = await baseline(config, args.seconds, workdir)
        agent = await with_agent(config, args.seconds, workdir)
    finally:
        shutil.rmtree(workdir / "store", ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    latencies = agent["latencies"]
    p99 = _rank(latencies, 0.99)
    source_s = args.sources * agent["elapsed_s"]
    return {
        "sources": args.sources, "seconds": args.seconds, "segment_time_s": args.segment_seconds,
        "input": "1080p25 H.264 ~4 Mbit/s file, -re, stream copy", "cores": os.cpu_count(),
        "segments": len(latencies), "partial_segments": agent["partial"], "gaps": agent["gaps"],
        "seal_latency_p50_s": _round(_rank(latencies, 0.50)), "seal_latency_p99_s": _round(p99),
        "seal_latency_max_s": _round(max(latencies, default=None)),
        "agent_cpu_s": round(agent["agent_cpu_s"], 3),
        "agent_cpu_s_per_source_s": round(agent["agent_cpu_s"] / source_s, 5) if source_s else None,
        "agent_cores": round(agent["agent_cpu_s"] / agent["elapsed_s"], 4),
        "children_cpu_s": round(agent["children_cpu_s"], 3),
        "baseline_ffmpeg_cpu_s": round(alone["ffmpeg_cpu_s"], 3), "baseline_segments": alone["segments"],
        # The same ffmpeg work in both runs (stream copy of the same file): what the children cost more under
        # the agent is the sealer's own child processes (ffprobe of a segment its readers do not take).
        "sealing_children_cpu_s": round(agent["children_cpu_s"] - alone["ffmpeg_cpu_s"], 3),
        "agent_with_children_cpu_s": round(agent["agent_cpu_s"] + agent["children_cpu_s"]
                                           - alone["ffmpeg_cpu_s"], 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "target_met": p99 is not None and p99 < 1.0 and agent["gaps"] == 0,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=4, help="concurrent 1080p sources")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each run records")
    parser.add_argument("--segment-seconds", type=float, default=10.0,
                        help="segment_time_s (default: the [rooms] default)")
    parser.add_argument("--workdir", help="keep the media (and nothing else) here between runs")
    parser.add_argument("--json", action="store_true", help="last line: the JSON result only")
    args = parser.parse_args()
    if args.sources < 1 or args.seconds <= 0:
        parser.error("--sources must be >= 1 and --seconds > 0")
    result = asyncio.run(main_async(args))
    if not args.json:
        print(f"{result['sources']} sources x {result['seconds']:g} s, {result['segments']} segments: seal "
              f"latency p50 {result['seal_latency_p50_s']} s, p99 {result['seal_latency_p99_s']} s; agent "
              f"CPU {result['agent_cpu_s']} s ({result['agent_cores']} cores), children "
              f"{result['children_cpu_s']} s (ffmpeg alone {result['baseline_ffmpeg_cpu_s']} s); peak RSS "
              f"{result['peak_rss_mb']} MiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
