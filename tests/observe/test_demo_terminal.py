"""`edge demo` on a terminal (a real pty): live per-bay progress bars and a final table, drawn by rich;
into a pipe: plain lines, one per change that matters; with --keep-running the station and its API stay
up until Ctrl-C."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.mounting import require_volume_mounts

DEMO = [sys.executable, "-m", "edge.cli", "demo", "--recorders", "2", "--files", "2", "--file-mb", "0.5",
        "--no-central"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env() -> dict[str, str]:
    return {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "40"}


def run_in_pty(argv: list[str], timeout_s: float = 120) -> tuple[int, str]:
    """Run `argv` with a real pseudo-terminal as its stdin, stdout and stderr; its exit status and all it
    wrote there."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=_env(),
                               close_fds=True)
    os.close(terminal)
    shown = bytearray()
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], timeout_s)
            assert ready, "the command fell silent"
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command closed the terminal (it exited)
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        code = process.wait(timeout=60)
    return code, shown.decode("utf-8", errors="replace")


def test_on_a_terminal_each_bay_gets_a_live_progress_bar_and_the_summary_is_a_table(tmp_path: Path) -> None:
    require_volume_mounts()
    code, text = run_in_pty([*DEMO, "--workdir", str(tmp_path / "demo")])
    assert code == 0, text[-3000:]
    assert "\x1b[?25l" in text, "rich hides the cursor while it draws the live bars"
    assert "━" in text, "progress bars"
    plain = ANSI.sub("", text)
    assert re.search(r"bay\s+1 张伟 110001 +done: take the recorder", plain), plain[-3000:]
    assert re.search(r"bay\s+2 王芳 110002 +done: take the recorder", plain)
    assert "2/2 files" in plain
    assert "┏" in plain and "Docked recorders" in plain, "the summary is a table"
    assert "dock screen: http://127.0.0.1:" in plain


def test_into_a_pipe_the_output_is_plain_lines(tmp_path: Path) -> None:
    require_volume_mounts()
    done = subprocess.run([*DEMO, "--workdir", str(tmp_path / "demo"), "--json"], capture_output=True,
                          text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "\x1b" not in done.stdout
    bay_lines = [line for line in done.stdout.splitlines() if line.startswith("bay ")]
    # One line per state or file count that changed: authenticating, copying 0..2 files, verifying, done.
    for bay, officer in ((1, "张伟 110001"), (2, "王芳 110002")):
        mine = [line for line in bay_lines if line.startswith(f"bay {bay}:")]
        assert mine[-1].startswith(f"bay {bay}: done: take the recorder, recorder ") and officer in mine[-1]
        assert "files 2/2" in mine[-1]
        assert len(mine) <= 8, mine
    assert json.loads(done.stdout.splitlines()[-1])["items"] == 4


def test_keep_running_keeps_the_station_and_its_api_up_until_ctrl_c(tmp_path: Path) -> None:
    require_volume_mounts()
    with subprocess.Popen([*DEMO, "--workdir", str(tmp_path / "demo"), "--keep-running"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()) as process:
        assert process.stdout is not None
        lines: list[str] = []
        try:
            for line in process.stdout:
                lines.append(line)
                if "press Ctrl-C" in line:
                    break
            else:
                raise AssertionError("".join(lines))
            url = next(re.search(r"dock screen: (http://\S+)/dock", line) for line in reversed(lines)
                       if "dock screen:" in line)
            assert url is not None
            with urllib.request.urlopen(url.group(1) + "/api/v1/status", timeout=10) as response:
                status = json.loads(response.read())
            assert [(b["bay"], b["state"]) for b in status["bays"]] == [("1", "done"), ("2", "done")]
            socket_line = next(line for line in lines if line.startswith("station API: "))
            socket_path = Path(socket_line.split()[2])
            assert socket_path.exists()
            process.send_signal(signal.SIGINT)
            rest = process.stdout.read()
            assert process.wait(timeout=60) == 0, "".join(lines) + rest
        finally:
            if process.poll() is None:
                process.kill()
    assert "stopping" in rest and "store verification: OK" in rest
    assert not socket_path.exists()
