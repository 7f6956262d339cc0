"""Review 25 (LOW): names of a room's devices in the configuration.

* A pulse input took any name: a source index (``0``), the default source or a name built from a card
  number, each going to whichever microphone the sound server finds first after a reboot, while v4l2 and
  alsa inputs must be stable names. Now pulse follows the same rule: a udev-named source only.
* One camera through its two stable links (``/dev/v4l/by-id/...`` and ``/dev/v4l/by-path/...``), or one
  ALSA device spelt ``hw:`` and ``plughw:``, in two sources was accepted: the second never starts (the
  device is busy). Now refused as one device (edge.config.capture_devices).
* Serial URLs were compared as text: ``socket://127.0.0.1:4001`` and ``socket://localhost:4001/`` (one
  serial server's port) passed as two lines. Now compared as the endpoint they name
  (edge.config.serial_lines).

Each refusal with its control: the same configuration on distinct devices is accepted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.config.base import ConfigError
from edge.config.capture_devices import check_capture_devices_apart
from edge.config.serial_lines import serial_line
from edge.config.station import parse_config
from tests.rooms.conftest import lavfi_source, rooms_config
from tests.serial.test_review23_serial_ports import BASE, _room

MIC = "alsa_input.usb-Generic_USB_Audio_200901010001-00.analog-stereo"


def _device(source_id: str, format_name: str, url: str) -> dict[str, Any]:
    return {"id": source_id, "codec": "encode", "input": [{"format": format_name, "url": url}]}


@pytest.mark.parametrize("url", [
    "0", "12", "default", "@DEFAULT_SOURCE@", "@DEFAULT_MONITOR@", "alsa_input.1.analog-stereo",
    "alsa_input.usb-../../etc/x", "alsa_input.usb-Mic 2.analog",
    "alsa_output.usb-Speaker-00.analog-stereo.monitor",
])
def test_a_pulse_source_must_be_named_stably(url: str) -> None:
    rooms_config(lavfi_source("a"), _device("mic", "pulse", MIC))  # control: a udev name
    rooms_config(lavfi_source("a"), _device("mic", "pulse", "alsa_input.pci-0000_00_1f.3.analog-stereo"))
    with pytest.raises(ValidationError, match="pulse source") as refused:
        rooms_config(lavfi_source("a"), _device("mic", "pulse", url))
    assert "pactl list short sources" in str(refused.value)


@pytest.fixture
def dev_root(tmp_path: Path) -> Path:
    """A /dev of its own: two cameras' nodes, and udev's two links to the first."""
    (tmp_path / "dev" / "v4l" / "by-id").mkdir(parents=True)
    (tmp_path / "dev" / "v4l" / "by-path").mkdir(parents=True)
    for node in ("video0", "video2"):
        (tmp_path / "dev" / node).touch()
    os.symlink("../../video0", tmp_path / "dev/v4l/by-id/usb-Cam_A_123-video-index0")
    os.symlink("../../video0", tmp_path / "dev/v4l/by-path/pci-0000:00:14.0-usb-0:1:1.0-video-index0")
    os.symlink("../../video2", tmp_path / "dev/v4l/by-id/usb-Cam_B_456-video-index0")
    return tmp_path


def test_one_camera_by_its_two_links_is_one_device(dev_root: Path) -> None:
    by_id = ("room xw-1 source close", "v4l2", "/dev/v4l/by-id/usb-Cam_A_123-video-index0")
    other = ("room xw-1 source wide", "v4l2", "/dev/v4l/by-id/usb-Cam_B_456-video-index0")
    by_path = ("room xw-2 source wide", "v4l2", "/dev/v4l/by-path/pci-0000:00:14.0-usb-0:1:1.0-video-index0")
    check_capture_devices_apart([by_id, other], root=dev_root)  # control: two cameras
    with pytest.raises(ValueError, match=r"same capture device .* both .*/dev/video0") as refused:
        check_capture_devices_apart([by_id, other, by_path], root=dev_root)
    assert "room xw-2 source wide and room xw-1 source close" in str(refused.value)


@pytest.mark.parametrize(("first", "second"), [
    (("v4l2", "/dev/v4l/by-id/usb-Cam_A_123-video-index0"),
     ("video4linux2", "/dev/v4l/by-id/usb-Cam_A_123-video-index0")),
    (("alsa", "hw:CARD=Mic,DEV=0"), ("alsa", "plughw:CARD=Mic,DEV=0")),
    (("alsa", "hw:CARD=Mic"), ("alsa", "hw:CARD=Mic,DEV=0")),
])
def test_one_device_in_two_sources_is_refused_by_the_configuration(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    distinct = ("alsa", "hw:CARD=Mic2,DEV=0") if first[0] == "alsa" else (
        "v4l2", "/dev/v4l/by-id/usb-Cam_B_456-video-index0")
    rooms_config(_device("a", *first), _device("b", *distinct))  # control: two devices
    with pytest.raises(ValidationError, match="same capture device"):
        rooms_config(_device("a", *first), _device("b", *second))


def test_shared_sound_sources_are_not_refused() -> None:
    rooms_config(_device("a", "alsa", "dsnoop:CARD=Mic,DEV=0"), _device("b", "alsa", "dsnoop:CARD=Mic,DEV=0"))
    rooms_config(_device("a", "pulse", MIC), _device("b", "pulse", MIC))


@pytest.mark.parametrize("second", ["socket://localhost:4001", "socket://LOCALHOST:4001/",
                                    "rfc2217://127.0.0.1:4001", "socket://[::1]:4001"])
def test_one_serial_server_port_spelt_twice_is_refused(second: str) -> None:
    control = BASE + "[rooms]\n" + _room("xw-1", "panel", "socket://127.0.0.1:4001") + _room(
        "xw-2", "ptz", "socket://127.0.0.1:4002")
    assert parse_config(control).rooms.room[1].ptz is not None  # control: two ports
    text = BASE + "[rooms]\n" + _room("xw-1", "panel", "socket://127.0.0.1:4001") + _room(
        "xw-2", "ptz", second)
    with pytest.raises(ConfigError, match="same port"):
        parse_config(text)


def test_serial_urls_name_their_endpoint() -> None:
    assert serial_line("socket://Panel.Example:4001") == serial_line("rfc2217://panel.example.:4001?x=1")
    assert serial_line("socket://panel.example:4001") != serial_line("socket://panel.example:4002")
    assert serial_line("socket://10.0.0.1:4001") != serial_line("socket://10.0.0.2:4001")
    assert serial_line("socket://[::1]:99999") == "socket://[::1]:99999"  # broken: its text
