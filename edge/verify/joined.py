"""`edge verify` of a room session's joined files against the segments they were joined from.

A `joined` ledger entry (edge.rooms.joined) says: this item, with this hash, is these sealed segments of
one source of one session, end to end, in this order. The hashes already prove that nothing changed since
sealing; this module checks that what the station said it joined is what it joined:

* the joined item was sealed, with the hash the entry names;
* every segment the entry names was sealed before the entry, with the hash it names, from the same room
  session and source, and the segments stand in the order they were recorded (runs in the order they were
  first sealed, segments by index in a run: one sealed late stands where it was recorded); and every
  segment the source sealed is in one of its joined files (a joiner that skipped one, or a segment sealed
  after the last join with no join since, is named);
* the joined file holds as many packets of each stream as its segments together (ffprobe demuxes, it
  does not decode): a segment left out, doubled or cut short by the joiner shows here. The packets' bytes
  are not compared: ffmpeg's concat demuxer writes each key frame's parameter sets into it (its
  h264_mp4toannexb conversion), so key frames differ by design while the pictures are the same.

Without ffprobe the packet counts are not checked, and the report says so in a note.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.custody.problems import Problem
from edge.ingest.store import StoreLayout

__all__ = ["JoinedFindings", "SealedFacts", "joined_entry_problems", "joined_findings", "sealed_facts"]

PROBE_TIMEOUT_S = 600.0  # demuxing a long session's file from a slow disk


@dataclass(frozen=True)
class SealedFacts:
    """What the store says of one sealed item: the `sealed` entry's seq, the index's hash and path, the
    manifest's room session and source."""

    seq: int
    sha256: str | None
    path: str | None
    room_session: str | None
    source: str | None
    # A segment's place in its recording (its segment_sealed entry): its run and its index in the run.
    run: str | None = None
    index: int | None = None


@dataclass
class JoinedFindings:
    problems: list[Problem]
    notes: list[str]
    checked: int  # joined entries looked at


def joined_entry_problems(
    seq: int, item: object, data: Mapping[str, Any], sealed: Callable[[str], SealedFacts | None]
) -> list[Problem]:
    """Problems of the `joined` entry at `seq` (its ledger item and data) as the store records it; pure
    apart from `sealed`, the lookup of one item's sealed facts."""
    where = f"ledger seq {seq} (joined)"
    problems: list[Problem] = []
    joined_item, joined_sha = data.get("item"), data.get("sha256")
    session, source = data.get("room_session"), data.get("source")
    segments = data.get("segments")
    if not isinstance(joined_item, str) or joined_item != item or not isinstance(joined_sha, str):
        return [Problem(where, "the entry names no joined item and hash, or another item than its own")]
    if not isinstance(segments, list) or not segments:
        return [Problem(where, "the entry lists no segments")]
    facts = sealed(joined_item)
    if facts is None:
        problems.append(Problem(where, f"the joined item {joined_item} was never sealed"))
    elif facts.sha256 != joined_sha:
        problems.append(Problem(where, f"the joined item {joined_item} is sealed with hash {facts.sha256}, "
                                       f"the entry says {joined_sha}"))
    found = [sealed(str(s["item"])) if isinstance(s, Mapping) and isinstance(s.get("item"), str) else None
             for s in segments]
    # Recording order, as the session manifest lists them: runs in the order their first segment was
    # sealed, segments by index within a run. Sealed order is that order except for a segment sealed late
    # (its first try failed: a full disk), which still stands where it was recorded (review 28).
    run_first: dict[str, int] = {}
    for facts_of in found:
        if facts_of is not None and facts_of.run is not None:
            run_first[facts_of.run] = min(run_first.get(facts_of.run, facts_of.seq), facts_of.seq)
    previous: tuple[int, int] = (0, -1)
    for number, (segment, seg) in enumerate(zip(segments, found, strict=True), 1):
        what = f"segment {number}"
        if not isinstance(segment, Mapping) or not isinstance(segment.get("item"), str):
            problems.append(Problem(where, f"{what} names no item"))
            continue
        seg_item, seg_sha = str(segment["item"]), segment.get("sha256")
        if seg is None:
            problems.append(Problem(where, f"{what} (item {seg_item}) was never sealed"))
            continue
        if seg.sha256 != seg_sha:
            problems.append(Problem(where, f"{what} (item {seg_item}) is sealed with hash {seg.sha256}, "
                                           f"the entry says {seg_sha}"))
        if seg.seq >= seq:
            problems.append(Problem(where, f"{what} (item {seg_item}) was sealed after the join "
                                           f"(seq {seg.seq})"))
        place = ((run_first[seg.run], seg.index) if seg.run is not None and seg.index is not None
                 else (seg.seq, -1))
        if place <= previous:
            problems.append(Problem(where, f"{what} (item {seg_item}) is out of the order it was recorded "
                                           "and sealed in"))
        previous = max(previous, place)
        if seg.room_session != session or seg.source != source:
            problems.append(Problem(where, f"{what} (item {seg_item}) is of session {seg.room_session} "
                                           f"source {seg.source}, not of session {session} source {source}"))
    return problems


def packet_counts(ffprobe: str, path: Path) -> dict[int, int] | str:
    """Packets of each stream of `path` by stream index (demuxed, not decoded), or why not known."""
    argv = [ffprobe, "-v", "error", "-count_packets", "-show_entries", "stream=index,nb_read_packets",
            "-of", "json", "--", str(path)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ffprobe could not run: {exc}"
    if done.returncode != 0:
        return f"ffprobe cannot read it: {done.stderr.decode('utf-8', 'replace')[:300]!r}"
    try:
        streams = json.loads(done.stdout)["streams"]
        # A stream ffprobe read no packet of (a data track a muxer added) has no count, and says nothing
        # about what was joined: only streams with packets are compared.
        counts = {int(s["index"]): int(s.get("nb_read_packets", 0)) for s in streams}
        return {index: n for index, n in counts.items() if n}
    except (ValueError, KeyError, TypeError) as exc:
        return f"ffprobe's answer is not understood: {exc}"


def sealed_facts(conn: sqlite3.Connection, item: str) -> SealedFacts | None:
    row = conn.execute("SELECT seq FROM ledger WHERE type = 'sealed' AND item = ? ORDER BY seq LIMIT 1",
                       (item,)).fetchone()
    if row is None:
        return None
    index = conn.execute("SELECT sha256, path, manifest FROM items WHERE item = ?", (item,)).fetchone()
    if index is None:
        return SealedFacts(int(row[0]), None, None, None, None)
    try:
        manifest = json.loads(index[2]) if isinstance(index[2], str) else {}
    except ValueError:
        manifest = {}
    source = manifest.get("source") if isinstance(manifest, dict) else None
    source = source if isinstance(source, dict) else {}
    run, number = None, None
    entry = conn.execute("SELECT data FROM ledger WHERE type = 'segment_sealed' AND item = ? ORDER BY seq "
                         "LIMIT 1", (item,)).fetchone()
    place = _json_data(entry[0]) if entry is not None else None
    if place is not None and isinstance(place.get("index"), int):
        run, number = _text(place.get("run")), int(place["index"])
    return SealedFacts(int(row[0]), index[0], index[1], _text(source.get("room_session")),
                       _text(source.get("source")), run, number)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count_problems(
    ffprobe: str, layout: StoreLayout, where: str, joined: SealedFacts, segments: list[SealedFacts]
) -> list[Problem]:
    paths = [f.path for f in (joined, *segments)]
    if any(p is None or ".." in Path(p).parts or not (layout.root / p).is_file() for p in paths):
        return []  # a missing or purged copy is the item check's finding, not this one's
    counted = [packet_counts(ffprobe, layout.root / str(p)) for p in paths]
    unreadable = [c for c in counted if isinstance(c, str)]
    if unreadable:
        return [Problem(where, f"packets not counted: {unreadable[0]}")]
    joined_counts, *segment_counts = [c for c in counted if isinstance(c, dict)]
    summed: dict[int, int] = {}
    for counts in segment_counts:
        for stream, n in counts.items():
            summed[stream] = summed.get(stream, 0) + n
    if joined_counts != summed:
        return [Problem(where, f"the joined file holds {_counts_text(joined_counts)} packets, its segments "
                               f"together {_counts_text(summed)}")]
    return []


def _counts_text(counts: Mapping[int, int]) -> str:
    return ", ".join(f"stream {s}: {n}" for s, n in sorted(counts.items())) or "no"


def _json_data(raw: object) -> dict[str, Any] | None:
    try:
        data = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def joined_findings(conn: sqlite3.Connection, layout: StoreLayout, ffprobe: str | None) -> JoinedFindings:
    """Every `joined` entry of the store's ledger checked (see the module docstring)."""
    findings = JoinedFindings([], [], 0)
    rows = conn.execute("SELECT seq, item, data FROM ledger WHERE type = 'joined' ORDER BY seq").fetchall()
    for seq, item, raw in rows:
        findings.checked += 1
        data = _json_data(raw)
        if data is None:
            findings.problems.append(Problem(f"ledger seq {seq} (joined)", "data is not a JSON object"))
            continue
        problems = joined_entry_problems(int(seq), item, data, lambda i: sealed_facts(conn, i))
        findings.problems.extend(problems)
        if problems or ffprobe is None:
            continue
        joined = sealed_facts(conn, str(item))
        segments = [sealed_facts(conn, str(s["item"])) for s in data["segments"]]
        assert joined is not None and all(s is not None for s in segments)  # checked just above
        findings.problems.extend(_count_problems(ffprobe, layout, f"ledger seq {seq} (joined)", joined,
                                                 [s for s in segments if s is not None]))
    if rows and ffprobe is None:
        findings.notes.append(f"{len(rows)} joined file(s) not checked packet by packet against their "
                              "segments: ffprobe was not found")
    return findings
