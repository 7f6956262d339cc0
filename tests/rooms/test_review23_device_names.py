"""Review 23 (#8): a room source bound to a kernel enumeration name (``/dev/video0``, ALSA ``hw:1,0``)
records whichever device has that name now.

The kernel numbers V4L2 nodes and ALSA cards in the order it finds them: after a reboot (a resumed session
after a power cut), a camera unplugged and plugged back, or a hub reset, the close-up camera can come back
as /dev/video2 and the overview camera take /dev/video0 (a UVC camera makes two nodes, so the numbers
shift by two), and card 1 can be another microphone. The source then records the other camera or
microphone under its own id, name and case metadata, with no gap and nothing on the record saying which
device delivered (segments carry the configured source id only): evidence attributed to the wrong camera.
Or the name is gone and the source is in a gap for the rest of the session. The configuration accepts
these names without a word; config/station.toml's example uses the stable ones
(/dev/v4l/by-id/..., hw:CARD=NAME,DEV=N), which nothing requires.

Configuration test; control: the stable names are accepted.
"""

from __future__ import annotations

import pytest

from edge.config.base import ConfigError
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
id = "closeup"
[[rooms.room.source.input]]
format = "{fmt}"
url = "{url}"
"""


@pytest.mark.parametrize(("fmt", "url"), [
    ("v4l2", "/dev/v4l/by-id/usb-Camera_Closeup-video-index0"),
    ("v4l2", "/dev/v4l/by-path/pci-0000:00:14.0-usb-0:2:1.0-video-index0"),
    ("alsa", "hw:CARD=Mic,DEV=0"),
])
def test_the_control_a_stable_device_name_is_accepted(fmt: str, url: str) -> None:
    assert parse_config(BASE.format(fmt=fmt, url=url)).rooms.room[0].source[0].input[0].url == url


@pytest.mark.parametrize(("fmt", "url"), [("v4l2", "/dev/video0"), ("alsa", "hw:1,0"),
                                          ("alsa", "plughw:1,0")])
def test_a_kernel_enumeration_name_of_a_room_device_is_refused(fmt: str, url: str) -> None:
    with pytest.raises(ConfigError, match=r"by-id|CARD="):
        parse_config(BASE.format(fmt=fmt, url=url))
