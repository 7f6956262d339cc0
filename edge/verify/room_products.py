"""`edge verify` of each room session's products as one set: the newest set must be complete, and every
disc exported must have carried the newest set of its time.

The rule (edge.rooms.product_sets): a session's products are the ``room_products`` made from its newest
sealed manifest. For that set this module checks

* it names the newest manifest with the hash that manifest was sealed with, and a statement sealed with
  the hash it names;
* each source's joined item has a ``joined`` entry of the session and source with the hash the set names
  (the entry itself, its segments, their order and its packets are edge.verify.joined's checks);
* every segment the source sealed (its ``segment_sealed`` entries) is in that one joined file: a segment
  left out by a re-made join, or sealed after the join with no set made since, is named, even when an
  older (superseded) join held it;
* a source the set names without a joined file is fine when its join was refused for good (its sealed
  segments go on the disc one by one: a note), a problem when the join was left unsealed (a full disk:
  owed); a source that sealed segments and that the set does not name at all is a problem.

A session whose newest manifest has no set made from it owes its products: a problem when an older set
was made (what the newer manifest added is in no joined file), a note when none was made yet (a stop
making them, or cut short: the agent makes them at its next start; a manifest altered since is the item
check's problem), and a problem again once the agent has started since (a ``station_started`` after the
manifest was sealed) and still not made them: that start should have (the agent may be making them at this
very moment; otherwise something kept it from them, a tampered index of what is owed, say). Older sets
are reported as superseded in the notes: their joins verify by hash (edge.verify.joined) and are not
required complete. Each ``exported`` entry's disc must have carried exactly the newest set as the ledger
stood before it (manifest, statement, joined files) and every document attached to the session before it
(its ``attached`` entries); one since superseded is a note (export again).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.custody.ledger import EntryType, LedgerEntry
from edge.custody.problems import Problem
from edge.rooms.product_sets import SET_TYPES, ProductSets, SessionProducts, set_joins
from edge.verify.joined import SealedFacts, sealed_facts

__all__ = ["ProductFindings", "left_out_problems", "products_findings", "session_set_findings"]

LISTED = 5  # segments named in one problem; the rest counted


@dataclass
class ProductFindings:
    problems: list[Problem]
    notes: list[str]
    checked: int  # sessions whose products were looked at


def left_out_problems(join: tuple[int, Mapping[str, Any]], sealed: list[tuple[int, str]]) -> list[Problem]:
    """Segments of one source (`sealed`: seq and item of each `segment_sealed`, in ledger order) that the
    newest set's join of the source (`join`: its entry's seq and data) does not hold: a joiner that
    skipped one, or a segment sealed after the join (the next start sealed what a full disk left at the
    stop) with no set made since, and so on no disc (pure)."""
    seq, data = join
    named = {str(s.get("item")) for s in data.get("segments") or [] if isinstance(s, Mapping)}
    missing = [item for _, item in sealed if item not in named]
    if not missing:
        return []
    late = sum(1 for at, item in sealed if at > seq and item not in named)
    more = len(missing) - LISTED
    shown = ", ".join(missing[:LISTED]) + (f" and {more} more" if more > 0 else "")
    return [Problem(f"ledger seq {seq} (joined)",
                    f"{len(missing)} segment(s) the source sealed are not in the joined file of the "
                    "session's newest products" + (f" ({late} sealed after this join)" if late else "")
                    + f": {shown}")]


def session_set_findings(
    known: SessionProducts,
    joins: Mapping[str, tuple[int, Mapping[str, Any]]],
    sealed: Mapping[str, list[tuple[int, str]]],
    sealed_item: Callable[[str], SealedFacts | None],
    agent_started_seq: int | None = None,
) -> tuple[list[Problem], list[str]]:
    """Problems and notes of one session's products (`joins`: its `joined` entries by item; `sealed`: its
    sealed segments by source, in ledger order; `sealed_item`: the lookup of one item's sealed facts;
    `agent_started_seq`: the seq of the ledger's newest ``station_started``, if any)."""
    session = known.session
    problems: list[Problem] = []
    notes: list[str] = []
    newest = known.newest
    in_newest = set() if newest is None else {j.item for j in set_joins(newest.data) if j.item}
    superseded = sorted(seq for item, (seq, _) in joins.items() if item not in in_newest)
    if superseded:
        notes.append(f"room session {session}: {len(superseded)} joined file(s) superseded by its newest "
                     f"products (ledger seq {', '.join(map(str, superseded[:LISTED]))}"
                     f"{' ...' if len(superseded) > LISTED else ''}): checked by hash, not required complete")
    if known.manifest is None:
        if joins or known.made:
            problems.append(Problem(f"room session {session}",
                                    "it has products but no sealed session manifest"))
        return problems, notes
    if newest is None:
        owed = (f"its newest sealed manifest (item {known.manifest.item}, sealed at ledger seq "
                f"{known.manifest_sealed_seq}) has no products made from it: its joined files and statement "
                "are owed (the agent makes them at its next start), and no disc can carry them")
        sealed_at = known.manifest_sealed_seq
        if known.made:
            # Made before from an older manifest: what the newer one added (segments sealed after the
            # stop, review 28) is in no joined file and on no disc.
            problems.append(Problem(f"room session {session}", owed))
        elif agent_started_seq is not None and sealed_at is not None and agent_started_seq > sealed_at:
            # The start that owed them has come and gone (unless it is making them right now).
            problems.append(Problem(f"room session {session}", f"{owed}; the agent started since (ledger seq "
                                    f"{agent_started_seq}) and has not made them"))
        else:
            # Never made yet (a stop making them now, or cut short): nothing claimed is untrue.
            notes.append(f"room session {session}: {owed}")
        return problems, notes
    where = f"ledger seq {newest.seq} (room_products)"
    data = newest.data
    if data.get("manifest_sha256") != known.manifest.data.get("sha256"):
        problems.append(Problem(where, f"it names manifest hash {data.get('manifest_sha256')}, the "
                                       f"manifest was sealed with {known.manifest.data.get('sha256')}"))
    problems.extend(_statement_problems(where, data, sealed_item))
    named: set[str] = set()
    for join in set_joins(data):
        named.add(join.source)
        what = f"source {join.source}"
        if join.item is None:
            if join.unsealed:
                problems.append(Problem(where, f"{what}: its joined file was not sealed (the store was at "
                                               "its reserve): owed, on no disc yet"))
            else:
                notes.append(f"room session {session}: {what} was not joined (refused: see its `room join` "
                             "error); its sealed segments stand on their own, and go on the disc one by one")
            continue
        found = joins.get(join.item)
        if found is None or found[1].get("source") != join.source:
            problems.append(Problem(where, f"{what}: its joined item {join.item} has no `joined` entry of "
                                           "this session and source"))
            continue
        if found[1].get("sha256") != join.sha256:
            problems.append(Problem(where, f"{what}: it names hash {join.sha256} for joined item "
                                           f"{join.item}, its `joined` entry {found[1].get('sha256')}"))
        problems.extend(left_out_problems(found, sealed.get(join.source, [])))
    for source, listed in sorted(sealed.items()):
        if listed and source not in named:
            problems.append(Problem(where, f"source {source} sealed {len(listed)} segment(s), and the "
                                           "products name no joined file (nor a refused join) for it"))
    return problems, notes


def _statement_problems(
    where: str, data: Mapping[str, Any], sealed_item: Callable[[str], SealedFacts | None]
) -> list[Problem]:
    statement = data.get("statement_item")
    if not isinstance(statement, str):
        return [Problem(where, "its statement (相关说明) was not sealed: owed, on no disc yet")]
    facts = sealed_item(statement)
    if facts is None:
        return [Problem(where, f"its statement item {statement} was never sealed")]
    if facts.sha256 != data.get("statement_sha256"):
        return [Problem(where, f"its statement item {statement} is sealed with hash {facts.sha256}, the "
                               f"products say {data.get('statement_sha256')}")]
    return []


def export_problems(
    exported: LedgerEntry, then: SessionProducts | None, now: SessionProducts | None,
    attached: Iterable[str] = (),
) -> tuple[list[Problem], list[str]]:
    """Whether the disc of `exported` carried the newest set as it stood before it (`then`) and every
    document attached to the session before it (`attached`: their items), and whether a newer set has
    been made since (`now`) (pure)."""
    where = f"ledger seq {exported.seq} (exported)"
    newest = None if then is None else then.newest
    if newest is None:
        return [Problem(where, "the disc was exported without products made from the session's newest "
                               "manifest")], []
    files = exported.data.get("files")
    carried = {str(f.get("path")): f.get("item") for f in files if isinstance(f, dict)} \
        if isinstance(files, list) else {}
    wanted = {"session-manifest.json": newest.data.get("manifest_item"),
              "statement-相关说明.txt": newest.data.get("statement_item")}
    wanted.update({f"recordings/{j.source}.mp4": j.item for j in set_joins(newest.data) if j.item})
    recordings = {path: item for path, item in carried.items()
                  if path.startswith("recordings/") and path.endswith(".mp4") and path.count("/") == 1}
    differ = [f"{path}: {carried.get(path)} (newest set: {item})" for path, item in sorted(wanted.items())
              if carried.get(path) != item]
    differ += [f"{path}: {item} (in no newest set)" for path, item in sorted(recordings.items())
               if path not in wanted]
    if differ:
        return [Problem(where, "the disc did not carry the newest products (room_products seq "
                               f"{newest.seq}): " + "; ".join(differ[:LISTED]))], []
    documents = set(carried.values())
    left_off = [item for item in attached if item not in documents]
    if left_off:
        return [Problem(where, f"the disc did not carry {len(left_off)} document(s) attached to the session "
                               f"before it: {', '.join(left_off[:LISTED])}")], []
    current = None if now is None else now.newest
    if current is not None and current is not newest:
        return [], [f"room session {exported.data.get('room_session')}: the disc exported at ledger seq "
                    f"{exported.seq} carries products superseded since (room_products seq {current.seq}): "
                    "export it again"]
    return [], []


def _entries(conn: sqlite3.Connection, types: Iterable[str]) -> list[LedgerEntry]:
    wanted = sorted(set(types))
    marks = ", ".join("?" for _ in wanted)
    found = []
    for seq, time, type_, item, raw in conn.execute(
            f"SELECT seq, time, type, item, data FROM ledger WHERE type IN ({marks}) ORDER BY seq", wanted):
        try:
            data = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            data = None
        # An entry whose data is not an object is the ledger check's finding; here it says nothing.
        found.append(LedgerEntry(int(seq), str(time), str(type_), item if isinstance(item, str) else None,
                                 data if isinstance(data, dict) else {}, "", ""))
    return found


def products_findings(conn: sqlite3.Connection) -> ProductFindings:
    """Every room session's products checked (see the module docstring)."""
    findings = ProductFindings([], [], 0)
    entries = _entries(conn, (*SET_TYPES, EntryType.JOINED, EntryType.SEGMENT_SEALED, EntryType.EXPORTED,
                              EntryType.STATION_STARTED, EntryType.ATTACHED))
    agent_started_seq: int | None = None
    sets = ProductSets()
    joins: dict[str, dict[str, tuple[int, Mapping[str, Any]]]] = {}
    sealed: dict[str, dict[str, list[tuple[int, str]]]] = {}
    exports: list[tuple[LedgerEntry, SessionProducts | None, list[str]]] = []
    attached: dict[str, list[str]] = {}  # per session, the items of its documents so far
    for entry in entries:
        session = entry.data.get("room_session")
        if entry.type == EntryType.STATION_STARTED:
            agent_started_seq = entry.seq
        elif entry.type in SET_TYPES:
            sets.add(entry)
        elif not isinstance(session, str):
            continue
        elif entry.type == EntryType.JOINED and entry.item is not None:
            joins.setdefault(session, {})[entry.item] = (entry.seq, entry.data)
        elif entry.type == EntryType.SEGMENT_SEALED and entry.item is not None:
            source = entry.data.get("source")
            if isinstance(source, str):
                sealed.setdefault(session, {}).setdefault(source, []).append((entry.seq, entry.item))
        elif entry.type == EntryType.ATTACHED and entry.item is not None:
            attached.setdefault(session, []).append(entry.item)
        elif entry.type == EntryType.EXPORTED:
            known = sets.sessions.get(session)
            # What the set was then: a copy, as later entries add to it.
            exports.append((entry, None if known is None else SessionProducts(
                known.session, known.manifest, known.manifest_sealed_seq, list(known.made)),
                list(attached.get(session, []))))
    for session in sorted(set(sets.sessions) | set(joins)):
        known = sets.sessions.get(session) or SessionProducts(session)
        findings.checked += 1
        problems, notes = session_set_findings(known, joins.get(session, {}), sealed.get(session, {}),
                                               lambda item: sealed_facts(conn, item), agent_started_seq)
        findings.problems.extend(problems)
        findings.notes.extend(notes)
    for exported, then, documents in exports:
        now = sets.sessions.get(str(exported.data["room_session"]))
        problems, notes = export_problems(exported, then, now, documents)
        findings.problems.extend(problems)
        findings.notes.extend(notes)
    return findings
