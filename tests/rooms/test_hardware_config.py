"""`[rooms.room.panel]` and `[rooms.room.ptz]` (edge.config.rooms): what a room's serial hardware may be
configured as; each refusal names the key and has a control that the same room is accepted without it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from edge.config.rooms import RoomsSection

SOURCE = {"id": "a", "input": [{"format": "lavfi", "url": "testsrc2"}]}
PANEL = {"port": "/dev/serial/by-id/usb-FTDI_FT232R_PANEL01-if00-port0"}
PTZ = {"port": "socket://192.0.2.7:4001", "address": 1, "preset": 2}
_CASE_KEY = "room.0.panel.start_case"
CASE = {"case_number": "A3301062026000123", "collector": "张三", "subject": "听证过程"}


def _rooms(*rooms: dict[str, Any]) -> RoomsSection:
    return RoomsSection.model_validate({"room": [
        {"id": f"r{n}", "name": f"第{n}询问室", "address": "文三路 100 号", "source": [SOURCE], **room}
        for n, room in enumerate(rooms, start=1)
    ]})


def test_a_room_with_panel_and_camera_is_accepted() -> None:
    room = _rooms({"panel": {**PANEL, "start_case": CASE}, "ptz": PTZ}).room[0]
    assert room.panel is not None and room.panel.start_case is not None
    assert room.panel.start_case.case_number == CASE["case_number"] and room.panel.baudrate == 115200
    assert room.ptz is not None and (room.ptz.address, room.ptz.preset, room.ptz.baudrate) == (1, 2, 2400)
    assert _rooms({}).room[0].panel is None  # both optional


@pytest.mark.parametrize(
    ("room", "key"),
    [
        ({"panel": {"port": "hwgrep://FTDI"}}, "room.0.panel.port"),  # opens whatever port matches
        ({"panel": {"port": "spy:///dev/ttyUSB0"}}, "room.0.panel.port"),
        ({"panel": {"port": "dev/ttyUSB0"}}, "room.0.panel.port"),
        ({"panel": {"port": "/dev/../etc/shadow"}}, "room.0.panel.port"),
        ({"panel": {"port": "/dev/ttyUSB0\n"}}, "room.0.panel.port"),
        ({"panel": {**PANEL, "baudrate": 0}}, "room.0.panel.baudrate"),
        ({"panel": {**PANEL, "colour": "red"}}, "room.0.panel.colour"),
        ({"panel": {**PANEL, "start_case": {**CASE, "case_number": ""}}}, f"{_CASE_KEY}.case_number"),
        ({"panel": {**PANEL, "start_case": {**CASE, "subject": "a\u202eb"}}}, f"{_CASE_KEY}.subject"),
        ({"panel": {**PANEL, "start_case": {"case_number": "X1"}}}, "room.0.panel.start_case.collector"),
        ({"ptz": {**PTZ, "address": 0}}, "room.0.ptz.address"),
        ({"ptz": {**PTZ, "address": 256}}, "room.0.ptz.address"),
        ({"ptz": {**PTZ, "preset": 0}}, "room.0.ptz.preset"),
        ({"ptz": {**PTZ, "baudrate": 115200}}, "room.0.ptz.baudrate"),
        ({"ptz": {"port": PTZ["port"], "address": 1}}, "room.0.ptz.preset"),
    ],
)
def test_bad_hardware_settings_are_refused_naming_the_key(room: dict[str, Any], key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _rooms(room)
    assert key in {".".join(str(p) for p in error["loc"]) for error in caught.value.errors()}, caught.value


def test_two_devices_cannot_share_a_port() -> None:
    with pytest.raises(ValidationError, match="room r2 panel and room r1 ptz use the same port"):
        _rooms({"ptz": {**PTZ, "port": PANEL["port"]}}, {"panel": PANEL})
    with pytest.raises(ValidationError, match="same port"):
        _rooms({"panel": PANEL, "ptz": {**PTZ, "port": PANEL["port"]}})
    # Control: two rooms, four ports.
    _rooms({"panel": PANEL, "ptz": PTZ},
           {"panel": {"port": "/dev/ttyUSB1"}, "ptz": {**PTZ, "port": "rfc2217://192.0.2.8:4001"}})
