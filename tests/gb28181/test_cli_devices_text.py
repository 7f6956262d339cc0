"""`edge gb28181 devices` prints the download counters a person needs to see why recordings are not
(yet) on the station: interrupted, given up, still recording, listed under another channel."""

from __future__ import annotations

import io

from edge.gb28181.cli import print_devices

DEVICE = "34020000001320000016"


def _printed(downloads: dict[str, object]) -> str:
    view = {"sip_id": "34020000002000000001", "domain": "3402000000", "port": 5060,
            "devices": [{"device_id": DEVICE, "online": True, "channels": [], "sessions": []}],
            "downloads": {DEVICE: downloads}}
    out = io.StringIO()
    print_devices(view, out)
    return out.getvalue()


def test_problem_counters_are_shown_when_they_happened() -> None:
    text = _printed({"state": "idle", "done": 3, "incomplete": 1, "interrupted": 2, "given_up": 1,
                     "future": 4, "wrong_channel": 5, "last_problem": "RecordInfo failed\x1b[2J"})
    line = next(row for row in text.splitlines() if "downloads:" in row)
    assert "3 done" in line and "1 incomplete" in line
    assert "2 interrupted" in line and "1 given up" in line
    assert "4 still recording" in line and "5 listed under another channel" in line
    assert "\x1b" not in text  # device-supplied text is escaped


def test_control_a_quiet_device_shows_no_problem_counters() -> None:
    line = next(row for row in _printed({"state": "idle", "done": 3, "interrupted": 0, "given_up": 0,
                                         "future": 0, "wrong_channel": 0}).splitlines()
                if "downloads:" in row)
    assert "3 done" in line
    assert not any(word in line for word in ("interrupted", "given up", "still recording", "another channel"))
