"""An MQTT worker started before the central ever ran waits for it, instead of exiting.

A worker takes its MQTT client id from the central's client-id secret (``identity/mqtt-client.secret``,
edge.mqtt.client_ids), which only the central makes: under the worker's systemd sandbox ``identity/`` is
read-only, and a secret the worker made would not be the central's if both started at once. A worker
that exited until the secret appeared (75, EX_TEMPFAIL, restarted every 2 s) reached the unit's
``StartLimitBurst`` within a minute on a host whose central had not run yet (a fresh install, the central
enabled after its workers) and systemd then gave up on it for good. So it waits: it tells systemd it is
up (``READY=1``, with a ``STATUS=`` saying what it waits for, so that ``systemctl enable --now`` returns
and ``systemctl status`` explains), pings the watchdog while it waits, says once in the log what it waits
for, and polls for the file; SIGTERM or SIGINT end the wait (exit 0, as a stopped worker does).

systemd sets up the worker's sandbox when it starts: its one writable path, ``transfers_dir``, is skipped
when missing (``ReadWritePaths=-``; without the ``-`` the start itself fails, 226/NAMESPACE, and the unit
hits its start limit the same way), so a worker that waited for the central's first start may find the
directory the central made read-only to it. :func:`transfers_dir_unusable` says so, and the worker exits 75
(EX_TEMPFAIL) once: systemd starts it again, with the directory in its sandbox now. A worker that finds the
secret but no transfers directory (removed while the central was stopped, or on a file system mounted
later), which its sandbox cannot make, waits the same way for the directory
(:func:`wait_for_the_transfers_dir`), then exits 75 once for a sandbox that has it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from edge.runtime.sdnotify import SystemdNotifier

__all__ = ["CENTRAL_POLL_S", "transfers_dir_may_appear", "transfers_dir_unusable", "wait_for_path",
           "wait_for_the_central", "wait_for_the_transfers_dir"]

log = logging.getLogger(__name__)

# How often the worker looks for the central's secret: a worker starts working within this of the
# central's first start.
CENTRAL_POLL_S = 1.0


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` for the duration (the previous handlers come back after)."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Callable[[int, FrameType | None], object] | int | None] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def wait_for_the_central(secret: Path, *, poll_s: float = CENTRAL_POLL_S,
                         notifier: SystemdNotifier | None = None) -> bool:
    """Until `secret` exists: True then (at once when it already does), False when SIGTERM or SIGINT came
    first. Call from the main thread (it installs signal handlers for the wait)."""
    waiting = (f"waiting for the central's first start: the MQTT client-id secret {secret} does not exist "
               "yet (only edge-central makes it); the worker starts once it does")
    return wait_for_path(secret, waiting, poll_s=poll_s, notifier=notifier)


def wait_for_the_transfers_dir(directory: Path, why: str, *, poll_s: float = CENTRAL_POLL_S,
                               notifier: SystemdNotifier | None = None) -> bool:
    """Until `directory` exists (the central makes it at its start; the worker's sandbox cannot): as
    `wait_for_the_central`. `why`: what `transfers_dir_unusable` said."""
    waiting = (f"waiting for the central to make the transfers directory {directory}: {why} (edge-central "
               "makes it at its start); then the worker restarts once to have it in its sandbox")
    return wait_for_path(directory, waiting, poll_s=poll_s, notifier=notifier)


def wait_for_path(path: Path, waiting: str, *, poll_s: float = CENTRAL_POLL_S,
                  notifier: SystemdNotifier | None = None) -> bool:
    """Until `path` exists: True then (at once when it already does), False when SIGTERM or SIGINT came
    first; `waiting` is said once (log, stderr and systemd's STATUS=). Call from the main thread."""
    if path.exists():
        return True
    log.warning("%s", waiting)
    stop = threading.Event()
    with notifier if notifier is not None else SystemdNotifier() as systemd, _stop_on_signals(stop):
        systemd.ready(waiting)
        # The watchdog (WatchdogSec=) runs once the unit is ready: ping it at its own pace while waiting.
        period_s = systemd.watchdog_period_s
        interval_s = min(poll_s, period_s) if period_s is not None else poll_s
        while not stop.wait(interval_s):
            if period_s is not None:
                systemd.watchdog()
            if path.exists():
                log.info("%s exists: the worker goes on", path)
                systemd.status(f"{path} exists: going on")
                return True
    log.info("stopped while %s", waiting.split(":", 1)[0])
    return False


def transfers_dir_unusable(directory: Path) -> str | None:
    """Why this process cannot write `directory` (made here when missing, as the receiver's store would
    make it); None when it can."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return f"the transfers directory {directory} cannot be made here ({exc.strerror or exc})"
    if not os.access(directory, os.W_OK):
        return f"the transfers directory {directory} is read-only to this process"
    return None


def transfers_dir_may_appear(directory: Path) -> bool:
    """Whether a missing `directory` can still be made by the central: its nearest existing ancestor is a
    directory (a read-only sandbox, a file system not mounted yet). Not when something else is in the way
    (a file where a directory should be): the worker then exits 75 with the reason, as before."""
    try:
        if directory.exists():
            return False
        ancestor = directory.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        return ancestor.is_dir()
    except OSError:
        return False  # cannot even look: not something a wait can mend
