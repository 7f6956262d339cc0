"""The session manifest: what a room session recorded, built from its ledger entries when it stops. Pure.

:func:`session_manifest` reads the session's entries (``segment_sealed``, ``gap``, ``mark``,
``session_changed``, from its ``session_started`` on) and lists, per source in recording order (run, then
index), every segment with its item, hash, size, start and end time (partial ones say why), every gap
with its source, from, to and reason, every mark and change, and the persons present; the service signs
it with the station key and seals it as an item of the session. Because it is built from the ledger, a
manifest made after a crash says the same as one made by an orderly stop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from edge.custody.ledger import EntryType, LedgerEntry
from edge.rooms.session import RoomSession

SESSION_MANIFEST_FORMAT = "evidence-edge/room-session/1"
SESSION_TYPES = frozenset(
    {
        EntryType.SEGMENT_SEALED,
        EntryType.GAP,
        EntryType.MARK,
        EntryType.SESSION_CHANGED,
        EntryType.SESSION_STARTED,
    }
)


def session_manifest(
    session: RoomSession,
    entries: Iterable[LedgerEntry],
    *,
    station_id: str,
    sources: Iterable[tuple[str, str]],
    stopped_by: str,
) -> dict[str, Any]:
    """The unsigned manifest of `session` (stopped) from its ledger `entries` (any order, any others
    among them are skipped); `sources` are the room's (id, name) in configured order."""
    segments: dict[str, list[dict[str, Any]]] = {source: [] for source, _ in sources}
    names = dict(sources)
    derived: dict[str, Any] = {}  # a derived output (the composite): what its segments say they derive from
    gaps: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    last_seq = session.started_seq or 0
    for entry in sorted(entries, key=lambda e: e.seq):
        if entry.type not in SESSION_TYPES or entry.data.get("room_session") != session.session:
            continue
        last_seq = max(last_seq, entry.seq)
        data = entry.data
        if entry.type == EntryType.SEGMENT_SEALED:
            segment = {
                key: data.get(key) for key in ("index", "run", "sha256", "size", "start_utc", "end_utc")
            }
            segment.update({"item": entry.item, "seq": entry.seq})
            if data.get("partial"):
                segment["partial"] = data["partial"]
            if data.get("unpinned"):  # sealed without its pin: never checked against ffmpeg's listing
                segment["unpinned"] = data["unpinned"]
            segments.setdefault(str(data.get("source")), []).append(segment)
            if isinstance(data.get("derived"), dict):
                derived[str(data.get("source"))] = data["derived"]
        elif entry.type == EntryType.GAP and data.get("state") == "closed":
            gap = {key: data.get(key) for key in ("source", "from", "to", "reason", "duration_s")}
            gap.update(
                {
                    "seq": entry.seq,
                    "attempts": data.get("attempts", 0),
                    "until_stop": bool(data.get("to_stop", False)),
                }
            )
            gaps.append(gap)
        elif entry.type == EntryType.MARK:
            marks.append(
                {"seq": entry.seq, "time_utc": entry.time, "note": data.get("note"), "by": data.get("by")}
            )
        elif entry.type == EntryType.SESSION_CHANGED:
            changes.append(
                {
                    "seq": entry.seq,
                    "time_utc": entry.time,
                    "changes": data.get("changes"),
                    "by": data.get("by"),
                }
            )
    for listed in segments.values():
        # In recording order: runs in the ledger's order (each run's first segment_sealed: a run directory's
        # name is the wall clock at its start, which a clock step can put before an earlier run's), then
        # segments by index within a run (one sealed late, after a failed first try, is still listed where
        # it was recorded).
        first_seq: dict[str, int] = {}
        for segment in listed:
            run = str(segment["run"])
            first_seq[run] = min(first_seq.get(run, segment["seq"]), segment["seq"])
        listed.sort(key=lambda s: (first_seq[str(s["run"])], int(s["index"])))
    return {
        "format": SESSION_MANIFEST_FORMAT,
        "station": station_id,
        **session.facts(),
        "location": session.location,
        "started_utc": session.started_utc,
        "started_by": session.started_by,
        "stopped_utc": session.stopped_utc,
        "stopped_by": stopped_by,
        "sources": [
            {"source": source, "name": names.get(source, ""), "segments": listed,
             **({"derived": derived[source]} if source in derived else {})}
            for source, listed in segments.items()
        ],
        "gaps": gaps,
        "marks": marks,
        "changes": changes,
        "ledger": {"from_seq": session.started_seq, "to_seq": last_seq},
    }
