"""Why ffmpeg ended, as a gap's reason says it (edge.rooms.capture.describe_exit)."""

from __future__ import annotations

import signal

from edge.rooms.capture import describe_exit


def test_a_killed_ffmpeg_is_named_by_its_signal_and_its_repeated_warnings_once() -> None:
    noise = ["[mp4 @ 0x55d0a1b2c3d0] malformed location metadata"] * 3
    reason = describe_exit(-signal.SIGKILL, noise)
    assert reason == "ffmpeg was killed by SIGKILL: [mp4] malformed location metadata (x3)"
    assert "0x55" not in reason


def test_an_exit_status_keeps_the_last_distinct_lines_and_no_control_characters() -> None:
    lines = ["one", "two", "[rtsp @ 0x1] 401 Unauthorized\x1b[31m", "three", "", "four"]
    reason = describe_exit(1, lines)
    assert reason.startswith("ffmpeg exited with status 1: ")
    assert reason.endswith("three | four") and "one" not in reason and "\x1b" not in reason
    # Control: nothing on stderr is the status alone.
    assert describe_exit(0, []) == "ffmpeg exited with status 0"
    assert describe_exit(-200, []) == "ffmpeg was killed by signal 200"
