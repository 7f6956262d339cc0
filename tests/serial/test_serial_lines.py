"""Two ports that name one serial line are one line (edge.config.serial_lines): a by-id symlink and the
node it points at, a doubled slash. A real pty stands in for the adapter's node; the symlink is a real one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config.serial_lines import check_serial_lines_apart, serial_line


@pytest.fixture
def pty_node() -> Iterator[str]:
    leader, follower = os.openpty()
    try:
        yield os.ttyname(follower)
    finally:
        os.close(follower)
        os.close(leader)


def test_a_symlink_to_a_line_is_that_line(pty_node: str, tmp_path: Path) -> None:
    alias = tmp_path / "usb-1a86_USB_Serial-if00-port0"
    alias.symlink_to(pty_node)
    check_serial_lines_apart([("panel", pty_node), ("dock", "/dev/ttyUSB9")])  # control: two lines
    with pytest.raises(ValueError, match="same port"):
        check_serial_lines_apart([("panel", pty_node), ("ptz", str(alias))])


def test_a_port_that_does_not_exist_yet_is_compared_by_its_normalised_path() -> None:
    assert serial_line("/dev//ttyUSB7") == serial_line("/dev/ttyUSB7")
    assert serial_line("/dev/ttyUSB7") != serial_line("/dev/ttyUSB8")
    assert serial_line("socket://127.0.0.1:4001") != serial_line("socket://127.0.0.1:4002")
