"""Review 23 (#11): a room recorded by USB cameras cannot show the time in its recording.

The rules (shared/reference/rooms.md A1): courts "应当采取叠加同步录制时间" (the recording time burnt in,
法释〔2017〕5号 Art. 4), 检察院 rooms show "同步录像时间" in a picture-in-picture. The only place the station
burns in the time is the composite (edge.rooms.composite), and edge.config.room_composite refuses a
composite over any input one process can open: every V4L2 camera and every ALSA microphone. So the room PC
of the shipped example (config/station.toml: a V4L2 overview camera and its microphone) and any room
wired with USB cameras records without the time shown, and can be configured no other way (the originals
are never overlaid); nothing says so when the configuration loads, and a room without a composite at all
is accepted silently too.

Configuration test. Control: the same composite over a network camera is accepted.
"""

from __future__ import annotations

import pytest

from edge.config.station import parse_config

BASE = """
[station]
id = "ROOM-PC"
store_dir = "/tmp/store"
[usb]
mount_root = "/tmp/mnt"
[rooms]
[[rooms.room]]
id = "xw-1"
name = "第一询问室"
address = "文三路 100 号"
[[rooms.room.source]]
id = "overview"
[[rooms.room.source.input]]
{camera}
[rooms.room.composite]
main = "overview"
audio = false
overlay = true
"""
USB_CAMERA = 'format = "v4l2"\nurl = "/dev/v4l/by-id/usb-Camera_Overview-video-index0"'
NETWORK_CAMERA = 'url = "rtsp://192.0.2.10:554/Streaming/Channels/101"'


@pytest.mark.parametrize("camera", [NETWORK_CAMERA, USB_CAMERA], ids=["network", "usb"])
def test_a_room_can_show_the_recording_time_whatever_its_cameras(camera: str) -> None:
    room = parse_config(BASE.format(camera=camera)).rooms.room[0]
    assert room.composite is not None and room.composite.overlay
