"""The platform in a real station agent: started as a supervised task when [gb28181] enabled = true, its
events in the store's ledger, its device registry in the status the local API serves, and
`edge gb28181 devices` (a real subprocess, over the API socket) showing it."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.station.harness import simulated_station

from .platform_peer import TestDevice

DEVICE = "34020000001320000001"
PASSWORD = "weak-1234"


@pytest.fixture
def api_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-gb-", dir="/tmp"))  # a Unix socket path holds 107 bytes
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def edge_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_agent_runs_the_platform_and_shows_its_devices(tmp_path: Path, api_dir: Path) -> None:
    password_file = tmp_path / "gb-device-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    socket_path = api_dir / "station.sock"
    gb28181 = {"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0,
               "devices": {DEVICE: {"password": f"file:{password_file}", "name": "记录仪 01"}}}
    async with simulated_station(tmp_path, [], api={"socket_path": str(socket_path)},
                                 gb28181=gb28181) as station:
        platform = station.agent.gb28181
        assert platform is not None
        async with asyncio.timeout(20):
            await platform.started.wait()
        two_minutes_behind = (datetime.now(UTC) + timedelta(hours=8, minutes=-2)).replace(tzinfo=None)
        device = await TestDevice(DEVICE, PASSWORD, platform.transport.port,
                                  device_time=two_minutes_behind).start()
        try:
            ok = await device.register()
            assert ok.status == 200
            # The harness's station clock is "trusted", but the device's is set only once it was measured
            # (DeviceStatus, asked when it comes online): then its next registration carries Date.
            assert ok.headers.get("Date") is None
            ours = lambda d: d.get("source") == "gb28181"  # noqa: E731
            [measured] = await station.wait_ledger("clock_measured", where=ours)
            again = await device.register()
            assert again.headers.get("Date") is not None
            [clock_set] = await station.wait_ledger("clock_set", where=ours)
            assert clock_set["offset_before_s"] == measured["offset_s"]
            assert abs(measured["offset_s"] + 120) < 5
            assert (await device.keepalive()).status == 200
            connected = await station.wait_ledger("device_connected",
                                                 where=lambda d: d.get("source") == "gb28181")
            assert connected[0]["device_id"] == DEVICE
            assert "weak-1234" not in json.dumps(station.ledger("device_authenticated"))

            code, out, err = await edge_cli("gb28181", "devices", "--json", "--socket", str(socket_path))
            assert code == 0, err
            view = json.loads(out)
            [shown] = [d for d in view["devices"] if d["device_id"] == DEVICE]
            assert shown["online"] and shown["name"] == "记录仪 01"
            assert shown["address"] == f"udp:127.0.0.1:{device.sip.port}"  # type: ignore[union-attr]
            assert shown["last_keepalive_at"] is not None
            code, out, err = await edge_cli("gb28181", "devices", "--socket", str(socket_path))
            assert code == 0, err
            assert f"{DEVICE}  online   udp:127.0.0.1:{device.sip.port}  记录仪 01" in out  # type: ignore[union-attr]
            assert "last keepalive 20" in out

            code, out, _ = await edge_cli("status", "--json", "--socket", str(socket_path))
            assert code == 0
            assert "gb28181" in [t["name"] for t in json.loads(out)["station"]["tasks"]]
            code, out, _ = await edge_cli("status", "--socket", str(socket_path))
            assert code == 0
            assert "gb28181: 1 device(s), 1 online, 0 session(s) (edge gb28181 devices)" in out
        finally:
            await device.close()


async def test_without_the_platform_the_command_says_so(tmp_path: Path, api_dir: Path) -> None:
    socket_path = api_dir / "station.sock"
    async with simulated_station(tmp_path, [], api={"socket_path": str(socket_path)}) as station:
        assert station.agent.gb28181 is None
        code, _, err = await edge_cli("gb28181", "devices", "--socket", str(socket_path))
        assert code == 69 and "no GB/T 28181 platform" in err
        code, out, _ = await edge_cli("status", "--socket", str(socket_path))
        assert code == 0 and "gb28181" not in out  # the status of a station without it is as before
