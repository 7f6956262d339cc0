"""A small sd_notify(3) client in pure stdlib: readiness, status, watchdog and stop notifications.

systemd hands the service a datagram socket in ``NOTIFY_SOCKET`` (a file system path, or ``@name`` for
the abstract namespace) and, when ``WatchdogSec=`` is set, the watchdog timeout in ``WATCHDOG_USEC``.
Outside systemd neither is set and every call is a cheap no-op, so the service code calls the notifier
unconditionally.

Sends never block the event loop and never raise: a lost notification is logged, and systemd's own
timeouts (``TimeoutStartSec=``, ``WatchdogSec=``) turn a persistently broken channel into a restart.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType

__all__ = ["SystemdNotifier", "notify_socket_address", "watchdog_interval_s"]

log = logging.getLogger(__name__)

# The kernel's limit for a sockaddr_un path, including the leading NUL of an abstract name.
_SUN_PATH_MAX = 108


def notify_socket_address(env: Mapping[str, str] | None = None) -> str | bytes | None:
    """The address to send notifications to, or None when not running under systemd.

    A path is returned as str; an abstract name (``@name``) as bytes with a leading NUL, which is how
    Python's AF_UNIX sockets spell the abstract namespace. Unsupported kinds (``vsock:``) and malformed
    values are reported once and treated as "not under systemd".
    """
    environ = os.environ if env is None else env
    raw = environ.get("NOTIFY_SOCKET", "")
    if not raw:
        return None
    if raw.startswith("@"):
        address: str | bytes = b"\0" + raw[1:].encode()
    elif raw.startswith("/"):
        address = raw
    else:
        log.warning(
            "NOTIFY_SOCKET=%r is neither a path nor an abstract '@' name; notifications disabled", raw
        )
        return None
    size = len(address.encode() if isinstance(address, str) else address)
    if size >= _SUN_PATH_MAX or "\0" in raw:
        log.warning("NOTIFY_SOCKET=%r is not a usable AF_UNIX address; notifications disabled", raw)
        return None
    return address


def watchdog_interval_s(env: Mapping[str, str] | None = None, *, pid: int | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``WATCHDOG_USEC``, or None when no watchdog applies.

    ``WATCHDOG_PID``, when present, names the process the watchdog is meant for; a child that inherited
    the environment must not ping on its parent's behalf, so a mismatch means "no watchdog".
    """
    environ = os.environ if env is None else env
    raw_usec = environ.get("WATCHDOG_USEC", "")
    if not raw_usec:
        return None
    try:
        timeout_usec = int(raw_usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog disabled", raw_usec)
        return None
    if timeout_usec <= 0:
        log.warning("WATCHDOG_USEC=%r is not positive; watchdog disabled", raw_usec)
        return None
    raw_pid = environ.get("WATCHDOG_PID", "")
    if raw_pid:
        try:
            watchdog_pid = int(raw_pid)
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not an integer; watchdog disabled", raw_pid)
            return None
        own_pid = os.getpid() if pid is None else pid
        if watchdog_pid != own_pid:
            log.debug("WATCHDOG_PID=%d is not our pid %d; watchdog is not ours", watchdog_pid, own_pid)
            return None
    return timeout_usec / 2 / 1_000_000


def _one_line(text: str) -> str:
    # The protocol is newline-separated VAR=value; a newline in a status would smuggle in a second
    # assignment (READY=1, say) from whatever text reached the status, e.g. a device name.
    return " ".join(text.split())


class SystemdNotifier:
    """Sends sd_notify messages to the service manager, or does nothing outside systemd.

    The environment is read once, at construction; pass ``env`` to test or to embed.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, pid: int | None = None) -> None:
        self._address = notify_socket_address(env)
        self._watchdog_period_s = watchdog_interval_s(env, pid=pid) if self._address is not None else None
        self._sock: socket.socket | None = None
        self._failures_logged = False

    def __repr__(self) -> str:
        return f"SystemdNotifier(address={self._address!r}, watchdog_period_s={self._watchdog_period_s!r})"

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured (we run under systemd with Type=notify)."""
        return self._address is not None

    @property
    def watchdog_period_s(self) -> float | None:
        """Interval between ``WATCHDOG=1`` pings (half the configured timeout), or None."""
        return self._watchdog_period_s

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: ``READY=1``, optionally with a status line."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def status(self, text: str) -> bool:
        """A free-form one-line status, shown by ``systemctl status``."""
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Keep-alive ping: ``WATCHDOG=1``."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun: ``STOPPING=1``."""
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def reloading(self) -> bool:
        """Reload has begun: ``RELOADING=1``; send :meth:`ready` when done.

        ``MONOTONIC_USEC`` lets systemd match the reload to this message (required by Type=notify-reload).
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def extend_timeout(self, extra_s: float) -> bool:
        """Ask for more time in the current start or stop phase (``EXTEND_TIMEOUT_USEC``).

        Used when shutdown must wait for an offload to close cleanly.
        """
        if extra_s <= 0:
            raise ValueError(f"extend_timeout needs a positive number of seconds, got {extra_s!r}")
        return self.send(f"EXTEND_TIMEOUT_USEC={round(extra_s * 1_000_000)}")

    def send(self, *fields: str) -> bool:
        """Send ``VAR=value`` fields in one datagram. True if sent; False if disabled or the send failed."""
        if self._address is None:
            return False
        for field_text in fields:
            if "=" not in field_text or "\n" in field_text:
                raise ValueError(f"sd_notify fields are single-line VAR=value, got {field_text!r}")
        payload = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receive queue at the manager must not stall the event loop; the datagram is
                # dropped and a later ping (sent twice per timeout) covers it.
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._failures_logged:
                log.warning("sd_notify to %r failed (%s); will keep trying", self._address, exc)
                self._failures_logged = True
            else:
                log.debug("sd_notify to %r failed again: %s", self._address, exc)
            return False
        if self._failures_logged:
            log.info("sd_notify to %r works again", self._address)
            self._failures_logged = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
