"""Review 18: an RTSP source's password (rtsp://user:password@camera/...) must not reach the ledger, the
logs or the operators' status. ffmpeg names the URL, credentials and all, in its own error lines
("rtsp://admin:PASSWORD@host: Connection refused"), and the station quotes those lines as a gap's reason:
on an append-only, centrally witnessed ledger the camera's password can never be taken back.

Real ffmpeg, a real TCP port nobody listens on (the camera is off), the real pipeline, store and ledger.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest

from edge.config.base import ConfigError, parse_toml_model
from edge.config.rooms import RoomsSection
from edge.custody.canonical import canonical_json
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording, resolved_inputs
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

PASSWORD = "Zq7s3cretPW"


def _closed_port() -> int:
    """A local TCP port nobody listens on: a camera that is switched off (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_rtsp_password_never_reaches_the_ledger_the_log_or_the_status(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Fix: the credentials are references (never in the file); the station merges them into the URL
    # ffmpeg is given, so ffmpeg names the URL with the password in its error lines exactly as before.
    monkeypatch.setenv("ROOM_CAM_USER", "admin")
    monkeypatch.setenv("ROOM_CAM_PASSWORD", PASSWORD)
    camera: dict[str, Any] = {
        "id": "closeup", "codec": "encode",
        "input": [{"url": f"rtsp://127.0.0.1:{_closed_port()}/Streaming/Channels/101",
                   "username": "env:ROOM_CAM_USER", "password": "env:ROOM_CAM_PASSWORD",
                   "options": {"rtsp_transport": "tcp"}}],
    }
    config = rooms_config(lavfi_source("a"), camera)
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
    # Control: the gap does carry ffmpeg's own words about the camera (so the reason is what is checked).
    assert "Connection refused" in opened.data["reason"], opened.data
    leaked = [e.seq for e in watch.entries if PASSWORD in canonical_json(e.data).decode()]
    assert leaked == [], f"the camera's password is in ledger entries {leaked}: {opened.data['reason']}"
    assert PASSWORD not in status, "the camera's password is in the operators' room status"
    assert PASSWORD not in caplog.text, "the camera's password is in the agent's log"


async def test_ffmpeg_is_given_the_password_the_reference_names(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control of the redaction: the camera's password does reach ffmpeg (so the test above checks a URL
    that carries it), in the run's argv only."""
    monkeypatch.setenv("ROOM_CAM_USER", "admin")
    monkeypatch.setenv("ROOM_CAM_PASSWORD", PASSWORD)
    camera = {"id": "closeup", "codec": "encode",
              "input": [{"url": f"rtsp://127.0.0.1:{_closed_port()}/x", "username": "env:ROOM_CAM_USER",
                         "password": "env:ROOM_CAM_PASSWORD"}]}
    config = rooms_config(camera)
    inputs, redact = resolved_inputs(config.room[0].source[0].input)
    assert inputs[0].url.startswith(f"rtsp://admin:{PASSWORD}@127.0.0.1:")
    assert redact(f"{inputs[0].url}: Connection refused") == (
        inputs[0].url.replace(PASSWORD, "***") + ": Connection refused")
    assert PASSWORD not in repr(config)


def _rooms_toml(input_lines: str) -> RoomsSection:
    text = ('[[room]]\nid = "xw-1"\nname = "第一询问室"\naddress = "文三路 100 号"\n'
            '[[room.source]]\nid = "closeup"\n[[room.source.input]]\n' + input_lines)
    return parse_toml_model(text, "station.toml", RoomsSection)


def test_a_url_with_credentials_in_the_file_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as refused:
        _rooms_toml(f'url = "rtsp://admin:{PASSWORD}@192.0.2.10:554/ch1"\n')
    assert "url carries credentials" in str(refused.value)
    assert PASSWORD not in str(refused.value)
    # Control: the same URL without userinfo, with references, loads.
    loaded = _rooms_toml('url = "rtsp://192.0.2.10:554/ch1"\nusername = "env:U"\npassword = "env:P"\n')
    assert loaded.room[0].source[0].input[0].password == "env:P"


def test_credentials_are_refused_for_a_device_input() -> None:
    with pytest.raises(ConfigError, match="username and password are for a URL input"):
        _rooms_toml('format = "alsa"\nurl = "hw:CARD=Mic,DEV=0"\nusername = "env:U"\n')
