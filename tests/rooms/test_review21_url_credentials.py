"""Review 21 (#1): a camera's credentials in its URL's path or query, not its userinfo.

XMEye-style cameras take them as ``rtsp://host:554/user=admin&password=secret&channel=1&stream=0.sdp``,
MJPEG cameras as ``http://cam/video.cgi?user=admin&pwd=secret``. The configuration refused only
``user:password@``, so such a URL loaded with the password written in the file, and ffmpeg's error lines
("URL: Connection refused") carried it into a gap's reason: the ledger, the log and the status.

Now: a credential parameter is refused at load (the error names the room and source, never the value)
unless its value is the placeholder ``{username}``/``{password}``, filled when ffmpeg starts from the
source's secret references; whatever quotes the URL masks the filled values. Real ffmpeg, a real TCP port
nobody listens on, the real pipeline, store and ledger.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from edge.config.base import ConfigError, parse_toml_model
from edge.config.rooms import RoomsSection
from edge.custody.canonical import canonical_json
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.argv import redact_url_userinfo
from edge.rooms.recording import SessionRecording, resolved_inputs
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.test_review18_secrets import _closed_port

pytestmark = pytest.mark.usefixtures("ffmpeg")

PASSWORD = "Xm9eyeS3cret"


def _rooms_toml(input_lines: str) -> RoomsSection:
    text = ('[[room]]\nid = "xw-1"\nname = "第一询问室"\naddress = "文三路 100 号"\n'
            '[[room.source]]\nid = "closeup"\n[[room.source.input]]\n' + input_lines)
    return parse_toml_model(text, "station.toml", RoomsSection)


@pytest.mark.parametrize("url", [
    f"rtsp://192.0.2.10:554/user=admin&password={PASSWORD}&channel=1&stream=0.sdp",
    f"rtsp://192.0.2.10:554/user=admin_password={PASSWORD}_channel=1_stream=0.sdp",
    f"http://192.0.2.11/video.cgi?user=admin&pwd={PASSWORD}",
    f"http://192.0.2.11/videostream.cgi?loginuse=admin&LoginPas={PASSWORD}",
    f"rtsp://192.0.2.10/live?channel=1&PassWord={PASSWORD}",
])
def test_credentials_in_a_urls_path_or_query_are_refused_naming_room_and_source(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _rooms_toml(f'url = "{url}"\n')
    message = str(refused.value)
    assert "room xw-1, source closeup, input 1: url carries credentials in its path or query" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("url", [
    "rtsp://192.0.2.10:554/user={username}&password={password}&channel=1&stream=0.sdp",
    "rtsp://192.0.2.10:554/user={username}_password={password}_channel=1_stream=0.sdp",
    "http://192.0.2.11/video.cgi?user={username}&pwd={password}",
])
def test_the_same_urls_with_placeholders_and_references_load(url: str) -> None:
    """Control of the refusal above: the path is the same, the credentials are references."""
    loaded = _rooms_toml(f'url = "{url}"\nusername = "env:CAM_USER"\npassword = "env:CAM_PASSWORD"\n')
    assert loaded.room[0].source[0].input[0].url == url


def test_a_placeholder_without_its_reference_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"placeholder \{password\}"):
        _rooms_toml('url = "rtsp://192.0.2.10/user={username}&password={password}"\nusername = "env:U"\n')


def test_placeholders_are_filled_for_ffmpeg_and_masked_wherever_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAM_USER", "admin")
    monkeypatch.setenv("CAM_PASSWORD", PASSWORD + "&x=1")  # a character that would end the parameter
    config = _rooms_toml('url = "rtsp://192.0.2.10:554/user={username}&password={password}&channel=1"\n'
                         'username = "env:CAM_USER"\npassword = "env:CAM_PASSWORD"\n')
    inputs, redact = resolved_inputs(config.room[0].source[0].input)
    assert inputs[0].url == f"rtsp://192.0.2.10:554/user=admin&password={PASSWORD}%26x%3D1&channel=1"
    quoted = redact(f"[rtsp @ 0x55] method DESCRIBE failed: 401 Unauthorized\n{inputs[0].url}: Invalid data")
    assert PASSWORD not in quoted and "user=admin" not in quoted
    assert "rtsp://192.0.2.10:554/user=***&password=***&channel=1: Invalid data" in quoted
    # The general redaction (a gap's reason, a log line) masks such parameters in any URL it sees.
    assert redact_url_userinfo(f"http://cam/video.cgi?user=admin&pwd={PASSWORD} failed") == (
        "http://cam/video.cgi?user=***&pwd=*** failed")


async def test_a_query_password_never_reaches_the_ledger_the_log_or_the_status(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ROOM_CAM_USER", "admin")
    monkeypatch.setenv("ROOM_CAM_PASSWORD", PASSWORD)
    camera: dict[str, Any] = {
        "id": "closeup", "codec": "encode",
        "input": [{"url": f"rtsp://127.0.0.1:{_closed_port()}/user={{username}}&password={{password}}"
                          "&channel=1&stream=0.sdp",
                   "username": "env:ROOM_CAM_USER", "password": "env:ROOM_CAM_PASSWORD",
                   "options": {"rtsp_transport": "tcp"}}],
    }
    config = rooms_config(lavfi_source("a"), camera)
    inputs, _ = resolved_inputs(config.room[0].source[1].input)
    assert f"password={PASSWORD}&" in inputs[0].url  # control: ffmpeg is given the password
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:
        opened = (await watch.until(lambda: watch.of("gap", source="closeup", state="open")))[0]
        await watch.until(lambda: recording.sources["closeup"].runs >= 2)
        status = json.dumps(recording.status(), ensure_ascii=False)
    finally:
        recording.stop()
        await asyncio.wait_for(task, 60)
    # Control: the gap quotes ffmpeg's words about the camera's URL (so the reason is what is checked).
    assert "Connection refused" in opened.data["reason"] and "channel=1" in opened.data["reason"], opened.data
    leaked = [e.seq for e in watch.entries if PASSWORD in canonical_json(e.data).decode()]
    assert leaked == [], f"the camera's password is in ledger entries {leaked}: {opened.data['reason']}"
    assert PASSWORD not in status, "the camera's password is in the operators' room status"
    assert PASSWORD not in caplog.text, "the camera's password is in the agent's log"
