"""The station agent run as its own process against the recorder simulator run as its own process: the
rig of the tests that signal the real program (kill -9 mid-offload, SIGHUP reload mid-copy).

Paths are the agent's defaults relative to ``root``: the simulator serves ``root/sim/bus.sock`` and
mounts volumes below ``root/media``; the station's store is ``root/store`` unless a test moves it.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PASSWORD = "000000"  # the simulator's default recorder password


def write_station_config(
    root: Path,
    allow: list[tuple[str, str]],
    *,
    station_id: str,
    wipe_policy: str,
    store: str = "store",
    extra: str = "",
) -> Path:
    """``root/station.toml`` for the simulator's bus, allowing the ``(device serial, USB serial)`` pairs
    in ``allow``, the recorder password in a 0600 file; ``extra`` is appended as it is."""
    password = root / "recorder-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    entries = "\n".join(f'[[recorders.allow]]\ndevice_serial = "{d}"\nusb_serial = "{u}"\n' for d, u in allow)
    config = root / "station.toml"
    config.write_text(f"""
[station]
id = "{station_id}"
store_dir = "{store}"
clock = "trusted"

[usb]
backend = "simulator"
simulator_socket = "sim/bus.sock"
poll_interval_s = 0.1
mount_root = "media"
volume_timeout_s = 20

[recorders]
default_password = "file:{password}"
{entries}
[offload]
min_free_bytes = 0

[wipe]
policy = "{wipe_policy}"
{extra}""")
    return config


def state_rows(db: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of ``query`` on the agent's ``state.db``, read-only (the agent may be writing it);
    none while the agent has not created it yet."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


@contextmanager
def recorder_simulator(
    root: Path, *, recorders: int, files: int, file_mb: float, rate_limit_mbps: float, seed: int
) -> Iterator[list[dict[str, Any]]]:
    """`python -m simulators recorder serve` as a process; yields the recorders it announced (device
    serial, USB serial, port path, ...) and stops it with SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators", "recorder", "serve", "--state", str(root / "sim" / "state"),
         "--mount-root", str(root / "media"), "--socket", str(root / "sim" / "bus.sock"),
         "--recorders", str(recorders), "--files", str(files), "--file-mb", str(file_mb),
         "--rate-limit-mbps", str(rate_limit_mbps), "--seed", str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())["recorders"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def simulator_cli(root: Path, *args: str) -> str:
    """What `python -m simulators recorder ARGS` printed, against the simulator serving under ``root``."""
    done = subprocess.run(
        [sys.executable, "-m", "simulators", "recorder", *args, "--socket", str(root / "sim" / "bus.sock")],
        check=True, timeout=30, capture_output=True, text=True,
    )
    return done.stdout
