"""MQTT benchmark: the same files moved to a real central over HTTP (tus) and over MQTT, in one run.

    python tests/bench/mqtt.py [--total-mb 512] [--files 16] [--rounds 2] [--json]

TOTAL MiB of real MP4 files are acquired into a station store (not timed). Then, in each round and for
each transport in alternating order, everything is fresh and made as an agency makes it: a central store
(`edge central init`, `enroll`, `mqtt-identity`, `broker-cert`), a Mosquitto running the shipped agency
configuration and ACL (edge.mqtt.local_broker) with that server certificate, the central in its own
process (`edge central --config`, HTTPS with mutual TLS and its [mqtt] receiver on the broker, whatever
the transport, so both runs carry the same processes), and a copy of the station store whose pages are
dropped from the page cache. The station uplink (`UplinkService`, its own process) then drains the
spool over `[uplink] transport = "tus"` or `"mqtt"`: content, registration with its ledger segment,
receipt verification; every item must end receipted.

CPU is measured per process over the drain only: the uplink process reports its own (getrusage before
and after the drain), the central's and the broker's come from /proc/<pid>/stat (utime + stime) read
just before the uplink starts and just after it ends. Per GB means per GiB of evidence moved.
Last line JSON: http_s, mqtt_s (medians of the uplink's drain time), ratio (mqtt_s / http_s; target
<= 1.5), station_cpu_s_per_gb, central_cpu_s_per_gb and broker_cpu_s_per_gb (each {http, mqtt}),
peak_rss_mb (the uplink process, the larger of both transports) with peak_rss_mb_by_process, total_mb,
files, receipts and every round's samples_s. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

from edge.mqtt.local_broker import BrokerTls, LocalBroker, free_port  # noqa: E402
from tests.bench.upload import acquire_into, drop_cache, edge_command, make_volume, stored_files  # noqa: E402

MIB = 1 << 20
STATION_ID = "BENCH-01"
CENTRAL_ID = "BENCH-CENTRAL"
TRANSPORTS = {"http": "tus", "mqtt": "mqtt"}  # the bench's names -> [uplink] transport
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 60.0


# -- per-process accounting -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc/<pid>/stat (fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process (its peak resident set), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/{pid}/status has no VmHWM")


# -- the agency: central store, certificates, broker, central process -------------------------------


async def edge(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *edge_command(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"edge {' '.join(args)} failed: {err.decode(errors='replace')[-2000:]}")


class Agency:
    """A fresh central store with its certificates, a broker, and the central's process."""

    def __init__(self, root: Path, mqtt_workers: int = 0) -> None:
        self.root = root
        self.worker_ids = [f"{CENTRAL_ID}-w{n}" for n in range(1, mqtt_workers + 1)]
        self.workers: list[asyncio.subprocess.Process] = []
        self.port = free_port()
        self.broker_port = free_port()
        self.config = root / "central.toml"
        self.identity = root / "central-mqtt"
        self.broker_tls = root / "broker-tls"
        self.bundle = root / "station-bundle"
        self.config.write_text(
            f'[central]\nid = "{CENTRAL_ID}"\nstore_dir = "{root / "central"}"\n'
            f'[server]\nlisten = "127.0.0.1"\nport = {self.port}\nnames = ["localhost", "127.0.0.1"]\n'
            f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:{self.broker_port}"\n'
            f'ca_file = "{self.identity / "ca.crt"}"\nclient_bundle_dir = "{self.identity}"\n'
        )
        self.broker: LocalBroker | None = None
        self.central: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def broker_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.broker_port}"

    async def prepare(self, store: Path) -> None:
        config = str(self.config)
        await edge("central", "init", "--config", config)
        await edge("central", "enroll", STATION_ID, "--config", config, "--signing-key",
                   str(store / "keys" / "station.key.pub"), "--out", str(self.bundle))
        await edge("central", "mqtt-identity", "--config", config, "--out", str(self.identity))
        await edge("central", "broker-cert", "--config", config, "--name", "127.0.0.1", "--name", "localhost",
                   "--out", str(self.broker_tls))

    async def start(self) -> None:
        tls_dir = self.broker_tls
        tls = BrokerTls(tls_dir / "ca.crt", tls_dir / "server.crt", tls_dir / "server.key",
                        tls_dir / "ca.crl")
        self.broker = LocalBroker(self.root / "broker", tls, central_id=CENTRAL_ID, port=self.broker_port)
        await self.broker.start()
        log = (self.root / "central.log").open("wb")
        self.central = await asyncio.create_subprocess_exec(
            *edge_command(), "central", "--config", str(self.config),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )
        for client_id in self.worker_ids:
            self.workers.append(await asyncio.create_subprocess_exec(
                *edge_command(), "central", "mqtt-worker", "--config", str(self.config), "--client-id",
                client_id, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            ))
        log.close()
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        """Until the central's HTTPS port accepts connections and its receivers are subscribed on the broker:
        neither transport's run then waits for a start-up."""
        assert self.broker is not None and self.central is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        https_up = mqtt_up = False
        while not (https_up and mqtt_up):
            if self.central.returncode is not None:
                raise SystemExit(f"the central exited: {(self.root / 'central.log').read_text()[-2000:]}")
            if loop.time() > deadline:
                raise SystemExit(f"the central did not start (https {https_up}, mqtt {mqtt_up})")
            if not https_up:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    https_up = True
                except OSError:
                    pass
            # Each receiver process (the central, every worker) logs once it is subscribed; the broker's
            # log cannot say (client ids are secret, and it does not log connections).
            central_log = (self.root / "central.log").read_text(errors="replace")
            mqtt_up = central_log.count("subscribed (group") >= 1 + len(self.worker_ids)
            await asyncio.sleep(0.05)  # polls processes becoming ready; proves nothing

    def cpu(self) -> dict[str, float]:
        assert self.broker is not None and self.broker.process is not None and self.central is not None
        central = cpu_seconds(self.central.pid) + sum(cpu_seconds(w.pid) for w in self.workers)
        return {"central": central, "broker": cpu_seconds(self.broker.process.pid)}

    async def stop(self) -> float:
        """Stop them all; returns the largest peak RSS of the central's processes in MiB (read while each
        still runs)."""
        rss = 0.0
        for worker in self.workers:
            if worker.returncode is None:
                rss = max(rss, peak_rss_mb(worker.pid))
                worker.terminate()
                await worker.wait()
        if self.central is not None and self.central.returncode is None:
            rss = max(rss, peak_rss_mb(self.central.pid))
            self.central.terminate()
            try:
                async with asyncio.timeout(30):
                    await self.central.wait()
            except TimeoutError:
                self.central.kill()
                await self.central.wait()
        if self.broker is not None:
            await self.broker.stop()
        return rss


# -- the station's uplink, in a process of its own ---------------------------------------------------


def uplink_worker(job: dict[str, Any]) -> None:
    """Drain the station's spool over one transport; prints seconds, items, receipts and this process's
    CPU seconds over the drain and its peak RSS as JSON."""
    from edge.config.station import StationConfig
    from edge.ingest.store import StationStore
    from edge.uplink.service import UplinkService

    transport, store_dir = job["transport"], Path(job["store"])
    uplink: dict[str, Any] = {"transport": transport, "identity_dir": job["bundle"], **job["uplink"]}
    if transport == "tus":
        uplink["central_url"] = job["central_url"]
    config = StationConfig.model_validate(
        {
            "station": {"id": STATION_ID, "store_dir": str(store_dir), "clock": "untrusted"},
            "usb": {"mount_root": str(store_dir)},
            "offload": {"verify_reread": False, "min_free_bytes": 0},
            "wipe": {"policy": "never"},
            "uplink": uplink,
            "mqtt": {"broker_url": job["broker_url"]} if transport == "mqtt" else {},
        }
    )
    store = StationStore(store_dir, STATION_ID)
    service = UplinkService(config, store)

    async def drain() -> float:
        started = time.perf_counter()
        task = asyncio.create_task(service.run())
        try:
            if not await service.wait_drained(3600):
                raise SystemExit("uplink did not drain")
            return time.perf_counter() - started
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = asyncio.run(drain())
    after = resource.getrusage(resource.RUSAGE_SELF)
    items = store.conn.execute("SELECT count(*) FROM items WHERE path IS NOT NULL").fetchone()[0]
    counts = service.spool.counts()
    store.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"seconds": seconds, "items": items, "receipts": counts.get("receipted", 0),
                      "cpu_s": cpu, "peak_rss_mb": after.ru_maxrss / 1024}))


async def run_uplink(transport: str, store: Path, agency: Agency, uplink: dict[str, Any]) -> dict[str, Any]:
    job = {"transport": TRANSPORTS[transport], "store": str(store), "bundle": str(agency.bundle),
           "central_url": agency.url, "broker_url": agency.broker_url, "uplink": uplink}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--uplink-worker", json.dumps(job), stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the {transport} uplink worker failed with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if result["receipts"] != result["items"]:
        raise SystemExit(f"{transport}: only {result['receipts']} of {result['items']} items receipted")
    return result


# -- the run ------------------------------------------------------------------------------------------


async def one_transport(
    transport: str, round_dir: Path, template: Path, uplink: dict[str, Any], mqtt_workers: int
) -> dict[str, Any]:
    round_dir.mkdir()
    store = round_dir / "station-store"
    shutil.copytree(template, store, symlinks=True)
    agency = Agency(round_dir, mqtt_workers)
    await agency.prepare(store)
    await agency.start()
    try:
        drop_cache(stored_files(store))
        before = agency.cpu()
        result = await run_uplink(transport, store, agency, uplink)
        after = agency.cpu()
    finally:
        central_rss = await agency.stop()
    result.update({f"{name}_cpu_s": after[name] - before[name] for name in after})
    result["central_peak_rss_mb"] = central_rss
    shutil.rmtree(round_dir)
    return result


def station_template(work: Path, total_mb: int, files: int) -> Path:
    """A station store holding the files, sealed and spooled (set-up, not timed; runs its own loop)."""
    volume = make_volume(work / "media", "3300001", files, max(1, total_mb * MIB // files), 1)
    template = work / "station-template"
    acquire_into(STATION_ID, template, volume)
    return template


async def bench(template: Path, work: Path, total_mb: int, files: int, uplink: dict[str, Any],
                rounds: int, mqtt_workers: int) -> dict[str, Any]:
    moved_gib = sum(p.stat().st_size for p in stored_files(template)) / (1 << 30)
    runs: dict[str, list[dict[str, Any]]] = {"http": [], "mqtt": []}
    for round_no in range(rounds):
        order = ["http", "mqtt"] if round_no % 2 == 0 else ["mqtt", "http"]
        for transport in order:
            runs[transport].append(
                await one_transport(transport, work / f"round-{round_no}-{transport}", template, uplink,
                                    mqtt_workers)
            )

    def median(transport: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[transport]))

    def per_gb(key: str) -> dict[str, float]:
        return {t: round(median(t, key) / moved_gib, 2) for t in runs}

    http_s, mqtt_s = median("http", "seconds"), median("mqtt", "seconds")
    return {
        "total_mb": total_mb,
        "files": files,
        "uplink": uplink,
        "mqtt_workers": mqtt_workers,
        "rounds": rounds,
        "http_s": round(http_s, 3),
        "mqtt_s": round(mqtt_s, 3),
        "ratio": round(mqtt_s / http_s, 3),
        "station_cpu_s_per_gb": per_gb("cpu_s"),
        "central_cpu_s_per_gb": per_gb("central_cpu_s"),
        "broker_cpu_s_per_gb": per_gb("broker_cpu_s"),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for rs in runs.values() for r in rs), 1),
        "peak_rss_mb_by_process": {
            t: {"station": round(max(r["peak_rss_mb"] for r in rs), 1),
                "central": round(max(r["central_peak_rss_mb"] for r in rs), 1)}
            for t, rs in runs.items()
        },
        "receipts": {t: rs[-1]["receipts"] for t, rs in runs.items()},
        "samples_s": {t: [round(r["seconds"], 3) for r in rs] for t, rs in runs.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total-mb", type=int, default=512)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2, help="uplink uploads in flight")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each transport; medians compared")
    parser.add_argument("--segment-kb", type=int, help="[uplink] mqtt_segment_kb (default: the station's)")
    parser.add_argument("--max-packet-kb", type=int, help="[uplink] mqtt_max_packet_kb (the shipped "
                        "broker takes 2048)")
    parser.add_argument("--in-flight", type=int, help="[uplink] mqtt_segments_in_flight")
    parser.add_argument("--mqtt-workers", type=int, default=0,
                        help="`edge central mqtt-worker` processes beside the central (their CPU counts as "
                        "the central's)")
    parser.add_argument("--json", action="store_true", help="(the last line is always JSON)")
    parser.add_argument("--workdir")
    parser.add_argument("--uplink-worker", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.uplink_worker:
        uplink_worker(json.loads(args.uplink_worker))
        return 0
    uplink: dict[str, Any] = {"concurrency": args.concurrency}
    for option, key in (("segment_kb", "mqtt_segment_kb"), ("max_packet_kb", "mqtt_max_packet_kb"),
                        ("in_flight", "mqtt_segments_in_flight")):
        if getattr(args, option) is not None:
            uplink[key] = getattr(args, option)
    scratch = None if args.workdir else tempfile.mkdtemp(prefix="edge-mqttbench-", dir="/var/tmp")
    work = Path(args.workdir or scratch or "")
    work.mkdir(parents=True, exist_ok=True)
    try:
        template = station_template(work, args.total_mb, args.files)
        result = asyncio.run(
            bench(template, work, args.total_mb, args.files, uplink, args.rounds, args.mqtt_workers)
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
