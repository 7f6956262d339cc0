"""GB/T 28181 PS demuxer under hostile input: CPU per MiB, and events for the receiver (review 12).

    python tests/bench/gb28181_hostile_ps.py [--mib 1 2 4] [--json]

Two inputs, fed in 1400-byte reads (one RTP payload each), as a device or anyone who reaches a UDP media
port can send them:

* `unbounded-pes`: a pack header, then a video PES of length 0 (it runs to the next program stream start
  code) whose body is `00 00 01 00` repeated: start codes that do not end it. Before review 12's fix the
  whole held PES was searched again on every read: 1 MiB took 16 s of CPU, 2 MiB 64 s (quadratic); the
  search now resumes where it stopped (linear).
* `garbage-packs`: a pack header followed by one bad byte, repeated. Before the fix each pack header was
  one `Resync` event (10 MB: 666 666 events); a run of garbage is now one event.

Prints, per input and size, the CPU seconds and the number of events; the last line is one JSON object.
Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drivers.gb28181.ps import START_CODE, PsDemuxer, Resync, pack_header

READ_BYTES = 1400


def _run(stream: bytes) -> tuple[float, int, int]:
    demuxer = PsDemuxer()
    events = resyncs = 0
    started = time.process_time()
    for at in range(0, len(stream), READ_BYTES):
        out = demuxer.feed(stream[at:at + READ_BYTES])
        events += len(out)
        resyncs += sum(isinstance(e, Resync) for e in out)
    out = demuxer.flush()
    return time.process_time() - started, events + len(out), resyncs + sum(isinstance(e, Resync) for e in out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, nargs="+", default=[1, 2, 4, 10])
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {"unbounded-pes": {}, "garbage-packs": {}}
    for mib in args.mib:
        size = mib * 1024 * 1024
        inputs = {
            "unbounded-pes": pack_header(0) + START_CODE + b"\xe0\x00\x00\x80\x00\x00"
            + b"\x00\x00\x01\x00" * (size // 4),
            "garbage-packs": (pack_header(0) + b"\x01") * (size // 15),
        }
        for name, stream in inputs.items():
            cpu_s, events, resyncs = _run(stream)
            results[name][f"{mib}MiB"] = {"cpu_s": round(cpu_s, 3), "events": events, "resyncs": resyncs}
            if not args.json:
                print(f"{name:14} {mib:3} MiB: {cpu_s:7.2f} s CPU, {events} events ({resyncs} Resync)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
