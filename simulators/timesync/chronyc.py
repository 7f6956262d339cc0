"""A stand-in for `chronyc`, the chrony command-line client, answering from a state file.

chrony cannot be installed beside systemd-timesyncd (both provide `time-daemon`), so tests put this on
the station's `[time_sync] chronyc` instead. It prints what chronyc 4.x prints for `tracking` (the
human report, or with `-c` the 14-field CSV of chrony's `print_report`: reference id, name, stratum,
reference time, system time, last offset, RMS offset, frequency, residual frequency, skew, root delay,
root dispersion, update interval, leap status), and fails the way chronyc fails.

The state file is JSON, re-read at every call so a test can change the daemon under a running agent:

    {"daemon": "running" | "down" | "hang" | "garbage" | "flood",
     "reference_id": "C0A80101", "name": "192.168.1.1", "stratum": 3,
     "system_time_s": 0.000012, "root_delay_s": 0.02, "root_dispersion_s": 0.001,
     "leap": "Normal" | "Insert second" | "Delete second" | "Not synchronised"}

`down` is chronyd not running (`506 Cannot talk to daemon`, exit 1); `hang` never answers; `garbage`
prints bytes no chronyc prints; `flood` prints without end. Missing keys take a synchronised default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "daemon": "running",
    "reference_id": "C0A80101",
    "name": "192.168.1.1",
    "stratum": 3,
    "system_time_s": 0.000012345,
    "last_offset_s": -0.000006747,
    "rms_offset_s": 0.000035822,
    "frequency_ppm": -3.225,
    "residual_freq_ppm": -0.0,
    "skew_ppm": 0.129,
    "root_delay_s": 0.013639022,
    "root_dispersion_s": 0.001100737,
    "update_interval_s": 64.2,
    "leap": "Normal",
}


def _state(path: Path) -> dict[str, Any]:
    return {**DEFAULTS, **json.loads(path.read_text(encoding="utf-8"))}


def tracking_csv(state: dict[str, Any], ref_time_s: float) -> str:
    fields = [
        state["reference_id"],
        state["name"],
        str(state["stratum"]),
        f"{ref_time_s:.9f}",
        f"{state['system_time_s']:.9f}",
        f"{state['last_offset_s']:.9f}",
        f"{state['rms_offset_s']:.9f}",
        f"{state['frequency_ppm']:.3f}",
        f"{state['residual_freq_ppm']:.3f}",
        f"{state['skew_ppm']:.3f}",
        f"{state['root_delay_s']:.9f}",
        f"{state['root_dispersion_s']:.9f}",
        f"{state['update_interval_s']:.1f}",
        state["leap"],
    ]
    return ",".join(fields)


def tracking_report(state: dict[str, Any], ref_time_s: float) -> str:
    offset = float(state["system_time_s"])
    frequency = float(state["frequency_ppm"])
    return "\n".join(
        [
            f"Reference ID    : {state['reference_id']} ({state['name']})",
            f"Stratum         : {state['stratum']}",
            f"Ref time (UTC)  : {datetime.fromtimestamp(ref_time_s, UTC):%a %b %d %H:%M:%S %Y}",
            f"System time     : {abs(offset):.9f} seconds {'slow' if offset > 0 else 'fast'} of NTP time",
            f"Last offset     : {state['last_offset_s']:+.9f} seconds",
            f"RMS offset      : {state['rms_offset_s']:.9f} seconds",
            f"Frequency       : {abs(frequency):.3f} ppm {'fast' if frequency > 0 else 'slow'}",
            f"Residual freq   : {state['residual_freq_ppm']:+.3f} ppm",
            f"Skew            : {state['skew_ppm']:.3f} ppm",
            f"Root delay      : {state['root_delay_s']:.9f} seconds",
            f"Root dispersion : {state['root_dispersion_s']:.9f} seconds",
            f"Update interval : {state['update_interval_s']:.1f} seconds",
            f"Leap status     : {state['leap']}",
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators chronyc",
        description="chronyc stand-in: answers `[-c] [-n] tracking` from a JSON state file.",
    )
    parser.add_argument("--state", type=Path, required=True, help="JSON file with the daemon's state")
    parser.add_argument("-c", dest="csv", action="store_true", help="CSV output, as chronyc -c")
    parser.add_argument("-n", dest="no_dns", action="store_true", help="no DNS lookups (accepted)")
    parser.add_argument("command", nargs="*", help="only 'tracking' is known")
    args = parser.parse_args(argv)
    state = _state(args.state)
    daemon = state["daemon"]
    if daemon == "down":
        print("506 Cannot talk to daemon", file=sys.stderr)
        return 1
    if daemon == "hang":
        while True:  # chronyd answers nothing; the real chronyc retries until its own timeout
            time.sleep(3600)
    if args.command != ["tracking"]:
        print(f"Unrecognized command: {' '.join(args.command)}", file=sys.stderr)
        return 1
    if daemon == "garbage":
        sys.stdout.buffer.write(b"\x1b[2J\xff\xfe,,NaN,\n\x00tracking?\n")
        return 0
    if daemon == "flood":
        line = b"A" * 4095 + b"\n"
        while True:
            sys.stdout.buffer.write(line)
    ref_time_s = 0.0 if state["leap"] == "Not synchronised" else time.time() - 30
    print(tracking_csv(state, ref_time_s) if args.csv else tracking_report(state, ref_time_s))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
