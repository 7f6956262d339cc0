"""A preference of transports with failover (``[uplink] transports = ["mqtt", "tus"]``).

Every call goes to the first transport that is not *out*. A transport is out once its calls went
unanswered (:class:`RetryLater`, or :class:`NotDone` carrying one, that was not an answer: down,
connection refused, timed out, no receiver listening (PUBACK 0x10)) at least ``failover_after_failures``
times in a row over at least ``failover_after_s``: a blip does not fail over, an outage does. An answer
that asks for later (``RetryLater.answered``: busy with ``Retry-After``, 429, a quota pause 0x97, a
transfer already in progress, "send every segment again") is the central speaking over that transport: it
counts as an answer, never towards failover (the other transport reaches the same busy central) --
until "busy" has been all the transport answered for ``failover_after_busy_s`` on end: then each further busy
answer counts as silence (a central that says busy for hours, or something in its name that does, must not
keep the station from its other transport). "On end" means without a pause: a busy answer that comes
later than the wait the previous one asked for (its Retry-After) plus ``FailoverPolicy.idle_gap_s`` (the
station's own longest wait between retries) follows a quiet spell, not a run, and starts a new run; so
does any other answer. While the transport is failed over, the gaps are the station's own (one probe
every ``failback_after_s``) and do not end the run.
While the preferred transport is out, one call every ``failback_after_s`` goes to it as a
probe; the first answer it gives (anything but "unanswered": a success, a refusal) makes it the one in use
again. The probe's failure costs that one call a retry, which the core schedules as any other.

What belongs to one transport stays with it: an upload's resume reference (``mqtt:<file_id>`` is the
MQTT transfer's, anything else a tus upload URL) is offered only to the transport that made it; the other
starts a new upload and reports its own reference, and the old one is abandoned on its own transport (best
effort, in the background: that transport may be the one that is down), so that it does not count against
the station's quota at the central until it expires. Registration goes over whichever transport is in use:
the central resolves an ``mqtt:`` upload in its MQTT ingest store and any other in its tus store, whichever
API path the registration came by. ``abandon`` goes to the transport that holds the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from edge.uplink.transport import (
    LedgerAnswer,
    LedgerPage,
    LedgerSegment,
    Link,
    NotDone,
    Parcel,
    RegisterOutcome,
    RetryLater,
    Transport,
    UploadOutcome,
)

__all__ = ["FailoverLink", "FailoverPolicy", "FailoverTransport", "resume_owner"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MQTT_RESUME_PREFIX = "mqtt:"
# How long a closing link lets abandons of the other transport's uploads finish.
_ABANDON_GRACE_S = 5.0


def resume_owner(reference: str) -> str:
    """The name of the transport an upload reference belongs to."""
    return "mqtt" if reference.startswith(_MQTT_RESUME_PREFIX) else "tus"


@dataclass(frozen=True)
class FailoverPolicy:
    after_failures: int
    after_s: float
    failback_s: float
    busy_s: float = 600.0
    """How long a continuous run of nothing but busy answers counts as answers (``failover_after_busy_s``)."""
    idle_gap_s: float = 360.0
    """A busy answer later than this after the wait the previous busy answer asked for starts a new run
    (the station was idle in between, not retrying): the station's longest wait of its own between two
    attempts (``backoff_max_s`` + ``breaker_open_s``)."""


@dataclass
class _Health:
    failures: int = 0
    first_failure_at: float | None = None
    out_since: float | None = None
    """When it was failed over from (or last probed): None while it is in use or available."""
    busy_since: float | None = None
    """When the current run of nothing but busy answers began (None: the last answer was not busy)."""
    busy_run_lapses_at: float | None = None
    """A busy answer after this instant starts a new run: the last busy answer's time, plus the wait it
    asked for, plus ``FailoverPolicy.idle_gap_s``."""


class FailoverTransport:
    """Transports in order of preference; see the module docstring."""

    def __init__(
        self,
        transports: Sequence[Transport],
        policy: FailoverPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(transports) < 2:
            raise ValueError("failover needs at least two transports")
        self.transports = list(transports)
        self.policy = policy
        self.clock = clock
        self.name = ">".join(t.name for t in self.transports)

    def __repr__(self) -> str:
        return f"FailoverTransport({', '.join(repr(t) for t in self.transports)})"

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[FailoverLink]:
        async with contextlib.AsyncExitStack() as stack:
            links = [await stack.enter_async_context(t.connect()) for t in self.transports]
            link = FailoverLink([t.name for t in self.transports], links, self.policy, self.clock)
            stack.push_async_callback(link.close)  # before the links close
            yield link


class FailoverLink:
    """The links of every transport; each call goes to the one in use (see the module docstring)."""

    def __init__(
        self, names: Sequence[str], links: Sequence[Link], policy: FailoverPolicy, clock: Callable[[], float]
    ) -> None:
        self.names = list(names)
        self.links = list(links)
        self.policy = policy
        self.clock = clock
        self.health = [_Health() for _ in self.links]
        self.abandoning: set[asyncio.Task[None]] = set()
        """Abandons of another transport's upload in progress (see :meth:`_abandon_elsewhere`)."""

    def __repr__(self) -> str:
        return f"FailoverLink({', '.join(self.names)}; in use: {self.names[self.in_use]})"

    @property
    def checks_content_on_send(self) -> bool:
        """Only when every transport does: an upload may go over any of them."""
        return all(link.checks_content_on_send for link in self.links)

    @property
    def in_use(self) -> int:
        """The index of the transport calls go to now (probes aside)."""
        return next((i for i, h in enumerate(self.health) if h.out_since is None), 0)

    def _pick(self) -> int:
        now = self.clock()
        for index, health in enumerate(self.health):
            if health.out_since is None:
                return index
            if now - health.out_since >= self.policy.failback_s:
                health.out_since = now  # one probe per interval, however many calls come at once
                log.info("uplink: trying %s again (failed over from it)", self.names[index])
                return index
        return 0  # every one is out: the preferred one

    def _answered(self, index: int) -> None:
        health = self.health[index]
        if health.out_since is not None:
            log.warning("uplink: %s answers again; it is in use again", self.names[index])
        self.health[index] = _Health()

    def _outcome(self, index: int, outcome: object) -> None:
        """Count what a call of transport ``index`` ended with: silence, busy, or any other answer."""
        if isinstance(outcome, RetryLater) and not outcome.answered:
            self._unanswered(index, str(outcome))
        elif isinstance(outcome, RetryLater):
            self._busy(index, outcome)
        else:
            self._answered(index)

    def _busy(self, index: int, busy: RetryLater) -> None:
        """A busy answer: an answer, unless busy is all the transport has said for ``policy.busy_s``."""
        now = self.clock()
        previous = self.health[index]
        since = previous.busy_since
        lapses_at = previous.busy_run_lapses_at
        if (since is not None and previous.out_since is None and lapses_at is not None
                and now > lapses_at):
            since = None  # a quiet spell since the last busy answer: not one continuous run
        if since is None:
            since = now
        lapses_at = now + max(0.0, busy.retry_after_s or 0.0) + self.policy.idle_gap_s
        if now - since < self.policy.busy_s:
            self._answered(index)
            self.health[index].busy_since = since
            self.health[index].busy_run_lapses_at = lapses_at
            return
        health = self.health[index]
        health.busy_since = since
        health.busy_run_lapses_at = lapses_at
        reason = str(busy)
        if health.first_failure_at is None:
            health.first_failure_at = since  # the whole busy run was silence in effect
        self._unanswered(index, f"nothing but busy answers for {now - since:.0f} s: {reason}")

    def _unanswered(self, index: int, reason: str) -> None:
        health = self.health[index]
        now = self.clock()
        health.failures += 1
        if health.first_failure_at is None:
            health.first_failure_at = now
        if health.out_since is not None:
            health.out_since = now  # a failed probe: the next one after another interval
            return
        last = index == len(self.links) - 1
        if (not last and health.failures >= self.policy.after_failures
                and now - health.first_failure_at >= self.policy.after_s):
            health.out_since = now
            log.warning(
                "uplink: %s unanswered %d times over %.0f s (%s): failing over to %s", self.names[index],
                health.failures, now - health.first_failure_at, reason[:200], self.names[self.in_use])

    async def _witnessing(self, call: Callable[[Link], Awaitable[_T]]) -> _T:
        index = self._pick()
        try:
            result = await call(self.links[index])
        except NotDone as exc:
            self._outcome(index, exc.outcome)
            raise
        self._answered(index)
        return result

    async def upload(self, parcel: Parcel, on_resume: Callable[[str], None]) -> UploadOutcome:
        index = self._pick()
        if parcel.resume is not None and resume_owner(parcel.resume) != self.names[index]:
            self._abandon_elsewhere(parcel.resume)
            parcel = replace(parcel, resume=None)  # the other transport's upload: start one on this
        outcome = await self.links[index].upload(parcel, on_resume)
        self._outcome(index, outcome)
        return outcome

    async def register(
        self, upload: str, manifest: Mapping[str, Any], segment: LedgerSegment | None
    ) -> RegisterOutcome:
        index = self._pick()
        outcome = await self.links[index].register(upload, manifest, segment)
        self._outcome(index, outcome)
        return outcome

    def _abandon_elsewhere(self, upload: str) -> None:
        """The upload ``upload`` of another transport will not be resumed (a new one starts on the
        transport in use): abandon it on its own transport, in the background (best effort: that transport
        may be down, and the upload must not wait for it)."""
        owner = resume_owner(upload)
        if owner not in self.names:
            return
        link = self.links[self.names.index(owner)]
        log.info("uplink: abandoning %s upload %s (a new upload starts on %s)", owner, upload[:200],
                 self.names[self.in_use])

        async def abandon() -> None:
            with contextlib.suppress(Exception):
                await link.abandon(upload)

        task = asyncio.create_task(abandon(), name=f"uplink-abandon-{owner}")
        self.abandoning.add(task)
        task.add_done_callback(self.abandoning.discard)

    async def close(self) -> None:
        """Let the abandons in progress finish, at most ``_ABANDON_GRACE_S`` (a stopping uplink does not
        wait for a transport that is down; the central's expiry then frees what was abandoned)."""
        pending = list(self.abandoning)
        if not pending:
            return
        _done, late = await asyncio.wait(pending, timeout=_ABANDON_GRACE_S)
        for task in late:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def abandon(self, upload: str) -> None:
        owner = resume_owner(upload)
        index = self.names.index(owner) if owner in self.names else self._pick()
        await self.links[index].abandon(upload)

    async def ledger_state(self) -> LedgerAnswer:
        return await self._witnessing(lambda link: link.ledger_state())

    async def push_ledger(self, segment: LedgerSegment) -> LedgerAnswer:
        return await self._witnessing(lambda link: link.push_ledger(segment))

    async def ledger_page(self, after: int, limit: int) -> LedgerPage:
        return await self._witnessing(lambda link: link.ledger_page(after, limit))

    async def tree_head(self) -> dict[str, Any]:
        return await self._witnessing(lambda link: link.tree_head())

    async def consistency(self, first: int, second: int) -> list[str] | None:
        return await self._witnessing(lambda link: link.consistency(first, second))

    async def officers(self, have: int) -> dict[str, Any]:
        return await self._witnessing(lambda link: link.officers(have))

    async def fleet_report(self, report: Mapping[str, Any]) -> dict[str, Any]:
        return await self._witnessing(lambda link: link.fleet_report(report))
