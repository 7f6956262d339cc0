"""Real stand-ins for a station's time daemons: a chronyc on disk, a D-Bus bus with timedated on it.

chrony cannot be installed here (Debian's chrony and systemd-timesyncd conflict), so the chronyc the
agent runs is `python -m simulators chronyc` behind a small executable, answering from a state file a
test rewrites. systemd-timedated is `simulators.timesync.timedated` on a private dbus-daemon, asked by
the real busctl through DBUS_SYSTEM_BUS_ADDRESS, as the agent asks the system bus.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulators.timesync.timedated import TimedatedSimulator
from tests.prerequisites import require

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""


def need_tool(name: str) -> str:
    """The path of a system tool; without it the test skips, or fails when CI is set (no green skips)."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (make system installs it)")
    assert path is not None
    return path


def need_module(name: str) -> None:
    """Like need_tool, for a Python package of the test extras."""
    try:
        importlib.import_module(name)
    except ImportError as exc:
        require(False, f"{name} is not installed ({exc}); pip install -e '.[test]'")


class FakeChronyc:
    """An executable `chronyc` whose chronyd state a test sets with `set(...)`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.state_file = directory / "chronyd-state.json"
        self.path = directory / "chronyc"
        self.path.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" -m simulators chronyc --state "{self.state_file}" "$@"\n'
        )
        self.path.chmod(0o755)
        self.set()

    def set(self, **state: Any) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)


@contextmanager
def private_system_bus(directory: Path) -> Iterator[str]:
    """A dbus-daemon of our own; yields its address (set it as DBUS_SYSTEM_BUS_ADDRESS)."""
    daemon = need_tool("dbus-daemon")
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = directory / "system_bus_socket"
    config = directory / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=socket_path))
    process = subprocess.Popen(
        [daemon, f"--config-file={config}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the socket listens
        if not line.startswith("unix:"):
            raise RuntimeError(f"dbus-daemon did not start: {line!r}")
        yield f"unix:path={socket_path}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def timedated_on(address: str, **options: Any) -> Iterator[TimedatedSimulator]:
    simulator = TimedatedSimulator(address, **options)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()
