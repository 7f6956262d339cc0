"""`edge room` against a real station agent process (edge run) recording two lavfi sources: start, mark,
status and stop through the local API socket, refusals with their exit status and reason; the agent
killed with SIGKILL mid-session and started again: the orphaned ffmpeg is stopped, what it wrote is
sealed, the interruption is a gap on the ledger, the session goes on and stops with its manifest; the
store verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent_process import state_rows

pytestmark = pytest.mark.usefixtures("ffmpeg")

CONFIG = """
[station]
id = "ROOM-PC-1"
store_dir = "store"
clock = "trusted"
[usb]
mount_root = "media"
[offload]
min_free_bytes = 0
[api]
socket_path = "{socket}"
[rooms]
segment_time_s = 1.0
stale_margin_s = 3.0
stop_timeout_s = 5.0
restart_backoff_initial_s = 0.2
restart_backoff_max_s = 1.0
start_min_free_bytes = 0
# ffmpeg starting on a loaded test machine is not a late camera (tests/rooms/test_review21_late_start.py)
late_start_gap_s = 10.0
[[rooms.room]]
id = "xw-1"
name = "第一询问室"
address = "文三路 100 号"
[[rooms.room.source]]
id = "a"
codec = "encode"
[[rooms.room.source.input]]
format = "lavfi"
url = "testsrc2=size=160x120:rate=25"
realtime = true
[[rooms.room.source.input]]
format = "lavfi"
url = "sine=frequency=440"
realtime = true
[[rooms.room.source]]
id = "b"
[[rooms.room.source.input]]
format = "lavfi"
url = "testsrc2=size=160x120:rate=10"
realtime = true
"""


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    short = Path(tempfile.mkdtemp(prefix="edge-room-", dir="/tmp"))  # a socket path must be short
    (tmp_path / "media").mkdir()
    (tmp_path / "station.toml").write_text(CONFIG.format(socket=short / "api.sock"))
    try:
        yield tmp_path
    finally:
        for leftover in short.iterdir():
            leftover.unlink()
        short.rmdir()


def _socket(root: Path) -> Path:
    text = (root / "station.toml").read_text()
    return Path(text.split('socket_path = "', 1)[1].split('"', 1)[0])


def edge(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True,
                          timeout=180, cwd=root)


def start_agent(root: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "edge.cli", "run", "--config", str(root / "station.toml")]
    agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root)
    deadline = time.monotonic() + 60
    while not _socket(root).exists():
        assert agent.poll() is None, "the agent exited"
        assert time.monotonic() < deadline, "the agent's API socket never appeared"
        time.sleep(0.05)
    return agent


def ledger(root: Path, type_: str, **match: Any) -> list[tuple[int, str | None, dict[str, Any]]]:
    query = "SELECT seq, item, data FROM ledger WHERE type=? ORDER BY seq"
    rows = state_rows(root / "store" / "state.db", query, (type_,))
    found = [(seq, item, json.loads(data)) for seq, item, data in rows]
    return [row for row in found if all(row[2].get(k) == v for k, v in match.items())]


def wait_for(condition: Any, timeout_s: float = 60.0) -> Any:
    """Poll the agent's ledger (another process: no event to await) until `condition()` holds."""
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return found


def _ffmpeg_children(root: Path) -> list[int]:
    pids = []
    for pid_file in (root / "store" / "rooms" / "capture").rglob("ffmpeg.pid"):
        pid = int(pid_file.read_text())
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(pid_file.parent).encode() in cmdline:
            pids.append(pid)
    return pids


def test_edge_room_runs_a_session_through_the_agent_and_survives_its_kill(root: Path) -> None:
    agent = start_agent(root)
    orphans: list[int] = []
    try:
        idle = edge(root, "room", "status", "--config", "station.toml", "--json")
        assert idle.returncode == 0, idle.stderr
        assert json.loads(idle.stdout)["rooms"][0]["session"] is None
        # Refused, with the agent's reason and EX_DATAERR; the control below starts the same room.
        unknown = edge(root, "room", "start", "xw-9", "--config", "station.toml", "--case-number", "A-1",
                       "--collector", "张三", "--subject", "询问")
        assert unknown.returncode == 65 and "unknown room 'xw-9'" in unknown.stderr
        bad = edge(root, "room", "start", "xw-1", "--config", "station.toml", "--case-number", "A\x071",
                   "--collector", "张三", "--subject", "询问")
        assert bad.returncode == 65 and "case_number contains control" in bad.stderr
        started = edge(root, "room", "start", "xw-1", "--config", "station.toml", "--case-number",
                       "A3301062026000123", "--collector", "张三", "--subject", "询问过程",
                       "--person", "李四:被询问人", "--json")
        assert started.returncode == 0, started.stderr
        session = json.loads(started.stdout)["room_session"]
        again = edge(root, "room", "start", "xw-1", "--config", "station.toml", "--case-number", "A-2",
                     "--collector", "张三", "--subject", "询问")
        assert again.returncode == 65 and f"already recording session {session}" in again.stderr
        assert len(ledger(root, "refused", stage="room")) == 3
        wait_for(lambda: len(ledger(root, "segment_sealed", room_session=session)) >= 4)
        marked = edge(root, "room", "mark", "xw-1", "出示证据一", "--config", "station.toml")
        assert marked.returncode == 0, marked.stderr
        status = edge(root, "room", "status", "--config", "station.toml")
        assert "recording session" in status.stdout and "a: recording" in status.stdout, status.stdout
        # The agent dies with its ffmpeg children still writing.
        orphans = _ffmpeg_children(root)
        assert len(orphans) == 2
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
        before = len(ledger(root, "segment_sealed", room_session=session))
        agent = start_agent(root)
        # The orphans are stopped, what they wrote meanwhile is sealed, and each source's gap closes.
        closed = wait_for(lambda: len(ledger(root, "gap", state="closed")) >= 2 and ledger(root, "gap",
                                                                                        state="closed"))
        assert all(not _alive(pid) for pid in orphans)
        assert len(ledger(root, "segment_sealed", room_session=session)) > before
        assert {row[2]["source"] for row in closed} == {"a", "b"}
        assert all("not running" in row[2]["reason"] for row in closed)
        wait_for(lambda: [r for r in ledger(root, "segment_sealed", source="a") if r[0] > closed[-1][0]])
        stopped = edge(root, "room", "stop", "xw-1", "--config", "station.toml", "--json")
        assert stopped.returncode == 0, stopped.stderr
        summary = json.loads(stopped.stdout)
        assert summary["gaps"] == 2 and summary["marks"] == 1 and summary["manifest_item"]
        nothing = edge(root, "room", "stop", "xw-1", "--config", "station.toml")
        assert nothing.returncode == 65 and "no session is recording" in nothing.stderr
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
        for pid in orphans:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert agent.returncode == 0
    verified = edge(root, "verify", "store")
    # No central in this test: every local check holds (exit 3 says the central was not consulted).
    assert verified.returncode == 3 and "LOCAL CHECKS ONLY" in verified.stdout, verified.stdout
    assert "; 0 problem(s))" in verified.stdout


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
