"""Review 23 (#9): a room microphone that cannot be opened (busy: another program holds the ALSA device;
unplugged; its card gone after a USB reset) takes the camera recorded beside it down for as long as it
lasts.

A source is one ffmpeg over all its inputs (edge.rooms.argv.segment_argv), and the shipped example
(config/station.toml, source "overview") is a V4L2 camera *and* the room microphone. ffmpeg cannot open an
input, so it exits at once; the supervisor restarts it every restart_backoff_max_s, each time refused: the
overview camera, which works, records nothing for the rest of the session, and the gap says "ffmpeg
exited ... cannot open audio device". A fault of the microphone costs the picture (and the other way
round: a camera that fails takes the sound). Evidence that could have been recorded is not.

Fixed by configuration (edge.config.rooms.RoomSourceConfig): a local capture device (v4l2, alsa, pulse)
is the only input of its source, so a camera and its microphone are two sources, two ffmpegs, and the
fault of one is a gap of that one. A source pairing a device with another input is refused at load,
naming the fix.

Real ffmpeg with a real ALSA input (a card that is not there: the same open error as a busy or unplugged
one) as a source of its own beside a generated camera: the camera records while the microphone's source is
in a gap. Control: the camera alone records; and the pairing, refused, loads once split.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from pydantic import ValidationError

from edge.config.rooms import RoomSourceConfig
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

CAMERA: dict[str, Any] = {"format": "lavfi", "url": "testsrc2=size=160x120:rate=25", "realtime": True}
MICROPHONE: dict[str, Any] = {"format": "alsa", "url": "hw:CARD=EvidenceEdgeNoMic,DEV=0"}
USB_CAMERA: dict[str, Any] = {"format": "v4l2", "url": "/dev/v4l/by-id/usb-Camera_Overview-video-index0"}


@pytest.mark.parametrize("camera", [CAMERA, USB_CAMERA], ids=["generated", "usb"])
def test_a_source_pairing_a_capture_device_with_another_input_is_refused(camera: dict[str, Any]) -> None:
    refused = (r"source overview: a local capture device \(.*input 2 alsa\) beside other inputs.*"
               r"Give each capture device a source of its own")
    with pytest.raises(ValidationError, match=refused):
        rooms_config({"id": "overview", "input": [camera, MICROPHONE]})
    # Control: the same inputs as two sources load.
    split = rooms_config({"id": "overview", "input": [camera]}, {"id": "microphone", "input": [MICROPHONE]})
    assert [s.id for s in split.room[0].source] == ["overview", "microphone"]
    # A network camera's own sound, and a camera with a generated tone, are one source.
    assert RoomSourceConfig.model_validate({"id": "cam", "input": [
        {"url": "rtsp://192.0.2.10/ch1"}, {"format": "lavfi", "url": "sine=frequency=440"}]}).input


@pytest.mark.parametrize("with_microphone", [False, True])
async def test_a_microphone_that_cannot_be_opened_does_not_take_the_camera_down(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, with_microphone: bool
) -> None:
    sources: list[dict[str, Any]] = [{"id": "overview", "name": "全景", "codec": "encode", "input": [CAMERA]}]
    if with_microphone:
        sources.append({"id": "microphone", "name": "话筒", "codec": "encode", "input": [MICROPHONE]})
    config = rooms_config(*sources)
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:
        with contextlib.suppress(TimeoutError):
            await watch.until(lambda: len(watch.of("segment_sealed", source="overview")) >= 3, timeout_s=30)
    finally:
        runs = recording.sources["overview"].runs
        recording.stop()
        await asyncio.wait_for(task, 60)
    sealed = len(watch.of("segment_sealed", source="overview"))
    reasons = sorted({e.data["reason"][-120:] for e in watch.of("gap", source="overview")})
    assert sealed >= 3, (
        f"the overview camera recorded {sealed} segment(s) in 30 s ({runs} ffmpeg runs) because its "
        f"microphone could not be opened: {reasons}")
    if with_microphone:  # the microphone's own fault is on the record, as its own gap
        opened = watch.of("gap", source="microphone", state="open")
        assert opened and "cannot open audio device" in opened[0].data["reason"]
