"""Review 23 (#5, #6): the serial lines of a room's hardware on a production room PC.

* #5: the configuration refuses two room devices on one serial line by comparing the `port` strings
  (RoomsSection._consistent), so the same line spelt twice (``/dev/ttyUSB0`` and ``/dev//ttyUSB0``; in
  the field ``/dev/ttyUSB0`` and its ``/dev/serial/by-id/...`` name) passes, and the dock controller's
  `[dock] port` is not compared with the rooms' at all. Every driver opens its line exclusively
  (flock), so at run time one of them never gets it: the panel holds its line for good, so a PTZ camera
  on the same line is never sent to its preset; a dock controller and a room panel on one line take turns
  failing. The station starts as if all were well.
* #6: a room PC's own RS-232/RS-485 port (``/dev/ttyS0``, the COM port a lamp panel or a Pelco-D bus is
  wired to) is accepted by the configuration, but the shipped unit's DevicePolicy=closed allows only
  char-ttyUSB and char-ttyACM: the device cgroup refuses ``/dev/ttyS*`` (class ``ttyS``, major 4), so the
  panel never opens under systemd (the lamp stays dark, the buttons dead) while the same configuration
  works when the agent is run by hand.

Controls: the same port spelt the same way twice is refused; a USB adapter's class is allowed by the unit.
"""

from __future__ import annotations

import pytest

from edge.config.base import ConfigError
from edge.config.station import parse_config
from tests.service.test_unit_files import UNIT, parse_unit

BASE = """
[station]
id = "ROOM-PC"
store_dir = "/tmp/store"
[usb]
mount_root = "/tmp/mnt"
"""


def _room(room_id: str, kind: str, port: str) -> str:
    device = (f'[rooms.room.panel]\nport = "{port}"\n' if kind == "panel"
              else f'[rooms.room.ptz]\nport = "{port}"\naddress = 1\npreset = 1\n')
    return f"""
[[rooms.room]]
id = "{room_id}"
name = "询问室 {room_id}"
address = "文三路 100 号"
[[rooms.room.source]]
id = "overview"
[[rooms.room.source.input]]
format = "lavfi"
url = "testsrc2=size=320x240:rate=25"
realtime = true
{device}"""


@pytest.mark.parametrize("second", ["/dev/ttyUSB0", "/dev//ttyUSB0"])
def test_one_serial_line_spelt_twice_for_two_room_devices_is_refused(second: str) -> None:
    text = BASE + "[rooms]\n" + _room("xw-1", "panel", "/dev/ttyUSB0") + _room("xw-2", "ptz", second)
    with pytest.raises(ConfigError, match="same port"):
        parse_config(text)


def test_the_dock_controller_and_a_room_panel_on_one_line_is_refused() -> None:
    control = BASE + '[dock]\nport = "/dev/ttyUSB1"\n[rooms]\n' + _room("xw-1", "panel", "/dev/ttyUSB0")
    assert parse_config(control).dock.port == "/dev/ttyUSB1"  # control: two lines, accepted
    text = BASE + '[dock]\nport = "/dev/ttyUSB0"\n[rooms]\n' + _room("xw-1", "panel", "/dev/ttyUSB0")
    with pytest.raises(ConfigError, match="port"):
        parse_config(text)


@pytest.mark.parametrize(("port", "device_class"), [("/dev/ttyUSB0", "char-ttyUSB"),
                                                    ("/dev/ttyACM0", "char-ttyACM"),
                                                    ("/dev/ttyS0", "char-ttyS")])
def test_the_shipped_unit_lets_the_agent_open_every_serial_port_the_configuration_accepts(
    port: str, device_class: str
) -> None:
    config = parse_config(BASE + "[rooms]\n" + _room("xw-1", "panel", port))
    assert config.rooms.room[0].panel is not None and config.rooms.room[0].panel.port == port
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    allowed = {value.split()[0] for value in unit["Service"].get("DeviceAllow", [])}
    assert unit["Service"].get("DevicePolicy", ["auto"])[-1] == "closed"
    # /proc/devices names major 4 both "tty" and "ttyS": either class allows /dev/ttyS*.
    ok = device_class in allowed or (device_class == "char-ttyS" and "char-tty" in allowed)
    assert ok, (
        f"[rooms.room.panel] port = {port!r} is accepted, but {UNIT.name} (DevicePolicy=closed) has no "
        f"DeviceAllow={device_class}: the device cgroup refuses the panel's line under systemd")
