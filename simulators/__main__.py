"""`python -m simulators NAME ...`: run one device simulator on its own."""

from __future__ import annotations

import importlib
import sys

# Each simulator module exposes `main(argv: list[str]) -> int`.
SIMULATORS: dict[str, str] = {
    "recorder": "simulators.recorder.cli",
    "dock": "simulators.dock",
    "card-reader": "simulators.card_reader",
    "room-panel": "simulators.room_panel",
    "ptz": "simulators.ptz",
    "chronyc": "simulators.timesync.chronyc",
    "timedated": "simulators.timesync.timedated",
    "gb28181-device": "simulators.gb28181.cli",
    "ts-camera": "simulators.ts_camera",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or args[0] not in SIMULATORS:
        names = ", ".join(sorted(SIMULATORS))
        print(f"usage: python -m simulators NAME [--help]\n  NAME: one of {names}", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    module = importlib.import_module(SIMULATORS[args[0]])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
