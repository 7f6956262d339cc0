"""Run a child process whose output cannot exhaust memory and whose run cannot exceed a deadline.

A tool reading hostile input (ffprobe on a recorder's file) may print without end or hang. Its output
is read as it comes, never more than a bound (beyond it the child is killed and the result says so),
and at the deadline the child's whole process group is killed. Only the tail of stderr is kept.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class BoundedRun:
    returncode: int | None  # None when the child was killed (timeout or too much output)
    stdout: bytes
    stderr_tail: bytes
    timed_out: bool = False
    output_exceeded: bool = False


def run_bounded(
    argv: Sequence[str],
    *,
    timeout_s: float,
    max_output_bytes: int,
    max_error_bytes: int = 16 * 1024,
    env: Mapping[str, str] | None = None,
) -> BoundedRun:
    """Run `argv` with stdin from /dev/null; raises FileNotFoundError when the program is missing."""
    child = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=None if env is None else dict(env),
        start_new_session=True,  # its own process group: a kill reaches whatever it started
    )
    assert child.stdout is not None and child.stderr is not None
    out = bytearray()
    err = bytearray()
    deadline = time.monotonic() + timeout_s
    timed_out = exceeded = False
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ, out)
        selector.register(child.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, READ_CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer: bytearray = key.data
                buffer += chunk
                if buffer is err and len(err) > max_error_bytes:
                    del err[: len(err) - max_error_bytes]  # keep the tail: the last lines say why
                if buffer is out and len(out) > max_output_bytes:
                    exceeded = True
            if exceeded:
                break
    killed = timed_out or exceeded
    if killed:
        _kill_group(child)
    try:
        returncode = child.wait(timeout=max(0.0, deadline - time.monotonic()) + 5)
    except subprocess.TimeoutExpired:  # closed its pipes but lingers
        timed_out = killed = True
        _kill_group(child)
        returncode = child.wait()
    child.stdout.close()
    child.stderr.close()
    return BoundedRun(
        None if killed else returncode,
        bytes(out[:max_output_bytes]),
        bytes(err),
        timed_out=timed_out,
        output_exceeded=exceeded,
    )


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
