"""How often the central records what one station keeps sending wrong.

A station whose certificate the broker still accepts (revoked at the central, or a process gone wrong)
can publish thousands of refused commands a second. Each refusal is right, but recording each one (a row
of the index's rejections in its own SQLite transaction on the event loop, a log line, a line of the MQTT
store's incidents.jsonl with an fsync) lets that station grow the central's index, log and disk without
bound. :class:`RecordRate` admits, per station, a burst of ``per_minute`` records and then ``per_minute``
a minute (a token bucket); what it does not admit is counted, and the count goes into the station's next
record that is admitted, so nothing is silently forgotten (as the station's own command handler does,
``edge.mqtt.command_handler.REFUSALS_RECORDED_PER_MINUTE``).

The stations it remembers are bounded (the oldest forgotten first): a forgotten station starts again
with a full burst, which bounds the records by the number of stations the broker lets in. A station
forgotten with records not written gets one log line with their count (a station skips only after a
full burst, so these lines are fewer than a burst's share of what the stations send).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RECORDS_PER_MINUTE", "RecordRate", "noting_skipped"]

log = logging.getLogger(__name__)

RECORDS_PER_MINUTE = 30
_REMEMBERED_STATIONS = 4096


@dataclass
class _Bucket:
    tokens: float
    at: float
    skipped: int = 0


class RecordRate:
    """Per-station token buckets; see the module docstring. Thread-safe (the MQTT store records from
    worker threads)."""

    def __init__(
        self,
        per_minute: int = RECORDS_PER_MINUTE,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        remembered: int = _REMEMBERED_STATIONS,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self._monotonic = monotonic
        self._remembered = remembered
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()
        # Every record not written since the start (a metric: edge_central_refusals_not_recorded_total).
        self.not_written = 0

    def __repr__(self) -> str:
        return f"RecordRate({self.per_minute}/min, {len(self._buckets)} stations)"

    def admit(self, station: str) -> int | None:
        """None when this record of ``station`` is not to be written (it is counted); else the number of
        its records not written since its last one (0 mostly), to be carried in this one."""
        now = self._monotonic()
        forgotten: list[tuple[str, int]] = []
        with self._lock:
            bucket = self._buckets.pop(station, None)
            if bucket is None:
                bucket = _Bucket(float(self.per_minute), now)
            bucket.tokens = min(float(self.per_minute),
                                bucket.tokens + (now - bucket.at) * self.per_minute / 60.0)
            bucket.at = now
            self._buckets[station] = bucket
            while len(self._buckets) > self._remembered:
                old_station, old_bucket = self._buckets.popitem(last=False)
                if old_bucket.skipped:
                    forgotten.append((old_station, old_bucket.skipped))
            if bucket.tokens < 1.0:
                bucket.skipped += 1
                self.not_written += 1
                admitted = None
            else:
                bucket.tokens -= 1.0
                admitted, bucket.skipped = bucket.skipped, 0
        for old_station, skipped in forgotten:  # logged outside the lock
            # repr, cut: a station id comes from a topic, whatever bytes the station put there.
            log.warning("%d record(s) of station %.80r were not written (rate-limited) and it is forgotten "
                        "(more than %d stations remembered): no later record of it will carry that count",
                        skipped, old_station, self._remembered)
        return admitted


def noting_skipped(detail: str, skipped: int) -> str:
    """``detail`` saying how many records of the same station were not written before it."""
    if not skipped:
        return detail
    return f"{detail} ({skipped} more of this station were not recorded before this one: rate-limited)"
