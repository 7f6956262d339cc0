"""The [rooms] config, the session model and its files (edge.config.rooms, edge.rooms.session,
edge.rooms.state). Each refusal has a control that passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config.base import ConfigError
from edge.config.station import parse_config
from edge.rooms.session import RoomSession, SessionError, SessionState, apply_change, new_session
from edge.rooms.state import SessionFiles

BASE = """
[station]
id = "ROOM-PC"
store_dir = "/tmp/store"
[usb]
mount_root = "/tmp/mnt"
"""
ROOM = """
[rooms]
segment_time_s = 2.0
[[rooms.room]]
id = "xw-1"
name = "第一询问室"
address = "文三路 100 号"
[[rooms.room.source]]
id = "overview"
[[rooms.room.source.input]]
format = "lavfi"
url = "testsrc2=size=320x240:rate=25"
realtime = true
"""


def test_rooms_are_off_by_default_and_a_room_parses() -> None:
    assert parse_config(BASE).rooms.room == []
    config = parse_config(BASE + ROOM).rooms
    assert config.segment_time_s == 2.0
    room = config.room_by_id("xw-1")
    assert room is not None and room.source[0].input[0].realtime
    assert config.room_by_id("nope") is None


@pytest.mark.parametrize("change, expected", [
    ('id = "xw-1"', None),  # the control: as given it parses
    ('id = "../etc"', "id"),
    ('url = "testsrc2\\u0007"', "url"),
    ('realtime = true\noptions = { i = "/etc/passwd" }', "set by the station"),
    ('realtime = true\noptions = { "-map" = "0" }', "option name"),
    ('realtime = true\nextra = 1', "extra"),
    # review18 #4: ffmpeg's global and output options, file-reading filters and protocols are refused.
    ('realtime = true\noptions = { progress = "/tmp/p.txt" }', "option 'progress' is not an input option"),
    ('realtime = true\noptions = { copyts = "/tmp/copy.mp4" }', "option 'copyts' is not an input option"),
    ('realtime = true\noptions = { filter_script = "/tmp/f" }', "option 'filter_script'"),
    ('realtime = true\noptions = { thread_queue_size = "512" }', None),  # control: an input option
    ('url = "movie=/var/lib/evidence-edge/items/x.mp4"', "lavfi filter 'movie=/var/lib"),
    ('url = "testsrc2,amovie=/etc/passwd"', "lavfi filter 'amovie"),
    ('url = "testsrc2;[a]nullsink"', "lavfi filter"),
    ('url = "testsrc2=size=320x240:rate=25,realtime"', None),  # control: a paced source chain
])
def test_bad_room_config_is_refused_naming_the_key(change: str, expected: str | None) -> None:
    original = 'id = "xw-1"' if change.startswith("id =") else (
        'url = "testsrc2=size=320x240:rate=25"' if change.startswith("url") else "realtime = true")
    text = BASE + ROOM.replace(original, change, 1)
    if expected is None:
        parse_config(text)
        return
    with pytest.raises(ConfigError, match=expected):
        parse_config(text)


def test_two_rooms_with_one_id_are_refused() -> None:
    room = ROOM.split("[[rooms.room]]", 1)[1]
    parse_config(BASE + ROOM)  # control
    with pytest.raises(ConfigError, match="room ids must be unique"):
        parse_config(BASE + ROOM + "[[rooms.room]]" + room)


def _session(**fields: object) -> RoomSession:
    values: dict[str, object] = {"case_number": "京公（刑）立字〔2026〕123号", "collector": "张三",
                                 "subject": "询问过程", "persons": [{"name": "李四", "role": "被询问人"}]}
    values.update(fields)
    return new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号", fields=values,
                       started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")


def test_a_session_carries_the_case_and_survives_its_json_form() -> None:
    session = _session()
    assert session.state is SessionState.RECORDING
    assert session.case_block() == {
        "case_number": "京公（刑）立字〔2026〕123号", "location": "文三路 100 号 第一询问室",
        "collector": "张三", "collector_no": "", "subject": "询问过程"}
    assert RoomSession.from_json(session.to_json()) == session


@pytest.mark.parametrize("fields, message", [
    ({"case_number": ""}, "case_number is required"),
    ({"case_number": "A\u202e123"}, "control or formatting"),
    ({"case_number": "A\n1"}, "control or formatting"),
    ({"case_number": " A1"}, "white space"),
    ({"case_number": "x" * 65}, "longer than 64"),
    ({"case_number": "（）〔〕"}, "letters or digits"),
    ({"case_number": 12}, "must be text"),
    ({"collector": ""}, "collector is required"),
    ({"persons": [{"name": "李四"}]}, r"persons\[0\]"),
    ({"persons": "李四"}, "list"),
    ({"judge": "x"}, "unknown session field"),
])
def test_bad_session_input_is_refused_naming_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(SessionError, match=message):
        _session(**fields)


def test_a_change_says_what_changed_and_refuses_unknown_fields() -> None:
    session = _session()
    changed, diff = apply_change(session, {"subject": "询问及辨认过程", "collector": "张三"})
    assert changed.subject == "询问及辨认过程"
    assert diff == {"subject": {"from": "询问过程", "to": "询问及辨认过程"}}
    with pytest.raises(SessionError, match="cannot change: room"):
        apply_change(session, {"room": "xw-2"})
    with pytest.raises(SessionError, match="nothing changes"):
        apply_change(session, {"collector": "张三"})


def test_sessions_are_kept_in_files_and_a_planted_file_is_reported(tmp_path: Path) -> None:
    files = SessionFiles(tmp_path)
    files.prepare()
    session = _session()
    files.save(session)
    (files.sessions_dir / "planted.json").write_text("{}")
    (files.sessions_dir / f"{_session().session}.json").write_text(
        (files.path(session.session)).read_text())  # a session under another session's name
    loaded, problems = files.load()
    assert loaded == [session]
    assert sorted(name for name, _ in problems)[1] == "planted.json"
    assert any("names session" in why for _, why in problems)
    assert oct(files.path(session.session).stat().st_mode)[-3:] == "600"


@pytest.mark.parametrize("url, expected", [
    ("concat:/var/lib/evidence-edge/a.mp4|/etc/passwd", "url protocol 'concat'"),
    ("file:/etc/passwd", "url protocol 'file'"),
    ("subfile,,start,0,end,0,,:/etc/passwd", "url"),
    ("relative/path.mp4", "url must be a URL"),
    ("rtsp://192.0.2.10/ch1", None),  # controls: a camera, a local socket, an absolute path
    ("unix:/run/evidence-edge/gb28181-live/a.sock", None),
    ("/srv/input.mp4", None),
])
def test_a_non_device_input_reads_only_allowed_protocols(url: str, expected: str | None) -> None:
    text = BASE + ROOM.replace('format = "lavfi"\n', "", 1).replace(
        'url = "testsrc2=size=320x240:rate=25"', f'url = "{url}"', 1)
    if expected is None:
        assert parse_config(text).rooms.room[0].source[0].input[0].url == url
        return
    with pytest.raises(ConfigError, match=expected):
        parse_config(text)
