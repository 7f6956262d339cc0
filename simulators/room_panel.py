"""Room panel simulator: the panel side of `drivers/serial/ROOM_PANEL_PROTOCOL.md` over a real pty.

The recording lamp, the START/STOP/MARK buttons and an optional temperature/humidity sensor. A test (or
a person at the CLI) presses buttons and sets the sensor's reading; the simulator answers the host's
commands and records every lamp state it was told (`lamp_history`). Faults are options and may change
while it runs (`faults`): junk before frames, bad checksums, dropped events, a hung panel (`silent`), a
restart with or without its BOOT. Randomness comes from one seeded generator.

Run on its own: `python -m simulators room-panel --help`.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from types import FrameType

from drivers.serial.room_panel_protocol import (
    PROTOCOL_VERSION,
    BootEvent,
    Button,
    ButtonEvent,
    IdentityQuery,
    IdentityReply,
    Lamp,
    LampReply,
    NakReason,
    NakReply,
    PanelProtocolError,
    PingCommand,
    PingReply,
    Reading,
    ReadingEvent,
    ReadingQuery,
    ReadingReply,
    SetLampCommand,
    decode_line,
    new_framer,
    next_seq,
)
from simulators.serial_pty import PtyDevice

log = logging.getLogger(__name__)

DEFAULT_READING = Reading(225, 480)  # 22.5 degC, 48.0 %RH
# The firmware's host watchdog (ROOM_PANEL_PROTOCOL.md section 5): no valid frame from the host this long
# while the lamp is STEADY turns it to BLINK, so a dead host never leaves "everything records" lit.
HOST_TIMEOUT_S = 10.0
_TICK_S = 0.1


@dataclass
class PanelFaults:
    garbage_every_n: int = 0  # junk bytes before every n-th frame sent (0 = never)
    bad_checksum_every_n: int = 0  # every n-th frame sent gets a wrong CRC (0 = never)
    drop_events_every_n: int = 0  # every n-th event is not sent; its number is used (0 = never)
    silent: bool = False  # answer nothing, send nothing: unplugged or hung


@dataclass
class PanelSimulatorStats:
    frames_received: int = 0
    bad_frames: int = 0
    naks_sent: int = 0
    events_sent: int = 0
    events_dropped: int = 0
    frames_corrupted: int = 0
    junk_bytes_sent: int = 0


class RoomPanelSimulator(PtyDevice):
    name = "room panel simulator"

    def __init__(
        self,
        *,
        seed: int = 0,
        panel_serial: str = "SIMPANEL-0001",
        firmware: str = "simpanel-1.0",
        sensor: bool = True,
        reading: Reading | None = DEFAULT_READING,
        reading_every_s: float | None = None,
        host_timeout_s: float = HOST_TIMEOUT_S,
        last_event_seq: int = 0,
        faults: PanelFaults | None = None,
    ) -> None:
        """`last_event_seq`: the panel's event number when the simulation starts (0 after power-up; a
        panel long in service, for the wrap past 65535)."""
        super().__init__()
        self.panel_serial = panel_serial
        self.firmware = firmware
        self.sensor = sensor
        self.faults = faults or PanelFaults()
        self.reading_every_s = reading_every_s
        self.host_timeout_s = host_timeout_s
        self.idle_interval_s = _TICK_S
        self._next_reading = time.monotonic() + (reading_every_s or 0.0)
        self._host_heard = time.monotonic()
        self.watchdog_trips = 0
        self._random = random.Random(seed)
        self._framer = new_framer()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._reading = reading
        if not 0 <= last_event_seq <= 65535:
            raise ValueError(f"last_event_seq must be 0..65535, got {last_event_seq}")
        self._event_seq = last_event_seq
        self._events_generated = 0
        self._frames_sent = 0
        self._lamp = Lamp.OFF
        self._lamp_history: list[Lamp] = [Lamp.OFF]  # dark at power-up
        self._stats = PanelSimulatorStats()

    def started(self) -> None:
        with self._lock:
            self._send(BootEvent(PROTOCOL_VERSION, self.panel_serial, self.firmware).to_bytes())

    # -- control API (tests, CLI) --------------------------------------------------------------------

    def press(self, button: Button) -> int:
        """A person presses `button`; returns the event number it was sent with."""
        with self._lock:
            seq = self._next_event_seq()
            self._emit(ButtonEvent(seq, Button(button)).to_bytes())
            return seq

    def set_reading(self, reading: Reading | None) -> None:
        """What the sensor measures now (None: the sensor stopped answering the panel)."""
        with self._lock:
            self._reading = reading

    def send_reading(self) -> None:
        """Send the current reading as an event now (what the periodic report does)."""
        with self._lock:
            if self.sensor and self._reading is not None:
                self._emit(ReadingEvent(self._next_event_seq(), self._reading).to_bytes())

    def reboot(self, *, announce: bool = True) -> None:
        """A watchdog reset: lamp dark, event numbers from 0, BOOT sent unless `announce` is False."""
        with self._lock:
            self._event_seq = 0
            self._show(Lamp.OFF, commanded=False)
            if announce:
                self._send(BootEvent(PROTOCOL_VERSION, self.panel_serial, self.firmware).to_bytes())

    def write_raw(self, data: bytes) -> None:
        """Put any bytes on the line (hostile-input tests)."""
        self.write(data)

    @property
    def lamp(self) -> Lamp:
        with self._lock:
            return self._lamp

    def lamp_history(self) -> list[Lamp]:
        """Every lamp state the panel showed, in order (a repeat without a change counts once)."""
        with self._lock:
            return list(self._lamp_history)

    def wait_for_lamp(self, lamp: Lamp, timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._lamp is lamp, timeout_s)

    @property
    def stats(self) -> PanelSimulatorStats:
        with self._lock:
            return replace(self._stats)

    @property
    def junk_bytes_received(self) -> int:
        return self._framer.discarded_bytes

    # -- the panel -----------------------------------------------------------------------------------

    def idle(self) -> None:
        now = time.monotonic()
        if self.reading_every_s is not None and now >= self._next_reading:
            self._next_reading = now + self.reading_every_s
            self.send_reading()
        with self._lock:
            if self._lamp is Lamp.STEADY and now - self._host_heard > self.host_timeout_s:
                self.watchdog_trips += 1
                log.warning("room panel simulator: nothing from the host for %.1f s: lamp BLINK",
                            self.host_timeout_s)
                self._show(Lamp.BLINK, commanded=False)

    def on_bytes(self, data: bytes) -> None:
        for line in self._framer.feed(data):
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        with self._lock:
            self._stats.frames_received += 1
            if self.faults.silent:
                return
            try:
                message = decode_line(line)
            except PanelProtocolError as exc:
                if exc.reason is None or exc.seq is None:
                    self._stats.bad_frames += 1
                    return
                self._host_heard = time.monotonic()
                self._nak(exc.seq, exc.command or "?", exc.reason)
                return
            self._host_heard = time.monotonic()
            if isinstance(message, PingCommand):
                self._send(PingReply(message.seq, self._event_seq).to_bytes())
            elif isinstance(message, IdentityQuery):
                self._send(IdentityReply(message.seq, PROTOCOL_VERSION, self.panel_serial, self.firmware,
                                         self.sensor).to_bytes())
            elif isinstance(message, SetLampCommand):
                self._show(message.lamp, commanded=True)
                self._send(LampReply(message.seq, message.lamp).to_bytes())
            elif isinstance(message, ReadingQuery):
                if not self.sensor:
                    self._nak(message.seq, message.COMMAND, NakReason.NOSENSOR)
                else:
                    self._send(ReadingReply(message.seq, self._reading).to_bytes())
            else:  # a reply or event: the host never sends these
                self._nak(message.seq, "?", NakReason.UNKNOWN)

    def _show(self, lamp: Lamp, *, commanded: bool) -> None:
        if not self._lamp_history or self._lamp_history[-1] is not lamp:
            self._lamp_history.append(lamp)
        self._lamp = lamp
        self._changed.notify_all()
        if commanded:
            log.debug("room panel simulator: lamp %s", lamp)

    def _nak(self, seq: int, command: str, reason: NakReason) -> None:
        self._stats.naks_sent += 1
        self._send(NakReply(seq, command, reason).to_bytes())

    def _next_event_seq(self) -> int:
        self._event_seq = next_seq(self._event_seq)
        return self._event_seq

    def _emit(self, frame: bytes) -> None:
        self._events_generated += 1
        every_n = self.faults.drop_events_every_n
        if every_n and self._events_generated % every_n == 0:
            self._stats.events_dropped += 1
            return
        if self._send(frame):
            self._stats.events_sent += 1

    def _send(self, frame: bytes) -> bool:
        faults = self.faults
        if faults.silent:
            return False
        self._frames_sent += 1
        if faults.bad_checksum_every_n and self._frames_sent % faults.bad_checksum_every_n == 0:
            star = frame.rindex(b"*")
            bad = (int(frame[star + 1 : star + 5], 16) + self._random.randint(1, 0xFFFF)) % 0x10000
            frame = frame[: star + 1] + b"%04X" % bad + frame[star + 5 :]
            self._stats.frames_corrupted += 1
        if faults.garbage_every_n and self._frames_sent % faults.garbage_every_n == 0:
            junk = bytes(self._random.randrange(256) for _ in range(self._random.randint(1, 24)))
            self._stats.junk_bytes_sent += len(junk)
            frame = junk + frame
        self.write(frame)
        return True


# -- command line -----------------------------------------------------------------------------------------

_COMMANDS_HELP = """\
commands on stdin: start | stop | mark (press a button), reading TEMP_C HUMIDITY_PCT, reboot, quit.
Output: the tty path first, then "lamp STATE" whenever the host changes the lamp.
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators room-panel", description="A room panel (lamp, buttons, sensor) on a pty.",
        epilog=_COMMANDS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sensor", action="store_true", help="a panel without the climate sensor")
    parser.add_argument("--reading-every", type=float, default=None, metavar="S",
                        help="send the sensor reading every S seconds")
    parser.add_argument("--garbage-every", type=int, default=0, metavar="N")
    parser.add_argument("--bad-checksum-every", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    faults = PanelFaults(garbage_every_n=args.garbage_every, bad_checksum_every_n=args.bad_checksum_every)
    with RoomPanelSimulator(seed=args.seed, sensor=not args.no_sensor, reading_every_s=args.reading_every,
                            faults=faults) as panel:
        print(panel.tty_path, flush=True)
        threading.Thread(target=_serve_stdin, args=(panel, stop), daemon=True).start()
        shown = 0
        while not stop.is_set():
            time.sleep(0.1)
            history = panel.lamp_history()
            for lamp in history[shown:]:
                print(f"lamp {lamp.value}", flush=True)
            shown = len(history)
    return 0


def _serve_stdin(panel: RoomPanelSimulator, stop: threading.Event) -> None:
    for line in sys.stdin:
        words = line.split()
        try:
            if not words:
                continue
            if words[0] in ("start", "stop", "mark"):
                print(f"ok event {panel.press(Button(words[0].upper()))}", flush=True)
            elif words[0] == "reading" and len(words) == 3:
                panel.set_reading(Reading(round(float(words[1]) * 10), round(float(words[2]) * 10)))
                panel.send_reading()
                print("ok", flush=True)
            elif words[0] == "reboot":
                panel.reboot()
                print("ok", flush=True)
            elif words[0] == "quit":
                stop.set()
                return
            else:
                print("error: unknown command", flush=True)
        except (ValueError, PanelProtocolError) as exc:
            print(f"error: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
