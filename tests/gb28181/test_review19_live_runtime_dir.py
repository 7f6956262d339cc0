"""Review 19: a runtime directory longer than 47 bytes makes every `edge` command die on import, GB/T 28181
configured or not (edge.config.station `Gb28181LiveSection`).

`StationConfig.gb28181` defaults to an instance built when edge.config.station is imported; its `live`
section's default `socket_dir` is `$RUNTIME_DIRECTORY/gb28181-live`, and the section's validator refuses a
socket_dir over 60 bytes. So with `$RUNTIME_DIRECTORY` of 48 bytes or more (systemd's RuntimeDirectory=
evidence-edge/<instance> for a second store, a bench), importing the configuration raises a pydantic
ValidationError: no station starts, `edge check-config` and even `edge --help` print a traceback, for a
feature the station may not use. The local API's own socket there would still fit (95 bytes).

The real CLI in a subprocess, with a docking-station configuration that has no [gb28181] at all.
Control: the same command with a short runtime directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MINIMAL = '[station]\nid = "S1"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n'
LONG_RUNTIME = "/run/evidence-edge/instances/interview-room-0301"  # 48 bytes
SHORT_RUNTIME = "/run/evidence-edge"


def check_config(tmp_path: Path, runtime_directory: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "station.toml"
    config.write_text(MINIMAL)
    env = {**os.environ, "RUNTIME_DIRECTORY": runtime_directory}
    return subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


def test_review19_a_long_runtime_directory_breaks_every_edge_command(tmp_path: Path) -> None:
    """MEDIUM: a station without GB/T 28181 cannot even check its configuration."""
    assert len(LONG_RUNTIME.encode()) == 48
    done = check_config(tmp_path, LONG_RUNTIME)
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 0, done.stderr[-600:]


def test_review19_control_a_short_runtime_directory(tmp_path: Path) -> None:
    done = check_config(tmp_path, SHORT_RUNTIME)
    assert done.returncode == 0, done.stderr[-600:]


GB_ENABLED = ('[gb28181]\nenabled = true\n[gb28181.devices.34020000001320000051]\npassword = "env:GB_PW"\n')


def test_a_long_runtime_directory_is_a_clear_error_with_gb28181_enabled(tmp_path: Path) -> None:
    """The fix keeps the check where it matters: check-config of a GB/T 28181 station names socket_dir."""
    config = tmp_path / "station.toml"
    config.write_text(MINIMAL + GB_ENABLED)
    env = {**os.environ, "RUNTIME_DIRECTORY": LONG_RUNTIME, "GB_PW": "weak"}
    done = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-600:]
    assert "live.socket_dir" in done.stderr and LONG_RUNTIME in done.stderr, done.stderr[-600:]
    # Control: the same station with a short runtime directory passes.
    done = subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(config)], cwd=tmp_path,
                          env={**env, "RUNTIME_DIRECTORY": SHORT_RUNTIME}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-600:]
