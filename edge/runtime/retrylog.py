"""Retries summarised in the log: a warning at the first failure, then at most one summary per interval,
and one line on recovery, instead of one warning per attempt.

A central that is down for an hour, retried every few seconds for each queued item, would otherwise
write thousands of identical warnings, and the one line that matters (when it started, when it ended)
drowns. :class:`RetrySummary` keeps, per kind of retried work (uploads, ledger pushes):

- the **first failure** after a success: a WARNING with the error;
- while failures go on: at most every ``interval_s`` a WARNING summary: how many failures since the
  last line, since when, and the last error;
- the **first success** after failures: an INFO line with the total count, the duration and the last
  error.

Each attempt is still logged at DEBUG, for whoever needs every one. The clock is injectable (a
monotonic clock by default), so the tests drive the interval without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from edge.runtime.logs import event_fields

__all__ = ["DEFAULT_SUMMARY_INTERVAL_S", "RetrySummary"]

DEFAULT_SUMMARY_INTERVAL_S = 300.0


class RetrySummary:
    """Summarises the failures of one kind of retried work on ``logger`` (see the module)."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval_s: float = DEFAULT_SUMMARY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._log = logger
        self.what = what
        self.interval_s = interval_s
        self._clock = clock
        self.failures = 0  # since the last success
        self._unreported = 0  # since the last line
        self._first_at: float | None = None
        self._last_line_at = 0.0
        self.last_error = ""

    def __repr__(self) -> str:
        return f"RetrySummary(what={self.what!r}, failures={self.failures})"

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, error: str, **fields: Any) -> None:
        """One attempt failed with ``error`` (a sentence; escaped by the formatter)."""
        now = self._clock()
        self.failures += 1
        self._unreported += 1
        self.last_error = error
        extra = event_fields(**fields, retry_count=self.failures)
        self._log.debug("%s failed (attempt %d): %s", self.what, self.failures, error, extra=extra)
        if self._first_at is None:
            self._first_at = now
            self._last_line_at = now
            self._unreported = 0
            self._log.warning("%s failing: %s (retried; a summary follows at most every %.0f s)",
                              self.what, error, self.interval_s, extra=extra)
            return
        if now - self._last_line_at >= self.interval_s:
            self._log.warning("%s still failing: %d failures in the last %.0f s, %d since %.0f s ago; last "
                              "error: %s", self.what, self._unreported, now - self._last_line_at,
                              self.failures, now - self._first_at, error, extra=extra)
            self._last_line_at = now
            self._unreported = 0

    def succeeded(self, **fields: Any) -> None:
        """An attempt succeeded: one INFO line if failures came before it."""
        if self._first_at is None:
            return
        now = self._clock()
        self._log.info("%s recovered after %d failures in %.0f s; last error: %s", self.what, self.failures,
                       now - self._first_at, self.last_error,
                       extra=event_fields(**fields, retry_count=self.failures))
        self.failures = 0
        self._unreported = 0
        self._first_at = None
        self.last_error = ""
