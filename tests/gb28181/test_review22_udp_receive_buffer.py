"""Review 22, finding 14: a UDP media socket asks for a 4 MiB receive buffer, which the kernel silently caps
at net.core.rmem_max (~208 KiB by default): a fast download's burst is then dropped by the kernel and
nobody knew why. The effective size is read back and reported (log and operator view) with what to raise.

Real sockets, the machine's own rmem_max: asking for more than it is reported limited, at its value;
the control asks for less and gets it all. The platform's view carries the probe it made at start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from edge.gb28181 import platform as platform_module
from edge.gb28181.media import UdpReceiveBuffer, open_receiver, probe_udp_receive_buffer

from .platform_peer import FakeClock, Ledger, platform_settings


def _rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text().strip())


def test_a_buffer_beyond_rmem_max_is_reported_with_what_the_kernel_granted() -> None:
    cap = _rmem_max()
    probed = probe_udp_receive_buffer(cap + 64 * 1024)
    assert probed.granted_bytes == cap and probed.rmem_max_bytes == cap
    assert probed.limited
    summary = probed.summary()
    assert summary["granted_bytes"] == cap and summary["limited"] is True
    assert "net.core.rmem_max" in summary["hint"] and "evidence-edge.sysctl.conf" in summary["hint"]


def test_control_a_buffer_within_rmem_max_is_granted_whole() -> None:
    asked = min(_rmem_max(), 4 * 1024 * 1024) // 2
    probed = probe_udp_receive_buffer(asked)
    assert probed.granted_bytes == asked and not probed.limited
    assert probed.summary()["hint"] is None


@pytest.mark.parametrize("beyond", [True, False])
async def test_the_platform_shows_and_logs_the_effective_size(
        beyond: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    asked = _rmem_max() + 64 * 1024 if beyond else _rmem_max() // 2

    def probe() -> UdpReceiveBuffer:
        return probe_udp_receive_buffer(asked)

    monkeypatch.setattr(platform_module, "probe_udp_receive_buffer", probe)
    platform = platform_module.GbPlatform(
        platform_settings({"34020000001320000001": "12345678"}), record=Ledger(), clock_trusted=lambda: True,
        clock=FakeClock(), open_receiver=open_receiver)
    with caplog.at_level(logging.WARNING, logger="edge.gb28181.platform"):
        await platform.start()
    try:
        shown: dict[str, Any] = platform.snapshot()["media_udp_receive_buffer"]
        assert shown["asked_bytes"] == asked and shown["limited"] is beyond
        assert shown["granted_bytes"] == (_rmem_max() if beyond else asked)
        warned = [r for r in caplog.records if "net.core.rmem_max" in r.getMessage()]
        assert bool(warned) is beyond
    finally:
        await platform.close()
