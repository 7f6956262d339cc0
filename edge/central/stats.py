"""Statistics for supervisors (统计分析): items and recorded hours by unit, officer and day, the share of
items with a case number, the time from recording to docking and from docking to receipt, and important items.

Pure: :class:`Statistics` folds item facts one at a time (memory grows with the number of units, officers
and days, plus one number per item for the percentiles), and :func:`item_facts` reads the facts of one
item from its signed manifest and its current case (after every accepted tag). The routes
(:mod:`edge.central.disclosure.routes`) feed it only the items the reader may see.

Definitions (also in the README):

* **day**: the local date the recorder wrote for the start of the recording (its file name), else the
  UTC date of acquisition;
* **recorded hours**: the media duration ffprobe measured at the station (items without one count as
  items, not hours);
* **recording to docking**: acquisition time at the station minus the recording's start in UTC, which is
  the device's local start time corrected by its time zone and by the clock offset measured at docking
  (device minus station); items without a time zone or start time are left out and counted;
* **docking to receipt**: the central's acceptance time (the receipt's leaf) minus acquisition time;
* percentiles are nearest-rank: the median is the value at rank ceil(n/2), p90 at ceil(0.9 n).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from edge.central.index import ItemRecord

__all__ = ["ItemFacts", "Statistics", "item_facts", "nearest_rank"]

# Important items are listed up to this many (the rest are counted).
MAX_IMPORTANT_LISTED = 200


@dataclass(frozen=True)
class ItemFacts:
    item: str
    unit_code: str
    unit_name: str
    officer_no: str
    officer_name: str
    day: str
    duration_s: float | None
    case_number: str | None
    important: bool
    recording_to_docking_s: float | None
    docking_to_receipt_s: float | None
    acquired_utc: str


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _utc(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def recording_start_utc(time_block: Mapping[str, Any]) -> datetime | None:
    """The recording's start in UTC: device local time, its time zone, and the measured clock offset."""
    start_text = time_block.get("recorded_start")
    tz_min = _number(time_block.get("device_tz_offset_min"))
    if not isinstance(start_text, str):
        return None
    try:
        start = datetime.fromisoformat(start_text)
    except ValueError:
        return None
    if start.tzinfo is None:
        if tz_min is None:
            return None
        start = start.replace(tzinfo=UTC) - timedelta(minutes=tz_min)
    offset_ms = _number(time_block.get("device_clock_offset_ms")) or 0.0
    # The device clock ran offset_ms ahead of the station's: the true start is that much earlier.
    return start.astimezone(UTC) - timedelta(milliseconds=offset_ms)


def item_facts(record: ItemRecord, case: Mapping[str, Any]) -> ItemFacts:
    manifest = record.manifest
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    time_block = manifest.get("time") if isinstance(manifest.get("time"), dict) else {}
    media = manifest.get("media") if isinstance(manifest.get("media"), dict) else {}
    assert isinstance(source, dict) and isinstance(time_block, dict) and isinstance(media, dict)
    duration_ms = _number(media.get("duration_ms"))
    acquired = _utc(record.acquired_utc)
    accepted = _utc(record.accepted_utc)
    started = recording_start_utc(time_block)
    recorded_start = time_block.get("recorded_start")
    if isinstance(recorded_start, str) and len(recorded_start) >= 10 and recorded_start[4] == "-":
        day = recorded_start[:10]
    else:
        day = record.acquired_utc[:10]
    case_number = case.get("case_number")
    return ItemFacts(
        item=record.item,
        unit_code=_text(source.get("unit_code")),
        unit_name=_text(source.get("unit_name")),
        officer_no=record.officer_no or "",
        officer_name=_text(source.get("officer_name")),
        day=day,
        duration_s=None if duration_ms is None else duration_ms / 1000.0,
        case_number=case_number if isinstance(case_number, str) and case_number.strip() else None,
        important=case.get("important") is True,
        recording_to_docking_s=(acquired - started).total_seconds() if acquired and started else None,
        docking_to_receipt_s=(accepted - acquired).total_seconds() if accepted and acquired else None,
        acquired_utc=record.acquired_utc,
    )


def nearest_rank(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of a non-empty sorted list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class _Tally:
    items: int = 0
    seconds: float = 0.0

    def add(self, facts: ItemFacts) -> None:
        self.items += 1
        self.seconds += facts.duration_s or 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "hours": round(self.seconds / 3600.0, 4)}


def _durations(values: list[float], missing: int) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "missing": missing, "median_s": None, "p90_s": None}
    return {"count": len(ordered), "missing": missing, "median_s": round(nearest_rank(ordered, 0.5), 3),
            "p90_s": round(nearest_rank(ordered, 0.9), 3)}


@dataclass
class Statistics:
    """The fold of every item a reader may see in a period."""

    total: _Tally = field(default_factory=_Tally)
    with_case: int = 0
    important: int = 0
    important_items: list[dict[str, Any]] = field(default_factory=list)
    units: dict[str, tuple[str, _Tally]] = field(default_factory=dict)
    officers: dict[str, tuple[str, str, _Tally]] = field(default_factory=dict)
    days: dict[str, _Tally] = field(default_factory=dict)
    to_docking: list[float] = field(default_factory=list)
    to_receipt: list[float] = field(default_factory=list)
    to_docking_missing: int = 0
    to_receipt_missing: int = 0

    def add(self, facts: ItemFacts) -> None:
        self.total.add(facts)
        self.with_case += facts.case_number is not None
        if facts.important:
            self.important += 1
            if len(self.important_items) < MAX_IMPORTANT_LISTED:
                self.important_items.append({"item": facts.item, "case_number": facts.case_number,
                                             "officer_no": facts.officer_no, "unit_code": facts.unit_code,
                                             "acquired_utc": facts.acquired_utc})
        self.units.setdefault(facts.unit_code, (facts.unit_name, _Tally()))[1].add(facts)
        officer = self.officers.setdefault(facts.officer_no, (facts.officer_name, facts.unit_code, _Tally()))
        officer[2].add(facts)
        self.days.setdefault(facts.day, _Tally()).add(facts)
        if facts.recording_to_docking_s is None:
            self.to_docking_missing += 1
        else:
            self.to_docking.append(facts.recording_to_docking_s)
        if facts.docking_to_receipt_s is None:
            self.to_receipt_missing += 1
        else:
            self.to_receipt.append(facts.docking_to_receipt_s)

    def to_dict(self) -> dict[str, Any]:
        items = self.total.items
        return {
            **self.total.to_dict(),
            "with_case_number": self.with_case,
            "with_case_number_share": round(self.with_case / items, 4) if items else None,
            "important": self.important,
            "important_items": self.important_items,
            "by_unit": [{"unit_code": code, "unit_name": name, **tally.to_dict()}
                        for code, (name, tally) in sorted(self.units.items())],
            "by_officer": [{"officer_no": no, "officer_name": name, "unit_code": unit, **tally.to_dict()}
                           for no, (name, unit, tally) in sorted(self.officers.items())],
            "by_day": [{"day": day, **tally.to_dict()} for day, tally in sorted(self.days.items())],
            "recording_to_docking": _durations(self.to_docking, self.to_docking_missing),
            "docking_to_receipt": _durations(self.to_receipt, self.to_receipt_missing),
        }
