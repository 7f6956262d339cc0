"""Dock bay controller simulator: the board side of `drivers/serial/DOCK_PROTOCOL.md` over a real pty.

`DockSimulator` opens a pseudo-terminal; the host (`DockDriver`) opens `.tty_path` exactly as it would open
`/dev/ttyUSB0`. A thread plays the MCU: it answers commands and sends events when a test (or a person at
the CLI) inserts or removes a recorder. Faults are options and can be changed while running through
`.faults`; randomness (junk bytes, write splits, default charges) comes from one seeded generator.

As unkind as a board in the field: line noise and cut-off frames (`garbage_every_n`), bad checksums,
split writes, lost events, a hung board (`silent`), slow replies, a watchdog reset in the middle of a
command with its `ACK` lost (`reset_every_n_leds`), a reset whose `BOOT` never reaches the host
(`reboot(announce=False)`), and old firmware that speaks protocol 1 or 2 and refuses the LED patterns
of later versions (`protocol=1`: the error-class patterns; `protocol=2`: BOUNCING; before 4: no PWR). It
records every LED state it was told (`led_history`) and what it showed over time, resets included
(`shown_history`), and each bay power cycle (`power_cycles`). A power cycle is handed to `on_power_cycle(bay,
off_ms)` in a thread of its own (`bay_power_to_bus` wires it to the recorder bus: the recorder in that bay is
unplugged and plugged again, and so re-enumerates in control mode).

Run it on its own: `python -m simulators dock --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

from drivers.serial.dock_protocol import (
    LEDS_BY_PROTOCOL,
    MAX_BAYS,
    POWER_CYCLE_PROTOCOL,
    PROTOCOL_VERSION,
    BayLed,
    BayState,
    BootEvent,
    ChargeEvent,
    DockProtocolError,
    IdentityQuery,
    IdentityReply,
    InsertedEvent,
    LedReply,
    LineFramer,
    NakReason,
    NakReply,
    PingCommand,
    PingReply,
    PowerCycleCommand,
    PowerCycleReply,
    RemovedEvent,
    SetLedCommand,
    StatusQuery,
    StatusReply,
    decode_line,
    next_seq,
)
from simulators.serial_pty import PtyDevice

log = logging.getLogger(__name__)

_SPLIT_PAUSE_S = 0.0005  # between pieces of a split write, so the host really reads them separately


class DockSimulatorError(Exception):
    """Misuse of the simulator's control API (insert into an occupied bay, bay out of range...)."""


@dataclass
class DockFaults:
    """Fault models; every field may be changed while the simulator runs."""

    garbage_every_n: int = 0  # before every n-th frame sent, junk bytes (0 = never)
    bad_checksum_every_n: int = 0  # every n-th frame sent gets a wrong CRC (0 = never)
    split_writes: bool = False  # write each frame in random small pieces
    drop_events_every_n: int = 0  # every n-th event is not sent; its number is still used (0 = never)
    silent: bool = False  # answer nothing and send nothing: a hung or unplugged board
    reply_delay_s: float = 0.0  # wait before every reply
    # The board resets (watchdog) after applying every n-th LED command, before its ACK leaves: the host
    # sees a timeout, then BOOT; the LEDs go dark (0 = never).
    reset_every_n_leds: int = 0

    def __post_init__(self) -> None:
        for name in ("garbage_every_n", "bad_checksum_every_n", "drop_events_every_n", "reset_every_n_leds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.reply_delay_s < 0:
            raise ValueError(f"reply_delay_s must be >= 0, got {self.reply_delay_s}")


@dataclass
class DockSimulatorStats:
    frames_received: int = 0  # candidate frames cut from the host's stream
    bad_frames: int = 0  # dropped without answer (CRC, framing)
    junk_bytes_received: int = 0
    naks_sent: int = 0
    replies_sent: int = 0
    events_sent: int = 0
    events_dropped: int = 0  # by the drop_events_every_n fault
    frames_corrupted: int = 0  # by the bad_checksum_every_n fault
    junk_bytes_sent: int = 0  # by the garbage_every_n fault
    output_dropped_bytes: int = 0  # nobody was reading the pty
    resets: int = 0  # watchdog resets (reboot() and the reset_every_n_leds fault)


@dataclass
class _SimBay:
    present: bool = False
    charge_percent: int | None = None
    insertions: int = 0
    led: BayLed = BayLed.OFF
    history: list[BayLed] = field(default_factory=list)
    shown: list[BayLed] = field(default_factory=list)  # what the LED showed, in order, resets included
    last_led_seq: int | None = None
    last_power_seq: int | None = None
    power_cycles: int = 0

    def show(self, led: BayLed) -> None:
        if not self.shown or self.shown[-1] is not led:
            self.shown.append(led)
        self.led = led


class DockSimulator(PtyDevice):
    """The board of a docking station with `bays` bays, on a pty (simulators.serial_pty). Thread-safe
    control API."""

    name = "dock-sim"
    error = DockSimulatorError

    def __init__(
        self,
        bays: int = 8,
        *,
        seed: int = 0,
        board_serial: str = "SIMDOCK-0001",
        firmware: str = "simdock-1.0",
        garbage_every_n: int = 0,
        bad_checksum_every_n: int = 0,
        split_writes: bool = False,
        drop_events_every_n: int = 0,
        silent: bool = False,
        reply_delay_s: float = 0.0,
        reset_every_n_leds: int = 0,
        protocol: int = PROTOCOL_VERSION,
        on_led: Callable[[int, BayLed], None] | None = None,
        on_power_cycle: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= bays <= MAX_BAYS:
            raise ValueError(f"bays must be 1..{MAX_BAYS}, got {bays}")
        if protocol not in LEDS_BY_PROTOCOL:
            raise ValueError(f"protocol must be one of {sorted(LEDS_BY_PROTOCOL)}, got {protocol}")
        self.protocol = protocol
        # Validates serial and firmware against the wire grammar now rather than at the first VER.
        self._boot = BootEvent(protocol, bays, board_serial, firmware)
        self.faults = DockFaults(
            garbage_every_n, bad_checksum_every_n, split_writes, drop_events_every_n, silent, reply_delay_s,
            reset_every_n_leds,
        )
        self._leds_applied = 0
        self.board_serial = board_serial
        self.firmware = firmware
        self._on_led = on_led
        self.on_power_cycle = on_power_cycle
        self._random = random.Random(seed)
        self._bays = [_SimBay() for _ in range(bays)]
        self._event_seq = 0
        self._events_generated = 0
        self._frames_sent = 0
        self._stats = DockSimulatorStats()
        self._framer = LineFramer()
        # One lock for state and output: a status reply and events leave in the order their state changed.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)

    # -- lifecycle ------------------------------------------------------------------------------------

    def started(self) -> None:
        with self._lock:
            self._send(self._boot.to_bytes())  # like firmware after power-up
        log.info("dock simulator %s: %d bays on %s", self.board_serial, len(self._bays), self.tty_path)

    @property
    def bay_count(self) -> int:
        return len(self._bays)

    @property
    def stats(self) -> DockSimulatorStats:
        with self._lock:
            snapshot = replace(self._stats)
        snapshot.junk_bytes_received = self._framer.discarded_bytes
        snapshot.output_dropped_bytes = self.output_dropped_bytes
        return snapshot

    @property
    def silent(self) -> bool:
        return self.faults.silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self.faults.silent = value

    # -- control API (tests, CLI) ---------------------------------------------------------------------

    def insert(self, bay: int, charge_percent: int | None = 50) -> None:
        """A recorder is put into `bay`; `charge_percent` None means the charger has not reported yet."""
        with self._lock:
            state = self._bay(bay)
            if state.present:
                raise DockSimulatorError(f"bay {bay} already holds a recorder")
            if charge_percent is not None and not 0 <= charge_percent <= 100:
                raise DockSimulatorError(f"charge must be 0..100, got {charge_percent}")
            state.present = True
            state.charge_percent = charge_percent
            state.insertions = (state.insertions + 1) % 16
            self._emit(InsertedEvent(self._next_event_seq(), bay, charge_percent))

    def remove(self, bay: int) -> None:
        with self._lock:
            state = self._bay(bay)
            if not state.present:
                raise DockSimulatorError(f"bay {bay} is empty")
            state.present = False
            state.charge_percent = None
            self._emit(RemovedEvent(self._next_event_seq(), bay))

    def set_charge(self, bay: int, charge_percent: int) -> None:
        with self._lock:
            state = self._bay(bay)
            if not state.present:
                raise DockSimulatorError(f"bay {bay} is empty: nothing to charge")
            if not 0 <= charge_percent <= 100:
                raise DockSimulatorError(f"charge must be 0..100, got {charge_percent}")
            state.charge_percent = charge_percent
            self._emit(ChargeEvent(self._next_event_seq(), bay, charge_percent))

    def reboot(self, *, announce: bool = True) -> None:
        """Watchdog reset: LEDs off, counters and event numbering restart, BOOT sent (unless `announce`
        is False: a BOOT lost to line noise). Recorders stay."""
        with self._lock:
            self._reset(announce=announce)

    def _reset(self, *, announce: bool) -> None:
        self._stats.resets += 1
        self._event_seq = 0
        for state in self._bays:
            state.show(BayLed.OFF)
            state.insertions = 0
            state.last_led_seq = None
        if announce:
            self._send(self._boot.to_bytes())
        self._changed.notify_all()

    def random_charge(self) -> int:
        """A plausible charge reading from the seeded generator."""
        with self._lock:
            return self._random.randint(5, 100)

    def present(self, bay: int) -> bool:
        with self._lock:
            return self._bay(bay).present

    def charge(self, bay: int) -> int | None:
        with self._lock:
            return self._bay(bay).charge_percent

    def led(self, bay: int) -> BayLed:
        """The LED state the host last set (OFF after power-up or reboot)."""
        with self._lock:
            return self._bay(bay).led

    def led_history(self, bay: int) -> list[BayLed]:
        """Every LED state the host set on `bay`, in order; a retransmitted command counts once."""
        with self._lock:
            return list(self._bay(bay).history)

    def shown_history(self, bay: int) -> list[BayLed]:
        """What `bay`'s LED showed, in order: the host's states and the dark of each reset (a state
        repeated without a change in between counts once)."""
        with self._lock:
            return list(self._bay(bay).shown)

    def wait_for_led(self, bay: int, led: BayLed, timeout_s: float) -> bool:
        """Block until `bay` shows `led` (True) or `timeout_s` passes (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._bay(bay).led is led, timeout_s)

    @property
    def event_seq(self) -> int:
        with self._lock:
            return self._event_seq

    def _bay(self, bay: int) -> _SimBay:
        if not 1 <= bay <= len(self._bays):
            raise DockSimulatorError(f"bay must be 1..{len(self._bays)}, got {bay}")
        return self._bays[bay - 1]

    def _next_event_seq(self) -> int:
        self._event_seq = next_seq(self._event_seq)
        return self._event_seq

    # -- board thread ---------------------------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        for line in self._framer.feed(data):
            if self._stop.is_set():
                return
            self._handle_line(line)

    def _handle_line(self, line: bytes) -> None:
        with self._lock:
            self._stats.frames_received += 1
        if self.faults.silent:
            return
        try:
            message = decode_line(line)
        except DockProtocolError as exc:
            if exc.reason is None or exc.seq is None:
                with self._lock:
                    self._stats.bad_frames += 1
                log.debug("dock simulator: frame dropped: %s", exc)
                return
            self._reply_later(NakReply(exc.seq, exc.command or "?", exc.reason))
            return
        known = PingCommand | IdentityQuery | StatusQuery | SetLedCommand | PowerCycleCommand
        if not isinstance(message, known) or (
            isinstance(message, PowerCycleCommand) and self.protocol < POWER_CYCLE_PROTOCOL
        ):
            self._reply_later(NakReply(message.seq, message.COMMAND.value, NakReason.UNKNOWN))
            return
        if isinstance(message, SetLedCommand | PowerCycleCommand) and message.bay > len(self._bays):
            self._reply_later(NakReply(message.seq, message.COMMAND.value, NakReason.RANGE))
            return
        if isinstance(message, SetLedCommand) and message.led not in LEDS_BY_PROTOCOL[self.protocol]:
            # Firmware of an older protocol does not know the state: a value out of its domain.
            self._reply_later(NakReply(message.seq, message.COMMAND.value, NakReason.VALUE))
            return
        self._wait_reply_delay()
        if isinstance(message, PowerCycleCommand):
            self._power_cycle(message)
            return
        changed: tuple[int, BayLed] | None = None
        with self._lock:
            if isinstance(message, PingCommand):
                reply: PingReply | IdentityReply | StatusReply | LedReply
                reply = PingReply(message.seq, self._event_seq)
            elif isinstance(message, IdentityQuery):
                reply = IdentityReply(
                    message.seq, self.protocol, len(self._bays), self.board_serial, self.firmware
                )
            elif isinstance(message, StatusQuery):
                reply = StatusReply(message.seq, self._event_seq, tuple(
                    BayState(b.present, b.led, b.insertions, b.charge_percent) for b in self._bays
                ))
            else:
                state = self._bays[message.bay - 1]
                # A retransmission (same number, same state) is one command, not two.
                if state.last_led_seq != message.seq or state.led is not message.led:
                    state.history.append(message.led)
                    state.last_led_seq = message.seq
                    changed = (message.bay, message.led)
                state.show(message.led)
                self._changed.notify_all()
                reply = LedReply(message.seq, message.bay, message.led)
                self._leds_applied += 1
                every_n = self.faults.reset_every_n_leds
                if every_n and self._leds_applied % every_n == 0:
                    log.debug("dock simulator: fault: reset after LED command %d", message.seq)
                    self._reset(announce=True)
                    return
            self._stats.replies_sent += 1
            self._send(reply.to_bytes())
        if changed is not None and self._on_led is not None:
            self._on_led(*changed)

    def _power_cycle(self, command: PowerCycleCommand) -> None:
        """Cut the bay's power (ACK: it is off now) and give it back after `off_ms`; a retransmission of the
        command just acted on (its ACK was lost) is acknowledged again, not acted on twice."""
        with self._lock:
            state = self._bays[command.bay - 1]
            again = state.last_power_seq == command.seq
            if not again:
                state.last_power_seq = command.seq
                state.power_cycles += 1
            self._stats.replies_sent += 1
            self._send(PowerCycleReply(command.seq, command.bay, command.off_ms).to_bytes())
        hook = self.on_power_cycle
        if not again and hook is not None:
            threading.Thread(target=hook, args=(command.bay, command.off_ms),
                             name=f"dock-sim-power-{command.bay}", daemon=True).start()

    def power_cycles(self, bay: int) -> int:
        """How many times the host power-cycled `bay` (retransmissions not counted)."""
        with self._lock:
            return self._bay(bay).power_cycles

    def _reply_later(self, nak: NakReply) -> None:
        self._wait_reply_delay()
        with self._lock:
            self._stats.naks_sent += 1
            self._send(nak.to_bytes())

    def _wait_reply_delay(self) -> None:
        delay_s = self.faults.reply_delay_s
        if delay_s > 0:
            self._stop.wait(delay_s)

    # -- output with faults (caller holds the lock) ----------------------------------------------------

    def _emit(self, event: InsertedEvent | RemovedEvent | ChargeEvent) -> None:
        self._events_generated += 1
        every_n = self.faults.drop_events_every_n
        if every_n and self._events_generated % every_n == 0:
            self._stats.events_dropped += 1
            log.debug("dock simulator: fault: event %d not sent", event.seq)
            return
        if self._send(event.to_bytes()):
            self._stats.events_sent += 1

    def _send(self, frame: bytes) -> bool:
        faults = self.faults
        if faults.silent or not self.running:
            return False
        self._frames_sent += 1
        if faults.bad_checksum_every_n and self._frames_sent % faults.bad_checksum_every_n == 0:
            frame = self._corrupt_checksum(frame)
            self._stats.frames_corrupted += 1
        if faults.garbage_every_n and self._frames_sent % faults.garbage_every_n == 0:
            junk = self._junk()
            self._stats.junk_bytes_sent += len(junk)
            frame = junk + frame
        if not faults.split_writes:
            self.write(frame)
            return True
        position = 0
        while position < len(frame):
            size = self._random.randint(1, 8)
            self.write(frame[position : position + size])
            position += size
            time.sleep(_SPLIT_PAUSE_S)
        return True

    def _corrupt_checksum(self, frame: bytes) -> bytes:
        star = frame.rindex(b"*")
        good = int(frame[star + 1 : star + 5], 16)
        bad = (good + self._random.randint(1, 0xFFFF)) % 0x10000
        return frame[: star + 1] + b"%04X" % bad + frame[star + 5 :]

    def _junk(self) -> bytes:
        kind = self._random.randrange(4)
        if kind == 0:  # line noise, any byte value
            return bytes(self._random.randrange(256) for _ in range(self._random.randint(1, 24)))
        if kind == 1:  # the start of a frame whose end was lost
            return b"$" + str(self._random.randint(0, 99999)).encode() + b",AC"
        if kind == 2:  # a complete line with a wrong checksum
            return b"$77,INS,1,50*0000\r\n"
        return b"\r\n\x00\xff garbage \n"


# -- command line -----------------------------------------------------------------------------------------

_COMMANDS_HELP = """\
commands on stdin (one per line):
  insert BAY [CHARGE]   put a recorder in BAY (charge 0..100; random from the seed if omitted)
  remove BAY            take it out
  charge BAY PCT        the charger reports PCT for the recorder in BAY
  leds                  print every bay: presence, charge, LED, LED history
  silent on|off         stop / resume answering (heartbeat loss)
  reboot [quiet]        watchdog reset: LEDs off, BOOT sent (quiet: the BOOT is lost on the line)
  help                  this list
  quit                  stop and exit
Output: the first line is the tty path (open it with DockDriver); then "led BAY STATE" whenever the host
sets an LED, and "ok ..." or "error: ..." after each command. When stdin reaches EOF (or is /dev/null)
the simulator keeps serving until SIGTERM or SIGINT. Fault models are off by default.

example: python -m simulators dock --bays 8 --seed 3 --garbage-every 5 --insert 2:80
"""


def _parse_insert(text: str) -> tuple[int, int | None]:
    bay_text, _, charge_text = text.partition(":")
    try:
        return int(bay_text), (int(charge_text) if charge_text else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BAY or BAY:CHARGE, got {text!r}") from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators dock",
        description="Dock bay controller board simulator on a pty"
        " (protocol: drivers/serial/DOCK_PROTOCOL.md).",
        epilog=_COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bays", type=int, default=8, help="number of bays, 1..32 (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    parser.add_argument("--board-serial", default="SIMDOCK-0001", help="serial reported by VER and BOOT")
    parser.add_argument("--firmware", default="simdock-1.0", help="firmware version reported")
    parser.add_argument("--protocol", type=int, default=PROTOCOL_VERSION, choices=sorted(LEDS_BY_PROTOCOL),
                        help="protocol version of the firmware (1: no error-class LED patterns, 2: no "
                        "BOUNCING pattern)")
    parser.add_argument("--insert", type=_parse_insert, action="append", default=[], metavar="BAY[:CHARGE]",
                        help="recorder present from the start (repeatable)")
    parser.add_argument("--link", metavar="PATH",
                        help="also make PATH a symlink to the tty (a stable name, like /dev/serial/by-id)")
    parser.add_argument("--quiet", action="store_true", help="do not print LED changes")
    parser.add_argument("--recorder-bus", metavar="SOCKET",
                        help="a bay power cycle (PWR) unplugs and plugs the recorder at the bay's USB port "
                        "on this recorder bus server (python -m simulators recorder serve)")
    parser.add_argument("--bay-port-prefix", default="1-1.", metavar="PREFIX",
                        help="bay N is USB port PREFIX + N on that bus (default 1-1.)")
    parser.add_argument("--verbose", action="store_true", help="debug log on stderr")
    faults = parser.add_argument_group("fault models")
    faults.add_argument("--garbage-every", type=int, default=0, metavar="N",
                        help="junk bytes (noise, cut-off frames, bad lines) before every N-th frame sent")
    faults.add_argument("--bad-checksum-every", type=int, default=0, metavar="N",
                        help="every N-th frame sent has a wrong CRC")
    faults.add_argument("--split-writes", action="store_true", help="write frames in random 1..8 byte pieces")
    faults.add_argument("--drop-events-every", type=int, default=0, metavar="N",
                        help="every N-th event is not sent (the host sees a sequence gap)")
    faults.add_argument("--silent", action="store_true",
                        help="answer nothing from the start (heartbeat loss)")
    faults.add_argument("--reply-delay", type=float, default=0.0, metavar="S",
                        help="wait S seconds before every reply")
    faults.add_argument("--reset-every-leds", type=int, default=0, metavar="N",
                        help="watchdog reset after every N-th LED command, its ACK lost")
    return parser


def _say(text: str) -> None:
    print(text, flush=True)


def _run_command(sim: DockSimulator, words: list[str], stop: threading.Event) -> None:
    verb, args = words[0].lower(), words[1:]
    if verb == "insert" and len(args) in (1, 2):
        charge = int(args[1]) if len(args) == 2 else sim.random_charge()
        sim.insert(int(args[0]), charge)
        _say(f"ok inserted bay {args[0]} charge {charge}")
    elif verb == "remove" and len(args) == 1:
        sim.remove(int(args[0]))
        _say(f"ok removed bay {args[0]}")
    elif verb == "charge" and len(args) == 2:
        sim.set_charge(int(args[0]), int(args[1]))
        _say(f"ok bay {args[0]} charge {args[1]}")
    elif verb == "leds" and not args:
        for bay in range(1, sim.bay_count + 1):
            contents = f"recorder {sim.charge(bay)}%" if sim.present(bay) else "empty"
            history = " ".join(led.value for led in sim.led_history(bay)) or "-"
            _say(f"bay {bay:2d}: {sim.led(bay).value:9s} {contents:14s} history: {history}")
    elif verb == "silent" and args in (["on"], ["off"]):
        sim.silent = args[0] == "on"
        _say(f"ok silent {args[0]}")
    elif verb == "reboot" and args in ([], ["quiet"]):
        sim.reboot(announce=not args)
        _say("ok rebooted" + (" (BOOT lost)" if args else ""))
    elif verb == "help":
        _say(_COMMANDS_HELP.split("\nOutput:")[0])
    elif verb in ("quit", "exit"):
        stop.set()
    else:
        _say(f"error: unknown command {' '.join(words)!r} (try help)")


def _serve_stdin(sim: DockSimulator, stop: threading.Event) -> None:
    stream = sys.stdin
    if stream is None:
        return
    for line in stream:
        words = line.split()
        if not words:
            continue
        try:
            _run_command(sim, words, stop)
        except (ValueError, DockSimulatorError) as exc:
            _say(f"error: {exc}")
        if stop.is_set():
            return
    log.debug("dock simulator: stdin at EOF; serving until SIGTERM/SIGINT")


def main(argv: list[str]) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    on_led = None if args.quiet else (lambda bay, led: _say(f"led {bay} {led.value}"))
    try:
        sim = DockSimulator(
            args.bays, seed=args.seed, board_serial=args.board_serial, firmware=args.firmware,
            garbage_every_n=args.garbage_every, bad_checksum_every_n=args.bad_checksum_every,
            split_writes=args.split_writes, drop_events_every_n=args.drop_events_every,
            silent=args.silent, reply_delay_s=args.reply_delay, reset_every_n_leds=args.reset_every_leds,
            protocol=args.protocol, on_led=on_led,
        )
        if args.recorder_bus:
            from simulators.bay_power import bay_power_to_bus_socket  # the bus only when asked for
            from simulators.recorder.bus import BusClient

            prefix = args.bay_port_prefix
            sim.on_power_cycle = bay_power_to_bus_socket(BusClient(Path(args.recorder_bus)),
                                                         lambda bay: f"{prefix}{bay}")
    except (ValueError, DockProtocolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    with sim:
        try:
            for bay, charge in args.insert:
                sim.insert(bay, sim.random_charge() if charge is None else charge)
        except DockSimulatorError as exc:
            print(f"error: --insert: {exc}", file=sys.stderr)
            return 2
        if args.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.link)
            os.symlink(sim.tty_path, args.link)
        try:
            _say(sim.tty_path)
            reader = threading.Thread(
                target=_serve_stdin, args=(sim, stop), name="dock-sim stdin", daemon=True
            )
            reader.start()
            while not stop.wait(1.0):
                pass
        finally:
            if args.link:
                with contextlib.suppress(OSError):
                    os.unlink(args.link)
    return 0
