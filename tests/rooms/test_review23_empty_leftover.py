"""Review 23 (not tested there): an empty segment file (ffmpeg opened it and was stopped or killed before
it wrote a byte) left a stopped session "unfinished" for ever.

A stopped session's capture directory goes once nothing in it awaits sealing (SessionFiles.clear_capture),
and its presence makes every start of the agent try to finish the session (RoomService._left_unfinished).
The sealer never takes an empty file (leftover_segments skips it: it holds nothing), so a 0-byte .mp4
kept the directory, and the session unfinished, at every start from then on. Now an empty regular file
does not count as awaiting sealing. Control: a segment file of one byte keeps the directory (it awaits
sealing), and so does a link named like a segment (never followed, never taken for empty).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.rooms.state import SessionFiles

SESSION = "xw-1-20261205T100000Z-abcdef"


@pytest.mark.parametrize("content", ["empty", "one byte", "link to an empty file"])
def test_an_empty_segment_file_does_not_keep_a_stopped_session_unfinished(
    tmp_path: Path, content: str
) -> None:
    files = SessionFiles(tmp_path / "store")
    files.prepare()
    run_dir = files.run_dir(SESSION, "a", "run-20261205T100000.000000Z-0a1b2c")
    run_dir.mkdir(parents=True)
    (run_dir / "segments.csv").write_text("seg-000000.mp4,0.000000,1.000000\n")
    segment = run_dir / "seg-000001.mp4"
    if content == "empty":
        segment.write_bytes(b"")
    elif content == "one byte":
        segment.write_bytes(b"\0")
    else:
        (tmp_path / "outside.mp4").write_bytes(b"")
        segment.symlink_to(tmp_path / "outside.mp4")
    left = files.clear_capture(SESSION)
    if content == "empty":
        assert left == [] and not (files.capture_dir / SESSION).exists()
    else:  # control: what may await sealing keeps the directory
        assert left == ["a/run-20261205T100000.000000Z-0a1b2c/seg-000001.mp4"]
        assert segment.is_symlink() or segment.read_bytes() == b"\0"
    assert (tmp_path / "outside.mp4").exists() or content != "link to an empty file"
