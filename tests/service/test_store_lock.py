"""One process per store: the store lock between real processes, a holder killed with -9, hostile files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.durable.lock import LOCK_FILE_NAME, StoreBusy, StoreLock

_HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edge.durable.lock import StoreLock

    lock = StoreLock.acquire(Path(sys.argv[1]), purpose="lock holder under test")
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin (or kills us)
    lock.release()
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the lock of `tmp_path` until its stdin is closed."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "locked\n"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def test_a_second_process_is_refused_with_the_holders_name(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(StoreBusy) as refused:
        StoreLock.acquire(tmp_path, purpose="second process", advice="Stop it first.")
    message = str(refused.value)
    assert f"is in use by pid {holder.pid} (lock holder under test: " in message
    assert "only one process may write a store. Stop it first." in message
    assert refused.value.holder is not None and refused.value.holder.pid == holder.pid
    # Control: once the holder lets go, the same call succeeds and names us.
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    with StoreLock.acquire(tmp_path, purpose="second process") as lock:
        assert lock.held
        assert json.loads((tmp_path / LOCK_FILE_NAME).read_text())["command"].startswith("second process")
    assert (tmp_path / LOCK_FILE_NAME).read_text() == ""  # released: no stale name left behind


def test_a_holder_killed_with_sigkill_never_blocks_the_next_process(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=30) == -signal.SIGKILL
    # The dead process had no chance to clean up: its name is still in the file...
    stale = json.loads((tmp_path / LOCK_FILE_NAME).read_text())
    assert stale["pid"] == holder.pid
    # ...but the kernel released its lock, so the next process starts.
    with StoreLock.acquire(tmp_path, purpose="after the crash"):
        assert json.loads((tmp_path / LOCK_FILE_NAME).read_text())["pid"] != holder.pid


def test_the_same_process_cannot_open_a_store_twice(tmp_path: Path) -> None:
    with StoreLock.acquire(tmp_path, purpose="first"), pytest.raises(StoreBusy, match="first"):
        StoreLock.acquire(tmp_path, purpose="second")


def test_a_forged_holder_name_cannot_forge_lines_or_drive_a_terminal(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    # The lock is advisory: anyone who can write the file can put words in it. They are shown escaped.
    forged = {"pid": 1, "command": "edge run\nFAIL: store tampered\x1b[2J", "started": "\u202enow"}
    (tmp_path / LOCK_FILE_NAME).write_text(json.dumps(forged))
    with pytest.raises(StoreBusy) as refused:
        StoreLock.acquire(tmp_path, purpose="reader")
    message = str(refused.value)
    assert "\n" not in message and "\x1b" not in message and "\u202e" not in message
    assert "edge run\\u000aFAIL: store tampered\\u001b[2J" in message and "\\u202enow" in message
    (tmp_path / LOCK_FILE_NAME).write_bytes(b"\xff not json")
    with pytest.raises(StoreBusy, match="another process"):
        StoreLock.acquire(tmp_path, purpose="reader")


def test_a_symlink_planted_at_the_lock_path_is_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    store = tmp_path / "store"
    store.mkdir()
    (store / LOCK_FILE_NAME).symlink_to(target)
    with pytest.raises(OSError, match="symbolic link"):
        StoreLock.acquire(store, purpose="agent")
    assert not target.exists()
    (store / LOCK_FILE_NAME).unlink()
    (store / LOCK_FILE_NAME).mkdir()
    with pytest.raises(OSError):
        StoreLock.acquire(store, purpose="agent")
