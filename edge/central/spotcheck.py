"""Periodic spot checks (案卷抽查): a reproducible random sample of a period's items, each re-verified end to
end.

The sample is drawn with ``random.Random(seed).sample`` from the period's items in (acquired time, item)
order, so the same period, size and seed draw the same items for as long as the index holds them; the
seed is recorded in the access log and printed on the report. Each sampled item is checked as a court
expert would (:func:`check_item`): its stored object is read and hashed again, its manifest's signature
verified with the station's enrolled keys, a fresh receipt from the log verified with the central key
(signed tree head and inclusion proof), and the station ledger around it checked for continuity from
its acquired entry to the first signed checkpoint after its last entry. The key epochs of that check come
from every ``key_rotated`` entry of the station the central holds, with the checkpoints at its seq (as a
disclosure package ships them, :func:`edge.central.disclosure.package.key_rotations`), not from the
stretch checked: an item of a later key's time is never vouched for by a key retired before it.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.central.disclosure.package import key_rotations, station_keys_in_use
from edge.central.index import ItemRecord
from edge.custody.disclosure import (
    ShippedRotation,
    item_evidence_problems,
    ledger_segment_problems,
    rotation_chain_problems,
)
from edge.custody.ledger import GENESIS_PREV
from edge.custody.problems import Problem

if TYPE_CHECKING:
    from edge.central.app import CentralParts
    from edge.central.storage import Index

__all__ = ["CHECKS", "ItemCheck", "RotationCache", "SpotCheck", "check_item", "choose_sample", "report_html"]

CHECKS = ("object", "manifest", "receipt", "ledger")
_CHUNK_BYTES = 1 << 20


def choose_sample(items: Sequence[str], *, seed: int, size: int | None = None,
                  fraction: float | None = None) -> list[str]:
    """The items of a sample: ``size`` of them, or ``fraction`` of them rounded up, at most all."""
    if (size is None) == (fraction is None):
        raise ValueError("give the sample as a size or as a fraction, not both")
    wanted = size if size is not None else math.ceil((fraction or 0.0) * len(items))
    chosen = random.Random(seed).sample(list(items), min(wanted, len(items)))
    order = {item: n for n, item in enumerate(items)}
    return sorted(chosen, key=order.__getitem__)


@dataclass
class ItemCheck:
    item: str
    station: str
    officer_no: str
    acquired_utc: str
    problems: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in CHECKS})

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def to_dict(self) -> dict[str, Any]:
        return {"item": self.item, "station": self.station, "officer_no": self.officer_no,
                "acquired_utc": self.acquired_utc, "ok": self.ok,
                "checks": {name: {"ok": not found, "problems": found}
                           for name, found in self.problems.items()}}


@dataclass
class SpotCheck:
    time_from: str
    time_to: str
    seed: int
    population: int
    requested: str
    reader: str
    started_utc: str
    items: list[ItemCheck]

    @property
    def failed(self) -> int:
        return sum(not check.ok for check in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.time_from, "to": self.time_to, "seed": self.seed, "population": self.population,
                "requested": self.requested, "reader": self.reader, "started_utc": self.started_utc,
                "sampled": len(self.items), "failed": self.failed, "items": [c.to_dict() for c in self.items]}


def _hash_object(parts: CentralParts, sha256: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with parts.objects.open(sha256) as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _classify(problem: Problem) -> str:
    where = problem.where
    if "receipt" in where:
        return "receipt"
    if "ledger" in where or "checkpoint" in where:
        return "ledger"
    return "manifest"


# station -> its key rotations as checked (the chain and the problems found), for one spot check's items
RotationCache = dict[str, tuple[list[ShippedRotation], list[Problem], dict[str, Any]]]


async def check_item(parts: CentralParts, record: ItemRecord, rotations: RotationCache | None = None
                     ) -> ItemCheck:
    """One item re-verified end to end (the object is hashed in a worker thread). ``rotations`` keeps
    each station's checked key rotations across the items of one spot check (read once per station)."""
    check = ItemCheck(record.item, record.station, record.officer_no or "", record.acquired_utc)
    try:
        found_sha, found_size = await asyncio.to_thread(_hash_object, parts, record.sha256)
    except FileNotFoundError:
        found_sha, found_size = "", -1
        check.problems["object"].append(f"object {record.sha256} is missing from the object store")
    except OSError as exc:
        found_sha, found_size = "", -1
        check.problems["object"].append(f"object {record.sha256} cannot be read: {exc.strerror or exc}")
    else:
        if (found_sha, found_size) != (record.sha256, record.size):
            check.problems["object"].append(
                f"object hashes to {found_sha} ({found_size} bytes), but the item is {record.sha256} "
                f"({record.size} bytes): the stored content was changed")
    # The manifest's signer may be any key the station was enrolled with; the ledger's epochs only the keys
    # in use (a key enrolled by mistake and never used names no rotation: station_keys_in_use).
    keys = await parts.read(parts.index.station_keys, record.station)
    receipt = await parts.registrar.receipt(record.item)
    entries = await parts.read(lambda: list(parts.index.ledger_entries(record.station, item=record.item)))
    central_key = parts.signing_key.public_key()
    # The manifest, receipt and ledger links are checked against the item's own hash: the object check
    # above says whether the stored bytes still have it.
    for problem in item_evidence_problems(
        item=record.item, station=record.station, content_sha256=record.sha256, content_size=record.size,
        manifest=record.manifest, station_keys=keys, receipt=None if receipt is None else receipt.to_dict(),
        central_key=central_key, item_entries=entries,
    ):
        check.problems[_classify(problem)].append(str(problem))
    cache = rotations if rotations is not None else {}
    if record.station not in cache:
        cache[record.station] = await asyncio.to_thread(_rotations_of, parts, record.station)
    chain, rotation_problems, in_use = cache[record.station]
    check.problems["ledger"] += [str(p) for p in rotation_problems]
    # The stretch re-hashed may be long (an item tagged months after it was docked): in a worker thread, on
    # a snapshot of the index.
    found = await asyncio.to_thread(_continuity_of, parts, record, entries, in_use, chain)
    check.problems["ledger"] += [str(p) for p in found]
    return check


def _rotations_of(parts: CentralParts, station: str
                  ) -> tuple[list[ShippedRotation], list[Problem], dict[str, Any]]:
    """:func:`_rotations` over the station's keys in use, read on a snapshot of the index (in a worker)."""
    with parts.index.snapshot() as index:
        keys = station_keys_in_use(station, index)
        chain, problems = _rotations(index, station, keys)
    return chain, problems, keys


def _rotations(index: Index, station: str, keys: Any) -> tuple[list[ShippedRotation], list[Problem]]:
    """The station's key rotations the central holds, checked as `edge verify` checks a package's
    key_rotations.jsonl: each re-hashed and vouched for by its keys' checkpoints, one chain over the
    station's keys in use. A rotation or key that does not hold is a ledger problem of every item."""
    lines = [(f"station {station} ledger seq {entry.seq} (key_rotated)", entry, checkpoints)
             for entry, checkpoints in key_rotations(station, index)]
    return rotation_chain_problems(station, lines, keys)


def _continuity_of(parts: CentralParts, record: ItemRecord, entries: list[Any], keys: Any,
                   rotations: list[ShippedRotation]) -> list[Problem]:
    with parts.index.snapshot() as index:
        return _continuity(index, record, entries, keys, rotations)


def _continuity(index: Index, record: ItemRecord, entries: list[Any], keys: Any,
                rotations: list[ShippedRotation]) -> list[Problem]:
    """The station ledger from the item's acquired entry to the first signed checkpoint after its last,
    under the key epochs of the station's ``rotations``."""
    if not entries:
        return [Problem(f"item {record.item} ledger", "the station's accepted ledger holds no entry of it")]
    first = min(record.chain_seq, entries[0].seq)
    last = entries[-1].seq
    # The first checkpoint at or after its last entry: one indexed row, never every checkpoint of the
    # station (one per entry: millions) nor a stretch to its newest.
    checkpoint = index.checkpoint_at_or_after(record.station, last)
    if checkpoint is None:
        return [Problem(f"item {record.item} ledger", f"no signed checkpoint covers seq {last} yet")]
    before = index.ledger_entry(record.station, first - 1) if first > 1 else None
    segment = list(index.ledger_entries(record.station, first, end_seq=checkpoint.seq))
    problems = ledger_segment_problems(record.station, segment, checkpoint, keys, rotations)
    expected_prev = before.hash if before is not None else GENESIS_PREV
    if segment and segment[0].prev != expected_prev:
        problems.append(Problem(f"ledger seq {segment[0].seq}", f"does not link to seq {first - 1}"))
    return problems


_STATUS = {True: ("通过", "pass"), False: ("未通过", "FAILED")}


def report_html(check: SpotCheck, reproduce_query: str) -> bytes:
    """The printable report: one row per sampled item with each check's result and problems."""
    rows = []
    for item in check.items:
        cells = []
        for name in CHECKS:
            found = item.problems[name]
            zh, en = _STATUS[not found]
            detail = "".join(f"<div class=\"problem\">{html.escape(text)}</div>" for text in found)
            cells.append(f"<td class=\"{'ok' if not found else 'bad'}\">{zh} {en}{detail}</td>")
        zh, en = _STATUS[item.ok]
        rows.append(
            f"<tr data-item=\"{html.escape(item.item)}\" data-ok=\"{str(item.ok).lower()}\">"
            f"<td><code>{html.escape(item.item)}</code></td><td>{html.escape(item.station)}</td>"
            f"<td>{html.escape(item.officer_no)}</td><td>{html.escape(item.acquired_utc)}</td>"
            f"{''.join(cells)}<td class=\"{'ok' if item.ok else 'bad'}\">"
            f"<strong>{zh} {en}</strong></td></tr>")
    verdict_zh, verdict_en = _STATUS[check.failed == 0]
    body = f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>案卷抽查报告 Spot check report</title>
<link rel="stylesheet" href="/audit/static/report.css"></head><body>
<h1>案卷抽查报告 <span lang="en">Spot check report</span></h1>
<table class="facts">
<tr><th>期间 Period</th><td>{html.escape(check.time_from)} – {html.escape(check.time_to)}</td></tr>
<tr><th>抽样 Sample</th><td id="sampled">{len(check.items)} / {check.population}
({html.escape(check.requested)})</td></tr>
<tr><th>随机种子 Seed</th><td id="seed">{check.seed}</td></tr>
<tr><th>检查人 Checked by</th><td>{html.escape(check.reader)}</td></tr>
<tr><th>时间 Checked at (UTC)</th><td>{html.escape(check.started_utc)}</td></tr>
<tr><th>结论 Result</th><td id="verdict" class="{'ok' if check.failed == 0 else 'bad'}">
{verdict_zh} {verdict_en}: {check.failed} 项未通过 failed</td></tr>
</table>
<p>同一期间、同一样本量和同一种子会抽到同样的证据。
<span lang="en">The same period, sample size and seed draw the same items.</span>
<a class="reproduce" href="?{html.escape(reproduce_query)}">重新抽查 Reproduce</a></p>
<table class="items"><tr><th>证据 Item</th><th>采集站 Station</th><th>警号 Officer</th>
<th>采集时间 Acquired</th>
<th>存储对象 Stored object</th><th>清单签名 Manifest signature</th><th>回执 Receipt in log</th>
<th>台账连续 Ledger continuity</th><th>结果 Result</th></tr>
{"".join(rows)}
</table></body></html>
"""
    return body.encode("utf-8")
