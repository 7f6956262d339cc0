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

from edge.custody.canonical import canonical_json
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
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
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    camera: dict[str, Any] = {
        "id": "closeup", "codec": "encode",
        "input": [{"url": f"rtsp://admin:{PASSWORD}@127.0.0.1:{_closed_port()}/Streaming/Channels/101",
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
