"""sd_notify client against real AF_UNIX datagram sockets (path and abstract namespace)."""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.runtime.sdnotify import SystemdNotifier, notify_socket_address, watchdog_interval_s


def _receive(sock: socket.socket) -> bytes:
    sock.settimeout(2.0)
    return sock.recv(4096)


@pytest.fixture
def short_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # sockaddr_un paths are limited to 107 bytes; tmp_path of a long test name can exceed that.
    return tmp_path_factory.mktemp("n", numbered=True)


@pytest.fixture
def path_socket(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(short_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        yield sock, path


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"evidence-edge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        yield sock, "@" + name


def test_disabled_outside_systemd() -> None:
    notifier = SystemdNotifier(env={})
    assert not notifier.enabled
    assert notifier.watchdog_period_s is None
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_messages_over_path_socket(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    with SystemdNotifier(env={"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready("4/4 tasks running") is True
        assert _receive(sock) == b"READY=1\nSTATUS=4/4 tasks running"
        assert notifier.ready() is True
        assert _receive(sock) == b"READY=1"
        assert notifier.status("bay 3: copying") is True
        assert _receive(sock) == b"STATUS=bay 3: copying"
        assert notifier.watchdog() is True
        assert _receive(sock) == b"WATCHDOG=1"
        assert notifier.stopping("closing store") is True
        assert _receive(sock) == b"STOPPING=1\nSTATUS=closing store"
        assert notifier.reloading() is True
        assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", _receive(sock))
        assert notifier.extend_timeout(2.5) is True
        assert _receive(sock) == b"EXTEND_TIMEOUT_USEC=2500000"


def test_messages_over_abstract_socket(abstract_socket: tuple[socket.socket, str]) -> None:
    sock, name = abstract_socket
    with SystemdNotifier(env={"NOTIFY_SOCKET": name}) as notifier:
        assert notifier.enabled
        assert notifier.ready() is True
        assert _receive(sock) == b"READY=1"
        assert notifier.watchdog() is True
        assert _receive(sock) == b"WATCHDOG=1"


def test_datagram_carries_our_pid(path_socket: tuple[socket.socket, str]) -> None:
    # systemd attributes a notification to its sender by SCM_CREDENTIALS (NotifyAccess=main).
    sock, path = path_socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    with SystemdNotifier(env={"NOTIFY_SOCKET": path}) as notifier:
        notifier.watchdog()
        sock.settimeout(2.0)
        data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    assert data == b"WATCHDOG=1"
    creds = [
        d for level, kind, d in ancillary if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
    ]
    assert creds, "no SCM_CREDENTIALS attached"
    pid, _uid, _gid = struct.unpack("iII", creds[0][:12])
    assert pid == os.getpid()


def test_status_newlines_cannot_inject_fields(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    with SystemdNotifier(env={"NOTIFY_SOCKET": path}) as notifier:
        # A device-supplied name ending up in a status line must not become a second assignment.
        notifier.status("recorder ABC\nREADY=1\r\nWATCHDOG=trigger")
        assert _receive(sock) == b"STATUS=recorder ABC READY=1 WATCHDOG=trigger"
        with pytest.raises(ValueError, match="single-line VAR=value"):
            notifier.send("READY=1\nSTOPPING=1")
        with pytest.raises(ValueError, match="single-line VAR=value"):
            notifier.send("WATCHDOG")
        with pytest.raises(ValueError, match="positive"):
            notifier.extend_timeout(0)


def test_send_to_vanished_manager_reports_false_once(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_dir / "gone"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    path.unlink()
    caplog.set_level(logging.DEBUG, logger="edge.runtime.sdnotify")
    with SystemdNotifier(env={"NOTIFY_SOCKET": str(path)}) as notifier:
        assert notifier.enabled
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "sd_notify" in warnings[0].getMessage()


def test_full_manager_queue_does_not_block(path_socket: tuple[socket.socket, str]) -> None:
    # Nobody reads the socket: the kernel queue fills, and sends must fail fast instead of stalling the
    # event loop (pytest-timeout would catch a blocking send).
    _sock, path = path_socket
    with SystemdNotifier(env={"NOTIFY_SOCKET": path}) as notifier:
        results = [notifier.watchdog() for _ in range(10_000)]
    assert results[0] is True
    assert results[-1] is False


@pytest.mark.parametrize(
    "value",
    ["relative/notify", "vsock:2:1234", "/" + "x" * 120, "@" + "y" * 120, "notify"],
)
def test_unusable_notify_socket_disables(value: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edge.runtime.sdnotify")
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_period_s is None
    assert notifier.watchdog() is False
    assert any("NOTIFY_SOCKET" in r.getMessage() for r in caplog.records)


def test_address_forms() -> None:
    assert notify_socket_address({}) is None
    assert notify_socket_address({"NOTIFY_SOCKET": ""}) is None
    assert notify_socket_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_socket_address({"NOTIFY_SOCKET": "@sd-notify/1"}) == b"\0sd-notify/1"


@pytest.mark.parametrize(
    ("env", "expected_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{pid}"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-30000000"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_PID": "{pid}"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected_s: float | None) -> None:
    pid = os.getpid()
    resolved = {k: v.format(pid=pid, other=pid + 1) for k, v in env.items()}
    assert watchdog_interval_s(resolved) == expected_s
    assert watchdog_interval_s(resolved, pid=pid) == expected_s


def test_watchdog_pid_is_checked_against_given_pid() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}
    assert watchdog_interval_s(env, pid=4242) == 1.0
    assert watchdog_interval_s(env, pid=4243) is None


def test_notifier_watchdog_period(path_socket: tuple[socket.socket, str]) -> None:
    _sock, path = path_socket
    mine = SystemdNotifier(
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7
    )
    assert mine.watchdog_period_s == 15.0
    theirs = SystemdNotifier(
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7
    )
    assert theirs.enabled
    assert theirs.watchdog_period_s is None
    # A watchdog without a socket to ping is no watchdog.
    assert SystemdNotifier(env={"WATCHDOG_USEC": "30000000"}).watchdog_period_s is None


def test_reads_process_environment(
    monkeypatch: pytest.MonkeyPatch, path_socket: tuple[socket.socket, str]
) -> None:
    sock, path = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with SystemdNotifier() as notifier:
        assert notifier.watchdog_period_s == 2.0
        notifier.ready()
        assert _receive(sock) == b"READY=1"


def test_repr_has_no_surprises(path_socket: tuple[socket.socket, str]) -> None:
    _sock, path = path_socket
    assert path in repr(SystemdNotifier(env={"NOTIFY_SOCKET": path}))
