"""The simulator as a board: raw frames in over the pty, the replies the protocol document promises."""

from __future__ import annotations

import os
import select
from collections.abc import Callable, Iterator

import pytest
import serial
from dock_helpers import frame

from drivers.serial.dock_protocol import (
    PROTOCOL_VERSION,
    BayLed,
    BootEvent,
    DockProtocolError,
    IdentityReply,
    InsertedEvent,
    LedReply,
    LineFramer,
    Message,
    NakReason,
    NakReply,
    PingCommand,
    PingReply,
    SetLedCommand,
    decode_line,
)
from simulators.dock import DockSimulator, DockSimulatorError

MakeSim = Callable[..., DockSimulator]


class RawHost:
    """A bare-bones host: pyserial plus the codec, no driver logic in the way."""

    def __init__(self, url: str) -> None:
        self.port = serial.serial_for_url(url, timeout=2.0)
        self.framer = LineFramer()
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.port.write(data)

    def receive(self) -> Message:
        while not self.pending:
            chunk = self.port.read(self.port.in_waiting or 1)
            assert chunk, "no reply from the simulator within 2 s"
            self.pending += self.framer.feed(chunk)
        return decode_line(self.pending.pop(0))

    def close(self) -> None:
        self.port.close()


@pytest.fixture
def host(make_sim: MakeSim) -> Iterator[tuple[DockSimulator, RawHost]]:
    sim = make_sim(8, board_serial="RAW-1", firmware="fw-9")
    raw = RawHost(sim.tty_path)
    yield sim, raw
    raw.close()


def test_boot_is_sent_at_power_up_and_on_reboot(make_sim: MakeSim) -> None:
    sim = make_sim(3, board_serial="B-1", firmware="f")
    # pyserial flushes input when it opens a port, so read the power-up BOOT straight from the tty.
    fd = os.open(sim.tty_path, os.O_RDONLY | os.O_NOCTTY)
    try:
        framer = LineFramer()
        lines: list[bytes] = []
        while not lines:
            readable, _, _ = select.select([fd], [], [], 2.0)
            assert readable, "no BOOT within 2 s"
            lines = framer.feed(os.read(fd, 256))
        assert decode_line(lines[0]) == BootEvent(PROTOCOL_VERSION, 3, "B-1", "f")
    finally:
        os.close(fd)
    raw = RawHost(sim.tty_path)
    try:
        sim.reboot()
        assert raw.receive() == BootEvent(PROTOCOL_VERSION, 3, "B-1", "f")
    finally:
        raw.close()


def test_answers_and_naks(host: tuple[DockSimulator, RawHost]) -> None:
    sim, raw = host
    cases: list[tuple[bytes, Message]] = [
        (frame("10,VER"), IdentityReply(10, PROTOCOL_VERSION, 8, "RAW-1", "fw-9")),
        (frame("11,PING"), PingReply(11, 0)),
        (frame("12,LED,8,DONE"), LedReply(12, 8, BayLed.DONE)),
        (frame("13,LED,9,DONE"), NakReply(13, "LED", NakReason.RANGE)),  # legal on the wire, not here
        (frame("14,LED,33,DONE"), NakReply(14, "LED", NakReason.RANGE)),
        (frame("15,LED,1,BLINK"), NakReply(15, "LED", NakReason.VALUE)),
        (frame("16,LED,1"), NakReply(16, "LED", NakReason.SYNTAX)),
        (frame("17,FOO,1"), NakReply(17, "FOO", NakReason.UNKNOWN)),
        (frame("18,ACK,PING,0"), NakReply(18, "ACK", NakReason.UNKNOWN)),  # board-to-host token
        (frame("19,REM,1"), NakReply(19, "REM", NakReason.UNKNOWN)),
        (frame("20"), NakReply(20, "?", NakReason.SYNTAX)),
    ]
    for request, expected in cases:
        raw.send(request)
        assert raw.receive() == expected, request
    assert sim.led(8) is BayLed.DONE
    assert sim.stats.naks_sent == 8


@pytest.mark.parametrize(
    "garbage",
    [
        b"$21,PING*0000\r\n",  # bad CRC: nothing in it is trusted, not even the number
        b"\x00\xff\xfe junk \r\n",
        b"$" + b"A" * 400 + b"\r\n",  # over-long
        b"$21,PI",  # cut short by the next frame's '$'
        frame("x,PING"),  # CRC fine but no readable number to NAK with
    ],
)
def test_bad_frames_get_no_answer(host: tuple[DockSimulator, RawHost], garbage: bytes) -> None:
    sim, raw = host
    raw.send(garbage + PingCommand(22).to_bytes())
    assert raw.receive() == PingReply(22, 0)  # the first thing back answers the good frame
    stats = sim.stats
    assert stats.bad_frames + stats.junk_bytes_received > 0
    assert stats.naks_sent == 0


def test_retransmission_counts_once_in_history(host: tuple[DockSimulator, RawHost]) -> None:
    sim, raw = host
    for request in (SetLedCommand(30, 1, BayLed.IDLE), SetLedCommand(30, 1, BayLed.IDLE),
                    SetLedCommand(31, 1, BayLed.IDLE), SetLedCommand(31, 1, BayLed.DONE)):
        raw.send(request.to_bytes())
        assert isinstance(raw.receive(), LedReply)
    assert sim.led_history(1) == [BayLed.IDLE, BayLed.IDLE, BayLed.DONE]


def test_events_carry_consecutive_numbers_and_status_reflects_them(
    host: tuple[DockSimulator, RawHost]
) -> None:
    sim, raw = host
    sim.insert(2, 40)
    sim.set_charge(2, 41)
    sim.remove(2)
    sim.insert(2, None)
    got = [raw.receive() for _ in range(4)]
    assert [m.seq for m in got] == [1, 2, 3, 4]
    assert got[3] == InsertedEvent(4, 2, None)
    raw.send(frame("40,STA"))
    status = raw.receive()
    assert status.to_bytes().startswith(b"$40,ACK,STA,4,8,0O0,1O2,0O0,")


def test_control_api_refuses_impossible_actions(make_sim: MakeSim) -> None:
    sim = make_sim(2)
    with pytest.raises(DockSimulatorError, match=r"bay must be 1\.\.2, got 3"):
        sim.insert(3)
    with pytest.raises(DockSimulatorError, match="is empty"):
        sim.remove(1)
    with pytest.raises(DockSimulatorError, match="is empty"):
        sim.set_charge(1, 5)
    sim.insert(1, 5)
    with pytest.raises(DockSimulatorError, match="already holds"):
        sim.insert(1)
    with pytest.raises(DockSimulatorError, match=r"0\.\.100"):
        sim.set_charge(1, 101)
    with pytest.raises(ValueError):
        DockSimulator(33)
    with pytest.raises(DockProtocolError, match="board serial"):
        DockSimulator(2, board_serial="has space")
    with pytest.raises(ValueError, match="reply_delay_s"):
        DockSimulator(2, reply_delay_s=-1)


def test_tty_path_needs_start() -> None:
    sim = DockSimulator(2)
    with pytest.raises(DockSimulatorError, match="not started"):
        _ = sim.tty_path
    with sim:
        assert sim.tty_path.startswith("/dev/")
    sim.stop()  # idempotent
