"""A Pelco-D PTZ camera on a real pty: decodes frames, checks checksums, moves, keeps presets.

`PtzCameraSimulator` answers to one address. A frame with a wrong checksum, or for another address, is
ignored as a real camera ignores it (counted in `stats`). Motion is modelled in abstract units: while
moving, pan/tilt/zoom change at their speed per second; `set_preset` stores the position, `go_to_preset`
returns to it (a preset never set is ignored, as cameras do). `commands` lists every command the camera
acted on, so a test can ask what it did. Run on its own: `python -m simulators ptz --help`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from types import FrameType

from drivers.serial.pelco_d import PelcoDFramer, PtzAction, PtzCommand, decode_frame
from simulators.serial_pty import PtyDevice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PtzPosition:
    pan: float = 0.0
    tilt: float = 0.0
    zoom: float = 0.0


@dataclass
class PtzCameraStats:
    frames: int = 0  # checksum-valid frames on the line, any address
    for_others: int = 0  # valid frames addressed to another camera
    rejected: int = 0  # candidates dropped: bad checksum, address 0
    noise_bytes: int = 0
    ignored_commands: int = 0  # frames for us the camera does not act on (unknown, preset never set)


class PtzCameraSimulator(PtyDevice):
    name = "ptz camera simulator"

    def __init__(self, address: int = 1) -> None:
        super().__init__()
        self.address = address
        self._framer = PelcoDFramer()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stats = PtzCameraStats()
        self._commands: list[PtzCommand] = []
        self._position = PtzPosition()
        self._motion: PtzCommand | None = None
        self._motion_since = time.monotonic()
        self._presets: dict[int, PtzPosition] = {}
        self._at_preset: int | None = None

    # -- what the camera did (thread-safe) -----------------------------------------------------------

    @property
    def commands(self) -> list[PtzCommand]:
        with self._lock:
            return list(self._commands)

    @property
    def stats(self) -> PtzCameraStats:
        with self._lock:
            snapshot = replace(self._stats)
        snapshot.rejected = self._framer.rejected_candidates
        snapshot.noise_bytes = self._framer.noise_bytes
        return snapshot

    @property
    def position(self) -> PtzPosition:
        with self._lock:
            self._advance(time.monotonic())
            return self._position

    @property
    def at_preset(self) -> int | None:
        """The preset the camera went to last, None once it moved away (or never went to one)."""
        with self._lock:
            return self._at_preset

    @property
    def presets(self) -> dict[int, PtzPosition]:
        with self._lock:
            return dict(self._presets)

    def store_preset(self, preset: int, position: PtzPosition) -> None:
        """Presets an installer set up on the camera before the station came (its own memory)."""
        with self._lock:
            self._presets[preset] = position

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Block until the camera acted on at least `count` commands."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._commands) >= count, timeout_s)

    # -- the camera ----------------------------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        for frame in self._framer.feed(data):
            with self._lock:
                self._stats.frames += 1
                if frame.address != self.address:
                    self._stats.for_others += 1
                    continue
                self._act(decode_frame(frame))
                self._changed.notify_all()

    def _act(self, command: PtzCommand) -> None:
        now = time.monotonic()
        self._advance(now)
        if command.action is PtzAction.OTHER or (
            command.action is PtzAction.GO_TO_PRESET and command.preset not in self._presets
        ):
            self._stats.ignored_commands += 1
            return
        self._commands.append(command)
        if command.action is PtzAction.STOP:
            self._motion = None
        elif command.action is PtzAction.MOVE:
            self._motion, self._motion_since, self._at_preset = command, now, None
        elif command.action is PtzAction.SET_PRESET:
            assert command.preset is not None
            self._presets[command.preset] = self._position
        elif command.action is PtzAction.CLEAR_PRESET:
            assert command.preset is not None
            self._presets.pop(command.preset, None)
        else:
            assert command.preset is not None
            self._motion = None
            self._position = self._presets[command.preset]
            self._at_preset = command.preset

    def _advance(self, now: float) -> None:
        motion = self._motion
        if motion is None:
            return
        elapsed = now - self._motion_since
        self._motion_since = now
        self._position = PtzPosition(
            self._position.pan + motion.pan * motion.pan_speed * elapsed,
            self._position.tilt + motion.tilt * motion.tilt_speed * elapsed,
            self._position.zoom + motion.zoom * elapsed,
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators ptz",
        description="A Pelco-D PTZ camera on a pty: prints the tty path, then each command it acts on.",
    )
    parser.add_argument("--address", type=int, default=1, help="camera address 1..255 (default 1)")
    parser.add_argument("--preset", action="append", default=[], metavar="N",
                        help="a preset the camera already knows (repeatable)")
    args = parser.parse_args(argv)
    if not 1 <= args.address <= 255:
        parser.error("--address must be 1..255")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with PtzCameraSimulator(args.address) as camera:
        for preset in args.preset:
            camera.store_preset(int(preset), PtzPosition(float(preset), 0.0, 0.0))
        print(camera.tty_path, flush=True)
        shown = 0
        while not stop.is_set():
            camera.wait_for(shown + 1, 0.5)
            for command in camera.commands[shown:]:
                print(f"{command.action.value} preset={command.preset} pan={command.pan} tilt={command.tilt}"
                      f" zoom={command.zoom}", flush=True)
                shown += 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
