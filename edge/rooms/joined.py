"""One joined MP4 per source at the end of a session: its sealed segments, in ledger order, put end to end
by ffmpeg's concat demuxer without re-encoding (``-c copy``).

The command line and the concat list are built by pure functions (:func:`concat_list`, :func:`join_argv`).
:func:`join_source` does the work for one source:

1. every segment's stored copy is read back from disk and must give the hash its ``segment_sealed``
   entry recorded (and the item row must agree with that entry); a segment altered, missing or purged is
   never joined silently: the source gets no joined file, an ``error`` entry (stage ``room join``) names
   each segment and what was found, and the statement says so;
2. ffmpeg joins the stored copies (the station's evidence box after each original is a top-level ``uuid``
   box the MP4 demuxer skips) into a work file under ``<store>/rooms/products/<session>/``;
3. the segments are checked again (a change while ffmpeg read them is caught), the joined file's
   duration is read by ffprobe, and the file is sealed through the ingest pipeline as an item of the
   session (role ``joined-recording``), like every item queued for upload;
4. a ``joined`` entry names the joined item and its hash, every segment joined (item, hash), the
   durations, and where in the joined file's time line each gap of the source falls.

Gaps stay gaps: the joined file is the recorded segments back to back, never padded; the gap list says
at which point of the joined file the wall clock jumps, and by how much.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.custody.ledger import EntryType
from edge.custody.text import printable
from edge.durable.files import make_dirs_durable, write_atomic
from edge.ingest.pipeline import IngestPipeline
from edge.rooms.argv import metadata_args
from edge.rooms.sealing import seal_session_file
from edge.rooms.session import RoomSession

log = logging.getLogger(__name__)

JOINED_ROLE = "joined-recording"
PRODUCTS_DIR = "products"  # under <store>/rooms/: work files of a session's products until sealed
STDERR_LINES_KEPT = 20
PROBE_TIMEOUT_S = 60.0


def concat_list(parts: Sequence[tuple[Path, float | None]]) -> str:
    """An ffconcat list of `parts` in order: each path (quoted: ``'`` written as ``'\\''``) and, when
    known, the duration of its video stream.

    The duration is what places the next file: without it the concat demuxer starts the next file where
    this one's longest stream ends, and an encoder's delay (the video of every segment starts two frames
    in, B-frames) would leave that much of a hole in the joined video and audio at every boundary."""
    lines = ["ffconcat version 1.0"]
    for path, duration_s in parts:
        text = str(path)
        if "\n" in text or "\r" in text or "\x00" in text:
            raise ValueError(f"a path to join holds a line break or NUL: {text!r}")
        lines.append("file '" + text.replace("'", "'\\''") + "'")
        if duration_s is not None:
            if not 0 < duration_s < 1e7:
                raise ValueError(f"{text}: a duration of {duration_s} s cannot place the next file")
            lines.append(f"duration {duration_s:.6f}")
    return "\n".join(lines) + "\n"


def joined_metadata(session: RoomSession, source: str) -> dict[str, str]:
    """The case tags of a joined file (the concat demuxer passes on none of its segments'): those of the
    segments, with the session's case fields as they were at its stop."""
    return {
        "title": f"{session.room_name} {session.case_number}",
        "case_number": session.case_number,
        "room": session.room,
        "location": session.location,
        "collector": session.collector,
        "subject": session.subject,
        "room_session": session.session,
        "source": source,
        "comment": json.dumps({"case_number": session.case_number, "room": session.room,
                               "collector": session.collector, "subject": session.subject},
                              ensure_ascii=False, sort_keys=True),
    }


def join_argv(ffmpeg: str, list_path: Path, output: Path, metadata: Mapping[str, str]) -> list[str]:
    """The ffmpeg command that joins the files of `list_path` into `output` without re-encoding.

    ``-safe 0``: the list names absolute paths of the store (item UUIDs, made by the station, never names
    from a device); ``-protocol_whitelist file``: nothing but local files is opened whatever the list says.
    Every video and audio stream is copied; ``+faststart`` puts the index first for players reading a
    disc; ``-n``: an existing file is never overwritten."""
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
        "-f", "concat", "-safe", "0", "-protocol_whitelist", "file", "-i", str(list_path),
        "-map", "0:v?", "-map", "0:a?", "-c", "copy",
        *metadata_args(metadata),
        "-movflags", "+faststart+use_metadata_tags",
        "-f", "mp4", "-n", str(output),
    ]


def streams_argv(ffprobe: str, path: Path) -> list[str]:
    """The streams of a file: what each is (to tell whether files can be joined) and how long."""
    return [ffprobe, "-v", "error", "-show_entries",
            "stream=codec_type,codec_name,width,height,sample_rate,channels,duration", "-of", "json",
            str(path)]


StreamLayout = tuple[tuple[str, ...], ...]


def stream_layout(doc: Any) -> tuple[StreamLayout, float | None]:
    """From ffprobe's answer: the file's streams as (type, codec, width, height, rate, channels), which
    must be the same in every file concat joins (it copies the first file's stream parameters), and the
    duration of its first video stream (the container's is its longest stream's: audio runs on past the
    last frame by its priming and padding). ValueError when the answer is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("streams"), list):
        raise ValueError("ffprobe gave no stream list")
    layout = []
    video_s: float | None = None
    for stream in doc["streams"]:
        if not isinstance(stream, dict):
            raise ValueError("ffprobe gave a stream that is not an object")
        kind = str(stream.get("codec_type", ""))
        layout.append((kind, *(str(stream.get(k, "")) for k in
                               ("codec_name", "width", "height", "sample_rate", "channels"))))
        if kind == "video" and video_s is None and "duration" in stream:
            video_s = float(stream["duration"])
    return tuple(layout), video_s


def ns_from_iso(text: str) -> int | None:
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def segment_duration_s(segment: Mapping[str, Any]) -> float:
    start, end = ns_from_iso(str(segment.get("start_utc"))), ns_from_iso(str(segment.get("end_utc")))
    return 0.0 if start is None or end is None else max(0, end - start) / 1e9


def gaps_in_joined(
    segments: Sequence[Mapping[str, Any]],
    gaps: Sequence[Mapping[str, Any]],
    durations_s: Sequence[float | None] | None = None,
) -> list[dict[str, Any]]:
    """Where each gap of a source falls in its joined file: at the length of the segments that ended
    before the gap began (``at_s``; each segment's `durations_s` as its video lasts, where known, else
    as its ledger times say), with the gap's times, length and reason."""
    placed = []
    for gap in gaps:
        start = ns_from_iso(str(gap.get("from")))
        at = 0.0
        for index, segment in enumerate(segments):
            end = ns_from_iso(str(segment.get("end_utc")))
            if start is not None and end is not None and end <= start:
                known = None if durations_s is None else durations_s[index]
                at += segment_duration_s(segment) if known is None else known
        placed.append({"at_s": round(at, 3), "from": gap.get("from"), "to": gap.get("to"),
                       "duration_s": gap.get("duration_s"), "reason": gap.get("reason"),
                       "until_stop": bool(gap.get("until_stop"))})
    return placed


@dataclass
class JoinResult:
    """What joining one source gave: the item, or why there is none (`problems`)."""

    source: str
    source_name: str
    segments: list[dict[str, Any]]
    gaps: list[dict[str, Any]]
    item: str | None = None
    sha256: str | None = None
    size: int | None = None
    duration_s: float | None = None
    recorded_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    seq: int | None = None  # its `joined` entry
    # Joined but not sealed (the store at its reserve): unlike a refusal, another try may make it, so the
    # products stay owed (review 29).
    unsealed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "source_name": self.source_name, "item": self.item, "sha256": self.sha256,
            "size": self.size, "duration_s": self.duration_s, "recorded_s": round(self.recorded_s, 6),
            "segments": [{"item": s.get("item"), "sha256": s.get("sha256")} for s in self.segments],
            "gaps": self.gaps, "problems": self.problems, "seq": self.seq,
        }


async def segment_problems(pipeline: IngestPipeline, segments: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why any of `segments` (manifest entries: item, sha256, size) cannot be joined as sealed: its item
    row is missing or disagrees with its ledger entry, its local copy was purged, or the stored bytes
    read back from disk no longer give its sealed hash. Empty when every one is as sealed."""
    repository = pipeline.repository
    problems = []
    for segment in segments:
        item = str(segment.get("item"))
        what = (f"segment {segment.get('run')}/{segment.get('index')} (item {item}, ledger seq "
                f"{segment.get('seq')})")
        record = repository.item(item)
        if record is None or record.path is None:
            problems.append(f"{what}: no stored copy on this station")
            continue
        if (record.sha256, record.size) != (segment.get("sha256"), segment.get("size")):
            problems.append(f"{what}: its item row says {record.sha256} ({record.size} bytes), its "
                            f"segment_sealed entry {segment.get('sha256')} ({segment.get('size')} bytes)")
            continue
        if repository.purged(item):
            problems.append(f"{what}: its local copy was purged after the central's receipt")
            continue
        damage = await pipeline.stored_copy_damage(item, what)
        if damage is not None:
            problems.append(f"{what}: altered after sealing: {damage}")
    return problems


async def _run(argv: list[str], what: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await process.communicate()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    tail = err.decode("utf-8", "replace").splitlines()[-STDERR_LINES_KEPT:]
    if process.returncode != 0:
        log.error("%s: exit %s: %s", what, process.returncode, printable(" | ".join(tail)))
        return process.returncode or 1, "\n".join(tail)
    return 0, out.decode("utf-8", "replace")


async def probe_streams(ffprobe: str, path: Path) -> tuple[StreamLayout, float | None] | str:
    """:func:`stream_layout` of `path` by ffprobe, or why ffprobe could not tell."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            code, out = await _run(streams_argv(ffprobe, path), f"ffprobe {path.name}")
        if code != 0:
            return f"ffprobe cannot read it: {printable(out)[:300]}"
        return stream_layout(json.loads(out))
    except TimeoutError:
        return f"ffprobe gave no answer within {PROBE_TIMEOUT_S:.0f} s"
    except ValueError as exc:
        return f"ffprobe's answer is not understood: {exc}"


async def join_source(
    pipeline: IngestPipeline,
    session: RoomSession,
    manifest: Mapping[str, Any],
    source: Mapping[str, Any],
    *,
    work_dir: Path,
    ffmpeg: str,
    ffprobe: str,
    station_id: str,
    clock_synchronised: bool,
) -> JoinResult:
    """Join one source of the stopped `session` (`source`: its entry in the session `manifest`)."""
    source_id = str(source.get("source"))
    segments = list(source.get("segments", []))
    gaps = gaps_in_joined(segments, [g for g in manifest.get("gaps", []) if g.get("source") == source_id])
    result = JoinResult(source_id, str(source.get("name", "")), segments, gaps,
                        recorded_s=sum(segment_duration_s(s) for s in segments))
    where = {"room_session": session.session, "room": session.room, "source": source_id}
    if not segments:
        result.problems.append("no segment was sealed for this source: nothing to join")
        return result
    problems = await segment_problems(pipeline, segments)
    if problems:
        return await _refused(pipeline, result, where, problems)
    root = pipeline.store.layout.root
    parts: list[tuple[Path, float | None]] = []
    durations: list[float | None] = []  # each segment's video length, in the segments' order
    first: StreamLayout | None = None
    for number, segment in enumerate(segments, 1):
        record = pipeline.repository.item(str(segment["item"]))
        assert record is not None and record.path is not None  # checked above
        path = root / record.path
        probed = await probe_streams(ffprobe, path)
        what = f"segment {number} (item {segment['item']})"
        if isinstance(probed, str):
            problems.append(f"{what}: {probed}")
            continue
        layout, video_s = probed
        first = layout if first is None else first
        if layout != first:
            # concat takes the first file's stream parameters for all: a camera changed mid-session
            # would give a file that does not play past the change.
            problems.append(f"{what} has streams {_layout_text(layout)}, the first segment "
                            f"{_layout_text(first)}: they cannot be joined into one file")
        durations.append(video_s)
        if video_s is not None and video_s <= 0:
            # A run's segment cut by a stall or the stop before ffmpeg wrote a frame holds no picture
            # (ffprobe: 0.0 s): nothing of it can be in the joined file, and its duration places nothing.
            log.info("%s: its video lasts %s s: it holds no picture and adds nothing to the join", what,
                     video_s)
            continue
        parts.append((path, video_s))
    if not problems and not parts:
        problems.append("every segment sealed for this source holds no picture (the camera's stream "
                        "stopped before the first frame was written): nothing to join")
    if problems:
        return await _refused(pipeline, result, where, problems)
    # What the joined file holds is the segments' content: the gaps are placed, and the recorded time
    # summed, by how long each segment's video lasts (its ledger times are the station clock's mapping
    # of it, which for a run's last segment can be shorter than what ffmpeg flushed into it).
    own_gaps = [g for g in manifest.get("gaps", []) if g.get("source") == source_id]
    result.gaps = gaps_in_joined(segments, own_gaps, durations)
    result.recorded_s = sum(segment_duration_s(s) if d is None else d
                            for d, s in zip(durations, segments, strict=True))
    await asyncio.to_thread(make_dirs_durable, work_dir)
    list_path = work_dir / f"join-{source_id}.ffconcat"
    output = work_dir / f"joined-{source_id}.mp4"
    output.unlink(missing_ok=True)  # a work file an earlier, interrupted join left
    try:
        listed = concat_list(parts)
    except ValueError as exc:  # a path ffconcat cannot hold: refused like any other problem, never raised
        return await _refused(pipeline, result, where, [str(exc)])
    await asyncio.to_thread(write_atomic, list_path, listed.encode())
    try:
        argv = join_argv(ffmpeg, list_path, output, joined_metadata(session, source_id))
        code, said = await _run(argv, f"join {session.session}/{source_id}")
        if code != 0:
            return await _refused(pipeline, result, where, [f"ffmpeg could not join the segments: {said}"])
        # Read again after ffmpeg read them: a change while it did is not joined silently either.
        problems = await segment_problems(pipeline, segments)
        if problems:
            return await _refused(pipeline, result, where, problems)
        probed = await probe_streams(ffprobe, output)
        if not isinstance(probed, str):
            assert first is not None  # every segment was probed above
            lost = joined_streams_problem(first, probed[0])
            if lost is not None:
                return await _refused(pipeline, result, where, [lost])
        result.duration_s = None if isinstance(probed, str) else probed[1]
        item = await seal_session_file(
            pipeline, output, session=session, role=JOINED_ROLE, station_id=station_id,
            clock_synchronised=clock_synchronised,
            facts={"source": source_id, "segments": len(segments), "gaps": len(gaps)})
        if item is None:
            result.unsealed = True
            return await _refused(pipeline, result, where, ["the joined file could not be sealed"])
        record = pipeline.repository.item(item)
        assert record is not None
        result.item, result.sha256, result.size = item, record.sha256, record.size
        data = {**where, **{k: v for k, v in result.to_json().items() if k not in ("problems", "seq")}}
        data["boundaries"] = len(segments) - 1
        repository = pipeline.repository
        entry = await pipeline.commit(lambda: repository.entry(EntryType.JOINED, item, data))
        result.seq = entry.seq
        log.info("room session %s source %s: %d segments joined as item %s (%.3f s)", session.session,
                 source_id, len(segments), item, result.duration_s or 0.0)
        return result
    finally:
        output.unlink(missing_ok=True)
        list_path.unlink(missing_ok=True)


def joined_streams_problem(segments: StreamLayout, joined: StreamLayout) -> str | None:
    """Why a joined file does not hold what its segments hold (the kinds of stream, in order: a source
    recorded with sound, a GB/T 28181 camera's G.711 as AAC, must keep it), or None."""
    kinds, joined_kinds = [s[0] for s in segments], [s[0] for s in joined]
    if kinds == joined_kinds:
        return None
    return (f"the joined file has streams {_layout_text(joined)}, its segments {_layout_text(segments)}: "
            "a stream was lost in the join")


def _layout_text(layout: StreamLayout) -> str:
    return "; ".join(" ".join(part for part in stream if part) for stream in layout) or "none"


async def _refused(pipeline: IngestPipeline, result: JoinResult, where: Mapping[str, Any],
                   problems: list[str]) -> JoinResult:
    result.problems.extend(problems)
    reason = "not joined: " + "; ".join(problems)
    log.error("room session %s source %s: %s", where["room_session"], where["source"], printable(reason))
    data = {**where, "stage": "room join", "reason": printable(reason)[:2000]}
    repository = pipeline.repository
    await pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))
    return result
