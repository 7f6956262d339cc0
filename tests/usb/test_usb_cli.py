"""`python -m simulators recorder ...` as a user runs it: a server process, then list/plug/unplug."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from drivers.usb.recorder import RecorderDriver, RecorderMode, find_recorders
from simulators.recorder.backend import get_backend
from simulators.recorder.bus import bay_directory_name
from simulators.recorder.mounts import is_mounted

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 120.0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulators", "recorder", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60, check=False, env=env)


def read_line(stream: IO[str], timeout_s: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout_s)
    assert ready, f"no output within {timeout_s} s"
    return stream.readline()


class Served:
    def __init__(self, process: subprocess.Popen[str], announcement: dict[str, Any], stderr: Path,
                 paths: dict[str, Path]) -> None:
        self.process = process
        self.announcement = announcement
        self.stderr = stderr
        self.paths = paths


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    paths = {"state": tmp_path / "state", "media": tmp_path / "media", "socket": tmp_path / "bus.sock"}
    stderr_path = tmp_path / "serve.stderr"
    env = {**os.environ, "EE_SIM_RECORDER_PASSWORD": "864202"}
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "simulators", "recorder", "serve", "--state", str(paths["state"]),
             "--mount-root", str(paths["media"]), "--socket", str(paths["socket"]), "--recorders", "3",
             "--msc-only", "1", "--files", "1", "--file-mb", "0.05", "--clock-offset-s", "-7",
             "--seed", "4"],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
        )
    try:
        assert process.stdout is not None
        line = read_line(process.stdout, STARTUP_TIMEOUT_S)
        assert line, f"serve exited early: {stderr_path.read_text()}"
        yield Served(process, json.loads(line), stderr_path, paths)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_help_documents_everything() -> None:
    done = run_cli("serve", "--help")
    assert done.returncode == 0
    for word in ("--state", "--mount-root", "--socket", "--recorders", "--files", "--file-mb",
                 "--clock-drift-ppm", "--clock-offset-s", "--rate-limit-mbps", "--faults", "--seed",
                 "--msc-only", "EE_SIM_RECORDER_PASSWORD", "SIGTERM"):
        assert word in done.stdout, word
    assert run_cli("--help").returncode == 0
    assert run_cli("bogus").returncode == 2


def test_serve_announces_list_plug_unplug_and_stops_cleanly(served: Served) -> None:
    paths = served.paths
    announcement = served.announcement
    assert announcement["socket"] == str(paths["socket"])
    assert announcement["mount_root"] == str(paths["media"])
    assert announcement["password_source"] == "env:EE_SIM_RECORDER_PASSWORD"
    assert "864202" not in json.dumps(announcement)
    recorders = announcement["recorders"]
    assert [r["port_path"] for r in recorders] == ["1-1.1", "1-1.2", "1-1.3"]
    assert [r["mode"] for r in recorders] == ["control", "control", "mass-storage"]
    assert [r["msc_only"] for r in recorders] == [False, False, True]
    assert len({r["usb_serial"] for r in recorders}) == 3
    assert all(len(r["usb_serial"]) == 16 for r in recorders)
    msc_mount = Path(recorders[2]["mount_point"])
    assert msc_mount == paths["media"] / bay_directory_name("1-1.3")
    assert (msc_mount / "PARAM.INI").is_file() and is_mounted(msc_mount)

    listed = run_cli("list", "--socket", str(paths["socket"]))
    assert listed.returncode == 0, listed.stderr
    states = json.loads(listed.stdout)
    assert [s["device_serial"] for s in states] == sorted(r["device_serial"] for r in recorders)

    # The real driver, in this process, against the server process.
    backend = get_backend(paths["socket"])
    try:
        handles = find_recorders(backend)
        assert len(handles) == 3
        first = next(h for h in handles if h.usb_serial == recorders[0]["usb_serial"])
        with RecorderDriver(first, backend) as recorder:
            recorder.login("864202")
            assert recorder.info().device_serial == recorders[0]["device_serial"]
            sample = recorder.clock_sample()
            assert abs(sample.offset_ms + 7000) <= sample.uncertainty_ms + 2
            recorder.switch_to_mass_storage()
        unplugged = run_cli("unplug", "--socket", str(paths["socket"]), recorders[1]["device_serial"])
        assert unplugged.returncode == 0 and json.loads(unplugged.stdout)["plugged"] is False
        modes = {h.usb_serial: h.mode for h in find_recorders(backend)}
        assert modes == {recorders[0]["usb_serial"]: RecorderMode.MASS_STORAGE,
                         recorders[2]["usb_serial"]: RecorderMode.MASS_STORAGE}
        again = run_cli("plug", "--socket", str(paths["socket"]), recorders[1]["device_serial"],
                        "--port", "1-1.9")
        assert again.returncode == 0 and json.loads(again.stdout)["port_path"] == "1-1.9"
        taken = run_cli("plug", "--socket", str(paths["socket"]), recorders[1]["device_serial"])
        assert taken.returncode == 1 and "already plugged" in taken.stderr
    finally:
        backend.close()

    mounts = [paths["media"] / bay_directory_name(port) for port in ("1-1.1", "1-1.3")]
    assert all(is_mounted(m) for m in mounts)
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(30) == 0, served.stderr.read_text()
    # Unmounted; the bay directories stay, empty, as systemd leaves them.
    assert not any(is_mounted(m) for m in mounts)
    assert all(m.is_dir() and list(m.iterdir()) == [] for m in mounts)
    assert not paths["socket"].exists()
    for r in recorders:
        assert (paths["state"] / "recorders" / r["device_serial"] / "volume" / "PARAM.INI").is_file()
    state_file = paths["state"] / "recorders" / recorders[0]["device_serial"] / "state.json"
    assert state_file.stat().st_mode & 0o077 == 0  # it holds the device password


def test_cli_against_no_server_fails_clearly(tmp_path: Path) -> None:
    done = run_cli("list", "--socket", str(tmp_path / "none.sock"))
    assert done.returncode == 1
    assert "none.sock" in done.stderr


def test_serve_options_become_recorder_specs() -> None:
    from simulators.recorder.cli import _parser, recorder_spec

    args = _parser().parse_args(["serve", "--state", "s", "--mount-root", "m", "--socket", "k",
                                 "--recorders", "4", "--msc-only", "1", "--rate-limit-mbps", "35",
                                 "--clock-drift-ppm", "-20", "--faults", "read_error=*.MP4@4096",
                                 "--seed", "2"])
    specs = [recorder_spec(i, args, "pw4x7q") for i in range(4)]
    assert [s.msc_only for s in specs] == [False, False, False, True]
    assert all(s.rate_limit_bytes_per_s == 35_000_000 and s.clock_drift_ppm == -20.0 for s in specs)
    assert specs[0].faults is not None and specs[0].faults.read_error == ("*.MP4", 4096)
    assert len({s.device_serial for s in specs}) == len({s.usb_serial for s in specs}) == 4
    # Deterministic: a restarted `serve` finds the same recorders in its state directory.
    assert [recorder_spec(i, args, "pw4x7q").usb_serial for i in range(4)] == [s.usb_serial for s in specs]
    assert specs[0].password == "pw4x7q" and "pw4x7q" not in repr(specs[0])


def test_serve_can_present_recorders_sharing_one_usb_serial_or_none() -> None:
    from simulators.recorder.cli import _parser, recorder_spec

    def serials(*extra: str) -> list[str]:
        args = _parser().parse_args(["serve", "--state", "s", "--mount-root", "m", "--socket", "k",
                                     "--recorders", "3", *extra])
        return [recorder_spec(i, args, "pw4x7q").usb_serial for i in range(3)]

    same = serials("--usb-serial", "same")
    assert len(set(same)) == 1 and same[0] == serials()[0]  # the first recorder's, claimed by all
    assert serials("--usb-serial", "none") == ["", "", ""]
    assert len(set(serials())) == 3  # the control: unique by default
