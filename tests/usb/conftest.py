"""Fixtures: a real simulated recorder bus served on a real UNIX socket, reached by the real driver."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from simulators.recorder.backend import SimulatorBackend, get_backend
from simulators.recorder.bus import RecorderBus, RecorderBusServer, RecorderSpec
from tests.prerequisites import requires

PASSWORD = "246810"


@pytest.fixture(scope="session", autouse=True)
def private_media_cache(media_cache: Path) -> Path:
    """Every test here uses the session's private media cache (tests/conftest.py)."""
    return media_cache


def fuse_usable() -> bool:
    return os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3") is not None


needs_fuse = requires(fuse_usable(), "needs /dev/fuse and fusermount3")


def make_spec(index: int = 0, **overrides: Any) -> RecorderSpec:
    values: dict[str, Any] = {
        "device_serial": f"{7654321 + index}",
        "usb_serial": f"EEZ01TEST{index:07d}",
        "officer_no": f"{110001 + index:06d}",
        "officer_name": ["张伟", "王芳", "李娜"][index % 3],
        "unit_code": "330100000000",
        "unit_name": "杭州市公安局",
        "password": PASSWORD,
        "files": 1,
        "file_mb": 0.05,
        "seed": index,
    }
    values.update(overrides)
    return RecorderSpec(**values)


@dataclass
class SimBus:
    """A running bus: the in-process bus object, its server, and a backend for the driver."""

    state_dir: Path
    mount_root: Path
    socket_path: Path
    bus: RecorderBus
    server: RecorderBusServer
    backend: SimulatorBackend
    _extra: list[Any] = field(default_factory=list)

    def add(self, index: int = 0, *, port: str | None = "1-1.1", **overrides: Any) -> RecorderSpec:
        spec = make_spec(index, **overrides)
        self.bus.add_recorder(spec)
        if port is not None:
            self.bus.plug(spec.device_serial, port)
        return spec

    def restart(self) -> None:
        """Stop the server and the bus (a hub power cycle), then bring both back on the same socket."""
        self.server.stop()
        self.bus.close()
        self.bus = RecorderBus(self.state_dir, self.mount_root)
        self.server = RecorderBusServer(self.bus, self.socket_path)
        self.server.start()

    def new_backend(self) -> SimulatorBackend:
        backend = get_backend(self.socket_path)
        self._extra.append(backend)
        return backend


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimBus]:
    state_dir, mount_root = tmp_path / "state", tmp_path / "media"
    # UNIX socket paths are limited to 108 bytes; pytest's tmp paths can get close.
    socket_path = tmp_path / "bus.sock"
    bus = RecorderBus(state_dir, mount_root)
    server = RecorderBusServer(bus, socket_path)
    server.start()
    backend = get_backend(socket_path)
    env = SimBus(state_dir, mount_root, socket_path, bus, server, backend)
    try:
        yield env
    finally:
        env.backend.close()
        for extra in env._extra:
            extra.close()
        env.server.stop()
        env.bus.close()
