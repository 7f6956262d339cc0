"""Admission bounds of the central receiver: requests in progress, and request bytes held in memory.

Both are counters the event loop alone touches (no locks): :class:`RequestLimiter` admits at most
``max_requests`` requests into the application at once, :class:`BodyBudget` lets the JSON endpoints hold
at most ``max_bytes`` of request bodies in memory together (each body is also bounded on its own). A
request that does not fit is refused at once with 503 and ``Retry-After`` rather than queued: a queue
would only move the memory and the waiting from the application into the socket buffers, and every
client of the central (the station uplink, tus clients) retries a 503 after the delay it names.

Upload bodies are not counted in the budget: the tus server streams them to disk in blocks of at most
1 MiB per request, so their memory is bounded by the request limit. Upload *writes* have their own bound,
:class:`UploadWriteSlots`: at most so many of one station, and (with the shared store, where each holds a
PostgreSQL connection and up to one part in memory for its whole request) at most so many on the
receiver, checked before the request touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["BodyBudget", "HttpBounds", "RequestLimiter", "UploadWriteSlots", "WritesFull"]


class RequestLimiter:
    """At most ``max_requests`` requests in progress; :meth:`try_enter` says whether one more fits."""

    def __init__(self, max_requests: int, *, retry_after_s: int) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {max_requests}")
        if retry_after_s < 1:
            raise ValueError(f"retry_after_s must be >= 1, got {retry_after_s}")
        self.max_requests = max_requests
        self.retry_after_s = retry_after_s
        self._in_progress = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"RequestLimiter({self._in_progress}/{self.max_requests} in progress, {self.refused} refused)"

    @property
    def in_progress(self) -> int:
        return self._in_progress

    @property
    def saturated(self) -> bool:
        return self._in_progress >= self.max_requests

    def refuse_if_saturated(self) -> bool:
        """Whether a request would be refused now (counted as a refusal), without entering it: for
        refusals made before the request is admitted, such as before ``100 Continue``."""
        if self.saturated:
            self.refused += 1
            return True
        return False

    def try_enter(self) -> bool:
        """Count one more request in progress, or False (and count a refusal) when the cap is reached."""
        if self.saturated:
            self.refused += 1
            return False
        self._in_progress += 1
        return True

    def leave(self) -> None:
        if self._in_progress <= 0:
            raise RuntimeError("RequestLimiter.leave() without a matching try_enter()")
        self._in_progress -= 1


class BodyBudget:
    """At most ``max_bytes`` of request bodies held in memory at once, reserved before they are read."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self._held = 0

    def __repr__(self) -> str:
        return f"BodyBudget({self._held}/{self.max_bytes} bytes held)"

    @property
    def held(self) -> int:
        return self._held

    def try_reserve(self, n: int) -> bool:
        """Reserve ``n`` more bytes, or False when they would exceed the budget (nothing reserved)."""
        if n < 0:
            raise ValueError(f"cannot reserve a negative size {n}")
        if self._held + n > self.max_bytes:
            return False
        self._held += n
        return True

    def release(self, n: int) -> None:
        if not 0 <= n <= self._held:
            raise RuntimeError(f"BodyBudget.release({n}) with {self._held} bytes held")
        self._held -= n


class WritesFull(StrEnum):
    """Why :meth:`UploadWriteSlots.try_enter` refused."""

    STATION = "station"  # the station has its share in progress
    RECEIVER = "receiver"  # the receiver has its maximum in progress


class UploadWriteSlots:
    """Upload writes in progress: at most ``per_station`` of one station and, unless ``max_total`` is None,
    at most ``max_total`` over the receiver. Event-loop only, like :class:`RequestLimiter`: a request that
    does not fit is refused at once (not queued), before it takes a database connection."""

    def __init__(self, *, per_station: int, max_total: int | None) -> None:
        if per_station < 1:
            raise ValueError(f"per_station must be >= 1, got {per_station}")
        if max_total is not None and max_total < 1:
            raise ValueError(f"max_total must be >= 1 or None, got {max_total}")
        self.per_station = per_station
        self.max_total = max_total
        self._of_station: dict[str, int] = {}
        self._in_progress = 0
        self.refused = {WritesFull.STATION: 0, WritesFull.RECEIVER: 0}

    def __repr__(self) -> str:
        return (f"UploadWriteSlots({self._in_progress}/{self.max_total} in progress, "
                f"{self.per_station} per station, refused {dict(self.refused)})")

    @property
    def in_progress(self) -> int:
        return self._in_progress

    def of_station(self, station: str) -> int:
        return self._of_station.get(station, 0)

    def full_for(self, station: str) -> WritesFull | None:
        """Whether one more write of ``station`` would be refused now, and why (nothing counted)."""
        if self.of_station(station) >= self.per_station:
            return WritesFull.STATION
        if self.max_total is not None and self._in_progress >= self.max_total:
            return WritesFull.RECEIVER
        return None

    def try_enter(self, station: str) -> WritesFull | None:
        """Count one more write of ``station``, or say why not (and count the refusal)."""
        full = self.full_for(station)
        if full is not None:
            self.refused[full] += 1
            return full
        self._of_station[station] = self.of_station(station) + 1
        self._in_progress += 1
        return None

    def leave(self, station: str) -> None:
        held = self.of_station(station)
        if held <= 0:
            raise RuntimeError(f"UploadWriteSlots.leave({station!r}) without a matching try_enter()")
        if held == 1:
            del self._of_station[station]  # stations that write no more leave no entry behind
        else:
            self._of_station[station] = held - 1
        self._in_progress -= 1


@dataclass(frozen=True)
class HttpBounds:
    """The admission bounds of one central application (see the module docstring)."""

    limiter: RequestLimiter
    budget: BodyBudget
    max_json_body_bytes: int
