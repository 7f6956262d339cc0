"""Card reader simulator: a 125 kHz / 13.56 MHz USB-serial reader over a real pty.

`CardReaderSimulator` opens a pseudo-terminal; the host (`CardReaderDriver`) opens `.tty_path` as it would
open `/dev/serial/by-id/usb-...-if00-port0`. `present(uid)` is a card held to the reader: the reader sends
the card's frame (`framing`: STX frames like an RDM6300, or hex lines) `repeats` times, as a real reader
repeats while the card stays in the field. Faults are options and may be changed while it runs
(`.faults`): line noise before frames, wrong checksums, frames written in small pieces. Randomness comes
from one seeded generator. `hang_up()` is the reader pulled from the USB port: the host sees a hang-up.

Run it on its own: `python -m simulators card-reader --help`.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType

from drivers.serial.card_reader_protocol import (
    STX_DATA_HEX,
    CardFraming,
    CardReaderProtocolError,
    encode_hex_line,
    encode_stx_frame,
)
from simulators.serial_pty import PtyDevice

log = logging.getLogger(__name__)

_SPLIT_PAUSE_S = 0.0005


class CardReaderSimulatorError(Exception):
    """Misuse of the simulator (not started, a UID its framing cannot carry)."""


@dataclass
class CardReaderFaults:
    garbage_every_n: int = 0  # before every n-th frame, line noise (0 = never)
    bad_checksum_every_n: int = 0  # every n-th STX frame with a wrong checksum (0 = never)
    split_writes: bool = False  # each frame written in random small pieces


class CardReaderSimulator(PtyDevice):
    name = "card reader simulator"

    def __init__(self, framing: CardFraming = CardFraming.STX_FRAME, *, seed: int = 0,
                 repeat_interval_s: float = 0.05, garbage_every_n: int = 0, bad_checksum_every_n: int = 0,
                 split_writes: bool = False) -> None:
        super().__init__()
        self.framing = framing
        self.repeat_interval_s = repeat_interval_s
        self.faults = CardReaderFaults(garbage_every_n, bad_checksum_every_n, split_writes)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._frames_sent = 0
        self.bytes_ignored = 0  # what a host wrote: a reader takes no commands

    def started(self) -> None:
        log.info("card reader simulator (%s) on %s", self.framing, self.tty_path)

    def on_bytes(self, data: bytes) -> None:
        self.bytes_ignored += len(data)

    def hang_up(self) -> None:
        """The reader pulled from its USB port: the pty closes and the host's reads fail."""
        self.stop()

    @property
    def frames_sent(self) -> int:
        return self._frames_sent

    def frame(self, uid: str) -> bytes:
        """The bytes this reader sends for `uid` (CardReaderSimulatorError if its framing cannot)."""
        try:
            if self.framing is CardFraming.STX_FRAME:
                return encode_stx_frame(uid)
            return encode_hex_line(uid)
        except CardReaderProtocolError as exc:
            raise CardReaderSimulatorError(f"{self.framing} reader: {exc}") from None

    def present(self, uid: str, repeats: int = 1) -> None:
        """A card held to the reader: its frame sent `repeats` times, `repeat_interval_s` apart."""
        frame = self.frame(uid)
        for n in range(repeats):
            if n:
                time.sleep(self.repeat_interval_s)
            self.send_raw(self._with_faults(frame))

    def send_raw(self, data: bytes) -> None:
        """Any bytes, as they are (hostile input for tests)."""
        with self._lock:
            if not self.running:
                raise CardReaderSimulatorError("simulator not running")
            if not self.faults.split_writes:
                self.write(data)
                return
            position = 0
            while position < len(data):
                size = self._random.randint(1, 4)
                self.write(data[position:position + size])
                position += size
                time.sleep(_SPLIT_PAUSE_S)

    def _with_faults(self, frame: bytes) -> bytes:
        self._frames_sent += 1
        faults = self.faults
        if faults.bad_checksum_every_n and self._frames_sent % faults.bad_checksum_every_n == 0 \
                and self.framing is CardFraming.STX_FRAME:
            good = int(frame[1 + STX_DATA_HEX:3 + STX_DATA_HEX], 16)
            bad = (good + self._random.randint(1, 255)) % 256
            frame = frame[:1 + STX_DATA_HEX] + b"%02X" % bad + frame[3 + STX_DATA_HEX:]
        if faults.garbage_every_n and self._frames_sent % faults.garbage_every_n == 0:
            noise = bytes(self._random.randrange(256) for _ in range(self._random.randint(1, 16)))
            frame = noise + b"\r\n" + frame  # noise, then a line end: the framings' own resync point
        return frame


# -- command line -----------------------------------------------------------------------------------------

_COMMANDS_HELP = """\
commands on stdin (one per line):
  card UID [REPEATS]   hold a card to the reader (UID in hex; REPEATS frames, default 3)
  quit                 stop and exit
The first line of output is the tty path (open it with CardReaderDriver). When stdin reaches EOF the
simulator keeps serving until SIGTERM or SIGINT.

example: python -m simulators card-reader --framing stx --garbage-every 4
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulators card-reader", epilog=_COMMANDS_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="A serial RFID card reader on a pty.")
    parser.add_argument("--framing", choices=[f.value for f in CardFraming],
                        default=CardFraming.STX_FRAME.value,
                        help="stx: RDM6300-style STX frames with XOR checksum (10 hex digits); hex-line: UID "
                        "in hex + CR LF")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--garbage-every", type=int, default=0, metavar="N",
                        help="noise before every N-th frame")
    parser.add_argument("--bad-checksum-every", type=int, default=0, metavar="N")
    parser.add_argument("--split-writes", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _serve_stdin(sim: CardReaderSimulator, stop: threading.Event) -> None:
    if sys.stdin is None:
        return
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] in ("quit", "exit"):
            stop.set()
            return
        if words[0] == "card" and len(words) in (2, 3):
            try:
                sim.present(words[1], int(words[2]) if len(words) == 3 else 3)
            except (ValueError, CardReaderSimulatorError) as exc:
                print(f"error: {exc}", flush=True)
                continue
            print(f"ok card {words[1]}", flush=True)
        else:
            print(f"error: unknown command {' '.join(words)[:80]!r}", flush=True)


def main(argv: list[str]) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    sim = CardReaderSimulator(CardFraming(args.framing), seed=args.seed, garbage_every_n=args.garbage_every,
                              bad_checksum_every_n=args.bad_checksum_every, split_writes=args.split_writes)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    with sim:
        print(sim.tty_path, flush=True)
        threading.Thread(target=_serve_stdin, args=(sim, stop), name="card-reader-sim stdin",
                         daemon=True).start()
        while not stop.wait(1.0):
            pass
    return 0
