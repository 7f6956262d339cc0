"""Ledger entries for problems that come back again and again, limited so that a dead, confused or
hostile peer does not flood the ledger, yet never silent.

A GB/T 28181 device whose RecordInfo never answers, that lists recordings of channels it was not asked
about or recordings ending in 2099, shows the same problem at each of its passes; forged SIP requests
from many addresses each bring a refusal of their own. `LimitedEntries.seen(kind, key, group)` lets the
first one of a (kind, key) through to the ledger, then at most one per `repeat_s` carrying the number held
back meanwhile. Each group (a device) has its own budget, `budget` entries per `repeat_s` (those beyond
are counted in its next entry let through): one device listing 300 recordings ending in 2099 spends its
own budget, never another device's, so it cannot silence a recorder whose RecordInfo fails (review 17).
Over all groups at most `station_budget` per `repeat_s`: a bound on the ledger if many misbehave at once,
not a share one group can exhaust. `cleared(kind, key)` says whether a problem that reached the ledger has
gone now: its recovery is worth an entry too (the record shows when the listing worked again), and the
problem's next occurrence is recorded at once. In memory, bounded to the newest `MAX_PROBLEM_KEYS`: after
a restart a standing problem is recorded again, once. A key is kept as the SHA-256 of the kind and key,
never the key itself: keys hold peer text (a recording's FilePath, an address, of any length), so what
the station keeps stays bounded whatever a peer sends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

PROBLEM_REPEAT_S = 6 * 3600.0  # a problem that stays is on the ledger again after this long
PROBLEM_BUDGET = 256  # entries per PROBLEM_REPEAT_S per device, over its keys
STATION_PROBLEM_BUDGET = 16 * PROBLEM_BUDGET  # entries per PROBLEM_REPEAT_S over all devices
MAX_PROBLEM_KEYS = 4096
MAX_PROBLEM_DEVICES = 1024  # budgets kept (the oldest dropped: that device's budget starts afresh)


class _Budget:
    """Entries let through in the current window of `repeat_s`, and those held back over the budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.window_start = -float("inf")
        self.count = 0
        self.over = 0

    def admits(self, now: float, repeat_s: float) -> bool:
        if now - self.window_start >= repeat_s:
            self.window_start, self.count = now, 0
        if self.count >= self.budget:
            self.over += 1
            return False
        self.count += 1
        return True


def _slot(kind: str, key: str) -> bytes:
    """What is kept of a problem's identity: 32 bytes, whatever the length of the device's text in it."""
    return hashlib.sha256(f"{kind}\0{key}".encode("utf-8", "surrogatepass")).digest()


class LimitedEntries:
    """See the module docstring. `clock` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, repeat_s: float = PROBLEM_REPEAT_S,
                 budget: int = PROBLEM_BUDGET, station_budget: int = STATION_PROBLEM_BUDGET) -> None:
        self._clock = clock
        self._repeat_s = repeat_s
        self._budget = budget
        self._last: dict[bytes, tuple[float, int]] = {}  # by `_slot`: on the ledger when, held back since
        self._devices: dict[str, _Budget] = {}
        self._station = _Budget(station_budget)

    def seen(self, kind: str, key: str, device: str = "") -> dict[str, Any] | None:
        """The problem happened (at `device`, the group whose budget it spends): None to hold its entry
        back, else the counts to add to the entry's data (`repeats_not_recorded` of this key,
        `others_not_recorded` of this group over its budget, `others_not_recorded_station` over the
        station's)."""
        now = self._clock()
        slot = _slot(kind, key)
        last = self._last.get(slot)
        if last is not None and now - last[0] < self._repeat_s:
            self._last[slot] = (last[0], last[1] + 1)
            return None
        budget = self._devices.pop(device, None) or _Budget(self._budget)
        self._devices[device] = budget  # the newest last
        while len(self._devices) > MAX_PROBLEM_DEVICES:
            del self._devices[next(iter(self._devices))]
        if not budget.admits(now, self._repeat_s):
            return None
        if not self._station.admits(now, self._repeat_s):
            budget.count -= 1  # the station's cap held it back, not the device's own budget
            return None
        self._last.pop(slot, None)
        self._last[slot] = (now, 0)
        while len(self._last) > MAX_PROBLEM_KEYS:
            del self._last[next(iter(self._last))]
        extra: dict[str, Any] = {}
        if last is not None and last[1]:
            extra["repeats_not_recorded"] = last[1]
        if budget.over:
            extra["others_not_recorded"], budget.over = budget.over, 0
        if self._station.over:
            extra["others_not_recorded_station"], self._station.over = self._station.over, 0
        return extra

    def recorded(self, kind: str, key: str) -> None:
        """The state (kind, key) went on the ledger by another way (an entry that is never limited): its
        repeats within `repeat_s` from now are held back as if it had been let through here. The count
        held back before is kept for its next entry; no budget is spent."""
        slot = _slot(kind, key)
        last = self._last.pop(slot, None)
        self._last[slot] = (self._clock(), 0 if last is None else last[1])
        while len(self._last) > MAX_PROBLEM_KEYS:
            del self._last[next(iter(self._last))]

    def cleared(self, kind: str, key: str) -> int | None:
        """The problem did not happen this time: if it had reached the ledger, the times it was held back
        since (then its recovery goes on the ledger); else None."""
        last = self._last.pop(_slot(kind, key), None)
        return None if last is None else last[1]
