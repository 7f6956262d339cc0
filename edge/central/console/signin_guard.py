"""Per client address, at most so many console sign-in attempts a minute (a sliding window in memory)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["SignInGuard"]


class SignInGuard:
    """At most ``per_minute`` sign-in attempts per client address in any 60 s (sliding window)."""

    def __init__(
        self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_addresses: int = 10_000
    ) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._max_addresses = max_addresses
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"SignInGuard(per_minute={self.per_minute}, addresses={len(self._attempts)})"

    def admit(self, remote: str | None) -> float | None:
        """Record an attempt from ``remote``; None when admitted, else the seconds to wait."""
        now = self._clock()
        key = remote or "unknown"
        window = self._attempts.pop(key, None) or deque()
        while window and now - window[0] >= 60.0:
            window.popleft()
        self._attempts[key] = window
        while len(self._attempts) > self._max_addresses:
            self._attempts.popitem(last=False)
        if len(window) >= self.per_minute:
            return max(1.0, 60.0 - (now - window[0]))
        window.append(now)
        return None
