"""Supervisor: restart with backoff, budget, liveness, watchdog gating, shutdown order."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypedDict

import pytest

from edge.runtime.sdnotify import SystemdNotifier
from edge.runtime.supervise import (
    Supervisor,
    SupervisorError,
    SupervisorGaveUp,
    TaskSpec,
    TaskState,
    current_liveness,
)


class _Backoff(TypedDict):
    backoff_initial_s: float
    backoff_max_s: float


FAST = _Backoff(backoff_initial_s=0.001, backoff_max_s=0.002)
# Fake-clock step between supervisor passes in the tests that drive time.
STEP_S = 1 / 1024  # a power of two: fake time adds up exactly


async def _forever() -> None:
    await asyncio.Event().wait()


async def _wait(event: asyncio.Event, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        await event.wait()


class FakeClock:
    """Monotonic time that moves only when the test moves it, and the supervisor's wait on it.

    Give both to the supervisor (``clock=clock, wait=clock.wait``). ``advance(s)`` waits until the
    supervisor is waiting, moves time, wakes it, and returns once it has finished that pass and waits
    again: each call is exactly one supervisor pass at the new time, however loaded the machine is.
    ``pass_time(s)`` only moves time (a task that ran for a while), without a pass.
    """

    def __init__(self) -> None:
        self.now = 1024.0
        self._timer: asyncio.Future[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._waiting = asyncio.Event()  # set while the supervisor waits
        self._woke = asyncio.Event()  # set once it stopped waiting

    def __call__(self) -> float:
        return self.now

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        timer = self._timer = asyncio.get_running_loop().create_future()
        self._wakeup = event
        woken = asyncio.ensure_future(event.wait())
        self._woke.clear()
        self._waiting.set()
        try:
            await asyncio.wait({woken, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiting.clear()
            self._woke.set()
            self._timer = None
            woken.cancel()

    def pass_time(self, seconds: float) -> None:
        self.now += seconds

    async def advance(self, seconds: float) -> None:
        while True:
            await _wait(self._waiting)
            # Let callbacks already queued run first (a task that just ended sets the wakeup from its
            # done callback): what happened before the step belongs to the present time.
            for _ in range(3):
                await asyncio.sleep(0)
            if self._waiting.is_set() and (self._wakeup is None or not self._wakeup.is_set()):
                break
            # It is waking already (or woke): let that pass run and park again before time moves.
            await _wait(self._woke)
        timer = self._timer
        assert timer is not None
        self.now += seconds
        self._waiting.clear()
        timer.set_result(None)
        await _wait(self._waiting)

    async def advance_until(self, event: asyncio.Event, step_s: float, max_steps: int = 1000) -> None:
        """Advance in `step_s` steps until `event` is set (a restart after its backoff, say)."""
        for _ in range(max_steps):
            if event.is_set():
                return
            await self.advance(step_s)
            await asyncio.sleep(0)  # let a task the pass started run its first step
        raise AssertionError(f"not set after {max_steps} steps of {step_s} s")


@asynccontextmanager
async def running(supervisor: Supervisor) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[None]]]:
    """Run the supervisor in the background; stop it and surface its outcome on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop))
    try:
        yield stop, task
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


class Notifications:
    """The manager side of sd_notify: a real datagram socket, read without blocking."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def drain(self) -> list[str]:
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    async def next_matching(self, prefix: str, timeout_s: float = 5.0) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            while True:
                message = (await loop.sock_recv(self.sock, 4096)).decode()
                if message.startswith(prefix):
                    return message


@pytest.fixture
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Notifications, str]]:
    path = str(tmp_path_factory.mktemp("sd") / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        yield Notifications(sock), path


@pytest.fixture
def notifier_factory() -> Iterator[Callable[..., SystemdNotifier]]:
    made: list[SystemdNotifier] = []

    def make(path: str, watchdog_usec: int | None = None) -> SystemdNotifier:
        env = {"NOTIFY_SOCKET": path}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        notifier = SystemdNotifier(env=env)
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close()


# -- crashes and backoff --------------------------------------------------------------------------------


async def test_restarts_crashed_task_with_exponential_jittered_backoff() -> None:
    clock = FakeClock()
    starts: list[float] = []
    steady = asyncio.Event()

    async def flaky() -> None:
        starts.append(clock.now)
        if len(starts) <= 3:
            raise OSError(f"bay controller vanished (attempt {len(starts)})")
        steady.set()
        await _forever()

    supervisor = Supervisor(
        backoff_initial_s=0.04,
        backoff_max_s=1.0,
        backoff_jitter=0.5,
        rng=random.Random(7),
        clock=clock,
        wait=clock.wait,
    )
    supervisor.add(TaskSpec("dock", flaky))
    async with running(supervisor):
        await clock.advance_until(steady, STEP_S)
        health = supervisor.health()["dock"]
    expected_rng = random.Random(7)
    expected_s = [base * (1 - 0.5 * expected_rng.random()) for base in (0.04, 0.08, 0.16)]
    gaps_s = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps_s) == 3
    # Each restart comes at the first supervisor pass (every STEP_S of fake time) after its delay.
    for gap_s, want_s in zip(gaps_s, expected_s, strict=True):
        assert want_s - 1e-9 <= gap_s < want_s + STEP_S + 1e-9
    assert health["state"] == "running"
    assert health["restarts"] == 3
    assert health["recent_restarts"] == 3
    assert health["last_error"] == "OSError: bay controller vanished (attempt 3)"


async def test_backoff_is_capped() -> None:
    clock = FakeClock()
    starts: list[float] = []
    done = asyncio.Event()

    async def crashing() -> None:
        starts.append(clock.now)
        if len(starts) == 6:
            done.set()
            await _forever()
        raise RuntimeError("boom")

    supervisor = Supervisor(
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        backoff_jitter=0.0,
        restart_budget=10,
        clock=clock,
        wait=clock.wait,
    )
    supervisor.add(TaskSpec("t", crashing))
    async with running(supervisor):
        await clock.advance_until(done, STEP_S)
    gaps_s = [b - a for a, b in itertools.pairwise(starts)]
    assert 0.01 - 1e-9 <= gaps_s[0] < 0.01 + STEP_S + 1e-9
    assert all(0.02 - 1e-9 <= gap_s < 0.02 + STEP_S + 1e-9 for gap_s in gaps_s[1:])


async def test_crash_traceback_logged_once_then_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="edge.runtime.supervise")
    attempts = 0
    settled = asyncio.Event()

    async def crashing() -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise ValueError(f"bad frame #{attempts}")  # same place, different message
        if attempts == 4:
            raise KeyError("another kind")
        settled.set()
        await _forever()

    supervisor = Supervisor(**FAST, restart_budget=10)
    supervisor.add(TaskSpec("parser", crashing))
    async with running(supervisor):
        await _wait(settled)
    failures = [r for r in caplog.records if "parser" in r.getMessage() and "failed" in r.getMessage()]
    assert len(failures) == 4
    with_traceback = [r for r in failures if r.exc_info]
    assert [type(r.exc_info[1]).__name__ for r in with_traceback if r.exc_info] == ["ValueError", "KeyError"]
    assert "failed again" in failures[1].getMessage()
    assert "bad frame #2" in failures[1].getMessage()


async def test_factory_raising_synchronously_counts_as_crash() -> None:
    calls = 0
    up = asyncio.Event()

    def factory() -> Awaitable[None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("cannot open /dev/evidence-dock")
        up.set()
        return _forever()

    supervisor = Supervisor(**FAST)
    supervisor.add(TaskSpec("dock", factory))
    async with running(supervisor):
        await _wait(up)
    assert calls == 2


async def test_returning_task_is_restarted() -> None:
    runs = 0
    second = asyncio.Event()

    async def returns_once() -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            second.set()
            await _forever()

    supervisor = Supervisor(**FAST)
    supervisor.add(TaskSpec("uplink", returns_once))
    async with running(supervisor):
        await _wait(second)
        health = supervisor.health()["uplink"]
    assert health["restarts"] == 1
    assert health["last_error"] is not None and "returned" in health["last_error"]


# -- restart budget -------------------------------------------------------------------------------------


async def test_budget_exhaustion_gives_up_and_stops_everything() -> None:
    attempts = 0
    neighbour_stopped = asyncio.Event()

    async def always_crashes() -> None:
        nonlocal attempts
        attempts += 1
        raise PermissionError("store is read-only")

    async def neighbour() -> None:
        try:
            await _forever()
        finally:
            neighbour_stopped.set()

    supervisor = Supervisor(**FAST, restart_budget=3, budget_window_s=60.0)
    supervisor.add(TaskSpec("neighbour", neighbour))
    supervisor.add(TaskSpec("store", always_crashes))
    with pytest.raises(SupervisorGaveUp) as caught:
        async with asyncio.timeout(5):
            await supervisor.run(asyncio.Event())
    assert attempts == 4  # the first run and 3 restarts
    assert caught.value.task_name == "store"
    assert "PermissionError: store is read-only" in caught.value.reason
    assert "restart budget spent" in caught.value.reason
    assert isinstance(caught.value.__cause__, PermissionError)
    assert isinstance(caught.value, SupervisorError)
    assert neighbour_stopped.is_set()
    health = supervisor.health()
    assert health["store"]["state"] == "failed"
    assert health["neighbour"]["state"] == "stopped"


async def test_zero_budget_gives_up_on_first_crash() -> None:
    async def crashes() -> None:
        raise RuntimeError("x")

    supervisor = Supervisor(restart_budget=0)
    supervisor.add(TaskSpec("t", crashes))
    with pytest.raises(SupervisorGaveUp):
        async with asyncio.timeout(5):
            await supervisor.run(asyncio.Event())


async def test_budget_window_forgets_old_restarts() -> None:
    attempts = 0
    third = asyncio.Event()

    async def crashes_after_a_while() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 3:
            third.set()
            await _forever()
        if attempts == 2:
            # Runs longer than the budget window before failing again: the first restart has aged out.
            clock.pass_time(0.15)
        raise RuntimeError(f"failure {attempts}")

    clock = FakeClock()
    supervisor = Supervisor(**FAST, restart_budget=1, budget_window_s=0.1, clock=clock, wait=clock.wait)
    supervisor.add(TaskSpec("t", crashes_after_a_while))
    async with running(supervisor):
        await clock.advance_until(third, STEP_S)
        health = supervisor.health()["t"]
    assert health["restarts"] == 2
    assert health["recent_restarts"] <= 1


async def test_non_critical_task_fails_alone(
    manager: tuple[Notifications, str], notifier_factory: Callable[..., SystemdNotifier]
) -> None:
    notifications, path = manager
    gave_up = asyncio.Event()
    attempts = 0

    async def optional() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 3:
            gave_up.set()
        raise RuntimeError("lamp board unplugged")

    supervisor = Supervisor(notifier=notifier_factory(path, 100_000), **FAST, restart_budget=2)
    supervisor.add(TaskSpec("core", _forever))
    supervisor.add(TaskSpec("lamp", optional, critical=False))
    async with running(supervisor):
        await _wait(gave_up)
        await notifications.next_matching("STATUS=1/2 tasks running; lamp failed")
        notifications.drain()
        # Still alive and still feeding the watchdog.
        await notifications.next_matching("WATCHDOG=1")
        health = supervisor.health()
    assert attempts == 3
    assert health["lamp"]["state"] == "failed"
    assert health["core"]["state"] == "running"


# -- liveness -------------------------------------------------------------------------------------------


async def test_silent_task_is_cancelled_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="edge.runtime.supervise")
    incarnations = 0
    first_cancelled = asyncio.Event()
    second_started = asyncio.Event()

    async def hangs_first_time() -> None:
        nonlocal incarnations
        incarnations += 1
        if incarnations == 2:
            second_started.set()
            await _forever()
        liveness = current_liveness()
        for _ in range(3):
            liveness.beat()
            await asyncio.sleep(0)
        try:
            await asyncio.Event().wait()  # stuck on a device that never answers
        except asyncio.CancelledError:
            first_cancelled.set()
            raise

    supervisor = Supervisor(**FAST)
    supervisor.add(TaskSpec("usb", hangs_first_time, liveness_timeout_s=0.1))
    async with running(supervisor):
        await _wait(second_started)
        health = supervisor.health()["usb"]
    assert first_cancelled.is_set()
    assert health["restarts"] == 1
    assert health["last_error"] is not None and "no sign of life" in health["last_error"]
    hang_logs = [r.getMessage() for r in caplog.records if "silent for" in r.getMessage()]
    assert len(hang_logs) == 1
    assert "hangs_first_time" in hang_logs[0]  # where it was stuck


async def test_beating_task_is_left_alone() -> None:
    clock = FakeClock()
    supervisor = Supervisor(**FAST, clock=clock, wait=clock.wait)
    supervisor.add(TaskSpec("busy", _forever, liveness_timeout_s=0.1))
    handle = supervisor.liveness("busy")
    assert handle.name == "busy"
    async with running(supervisor):
        # 0.3 s of beats every 20 ms (three liveness timeouts), a supervisor pass after each one.
        for beat in range(15):
            if beat % 2:
                handle.beat()
            else:
                supervisor.alive("busy")
            await clock.advance(0.02)
        health = supervisor.health()["busy"]
        assert health["restarts"] == 0 and health["state"] == "running"
        assert health["last_alive_age_s"] == pytest.approx(0.02)
        # Control: the same task, silent for longer than its timeout, is cancelled at the next pass.
        await clock.advance(0.09)
        assert supervisor.health()["busy"]["state"] == "cancelling"


async def test_beats_from_a_worker_thread_count() -> None:
    clock = FakeClock()
    supervisor = Supervisor(**FAST, clock=clock, wait=clock.wait)
    supervisor.add(TaskSpec("copy", _forever, liveness_timeout_s=0.08))
    liveness = supervisor.liveness("copy")
    async with running(supervisor):
        for _ in range(10):
            await asyncio.to_thread(liveness.beat)  # a copy loop in an executor marks progress
            await clock.advance(0.05)
        assert supervisor.health()["copy"]["restarts"] == 0
        assert supervisor.health()["copy"]["state"] == "running"
        await clock.advance(0.05)  # control: 0.1 s without a beat is too long
        assert supervisor.health()["copy"]["state"] == "cancelling"


async def test_task_ignoring_cancellation_makes_supervisor_give_up() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    supervisor = Supervisor(**FAST)
    supervisor.add(TaskSpec("stubborn", stubborn, liveness_timeout_s=0.05, stop_timeout_s=0.1))
    try:
        with pytest.raises(SupervisorGaveUp, match="ignores cancellation"):
            async with asyncio.timeout(5):
                await supervisor.run(asyncio.Event())
    finally:
        release.set()
        leftovers = [t for t in asyncio.all_tasks() if t.get_name() == "supervised:stubborn"]
        await asyncio.wait(leftovers)


# -- watchdog -------------------------------------------------------------------------------------------


async def test_ready_status_watchdog_and_stopping(
    manager: tuple[Notifications, str], notifier_factory: Callable[..., SystemdNotifier]
) -> None:
    notifications, path = manager
    supervisor = Supervisor(notifier=notifier_factory(path, 60_000))
    supervisor.add(TaskSpec("a", _forever))
    supervisor.add(TaskSpec("b", _forever))
    async with running(supervisor):
        assert await notifications.next_matching("READY=1") == "READY=1\nSTATUS=2/2 tasks running"
        await notifications.next_matching("WATCHDOG=1")
        await notifications.next_matching("WATCHDOG=1")
    assert "STOPPING=1\nSTATUS=stopping supervised tasks" in notifications.drain()


async def test_watchdog_withheld_while_a_task_is_not_live(
    manager: tuple[Notifications, str], notifier_factory: Callable[..., SystemdNotifier]
) -> None:
    notifications, path = manager
    cancel_seen = asyncio.Event()
    release_cleanup = asyncio.Event()
    restarted = asyncio.Event()
    incarnations = 0

    async def hangs_with_slow_cleanup() -> None:
        nonlocal incarnations
        incarnations += 1
        if incarnations > 1:
            restarted.set()
            await _forever()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancel_seen.set()
            await release_cleanup.wait()  # e.g. closing a half-written file on a slow disk
            raise

    clock = FakeClock()
    supervisor = Supervisor(
        notifier=notifier_factory(path, 40_000), **FAST, clock=clock, wait=clock.wait
    )  # ping every 20 ms
    supervisor.add(TaskSpec("core", _forever))
    supervisor.add(TaskSpec("bay", hangs_with_slow_cleanup, liveness_timeout_s=0.1, stop_timeout_s=5.0))
    async with running(supervisor):
        await notifications.next_matching("WATCHDOG=1")
        await clock.advance_until(cancel_seen, 0.02)
        notifications.drain()  # everything sent before the hang was noticed
        for _ in range(7):  # seven ping periods, a supervisor pass at each
            await clock.advance(0.02)
        withheld = notifications.drain()
        assert "WATCHDOG=1" not in withheld
        assert supervisor.health()["bay"]["state"] == "cancelling"
        release_cleanup.set()
        await clock.advance_until(restarted, STEP_S)
        # Control: with every task live again, the next pass pings.
        await clock.advance(0.02)
        assert "WATCHDOG=1" in notifications.drain()
    assert supervisor.health()["bay"]["restarts"] == 1


async def test_no_watchdog_pings_without_watchdog_usec(
    manager: tuple[Notifications, str], notifier_factory: Callable[..., SystemdNotifier]
) -> None:
    notifications, path = manager
    started = asyncio.Event()

    async def task() -> None:
        started.set()
        await _forever()

    supervisor = Supervisor(notifier=notifier_factory(path), notify_ready=False)
    supervisor.add(TaskSpec("a", task))
    async with running(supervisor):
        # The task runs only once the supervisor's first pass (start, READY, watchdog ping) is over and
        # it waits; without WATCHDOG_USEC no later pass has a ping to send.
        await _wait(started)
    messages = notifications.drain()
    assert not any(m.startswith(("WATCHDOG=1", "READY=1")) for m in messages)
    assert any(m.startswith("STOPPING=1") for m in messages)


# -- shutdown -------------------------------------------------------------------------------------------


async def test_shutdown_cancels_in_reverse_start_order_one_at_a_time() -> None:
    events: list[str] = []
    started = {name: asyncio.Event() for name in "abc"}

    def make(name: str) -> Callable[[], Awaitable[None]]:
        async def unit() -> None:
            started[name].set()
            try:
                await _forever()
            except asyncio.CancelledError:
                events.append(f"{name} cancelled")
                await asyncio.sleep(0.01)  # simulates cleanup that takes a moment: the next must wait for it
                events.append(f"{name} cleaned up")
                raise

        return unit

    supervisor = Supervisor()
    for name in "abc":
        supervisor.add(TaskSpec(name, make(name)))
    async with running(supervisor):
        for event in started.values():
            await _wait(event)
    assert events == [
        "c cancelled",
        "c cleaned up",
        "b cancelled",
        "b cleaned up",
        "a cancelled",
        "a cleaned up",
    ]
    assert {h["state"] for h in supervisor.health().values()} == {TaskState.STOPPED.value}


async def test_shutdown_abandons_task_after_stop_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="edge.runtime.supervise")
    release = asyncio.Event()
    first_stopped = asyncio.Event()
    up = asyncio.Event()

    async def first() -> None:
        try:
            await _forever()
        finally:
            first_stopped.set()

    async def slow_to_stop() -> None:
        up.set()
        try:
            await _forever()
        except asyncio.CancelledError:
            await release.wait()
            raise

    supervisor = Supervisor()
    supervisor.add(TaskSpec("first", first))
    supervisor.add(TaskSpec("slow", slow_to_stop, stop_timeout_s=0.05))
    try:
        async with running(supervisor):
            await _wait(up)
        # Shutdown finished although the slow task still waits for `release` (set only below): it was
        # abandoned, not waited for (waiting would have run into running()'s bound and failed).
        assert first_stopped.is_set()
        assert any("did not stop within" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        leftovers = [t for t in asyncio.all_tasks() if t.get_name() == "supervised:slow"]
        await asyncio.wait(leftovers)


async def test_cancelling_run_still_shuts_down() -> None:
    stopped = asyncio.Event()
    up = asyncio.Event()

    async def unit() -> None:
        up.set()
        try:
            await _forever()
        finally:
            stopped.set()

    supervisor = Supervisor()
    supervisor.add(TaskSpec("unit", unit))
    run = asyncio.create_task(supervisor.run(asyncio.Event()))
    await _wait(up)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert stopped.is_set()


async def test_stop_before_start_starts_nothing() -> None:
    started = False

    async def unit() -> None:
        nonlocal started
        started = True

    supervisor = Supervisor()
    supervisor.add(TaskSpec("unit", unit))
    stop = asyncio.Event()
    stop.set()
    await supervisor.run(stop)
    assert not started
    assert supervisor.health()["unit"]["state"] == "stopped"


# -- registration and misuse ----------------------------------------------------------------------------


async def test_task_added_while_running_starts_at_once() -> None:
    late_up = asyncio.Event()

    async def late() -> None:
        late_up.set()
        await _forever()

    supervisor = Supervisor()
    supervisor.add(TaskSpec("early", _forever))
    async with running(supervisor):
        supervisor.add(TaskSpec("late", late))
        await _wait(late_up)
        assert supervisor.health()["late"]["state"] == "running"


async def test_misuse_is_refused() -> None:
    supervisor = Supervisor()
    supervisor.add(TaskSpec("a", _forever))
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.add(TaskSpec("a", _forever))
    with pytest.raises(KeyError, match="no supervised task named 'nope'"):
        supervisor.alive("nope")
    with pytest.raises(KeyError):
        supervisor.liveness("nope")
    with pytest.raises(SupervisorError, match="outside a supervised task"):
        current_liveness()
    stop = asyncio.Event()
    stop.set()
    await supervisor.run(stop)
    with pytest.raises(SupervisorError, match="runs once"):
        await supervisor.run(stop)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": " padded"},
        {"name": "bad\nname"},
        {"name": "x", "liveness_timeout_s": 0.0},
        {"name": "x", "liveness_timeout_s": -1.0},
        {"name": "x", "liveness_timeout_s": float("nan")},
        {"name": "x", "stop_timeout_s": 0.0},
    ],
)
def test_task_spec_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TaskSpec(factory=_forever, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backoff_initial_s": -1.0},
        {"backoff_initial_s": 2.0, "backoff_max_s": 1.0},
        {"backoff_jitter": 1.5},
        {"restart_budget": -1},
        {"budget_window_s": 0.0},
    ],
)
def test_supervisor_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Supervisor(**kwargs)  # type: ignore[arg-type]


def test_health_is_json_serialisable() -> None:
    import json

    supervisor = Supervisor()
    supervisor.add(TaskSpec("a", _forever, liveness_timeout_s=5))
    report = json.loads(json.dumps(supervisor.health()))
    assert report == {
        "a": {
            "state": "pending",
            "critical": True,
            "restarts": 0,
            "recent_restarts": 0,
            "last_alive_age_s": None,
            "uptime_s": None,
            "last_error": None,
        }
    }


def test_reprs_do_not_leak_factories(tmp_path: Path) -> None:
    spec = TaskSpec("a", _forever)
    assert "_forever" not in repr(spec)
    assert repr(Supervisor()) == "Supervisor(tasks=[])"


async def test_task_returning_because_stop_was_set_is_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    # Loops written as `while not stop.is_set()` end on their own at shutdown; that is not a crash.
    caplog.set_level(logging.WARNING, logger="edge.runtime.supervise")
    stop = asyncio.Event()
    up = asyncio.Event()

    async def polls_until_stop() -> None:
        up.set()
        await stop.wait()

    supervisor = Supervisor()
    supervisor.add(TaskSpec("usb-poll", polls_until_stop))
    run = asyncio.create_task(supervisor.run(stop))
    await _wait(up)
    stop.set()
    async with asyncio.timeout(5):
        await run
    health = supervisor.health()["usb-poll"]
    assert (health["state"], health["restarts"], health["last_error"]) == ("stopped", 0, None)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
