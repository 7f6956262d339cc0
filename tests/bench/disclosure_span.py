"""Benchmark: a disclosure package whose ledger segment spans many other entries (ledger format 2).

    python tests/bench/disclosure_span.py [--entries 100000]

A package's segment runs from the disclosed item's first entry to the station's head as the central holds
it, so a case item docked long ago carries one redacted line per entry the station wrote since. A genuine
package is made through a running central (:mod:`tests.audit.long_segment`): a station ledger (format 2, a
checkpoint at every entry) records the disclosed item, then ``--entries`` acquisitions of other items in
dockings of 50, then a tag of the disclosed item (a clerk adding the case months later), pushed as the
uplink pushes them. Measured, each in this process with tracemalloc for peak Python memory:

- ``build``: the central building the package and a reader downloading it over HTTP (both in this
  process, so the peak is theirs together);
- ``verify``: :func:`edge.verify.package.verify_package` on the unzipped folder, everything `edge verify
  PACKAGE_DIR` checks (every file hashed, the chain with every redacted line's hash recomputed, every
  redacted line's item tag tested against the disclosed item, the items' manifests and receipts);
- the baseline: ``sha256sum`` of the package's entries.jsonl (reading and hashing the file, nothing else).

Last line JSON: {"station_entries", "segment_entries", "entries_jsonl_mb", "build_s", "build_peak_mb",
"verify_s", "verify_peak_mb", "sha256sum_s", "verify_over_sha256sum", "verify_cpu_s_per_gb",
"problems"}.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from edge.custody.disclosure import ledger_paths  # noqa: E402
from edge.verify.package import verify_package  # noqa: E402
from tests.audit.long_segment import STATION, long_package  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        package = asyncio.run(long_package(Path(tmp), args.entries))
        jsonl = package.folder / ledger_paths(STATION).entries
        count = jsonl.read_bytes().count(b"\n")

        gc.collect()
        tracemalloc.start()
        started, cpu = time.perf_counter(), time.process_time()
        report = verify_package(package.folder)
        verify_s, verify_cpu = time.perf_counter() - started, time.process_time() - cpu
        verify_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert report.checked["ledger_entries"] == count, report.checked

        started = time.perf_counter()
        subprocess.run(["sha256sum", str(jsonl)], check=True, capture_output=True)
        sha_s = time.perf_counter() - started
        size = jsonl.stat().st_size
    print(json.dumps({
        "station_entries": package.station_entries, "segment_entries": count,
        "entries_jsonl_mb": round(size / 1e6, 1),
        "build_s": round(package.build_s, 2), "build_peak_mb": round(package.build_peak_bytes / 1e6, 2),
        "verify_s": round(verify_s, 2), "verify_peak_mb": round(verify_peak / 1e6, 2),
        "sha256sum_s": round(sha_s, 3), "verify_over_sha256sum": round(verify_s / max(sha_s, 1e-6), 1),
        "verify_cpu_s_per_gb": round(verify_cpu / (size / 1e9), 1),
        "problems": len(report.problems),
    }))


if __name__ == "__main__":
    main()
