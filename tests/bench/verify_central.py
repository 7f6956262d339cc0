"""Benchmark of `edge verify CENTRAL`: time, items/s and peak memory on a central store of N items.

    python tests/bench/verify_central.py [--items 100000] [--stations 20] [--workdir DIR] [--json]

The store is built fast but through the real APIs, not by N HTTP uploads: each station keeps a real
ledger (`Ledger`, its own key) with the entries a station writes for an item (acquired, verified,
sealed, queued, uploaded, receipt) and signs manifests as the station does; the central side uses
`SqliteIndex` (enrollment, accepted ledger entries and checkpoints, items), `MerkleLog` (a leaf and a
signed tree head per item, as registration does) and the object store layout for each object's bytes
(written without fsync: durability is not what is measured). `--workdir` keeps the store, and a store
already built there for the same size is reused.

Verification runs in a child process (`edge verify STORE --json`), so its peak RSS is its own: the
check streams station by station, so memory must not grow with the number of items (compare
--items 10000 with --items 100000). Last line JSON: items, stations, build_s, verify_s, items_per_s,
peak_rss_mb, problems, ok.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from edge.central.config import CentralLayout  # noqa: E402
from edge.central.log import MerkleLog  # noqa: E402
from edge.central.objects import FileObjectStore  # noqa: E402
from edge.central.sqlite import SqliteDatabase  # noqa: E402
from edge.custody.canonical import canonical_json, sha256_hex  # noqa: E402
from edge.custody.keys import StationKey  # noqa: E402
from edge.custody.ledger import EntryType, Ledger, station_time_now  # noqa: E402
from edge.custody.manifest import manifest_bytes, sign_manifest  # noqa: E402
from edge.custody.receipt import make_leaf_entry  # noqa: E402

ORIGIN = "BENCH-CENTRAL"
BATCH = 500


def build(root: Path, items: int, stations: int) -> None:
    """A central store of ``items`` accepted items from ``stations`` stations."""
    import sqlite3

    layout = CentralLayout(root)
    layout.identity_dir.mkdir(parents=True, exist_ok=True)
    central_key = StationKey.load_or_create(layout.signing_key)
    database = SqliteDatabase.open(layout.index_db)
    index = database.index
    merkle = MerkleLog(database.log_store, central_key, ORIGIN)
    objects = FileObjectStore(layout.objects_dir)
    per_station = -(-items // stations)
    made = 0
    for number in range(stations):
        station_id = f"BENCH-{number:04d}"
        key = StationKey.generate()
        index.enroll_station(station_id, key.public_key_b64, "c" * 64)
        conn = sqlite3.connect(":memory:", isolation_level=None)
        Ledger.create_schema(conn)
        ledger = Ledger(conn, station_id, key)
        count = min(per_station, items - made)
        for start in range(0, count, BATCH):
            batch = []
            conn.execute("BEGIN")
            for offset in range(start, min(count, start + BATCH)):
                content = f"{station_id} evidence {offset}".encode() * 8
                item = str(uuid.uuid4())
                sha = sha256_hex(content)
                acquired = ledger.append(EntryType.ACQUIRED, item, {"sha256": sha, "size": len(content)})
                ledger.append(EntryType.VERIFIED, item, {"sha256": sha})
                manifest = sign_manifest(_manifest(item, sha, len(content), station_id, acquired), key)
                sealed = {"manifest_sha256": sha256_hex(manifest_bytes(manifest))}
                ledger.append(EntryType.SEALED, item, sealed)
                ledger.append(EntryType.QUEUED, item, {"sha256": sha, "size": len(content)})
                ledger.append(EntryType.UPLOADED, item, {"upload": f"/v1/uploads/{uuid.uuid4().hex}",
                                                         "bytes_sent": len(content), "resumed_from": 0})
                batch.append((item, content, sha, manifest))
            conn.execute("COMMIT")
            _publish(objects, batch)
            with index.transaction():
                receipts = []
                for item, content, sha, manifest in batch:
                    now = station_time_now()
                    leaf = make_leaf_entry(item=item, sha256=sha, size=len(content), station=station_id,
                                           manifest_sha256=sha256_hex(canonical_json(manifest)),
                                           accepted_utc=now)
                    leaf_index = merkle.append(leaf)
                    index.insert_item(manifest, station_id=station_id, leaf_index=leaf_index,
                                      accepted_utc=now)
                    head = merkle.tree_head()
                    receipts.append((item, sha, leaf_index, head))
            conn.execute("BEGIN")
            for item, sha, leaf_index, head in receipts:
                ledger.append(EntryType.RECEIPT, item, {
                    "central": ORIGIN, "central_key_id": central_key.key_id, "leaf_index": leaf_index,
                    "tree_size": head.tree_size, "root_hash": head.root_hash, "tree_head_time": head.time,
                    "sha256": sha, "verified": True,
                })
            checkpoint = ledger.checkpoint()
            conn.execute("COMMIT")
            assert checkpoint is not None
            accepted = index.ledger_head(station_id)[0]
            with index.transaction():
                new = list(ledger.entries(accepted + 1))
                index.insert_ledger_entries(station_id, new, station_time_now())
                index.insert_checkpoint(checkpoint, station_time_now())
        made += count
        conn.close()
    index.close()


def _manifest(item: str, sha: str, size: int, station_id: str, acquired: Any) -> dict[str, Any]:
    return {
        "format": "evidence-edge/manifest/1", "item": item, "sha256": sha, "size": size,
        "media": {"container": "mp4"},
        "original": {"name": "20240131080000_0001.MP4", "path": "DCIM/20240131080000_0001.MP4"},
        "source": {"kind": "usb", "station": station_id, "device_serial": "DSJ-0001", "officer_no": "001234",
                   "officer_name": "张三", "unit_code": "320100", "unit_name": "市局"},
        "time": {"recorded_start": "2024-01-31T08:00:00", "acquired_utc": station_time_now(),
                 "station_clock_synchronised": True},
        "case": {"case_number": "A-2024-001", "location": "Nanjing", "collector": "张三(001234)",
                 "subject": "traffic stop", "important": False, "category": "traffic",
                 "retention": "6-months"},
        "chain": {"seq": acquired.seq, "entry_hash": acquired.hash},
    }


def _publish(objects: FileObjectStore, batch: list[tuple[str, bytes, str, Any]]) -> None:
    """Each object at its place in the store's layout, read-only (no fsync: not what is measured)."""
    for _item, content, sha, _manifest in batch:
        path = objects.path_of(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, 0o400)


def verify(root: Path) -> tuple[dict[str, Any], float, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())", "verify", str(root),
         "--json"],
        capture_output=True, text=True, cwd=REPO,
    )
    elapsed = time.monotonic() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"edge verify printed nothing: {done.stderr[-2000:]}")
    return json.loads(lines[-1]), elapsed, peak_mb


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--stations", type=int, default=20)
    parser.add_argument("--workdir", help="keep the store here (reused when already built for --items)")
    parser.add_argument("--json", action="store_true", help="(the last line is always JSON)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-verify-central-") as scratch:
        base = Path(args.workdir) if args.workdir else Path(scratch)
        root = base / f"central-{args.items}-{args.stations}"
        marker = base / f"{root.name}.built"
        build_s = 0.0
        if not marker.is_file():
            started = time.monotonic()
            build(root, args.items, args.stations)
            marker.write_text("ok\n")
            build_s = time.monotonic() - started
            print(f"built {args.items} items from {args.stations} stations in {build_s:.1f} s",
                  file=sys.stderr)
        report, verify_s, peak_mb = verify(root)
    result = {
        "items": args.items,
        "stations": args.stations,
        "build_s": round(build_s, 1),
        "verify_s": round(verify_s, 2),
        "items_per_s": round(args.items / verify_s),
        "peak_rss_mb": round(peak_mb, 1),
        "problems": len(report.get("problems", [])),
        "ok": bool(report.get("ok")),
    }
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
