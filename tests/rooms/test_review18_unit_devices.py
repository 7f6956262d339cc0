"""Review 18: the shipped edge-station.service cannot open a room PC's camera or microphone. The unit sets
DevicePolicy=closed and allows only the recorder and serial device classes (char-usb_device, char-ttyUSB,
char-ttyACM); V4L2 nodes (/dev/video*, class video4linux) and ALSA nodes (/dev/snd/*, class alsa) are
refused by the device cgroup, and the service user is in neither the `video` nor the `audio` group that
udev gives those nodes to (0660). So on an installed room PC every `format = "v4l2"` / `"alsa"` source of
config/station.toml's [rooms] example fails at once and for ever: a gap from the first second of every
session, whatever the operator does.

Consistency check of the shipped files, like tests/service/test_unit_files.py (this machine has no camera
to open under a real unit). Control: the recorder's device class, which the station needs, is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.service.test_unit_files import UNIT, parse_unit, words

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "station.toml"
# What ffmpeg opens for each input format of the rooms example: the device class (DeviceAllow=, from
# /proc/devices) and the group udev's default rules (50-udev-default.rules) give the nodes.
NEEDS = {"v4l2": ("char-video4linux", "video"), "alsa": ("char-alsa", "audio")}


def _example_formats() -> set[str]:
    """The input formats the commented [rooms] example of config/station.toml uses."""
    text = EXAMPLE.read_text(encoding="utf-8")
    return set(re.findall(r'^#\s*format\s*=\s*"([a-z0-9_]+)"', text, re.MULTILINE))


def test_the_control_the_unit_lets_the_station_open_its_recorders() -> None:
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    allowed = {value.split()[0] for value in unit["Service"].get("DeviceAllow", [])}
    assert "char-usb_device" in allowed and "plugdev" in words(unit, "Service", "SupplementaryGroups")


@pytest.mark.parametrize("fmt", sorted(NEEDS))
def test_the_shipped_unit_lets_ffmpeg_open_the_room_devices_the_example_uses(fmt: str) -> None:
    assert fmt in _example_formats(), f"the [rooms] example no longer uses {fmt}"
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    service = unit["Service"]
    device_class, group = NEEDS[fmt]
    allowed = {value.split()[0] for value in service.get("DeviceAllow", [])}
    policy = service.get("DevicePolicy", ["auto"])[-1]
    groups = set(words(unit, "Service", "SupplementaryGroups"))
    problems = []
    if policy in ("closed", "strict") and device_class not in allowed:
        problems.append(f"DevicePolicy={policy} without DeviceAllow={device_class}")
    if group not in groups:
        problems.append(f"the service user is not in group {group}")
    assert problems == [], f"a {fmt} room source cannot be opened under {UNIT.name}: {'; '.join(problems)}"
