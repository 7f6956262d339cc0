"""`[equipment]` for the running desk: the card reader's line is checked like every serial line, and the PIN
rate limit is a sliding minute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.equipment.station_desk import PinRateLimit
from tests.station.harness import spec, station_config


def test_the_card_reader_cannot_share_the_dock_controllers_line(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"card reader \(\[equipment.card_reader\] port\) and dock"):
        station_config(tmp_path, [spec(0)], "/dev/ttyUSB0",
                       equipment={"enabled": True, "card_reader": {"port": "/dev/ttyUSB0"}})
    reader = {"port": "/dev/ttyUSB1", "framing": "stx"}  # the control: its own line
    config = station_config(tmp_path, [spec(0)], "/dev/ttyUSB0",
                            equipment={"enabled": True, "card_reader": reader})
    assert config.equipment.card_reader is not None and config.equipment.card_reader.framing == "stx"


@pytest.mark.parametrize("port, problem", [
    ("/dev/../etc/passwd", "must not contain . or .."),
    ("hwgrep://.*", "card_reader.port"),
    ("/dev/ttyUSB0", None),
])
def test_the_card_reader_port_is_a_device_node_or_a_network_url(tmp_path: Path, port: str,
                                                                 problem: str | None) -> None:
    equipment: dict[str, Any] = {"enabled": True, "card_reader": {"port": port}}
    if problem is None:
        assert station_config(tmp_path, [spec(0)], equipment=equipment).equipment.card_reader is not None
        return
    with pytest.raises(ValidationError, match=problem.replace(".", r"\.")):
        station_config(tmp_path, [spec(0)], equipment=equipment)


def test_the_pin_rate_limit_is_a_sliding_minute() -> None:
    now = [1000.0]
    limit = PinRateLimit(3, clock=lambda: now[0])
    for _ in range(3):  # at 1000, 1010, 1020
        assert limit.take() is None
        now[0] += 10.0
    assert limit.take() == pytest.approx(30.0)  # at 1030: the first leaves the minute at 1060
    now[0] = 1059.0
    assert limit.take() == pytest.approx(1.0)  # refused attempts take no place in the window
    now[0] = 1060.0
    assert limit.take() is None  # the first attempt left the window: one more is taken
    assert limit.take() == pytest.approx(10.0)  # and then the one of 1010 is the oldest
