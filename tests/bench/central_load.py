"""Central load benchmark (issue 13): N stations upload and register against R receivers at once.

    python tests/bench/central_load.py [--stations 100] [--receivers 2] [--items 2] [--item-mb 2] [--json]
    python tests/bench/central_load.py --embedded [--stations 100]

Agency backends (default): a throwaway PostgreSQL server and a single-node Ceph cluster (memstore OSD,
radosgw, a bucket with Object Lock), started with the test fixtures' context managers; R real `edge
central run` processes share the database and the bucket, each with its own store directory and a copy of
the first one's identity. --embedded: SQLite and a local folder, one receiver (a store has one).

N stations, each a real station store (own ledger key, ITEMS MP4s of ITEM_MB offloaded by the station's
own offload: signed manifests, ledger) enrolled with the central's CA, run the station's real uplink
(`UplinkService`, tus over mutual TLS, registration with the ledger segment, every receipt verified
against the pinned central key) as tasks of this one process, not N processes. Station i is pinned to
receiver i mod R for all its requests (no upload continues on another receiver here). After the run
every station store is verified with `edge verify`'s station check and the central key: each receipt's
signatures and inclusion proof.

Baseline, same run, same bytes, same receivers, same mutual TLS, same uploads in flight per station:
one plain tus creation-with-upload POST per file (no checksums, registration or receipts); it runs
first, each phase with the stored files' pages dropped from the page cache.

Phases are printed as they end; the last line is JSON: aggregate_mb_s, items_s, registration_p50_s and
_p99_s (the registration calls answered with a receipt: manifest and ledger segment in, receipt out),
registrations_not_accepted (answered "later" or cut off, then sent again), uplink_warnings (retries and
circuit-breaker openings the uplinks logged), ratio (upload time over the baseline's),
station_cpu_s_per_gb (this process over the drain: all N uplinks), central_cpu_s_per_gb (all receivers)
and receiver_cpu_s_per_gb (each), storage_cpu_s_per_gb (PostgreSQL's and Ceph's processes), the
baseline's, all_receipts_verified (exit status 1 otherwise), peak RSS of the stations' process and of
each receiver. GB here is GiB of content sent.

Defaults: 100 stations x 2 items x 2 MiB = 400 MiB. Set-up (100 station stores offloaded, Ceph's start)
takes about 2 minutes on a 2-core machine; the upload phase is what is measured, and took 4 to 20
minutes on PostgreSQL and Ceph on a 2-core machine shared with other test runs (README "The central
under load"); --items 1 --stations 20 gives a first look in about 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from edge.custody.keys import load_public_key  # noqa: E402
from edge.pki.bundle import BUNDLE_CENTRAL_SIGNING_PUB  # noqa: E402
from edge.verify.station import verify_store  # noqa: E402
from tests.bench.load_receivers import (  # noqa: E402
    Receivers,
    SharedStorage,
    agency_storage,
    embedded_storage,
    peak_rss_mb,
)
from tests.bench.load_stations import (  # noqa: E402
    BaselineRetries,
    Station,
    build_station,
    make_templates,
    run_baseline,
    run_uplinks,
)
from tests.bench.upload import drop_cache  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30


def say(phase: str, figures: dict[str, Any]) -> None:
    print(f"{phase}: {json.dumps(figures)}", flush=True)


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def per_gb(cpu_s: float, sent_bytes: int) -> float:
    return round(cpu_s / (sent_bytes / GIB), 3) if sent_bytes else 0.0


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of them at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


def build_stations(work: Path, count: int, items: int, item_bytes: int) -> list[Station]:
    templates = make_templates(work / "templates", items, item_bytes)
    return [build_station(work, number, templates) for number in range(count)]


def run(args: argparse.Namespace, work: Path, storage: SharedStorage) -> dict[str, Any]:
    started = time.perf_counter()
    stations = build_stations(work, args.stations, args.items, int(args.item_mb * MIB))
    receivers = Receivers(work, args.receivers, storage)
    receivers.enroll([(s.station_id, s.public_key, s.bundle) for s in stations])
    urls = [r.url for r in receivers.all]
    stations = [Station(s.station_id, s.store, s.bundle, urls[n % len(urls)]) for n, s in enumerate(stations)]
    say("set-up", {"stations": len(stations), "receivers": len(urls), "storage": storage.name,
                   "seconds": round(time.perf_counter() - started, 1)})
    receivers.start()
    try:
        files = [path for s in stations for path in s.stored_files()]
        drop_cache(files)
        central_before, storage_before = receivers.cpu_s(), storage.cpu_s()
        base_retries = BaselineRetries()
        base_s, base_cpu, base_bytes = asyncio.run(run_baseline(stations, args.concurrency, own_cpu_s,
                                                                base_retries))
        base_central = [a - b for a, b in zip(receivers.cpu_s(), central_before, strict=True)]
        baseline = {
            "seconds": round(base_s, 3), "mb_s": round(base_bytes / MIB / base_s, 1),
            "retried_busy": base_retries.count,
            "station_cpu_s_per_gb": per_gb(base_cpu, base_bytes),
            "central_cpu_s_per_gb": per_gb(sum(base_central), base_bytes),
            "storage_cpu_s_per_gb": {k: per_gb(v - storage_before[k], base_bytes)
                                     for k, v in storage.cpu_s().items()},
        }
        say("baseline (plain tus POSTs)", baseline)

        drop_cache(files)
        central_before, storage_before = receivers.cpu_s(), storage.cpu_s()
        fleet = asyncio.run(run_uplinks(stations, args.concurrency, args.timeout_s, own_cpu_s))
        central = [a - b for a, b in zip(receivers.cpu_s(), central_before, strict=True)]
        storage_cpu = {k: v - storage_before[k] for k, v in storage.cpu_s().items()}
        receiver_rss = [peak_rss_mb(r.pid) for r in receivers.all]
    finally:
        receivers.stop()
    sent = fleet.bytes_sent
    upload = {
        "seconds": round(fleet.seconds, 3), "items": fleet.items, "receipts": fleet.receipts,
        "mb_s": round(sent / MIB / fleet.seconds, 1), "items_s": round(fleet.items / fleet.seconds, 1),
        "registrations_not_accepted": fleet.registrations.not_accepted, "resumed": fleet.resumed,
        "uplink_warnings": fleet.warnings,
    }
    say("upload, registration, receipts", upload)

    verify_started = time.perf_counter()
    problems: list[str] = []
    receipts_checked = 0
    for station in stations:
        central_key = load_public_key(station.bundle / BUNDLE_CENTRAL_SIGNING_PUB)
        report = verify_store(station.store, central_key=central_key)
        receipts_checked += int(report.checked.get("receipts", 0))
        problems += [f"{station.station_id}: {p}" for p in report.problems[:3]]
    say("station stores verified", {"receipts_checked": receipts_checked, "problems": len(problems),
                                    "seconds": round(time.perf_counter() - verify_started, 1)})
    if problems:
        print("\n".join(problems[:10]), file=sys.stderr)

    stations_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    return {
        "storage": storage.name,
        "stations": len(stations),
        "receivers": len(receivers.all),
        "items_per_station": args.items,
        "item_mb": args.item_mb,
        "concurrency": args.concurrency,
        "total_mb": round(sent / MIB, 1),
        "items": fleet.items,
        "seconds": upload["seconds"],
        "aggregate_mb_s": upload["mb_s"],
        "items_s": upload["items_s"],
        "registration_p50_s": round(percentile(fleet.registrations.accepted_s, 0.50), 4),
        "registration_p99_s": round(percentile(fleet.registrations.accepted_s, 0.99), 4),
        "registration_mean_s": round(statistics.fmean(fleet.registrations.accepted_s), 4),
        "baseline_s": baseline["seconds"],
        "baseline_mb_s": baseline["mb_s"],
        "ratio": round(fleet.seconds / base_s, 3),
        "station_cpu_s_per_gb": per_gb(fleet.cpu_s, sent),
        "central_cpu_s_per_gb": per_gb(sum(central), sent),
        "receiver_cpu_s_per_gb": [per_gb(cpu, sent) for cpu in central],
        "storage_cpu_s_per_gb": {k: per_gb(v, sent) for k, v in storage_cpu.items()},
        "baseline_station_cpu_s_per_gb": baseline["station_cpu_s_per_gb"],
        "baseline_central_cpu_s_per_gb": baseline["central_cpu_s_per_gb"],
        "registrations_not_accepted": fleet.registrations.not_accepted,
        "uplink_warnings": fleet.warnings,
        "receipts": fleet.receipts,
        "receipts_verified": receipts_checked,
        "all_receipts_verified": fleet.receipts == fleet.items == receipts_checked and not problems,
        "peak_rss_mb": {"stations_process": stations_rss_mb, "receivers": receiver_rss},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--receivers", type=int, default=2, help="agency backends only (embedded: 1)")
    parser.add_argument("--items", type=int, default=2, help="items per station")
    parser.add_argument("--item-mb", type=float, default=2.0, help="size of each item, MiB")
    parser.add_argument("--concurrency", type=int, default=2, help="uploads in flight per station")
    parser.add_argument("--embedded", action="store_true", help="SQLite and a local folder, one receiver")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="longest the upload phase may take")
    parser.add_argument("--json", action="store_true", help="(the last line is always JSON)")
    parser.add_argument("--workdir", help="keep everything here (default: a temporary folder, removed)")
    args = parser.parse_args()
    if args.embedded:
        args.receivers = 1
    if args.stations < 1 or args.receivers < 1 or args.items < 1:
        parser.error("--stations, --receivers and --items must be at least 1")
    work = (Path(args.workdir) if args.workdir
            else Path(tempfile.mkdtemp(prefix="edge-loadbench-", dir="/var/tmp")))
    work.mkdir(parents=True, exist_ok=True)
    total = args.stations * args.items * int(args.item_mb * MIB)
    # Ceph's memstore OSD holds every object (and Object Lock keeps them) in RAM: room for all, twice.
    storage = embedded_storage() if args.embedded else agency_storage(max(1 << 30, 2 * total + (512 << 20)))
    try:
        with storage as shared:
            result = run(args, work, shared)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["all_receipts_verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
