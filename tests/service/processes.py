"""Helpers to run `edge` the way its systemd unit does: the unit's own ExecStart, a real notify socket."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.service.test_unit_files import SYSTEMD_DIR, Unit, one, parse_unit, seconds, words

EDGE = Path(sys.executable).parent / "edge"


def unit(name: str) -> Unit:
    return parse_unit((SYSTEMD_DIR / name).read_text(encoding="utf-8"))


def exec_start(unit_name: str, config: Path) -> list[str]:
    """The unit's ExecStart with the installed prefix swapped for this checkout's `edge` and the
    configuration path for ``config``: the command line under test is the one the unit runs."""
    argv = shlex.split(one(unit(unit_name), "Service", "ExecStart"))
    assert Path(argv[0]).name == "edge" and "--config" in argv, argv
    config_at = argv.index("--config") + 1
    return [str(EDGE), *argv[1:config_at], str(config), *argv[config_at + 1 :]]


def restart_prevented(unit_name: str) -> set[int]:
    return {int(word) for word in words(unit(unit_name), "Service", "RestartPreventExitStatus")}


def stop_timeout_s(unit_name: str) -> float:
    return seconds(one(unit(unit_name), "Service", "TimeoutStopSec"))


def kill_signal(unit_name: str) -> int:
    name = one(unit(unit_name), "Service", "KillSignal")
    return int(getattr(signal, name))


class NotifySocket:
    """The service manager's end of sd_notify: a datagram socket that records what arrives, and when."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def close(self) -> None:
        self.sock.close()

    def env(self, **extra: str) -> dict[str, str]:
        ours = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        env = {k: v for k, v in os.environ.items() if k not in ours}
        return {**env, "NOTIFY_SOCKET": self.path, **extra}

    def receive(self, timeout_s: float = 60.0) -> tuple[float, dict[str, str]]:
        """The next notification (monotonic arrival time, fields); TimeoutError when none comes."""
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(4096)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        return time.monotonic(), fields

    def wait_for(self, field: str, timeout_s: float = 60.0) -> tuple[float, dict[str, str]]:
        deadline = time.monotonic() + timeout_s
        while True:
            at, fields = self.receive(max(0.1, deadline - time.monotonic()))
            if field in fields:
                return at, fields

    def wait_ready(self, process: subprocess.Popen[str], who: str) -> float:
        """When READY=1 arrived from ``process``; without it, the process is killed and the test fails
        with the end of what it said on stderr."""
        try:
            at, _fields = self.wait_for("READY", timeout_s=60)
        except TimeoutError:
            process.kill()
            raise AssertionError(f"no READY=1; {who} said: {process.communicate()[1][-3000:]}") from None
        return at

    def pending(self) -> list[dict[str, str]]:
        """Everything already queued (call once the sender has exited: nothing more can come)."""
        self.sock.setblocking(False)
        queued = []
        try:
            while True:
                data = self.sock.recv(4096)
                queued.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        except BlockingIOError:
            return queued
        finally:
            self.sock.setblocking(True)


@contextmanager
def notify_socket(directory: Path) -> Iterator[NotifySocket]:
    # sockaddr_un paths are limited to 107 bytes: the caller gives a short directory.
    sock = NotifySocket(directory)
    try:
        yield sock
    finally:
        sock.close()


@contextmanager
def running(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A service process; killed if the test leaves it running."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)
