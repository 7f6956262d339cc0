"""Benchmark of the ledger-event log line: what logging each committed ledger entry costs, per format.

    python tests/bench/bench_ledger_logging.py [--entries 5000] [--rounds 3] [--json]

Every ledger entry the station commits is also one log line (`edge.ingest.events.LedgerEventLog`, run
by `StationStore` once the transaction committed). This appends ENTRIES entries through the real
store and ledger (`StationStore.unsynced_transaction` + `Ledger.append`, one entry per transaction, as
the ingest pipeline's group commit does: committed, fsynced later, so the disk's fsync latency does
not drown what is measured; checkpoints are signed every `checkpoint_every` entries as always) with
the log configured as `edge --log-format` configures it:

- ``off``: the root logger at WARNING (the INFO line is not made: `LedgerEventLog` returns at once);
- ``text`` and ``json``: `configure_logging` with a file in the work directory as stderr (a handler
  flushes each line: one write per entry, as to a pipe or the journal's stream);
- ``journal``: `JournalHandler` (systemd's native protocol, one datagram per entry) to journald's
  socket when this machine has one, else to a stand-in: a datagram socket read by a child process,
  which measures the handler's own work and the send, not journald's (the output says which).

The entries cycle through what a docking writes (acquired with device, bay, size and hash; verified;
sealed; uploaded; every 50th an error with a reason), so the line logger's device/bay memory works as
in the field. Each mode runs in its own child process per round (its peak RSS and CPU time are its
own), the modes of a round back to back in rotating order so the load of others falls on all alike;
each log's lines are counted afterwards (a mode that logged nothing would look free). The last line
printed is one JSON object: per mode the median µs per entry and its range, the median ratio to
``off`` of the same round, CPU seconds (user + system of the child, the appends only), peak RSS (MiB)
and the lines logged; ``journal_target`` says where the journal lines went.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from edge.custody.ledger import EntryType  # noqa: E402
from edge.ingest.store import StationStore  # noqa: E402
from edge.runtime.logs import JOURNAL_SOCKET, JournalHandler, configure_logging  # noqa: E402

MODES = ("off", "text", "json", "journal")
STATION = "BENCH-STATION"
WARM_UP = 200  # entries appended before timing (imports, first checkpoint, the SQLite page cache)
_STOP = b"STOP"

# The stand-in for journald: reads datagrams until STOP, then prints how many ledger-event lines came.
_RECEIVER = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sys.argv[1])
print("ready", flush=True)
count = 0
while True:
    data = sock.recv(1 << 20)
    if data == b"STOP":
        break
    count += b"\nLOGGER=edge.ingest.events\n" in data
print(count, flush=True)
"""


def _entry(i: int) -> tuple[str, str | None, dict[str, Any]]:
    """The ``i``-th entry of a docking-like cycle: 4 entries per file, 20 files per recorder."""
    file_no, step = divmod(i, 4)
    bay = 1 + (file_no // 20) % 8
    device = f"{3300001 + (file_no // 20) % 8}"
    item = f"{STATION}-{file_no:08d}"
    if i % 50 == 49:
        return EntryType.ERROR, item, {"stage": "verify", "code": "read_error", "device_serial": device,
                                       "reason": f"short read at byte {i * 4096} of the original: EIO"}
    if step == 0:
        return EntryType.ACQUIRED, item, {
            "device_serial": device, "bay": bay, "size": 52_428_800 + i,
            "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
            "original": f"DCIM/100MEDIA/110001{device}20261120{file_no:06d}_0001.MP4",
        }
    return (EntryType.VERIFIED, EntryType.SEALED, EntryType.UPLOADED)[step - 1], item, {}


def _configure(mode: str, workdir: Path, journal_address: str | None) -> Any:
    """Set up logging as `edge --log-format MODE` does; returns the stream to close (or None)."""
    if mode == "off":
        logging.basicConfig(level=logging.WARNING, handlers=[logging.NullHandler()])
        return None
    if mode == "journal":
        assert journal_address is not None
        logging.basicConfig(level=logging.INFO, handlers=[JournalHandler(journal_address)])
        return None
    stream = (workdir / f"{mode}.log").open("w", encoding="utf-8")
    configure_logging(logging.INFO, stream, "text" if mode == "text" else "json")
    return stream


def child(mode: str, entries: int, workdir: Path, journal_address: str | None) -> dict[str, Any]:
    """Append ``WARM_UP + entries`` ledger entries with logging in ``mode``; time the last ``entries``."""
    stream = _configure(mode, workdir, journal_address)
    store = StationStore(workdir / "store", STATION)
    try:
        for i in range(WARM_UP):
            with store.unsynced_transaction():
                store.ledger.append(*_entry(i))
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        for i in range(WARM_UP, WARM_UP + entries):
            with store.unsynced_transaction():
                store.ledger.append(*_entry(i))
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        store.sync_log()
    finally:
        store.close()
        logging.shutdown()
        if stream is not None:
            stream.close()
    return {
        "us_per_entry": elapsed / entries * 1e6,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


class Receiver:
    """The stand-in journald: a child process reading a datagram socket."""

    def __init__(self, address: Path) -> None:
        self.address = address
        self.process = subprocess.Popen([sys.executable, "-c", _RECEIVER, str(address)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the stand-in journal receiver did not start")

    def received(self) -> int:
        """Stop it; how many datagrams it read."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(_STOP, str(self.address))
        out, _err = self.process.communicate(timeout=60)
        self.address.unlink(missing_ok=True)
        return int(out.strip())


def run_mode(mode: str, entries: int, scratch: Path, real_journal: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=scratch))
    receiver: Receiver | None = None
    address: str | None = None
    if mode == "journal":
        if real_journal:
            address = JOURNAL_SOCKET
        else:
            receiver = Receiver(workdir / "journal.sock")
            address = str(receiver.address)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--entries", str(entries),
               "--workdir", str(workdir)]
    if address is not None:
        command += ["--journal-address", address]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800)
    finally:
        lines = receiver.received() if receiver is not None else None
    if done.returncode != 0:
        raise SystemExit(f"{mode}: the child failed: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if mode in ("text", "json"):
        marker = b" edge.ingest.events: " if mode == "text" else b'"logger":"edge.ingest.events"'
        with (workdir / f"{mode}.log").open("rb") as log_file:
            lines = sum(1 for line in log_file if marker in line)
    result["lines"] = 0 if mode == "off" else lines  # None: sent to the real journald, not counted
    return result


def _span(values: list[float], digits: int) -> list[float]:
    return [round(min(values), digits), round(max(values), digits)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="(the last line is always JSON)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--journal-address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.entries, Path(args.workdir), args.journal_address)))
        return 0

    real_journal = Path(JOURNAL_SOCKET).is_socket()
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    # /var/tmp: a real disk as the station's store has, never tmpfs.
    with tempfile.TemporaryDirectory(prefix="bench-ledger-logging-", dir="/var/tmp") as scratch:
        for round_no in range(args.rounds):
            order = MODES[round_no % len(MODES):] + MODES[: round_no % len(MODES)]
            for mode in order:
                samples[mode].append(run_mode(mode, args.entries, Path(scratch), real_journal))
            print(f"round {round_no + 1}: " + ", ".join(
                f"{mode} {samples[mode][-1]['us_per_entry']:.1f} µs" for mode in MODES), file=sys.stderr)

    off = [s["us_per_entry"] for s in samples["off"]]
    modes: dict[str, Any] = {}
    for mode in MODES:
        per_entry = [s["us_per_entry"] for s in samples[mode]]
        ratios = [m / o for m, o in zip(per_entry, off, strict=True)]
        cpu = [s["cpu_s"] for s in samples[mode]]
        modes[mode] = {
            "us_per_entry": round(statistics.median(per_entry), 1),
            "us_per_entry_range": _span(per_entry, 1),
            "ratio_to_off": round(statistics.median(ratios), 3),
            "ratio_range": _span(ratios, 3),
            "cpu_s": round(statistics.median(cpu), 3),
            "cpu_us_per_entry": round(statistics.median(cpu) / args.entries * 1e6, 1),
            "peak_rss_mb": round(max(s["peak_rss_mb"] for s in samples[mode]), 1),
            "lines": [s["lines"] for s in samples[mode]],
        }
    result = {
        "entries": args.entries,
        "rounds": args.rounds,
        "transaction": "one entry per unsynced transaction (committed; fsynced once at the end)",
        "journal_target": (
            f"journald ({JOURNAL_SOCKET})" if real_journal else
            f"no journald socket at {JOURNAL_SOCKET} on this machine: a stand-in datagram receiver (a child "
            "process reading the socket) took the journal lines; journald's own work is not measured"),
        "modes": modes,
    }
    print(json.dumps(result, ensure_ascii=False))
    expected = args.entries + WARM_UP
    counted = [n for mode in ("text", "json", "journal") for n in modes[mode]["lines"] if n is not None]
    return 0 if all(n == expected for n in counted) else 1


if __name__ == "__main__":
    raise SystemExit(main())
