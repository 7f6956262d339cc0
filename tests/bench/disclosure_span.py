"""Benchmark: a disclosure package whose ledger segment spans many other entries (ledger format 2).

    python tests/bench/disclosure_span.py [--entries 100000]

A package's segment runs from the disclosed item's first entry to the station's head as the central holds
it, so a case item docked long ago carries one redacted line per entry the station wrote since. This
builds a central index holding one station ledger (format 2, a checkpoint at every entry): the disclosed
item's acquisition and seal, then ``--entries`` acquisitions of other items in dockings of 50, then a tag
of the disclosed item (a clerk adding the case months later). Measured, each in this process with
tracemalloc for peak Python memory:

- ``build``: :func:`segment_for` (what the central reads and keeps) and writing entries.jsonl line by line;
- ``verify``: reading entries.jsonl back a line at a time, the chain check with every redacted line's hash
  recomputed (:func:`ledger_segment_problems`) and every redacted line's item tag tested against the
  disclosed item (what `edge verify` does for the segment);
- the baseline: ``sha256sum`` of the same entries.jsonl (reading and hashing the file, nothing else).

Last line JSON: {"station_entries", "segment_entries", "entries_jsonl_mb", "build_s", "build_peak_mb",
"verify_s", "verify_peak_mb", "sha256sum_s", "verify_over_sha256sum", "verify_cpu_s_per_gb",
"problems"}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from edge.central.disclosure.package import segment_for  # noqa: E402
from edge.central.sqlite import SqliteIndex  # noqa: E402
from edge.custody.canonical import parse_json  # noqa: E402
from edge.custody.disclosure import entry_from_line, entry_line, ledger_segment_problems  # noqa: E402
from edge.custody.keys import StationKey  # noqa: E402
from edge.custody.ledger import ItemTagTester, Ledger, LedgerEntry, RedactedEntry  # noqa: E402

STATION = "BENCH-STATION"
ITEM = "00000000-0000-4000-8000-000000000001"
NOW = "2026-12-05T00:00:00.000000Z"


@dataclass(frozen=True)
class _Record:
    item: str


def _fill(index: SqliteIndex, entries: int, key: StationKey) -> int:
    conn = __import__("sqlite3").connect(":memory:")
    Ledger.create_schema(conn)
    ledger = Ledger(conn, STATION, key, checkpoint_every=1)
    with conn:
        ledger.append("station_started", None, {"station": STATION, "checkpoint_every": 1})
        ledger.append("session_started", None, {"session": "s-0", "identity": {"usb_serial": "U0"}})
        ledger.append("acquired", ITEM, {"session": "s-0", "sha256": "0" * 64})
        ledger.append("sealed", ITEM, {"manifest_sha256": "1" * 64})
        ledger.append("session_stopped", None, {"session": "s-0"})
        for n in range(entries):
            if n % 50 == 0:
                ledger.append("session_started", None, {"session": f"s-{n}", "identity": {"usb_serial": "U"}})
            ledger.append("acquired", f"10000000-0000-4000-8000-{n:012d}",
                          {"session": f"s-{n // 50 * 50}", "sha256": "2" * 64})
        ledger.append("tagged", ITEM, {"changes": {"case_number": "A-1"}, "by": "clerk"})
    batch: list[LedgerEntry] = []
    with index.transaction():
        for entry in ledger.entries():
            batch.append(entry)
            if len(batch) == 5000:
                index.insert_ledger_entries(STATION, batch, NOW)
                batch = []
        if batch:
            index.insert_ledger_entries(STATION, batch, NOW)
        for cp in ledger.checkpoints():
            index.insert_checkpoint(cp, NOW)
    return ledger.head()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args()
    key = StationKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        index = SqliteIndex.open(Path(tmp) / "index.db")
        head = _fill(index, args.entries, key)
        jsonl = Path(tmp) / "entries.jsonl"

        tracemalloc.start()
        started = time.perf_counter()
        segment = segment_for(STATION, [_Record(ITEM)], index, head)  # type: ignore[list-item]
        assert segment is not None
        count = 0
        with open(jsonl, "wb") as out:
            for entry in segment.lines(index):
                out.write(entry_line(entry))
                count += 1
        build_s = time.perf_counter() - started
        build_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        checkpoint = segment.checkpoint
        del segment

        tracemalloc.start()
        started, cpu = time.perf_counter(), time.process_time()
        read: list[LedgerEntry | RedactedEntry] = []
        with open(jsonl, "rb") as stream:
            for number, line in enumerate(stream, 1):
                read.append(entry_from_line(parse_json(line.rstrip(b"\n")), f"line {number}"))
        problems = ledger_segment_problems(STATION, read, checkpoint, {key.key_id: key.public_key()})
        tester = ItemTagTester([ITEM])
        hidden = sum(1 for e in read if isinstance(e, RedactedEntry) and e.item_tag is not None
                     and tester.item_of(e.seq, e.item_tag) is not None)
        verify_s, verify_cpu = time.perf_counter() - started, time.process_time() - cpu
        verify_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

        started = time.perf_counter()
        subprocess.run(["sha256sum", str(jsonl)], check=True, capture_output=True)
        sha_s = time.perf_counter() - started
        size = jsonl.stat().st_size
    print(json.dumps({
        "station_entries": head, "segment_entries": count, "entries_jsonl_mb": round(size / 1e6, 1),
        "build_s": round(build_s, 2), "build_peak_mb": round(build_peak / 1e6, 2),
        "verify_s": round(verify_s, 2), "verify_peak_mb": round(verify_peak / 1e6, 1),
        "sha256sum_s": round(sha_s, 3), "verify_over_sha256sum": round(verify_s / max(sha_s, 1e-6), 1),
        "verify_cpu_s_per_gb": round(verify_cpu / (size / 1e9), 1),
        "problems": len(problems) + hidden,
    }))


if __name__ == "__main__":
    main()
