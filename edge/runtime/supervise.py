"""Supervised long-running asyncio tasks (style rule 7): restart with backoff, budget, liveness, watchdog.

Every long-running unit of the service (USB hot-plug watcher, bay controller, uplink, ...) runs as a
named task made by a factory. When one crashes, returns, or falls silent beyond its liveness timeout,
the supervisor cancels what is left of it and starts a fresh one after an exponential, jittered
backoff. Restarts are budgeted per task (``restart_budget`` within ``budget_window_s``): a critical task
that keeps failing makes :meth:`Supervisor.run` raise :class:`SupervisorGaveUp`, the service exits
non-zero, and systemd, the outermost supervisor, restarts the whole process from a clean state.

The systemd watchdog is pinged from the supervisor loop, and only while every task is live, so a task
the supervisor cannot bring back (one that ignores cancellation) or a blocked event loop gets the
process killed by systemd (``WatchdogSec=``) instead of leaving a station that looks up but offloads
nothing.

Typical use::

    supervisor = Supervisor(notifier=SystemdNotifier())
    supervisor.add(TaskSpec("hotplug", watch_hotplug, liveness_timeout_s=30))
    await supervisor.run(stop_event)          # raises SupervisorGaveUp when the budget is spent

A task marks progress with ``supervisor.alive("hotplug")``, a :class:`Liveness` handle from
``supervisor.liveness("hotplug")``, or :func:`current_liveness` from inside the task. Marking is a
plain attribute write, safe from worker threads (a copy loop in an executor, for instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import random
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypedDict

from edge.observe.sink import NULL_SINK, StatusSink, TaskChanged
from edge.runtime.sdnotify import SystemdNotifier

__all__ = [
    "Clock",
    "Liveness",
    "Supervisor",
    "SupervisorError",
    "SupervisorGaveUp",
    "TaskHealth",
    "TaskSpec",
    "TaskState",
    "Wait",
    "current_liveness",
]

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Awaitable[None]]

_MAX_SIGNATURES = 32


class SupervisorError(Exception):
    """Base of the supervisor's errors."""


class SupervisorGaveUp(SupervisorError):
    """A critical task could not be kept running; the service should exit non-zero and be restarted."""

    def __init__(self, task_name: str, reason: str) -> None:
        super().__init__(f"supervisor gave up on task {task_name!r}: {reason}")
        self.task_name = task_name
        self.reason = reason


class TaskState(StrEnum):
    PENDING = "pending"
    """Added, not started yet."""
    RUNNING = "running"
    BACKOFF = "backoff"
    """Failed; waiting out the backoff before the next start."""
    CANCELLING = "cancelling"
    """Silent beyond its liveness timeout; cancelled, waiting for it to finish."""
    FAILED = "failed"
    """A non-critical task whose restart budget is spent; left stopped, the service runs on degraded."""
    STOPPED = "stopped"
    """The supervisor has shut down."""


@dataclass(frozen=True)
class TaskSpec:
    """What to supervise.

    ``factory`` is called for every (re)start and must return a fresh awaitable that runs until
    cancelled. ``liveness_timeout_s``: the task must mark itself alive at least this often, or it is
    treated as hung. ``critical``: when its restart budget is spent the whole service gives up; a
    non-critical task is only marked failed. ``stop_timeout_s``: how long a cancelled task may take to
    clean up (closing a file mid-offload, say) before it is abandoned; a task still running that long
    after being cancelled for silence makes the supervisor give up, critical or not, since it can be
    neither restarted nor contained.
    """

    name: str
    factory: TaskFactory = field(repr=False)
    liveness_timeout_s: float | None = None
    critical: bool = True
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.isprintable() or self.name != self.name.strip():
            raise ValueError(
                f"task name must be non-empty printable text without edge spaces, got {self.name!r}"
            )
        if self.liveness_timeout_s is not None and not self.liveness_timeout_s > 0:
            raise ValueError(
                f"task {self.name}: liveness_timeout_s must be > 0, got {self.liveness_timeout_s!r}"
            )
        if not self.stop_timeout_s > 0:
            raise ValueError(f"task {self.name}: stop_timeout_s must be > 0, got {self.stop_timeout_s!r}")


Clock = Callable[[], float]
"""Monotonic seconds: ``time.monotonic``, or a test's fake clock."""
Wait = Callable[[asyncio.Event, float], Awaitable[None]]
"""Return once the event is set or ``timeout_s`` of the clock's time has passed (:func:`wait_event`)."""


class TaskHealth(TypedDict):
    """One task's entry in :meth:`Supervisor.health` (JSON-serialisable)."""

    state: str
    critical: bool
    restarts: int
    """Restarts since the supervisor started."""
    recent_restarts: int
    """Restarts within the current budget window."""
    last_alive_age_s: float | None
    uptime_s: float | None
    """Time since the current incarnation started, when running."""
    last_error: str | None


@dataclass(eq=False)
class _Supervised:
    spec: TaskSpec
    clock: Clock = field(default=time.monotonic, repr=False)
    state: TaskState = TaskState.PENDING
    task: asyncio.Task[None] | None = None
    restarts: int = 0
    restart_times: deque[float] = field(default_factory=deque)
    # Written from any thread by Liveness.beat(); a float store is atomic under the GIL.
    last_alive: float | None = None
    started_at: float | None = None
    restart_at: float | None = None
    cancel_deadline: float | None = None
    silent_for_s: float = 0.0
    last_error: str | None = None
    # Failure kinds already logged with a traceback; repeats get one line each.
    seen_signatures: set[tuple[str, ...]] = field(default_factory=set)


class Liveness:
    """A task's handle for marking "last useful event"; stays valid across restarts of the task."""

    __slots__ = ("_record",)

    def __init__(self, record: _Supervised) -> None:
        self._record = record

    @property
    def name(self) -> str:
        return self._record.spec.name

    def beat(self) -> None:
        """Record that the task just did something useful. Thread-safe, cheap."""
        self._record.last_alive = self._record.clock()

    def __repr__(self) -> str:
        return f"Liveness({self.name!r})"


_current_liveness: contextvars.ContextVar[Liveness] = contextvars.ContextVar("edge_supervised_liveness")


def current_liveness() -> Liveness:
    """The liveness handle of the supervised task this code runs in (and tasks it spawned)."""
    try:
        return _current_liveness.get()
    except LookupError:
        raise SupervisorError("current_liveness() called outside a supervised task") from None


def _error_summary(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _crash_signature(exc: BaseException) -> tuple[str, ...]:
    # Type and raising line, not the message: messages carry counters and ids that differ per crash.
    frames = traceback.extract_tb(exc.__traceback__)
    where = (frames[-1].filename, str(frames[-1].lineno)) if frames else ("", "")
    return (type(exc).__module__, type(exc).__qualname__, *where)


def _task_stack(task: asyncio.Task[None], limit: int = 30) -> str:
    """Where a suspended task waits: its chain of awaits, outermost first.

    Task.print_stack() shows only the outermost frame of a suspended coroutine, which for every
    supervised task is the supervisor's own wrapper; the await chain shows the device call it hangs in.
    """
    lines: list[str] = []
    awaitable: object = task.get_coro()
    while awaitable is not None and len(lines) < limit:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return "\n".join(lines) if lines else "  (no stack: the task is not suspended in a coroutine)"


class Supervisor:
    """Runs named task factories, restarting failed ones, and pings the systemd watchdog.

    ``notifier``: None sends nothing; pass :class:`SystemdNotifier` to report readiness, status,
    stopping and watchdog pings. ``backoff_*``: delay before restart *n* within the budget window is
    ``min(backoff_max_s, backoff_initial_s * 2**(n-1))`` scaled down by up to ``backoff_jitter``
    (0.5: the delay falls in [d/2, d]) using ``rng``, so bays failing together do not restart in step.
    ``restart_budget`` restarts per task within ``budget_window_s``; the next failure gives up.
    ``notify_ready``: send ``READY=1`` once every task has been started.
    ``clock`` and ``wait``: where the supervisor reads the time and how it waits for its next deadline
    (monotonic time and a real timed wait; tests pass a fake clock that moves only when told, so that
    liveness, backoff, budget windows and watchdog pings are checked without racing real timers).
    """

    def __init__(
        self,
        *,
        notifier: SystemdNotifier | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        backoff_jitter: float = 0.5,
        restart_budget: int = 5,
        budget_window_s: float = 60.0,
        rng: random.Random | None = None,
        notify_ready: bool = True,
        clock: Clock = time.monotonic,
        wait: Wait | None = None,
        status: StatusSink = NULL_SINK,
    ) -> None:
        if not backoff_initial_s >= 0:
            raise ValueError(f"backoff_initial_s must be >= 0, got {backoff_initial_s!r}")
        if not backoff_max_s >= backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({backoff_max_s!r}) must be >= backoff_initial_s ({backoff_initial_s!r})"
            )
        if not 0 <= backoff_jitter <= 1:
            raise ValueError(f"backoff_jitter must be within [0, 1], got {backoff_jitter!r}")
        if restart_budget < 0:
            raise ValueError(f"restart_budget must be >= 0, got {restart_budget!r}")
        if not budget_window_s > 0:
            raise ValueError(f"budget_window_s must be > 0, got {budget_window_s!r}")
        self._notifier = notifier
        self._status = status  # told of every task state change (the station's status board)
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._backoff_jitter = backoff_jitter
        self._restart_budget = restart_budget
        self._budget_window_s = budget_window_s
        self._rng = rng if rng is not None else random.Random()
        self._notify_ready = notify_ready
        self._clock = clock
        self._wait = wait if wait is not None else wait_event
        self._records: dict[str, _Supervised] = {}
        self._wakeup: asyncio.Event | None = None
        self._started = False
        self._ready_sent = False
        self._gave_up: SupervisorGaveUp | None = None
        self._next_ping: float | None = None
        self._ping_withheld = False
        self._last_status: str | None = None

    def __repr__(self) -> str:
        return f"Supervisor(tasks={list(self._records)!r})"

    # -- registration and liveness -------------------------------------------------------------------

    def add(self, spec: TaskSpec) -> None:
        """Register a task. Before :meth:`run` it starts with the others; during it, at once.

        Call from the event loop's thread (unlike :meth:`alive`).
        """
        if spec.name in self._records:
            raise ValueError(f"a task named {spec.name!r} is already supervised")
        self._records[spec.name] = _Supervised(spec, clock=self._clock)
        if self._wakeup is not None:
            self._wakeup.set()

    def liveness(self, name: str) -> Liveness:
        return Liveness(self._record(name))

    def alive(self, name: str) -> None:
        """Mark task ``name`` as having just done something useful. Thread-safe."""
        self._record(name).last_alive = self._clock()

    def _record(self, name: str) -> _Supervised:
        try:
            return self._records[name]
        except KeyError:
            raise KeyError(f"no supervised task named {name!r}; known: {sorted(self._records)}") from None

    def health(self) -> dict[str, TaskHealth]:
        now = self._clock()
        report: dict[str, TaskHealth] = {}
        for name, rec in self._records.items():
            self._prune(rec, now)
            report[name] = TaskHealth(
                state=rec.state.value,
                critical=rec.spec.critical,
                restarts=rec.restarts,
                recent_restarts=len(rec.restart_times),
                last_alive_age_s=None if rec.last_alive is None else max(0.0, now - rec.last_alive),
                uptime_s=(
                    max(0.0, now - rec.started_at)
                    if rec.started_at is not None and rec.state is TaskState.RUNNING
                    else None
                ),
                last_error=rec.last_error,
            )
        return report

    # -- the loop -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run every task until ``stop`` is set; then cancel them in reverse start order.

        Raises :class:`SupervisorGaveUp` (after the same clean shutdown) when a critical task spends
        its restart budget or will not finish after being cancelled. A supervisor runs once.
        """
        if self._started:
            raise SupervisorError("a Supervisor runs once; make a new one")
        self._started = True
        wakeup = self._wakeup = asyncio.Event()
        stop_watcher = asyncio.create_task(self._forward(stop, wakeup), name="supervisor:stop-watcher")
        try:
            while True:
                wakeup.clear()
                if stop.is_set():
                    break
                now = self._clock()
                self._reap(now)
                if self._gave_up is None:
                    self._start_due(now)
                    self._check_liveness(now)
                if self._gave_up is not None:
                    break
                self._announce_ready()
                self._ping_watchdog(now)
                self._publish_status()
                delay_s = self._next_deadline(now) - self._clock()
                if delay_s > 0:
                    await self._wait(wakeup, delay_s)
        finally:
            stop_watcher.cancel()
            await self._shutdown()
            await asyncio.wait({stop_watcher})
        if self._gave_up is not None:
            raise self._gave_up

    @staticmethod
    async def _forward(stop: asyncio.Event, wakeup: asyncio.Event) -> None:
        await stop.wait()
        wakeup.set()

    def _start_due(self, now: float) -> None:
        for rec in self._records.values():
            if rec.state is TaskState.PENDING or (
                rec.state is TaskState.BACKOFF and rec.restart_at is not None and rec.restart_at <= now
            ):
                self._start(rec, now)

    def _set_state(self, rec: _Supervised, state: TaskState) -> None:
        rec.state = state
        self._status.publish(TaskChanged(rec.spec.name, state.value, rec.restarts, rec.last_error))

    def _start(self, rec: _Supervised, now: float) -> None:
        self._set_state(rec, TaskState.RUNNING)
        rec.started_at = now
        rec.last_alive = now
        rec.restart_at = None
        rec.cancel_deadline = None
        task = asyncio.create_task(self._invoke(rec), name=f"supervised:{rec.spec.name}")
        rec.task = task
        wakeup = self._wakeup
        if wakeup is not None:
            task.add_done_callback(lambda _task: wakeup.set())
        log.debug("task %s started", rec.spec.name)

    @staticmethod
    async def _invoke(rec: _Supervised) -> None:
        _current_liveness.set(Liveness(rec))
        await rec.spec.factory()

    def _reap(self, now: float) -> None:
        for rec in self._records.values():
            task = rec.task
            if task is None or not task.done():
                continue
            rec.task = None
            name = rec.spec.name
            if rec.state is TaskState.CANCELLING:
                exc = None if task.cancelled() else task.exception()
                reason = (
                    f"no sign of life for {rec.silent_for_s:.1f}s "
                    f"(liveness timeout {rec.spec.liveness_timeout_s}s)"
                )
                if exc is not None:
                    log.warning("task %s raised while being cancelled: %s", name, _error_summary(exc))
                self._after_failure(rec, now, reason, exc, signature=("hang",))
            elif task.cancelled():
                self._after_failure(
                    rec, now, "cancelled by someone other than the supervisor", None, signature=("cancelled",)
                )
            elif (exc := task.exception()) is not None:
                self._after_failure(rec, now, _error_summary(exc), exc, signature=_crash_signature(exc))
            else:
                self._after_failure(
                    rec,
                    now,
                    "returned, but supervised tasks must run until cancelled",
                    None,
                    signature=("returned",),
                )

    def _after_failure(
        self,
        rec: _Supervised,
        now: float,
        reason: str,
        exc: BaseException | None,
        *,
        signature: tuple[str, ...],
    ) -> None:
        name = rec.spec.name
        rec.last_error = reason
        repeated = signature in rec.seen_signatures
        if len(rec.seen_signatures) < _MAX_SIGNATURES:
            rec.seen_signatures.add(signature)
        self._prune(rec, now)
        budget_left = len(rec.restart_times) < self._restart_budget
        if budget_left:
            rec.restart_times.append(now)
            rec.restarts += 1
            attempt = len(rec.restart_times)
            delay_s = self._backoff_s(attempt)
            rec.restart_at = now + delay_s
            self._set_state(rec, TaskState.BACKOFF)
            window = f"{self._budget_window_s:g}s"
            outcome = f"restart {attempt}/{self._restart_budget} within {window} in {delay_s:.2f}s"
        else:
            outcome = f"restart budget spent ({self._restart_budget} within {self._budget_window_s:g}s)"
        if repeated:
            log.error("task %s failed again: %s; %s", name, reason, outcome)
        else:
            log.error("task %s failed: %s; %s", name, reason, outcome, exc_info=exc)
        if budget_left:
            return
        rec.restart_at = None
        self._set_state(rec, TaskState.FAILED)
        if rec.spec.critical:
            gave_up = SupervisorGaveUp(name, f"{reason}; {outcome}")
            gave_up.__cause__ = exc
            self._gave_up = gave_up
        else:
            log.error("non-critical task %s stays stopped; the service runs degraded", name)

    def _prune(self, rec: _Supervised, now: float) -> None:
        horizon = now - self._budget_window_s
        while rec.restart_times and rec.restart_times[0] <= horizon:
            rec.restart_times.popleft()

    def _backoff_s(self, attempt: int) -> float:
        base_s = min(self._backoff_max_s, math.ldexp(self._backoff_initial_s, min(attempt - 1, 62)))
        return base_s * (1.0 - self._backoff_jitter * self._rng.random())

    def _check_liveness(self, now: float) -> None:
        for rec in self._records.values():
            timeout_s = rec.spec.liveness_timeout_s
            task = rec.task
            if rec.state is TaskState.RUNNING and timeout_s is not None and task is not None:
                silent_s = now - (rec.last_alive if rec.last_alive is not None else now)
                if silent_s <= timeout_s:
                    continue
                self._set_state(rec, TaskState.CANCELLING)
                rec.silent_for_s = silent_s
                rec.cancel_deadline = now + rec.spec.stop_timeout_s
                if ("hang",) in rec.seen_signatures:
                    log.error("task %s hung again (silent %.1fs); cancelling it", rec.spec.name, silent_s)
                else:
                    log.error(
                        "task %s silent for %.1fs, liveness timeout %.1fs; cancelling it. It was at:\n%s",
                        rec.spec.name,
                        silent_s,
                        timeout_s,
                        _task_stack(task),
                    )
                task.cancel()
            elif (
                rec.state is TaskState.CANCELLING
                and rec.cancel_deadline is not None
                and now >= rec.cancel_deadline
                and task is not None
                and not task.done()
            ):
                reason = (
                    f"still running {rec.spec.stop_timeout_s:g}s after being cancelled for silence; "
                    "a task that ignores cancellation cannot be restarted"
                )
                log.error("task %s %s", rec.spec.name, reason)
                rec.last_error = reason
                self._gave_up = SupervisorGaveUp(rec.spec.name, reason)
                return

    def _not_live(self, now: float) -> list[str]:
        stale = []
        for rec in self._records.values():
            timeout_s = rec.spec.liveness_timeout_s
            if rec.state is TaskState.CANCELLING or (
                rec.state is TaskState.RUNNING
                and timeout_s is not None
                and rec.last_alive is not None
                and now - rec.last_alive > timeout_s
            ):
                stale.append(rec.spec.name)
        return stale

    def _announce_ready(self) -> None:
        if self._ready_sent:
            return
        self._ready_sent = True
        self._last_status = self._status_text()
        if self._notifier is not None and self._notify_ready:
            self._notifier.ready(self._last_status)
        log.info("supervisor started %d task(s): %s", len(self._records), ", ".join(self._records))

    def _ping_watchdog(self, now: float) -> None:
        period_s = self._notifier.watchdog_period_s if self._notifier is not None else None
        if period_s is None or self._notifier is None:
            return
        if self._next_ping is not None and now < self._next_ping:
            return
        stale = self._not_live(now)
        if stale:
            # Leave _next_ping due: the ping goes out as soon as the tasks are live again.
            if not self._ping_withheld:
                log.warning("withholding the systemd watchdog ping: not live: %s", ", ".join(stale))
                self._ping_withheld = True
            return
        if self._ping_withheld:
            log.info("all tasks live again; resuming systemd watchdog pings")
            self._ping_withheld = False
        self._notifier.watchdog()
        self._next_ping = now + period_s

    def _next_deadline(self, now: float) -> float:
        deadlines: list[float] = []
        for rec in self._records.values():
            if rec.state is TaskState.BACKOFF and rec.restart_at is not None:
                deadlines.append(rec.restart_at)
            elif rec.state is TaskState.RUNNING and rec.spec.liveness_timeout_s is not None:
                last_alive = rec.last_alive if rec.last_alive is not None else now
                # Just past the timeout, so the check sees "silent > timeout".
                deadlines.append(last_alive + rec.spec.liveness_timeout_s + 1e-3)
            elif rec.state is TaskState.CANCELLING and rec.cancel_deadline is not None:
                deadlines.append(rec.cancel_deadline)
        if self._next_ping is not None and not self._ping_withheld:
            deadlines.append(self._next_ping)
        # An idle supervisor still wakes now and then; cheap, and bounds the cost of any missed wakeup.
        return min(deadlines, default=now + 60.0)

    def _status_text(self) -> str:
        running = sum(rec.state is TaskState.RUNNING for rec in self._records.values())
        text = f"{running}/{len(self._records)} tasks running"
        others = [
            f"{rec.spec.name} {rec.state.value}"
            for rec in self._records.values()
            if rec.state is not TaskState.RUNNING
        ]
        return f"{text}; {', '.join(others)}" if others else text

    def _publish_status(self) -> None:
        text = self._status_text()
        if text == self._last_status:
            return
        self._last_status = text
        if self._notifier is not None:
            self._notifier.status(text)

    # -- shutdown -----------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self._notifier is not None:
            self._notifier.stopping("stopping supervised tasks")
        for rec in reversed(list(self._records.values())):
            task = rec.task
            name = rec.spec.name
            if task is not None and not task.done():
                task.cancel()
                # asyncio.wait, not wait_for: its timeout does not depend on our own cancellation state,
                # so shutdown still works when run() itself was cancelled.
                done, _pending = await asyncio.wait({task}, timeout=rec.spec.stop_timeout_s)
                if not done:
                    log.error(
                        "task %s did not stop within %.1fs; abandoning it", name, rec.spec.stop_timeout_s
                    )
                    continue
            if task is not None:
                rec.task = None
                if not task.cancelled() and (exc := task.exception()) is not None:
                    log.warning(
                        "task %s ended with %s while stopping", name, _error_summary(exc), exc_info=exc
                    )
            if rec.state is not TaskState.FAILED:
                self._set_state(rec, TaskState.STOPPED)
            log.debug("task %s stopped", name)


async def wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait for `event` at most `timeout_s`. Not asyncio.wait_for: on Python 3.11 a cancellation that
    races its timeout can surface as TimeoutError and be lost, leaving a task that ignores cancel()."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
