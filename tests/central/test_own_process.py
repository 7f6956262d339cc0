"""A central in a process of its own (edge.central.own_process) that cannot start is reported with the
tail of its log, and its process is not left behind; one that can serves /readyz."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edge.central.config import CentralConfig
from edge.central.embedded import EmbeddedCentral
from edge.central.own_process import CentralProcess, CentralProcessError


def _initialised(tmp_path: Path, port: int) -> tuple[CentralConfig, Path]:
    """`edge central init` and `enroll` of one station, as the demo does; port 0: any free port."""
    config = EmbeddedCentral.make_config(tmp_path / "central-store", port=port or None)
    bundle_dir = EmbeddedCentral.initialise(config, tmp_path, "STATION-01", tmp_path / "station-store")
    return config, bundle_dir


async def test_a_central_whose_port_is_taken_fails_with_its_log_and_leaves_no_process(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config, bundle_dir = _initialised(tmp_path, taken.getsockname()[1])
        with pytest.raises(CentralProcessError) as failed:
            await CentralProcess.serve(config, bundle_dir, tmp_path)
    message = str(failed.value)
    assert "exited" in message and str(tmp_path / "central.log") in message
    assert "address already in use" in message.lower() or "errno 98" in message.lower(), message
    # Control: the same central on a free port starts, is ready, and stops cleanly.
    config, bundle_dir = _initialised(tmp_path / "again", 0)
    central = await CentralProcess.serve(config, bundle_dir, tmp_path / "again")
    assert central.pid is not None and central.cpu_s() >= 0
    await central.stop()
    assert central.cpu_s_at_exit is not None  # reaped by the stop: exited 0, nothing left running
