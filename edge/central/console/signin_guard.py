"""Per client address, at most so many console sign-in attempts a minute (a sliding window in memory).

An IPv6 client counts by its /64 network: one host is usually given a whole /64, and counting single
addresses would let it take a fresh address for every attempt."""

from __future__ import annotations

import ipaddress
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
        key = _client_key(remote)
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


def _client_key(remote: str | None) -> str:
    """What one client is: its IPv4 address, or its IPv6 /64 network (an IPv4-mapped address as IPv4)."""
    if not remote:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote.split("%")[0])
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
