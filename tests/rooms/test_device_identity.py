"""Which device a source's stable name is at the start of a run, for its segments' ``device`` tag
(edge.rooms.devices), read from a /dev and /proc laid out like the kernel's in a temporary root."""

from __future__ import annotations

import os
from pathlib import Path

from edge.config.rooms import RoomInputConfig
from edge.rooms.argv import SegmentPlan
from edge.rooms.devices import device_identity, device_metadata

CAMERA = RoomInputConfig(format="v4l2", url="/dev/v4l/by-id/usb-Camera_Closeup_0001-video-index0")
MICROPHONE = RoomInputConfig(format="alsa", url="hw:CARD=Mic,DEV=0")


def _camera_link(root: Path, target: str) -> None:
    link = root / "dev/v4l/by-id/usb-Camera_Closeup_0001-video-index0"
    link.parent.mkdir(parents=True, exist_ok=True)
    (root / "dev" / target).touch()
    os.symlink(f"../../{target}", link)


def _card(root: Path, name: str, number: str, card_id: str) -> None:
    (root / "proc/asound" / number).mkdir(parents=True)
    (root / "proc/asound" / number / "id").write_text(card_id + "\n")
    os.symlink(number, root / "proc/asound" / name)


def test_a_stable_name_is_recorded_with_the_node_and_card_it_is_now(tmp_path: Path) -> None:
    _camera_link(tmp_path, "video2")
    _card(tmp_path, "Mic", "card1", "Mic")
    assert device_identity(CAMERA, root=tmp_path) == f"{CAMERA.url} -> /dev/video2"
    assert device_identity(MICROPHONE, root=tmp_path) == "hw:CARD=Mic,DEV=0 -> card1 (Mic)"
    assert device_metadata([CAMERA], root=tmp_path) == {"device": f"{CAMERA.url} -> /dev/video2"}


def test_an_absent_device_is_recorded_as_absent_and_other_inputs_have_no_tag(tmp_path: Path) -> None:
    assert device_identity(CAMERA, root=tmp_path) == f"{CAMERA.url} -> absent"
    assert device_identity(MICROPHONE, root=tmp_path) == "hw:CARD=Mic,DEV=0 -> absent"
    generated = RoomInputConfig(format="lavfi", url="testsrc2")
    network = RoomInputConfig(url="rtsp://192.0.2.10/ch1")
    assert device_metadata([generated, network], root=tmp_path) == {}


def test_what_the_kernel_shows_of_a_device_is_quoted_as_one_printable_line(tmp_path: Path) -> None:
    # A card id comes from the USB descriptors: hostile text never breaks the segment's metadata.
    _card(tmp_path, "Mic", "card1", "Evil\nline\x1b[2J" + "x" * 500)
    identity = device_identity(MICROPHONE, root=tmp_path)
    assert identity is not None and identity.isprintable() and len(identity) < 300
    SegmentPlan(1.0, metadata=device_metadata([MICROPHONE], root=tmp_path))  # accepted as a tag
