"""Upload benchmark: the station uplink against curl, each against a central receiver of its own.

    python tests/bench/upload.py [--total-mb 1024] [--files 16] [--chunk-mb 8] [--json]
    python tests/bench/upload.py --pipeline [--file-mb 50] [--rounds 3] [--embedded-central] [--usb-mb-s 35]
    python tests/bench/upload.py --s3 [--s3-payload-signing unsigned|auto|signed] [--total-mb 256]
    python tests/bench/upload.py --stations 20 [--total-mb 1024]

Default mode: TOTAL MiB of real MP4 files are acquired into a station store (not timed) as a station
acquires them (the verification re-read recording each copy's sha256-prefix digests at the uplink's
--chunk-mb, which the uplink then sends instead of hashing: edge.ingest.prefix_digests); then, in the
same run, the same stored files are uploaded, cold from disk (page cache dropped before each
contender), each contender to a real central of its own (`edge central`, its own process, mutual
TLS), (a) by `curl`, one tus creation-with-upload POST per file, sequentially, and (b) by the station
uplink (`UplinkService` in its own process: tus with sha256-prefix checksums, registration with a
ledger segment, receipt verification). ROUNDS rounds, each with a fresh copy of the store, in
alternating order; medians compared. Last line JSON: curl_s, edge_s, ratio (edge_s / curl_s; target
<= 1.25), peak_rss_mb (the uplink process), total_mb, files, and the CPU each side spends per GiB sent
(user + system, every thread): station_cpu_s_per_gb (the uplink process while it drains, start-up
excluded; target <= 1.5) and central_cpu_s_per_gb (the `edge central` process from the uplink's start
to its end: upload, registration, receipts; target <= 2.5); curl_cpu_s_per_gb and
curl_central_cpu_s_per_gb the same for the curl contender (TLS and the receive path without
per-chunk checksums or registration: the floor).
--files sets the file size (TOTAL / FILES): per-item work (tus creation, ledger segment, registration,
receipt) is about 13 ms of the central's CPU and 5 ms of the station's per item here, so small files
measure it more than the bytes. curl's own CPU grows with the file size (it reads each file whole
into memory: 1.5 CPU s per GiB with 16 MiB files, 2.5 to 2.9 with 64 to 256 MiB files), so compare the
station with curl at 16 to 32 MiB files. --chunk-mb: the uplink's tus PATCH size ([uplink] chunk_mb).

--pipeline: `edge demo --file-mb N --json --central-process` (the central as deployed, `edge central
run` in its own process with mutual TLS; offload, upload and receipt overlap; recorders erased after
receipt) against the same demo with --no-central (offload only), ROUNDS of each alternating, medians.
pipeline_ratio = journey_seconds / offload_seconds (target <= 1.3). CPU per GiB acquired:
offload_cpu_s_per_gb and journey_cpu_s_per_gb (every process of each demo), upload_path_cpu_s_per_gb
their difference, and by side from docking to the last receipt: station_upload_cpu_s_per_gb (the demo
process's CPU beyond the offload-only demo's in the same window; the simulated recorders and dock run
in that process too) and central_cpu_s_per_gb (the central's process). --embedded-central: the old
mode, the central inside the demo's process (no figures by side). offload_cores: the offload-only demo's CPU
over its offload, in cores. The simulated recorders deliver far faster than USB 2.0 recorders would
(about 190 MiB/s from 3 bays here), faster than one uplink moves bytes on this machine, so the journey
is bounded by the uplink's throughput rather than by how well upload overlaps the offload. --usb-mb-s N
paces each recorder's reads to N MB/s in both demos (`edge demo --usb-mb-s`: the simulator's FUSE volume
with a token bucket), as recorders on USB 2.0 deliver (30 to 40 MB/s a bay): the ratio at field speed.

--s3: the centrals keep their objects in an S3 bucket with Object Lock on a throwaway single-node Ceph
cluster (tests/central/ceph.py; RGW over http on 127.0.0.1, its daemons' CPU not counted), so
central_cpu_s_per_gb includes sending every object to the bucket (Content-MD5 per part, about 1.2 to
1.7 CPU s per GiB here). --s3-payload-signing sets the centrals' [objects] payload_signing: unsigned by
default, as botocore does over https with Content-MD5 (auto over this plain-http gateway would also
hash each part's SHA-256 for the signature). Its OSD keeps everything in RAM: rounds x total MiB must
fit (locked objects cannot be deleted).

Profiles: with EDGE_BENCH_PY_SPY=/path/to/py-spy each central and uplink process is sampled into
EDGE_BENCH_PROFILE_DIR (collapsed stacks; EDGE_BENCH_PY_SPY_ARGS=--native for C frames too); the figures
of such a run are inflated by the sampling.

--stations N: N stations (own store, key, certificate) upload at once to one central: aggregate
throughput, and every item's receipt verified at its station and the central store verified.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MIB = 1 << 20
GIB = 1 << 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads) and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (proc(5)).
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_gb(cpu_s: float, sent_bytes: int) -> float:
    return round(cpu_s / (sent_bytes / GIB), 3) if sent_bytes else 0.0


# Where the CPU goes: with EDGE_BENCH_PY_SPY naming a py-spy binary, each central and uplink process is
# sampled (every thread, attached by pid so the CPU counts above stay the process's own) into collapsed
# stacks in EDGE_BENCH_PROFILE_DIR (default: the current directory). The figures of such a run are
# inflated by the sampling; read the profiles, not the numbers.
PY_SPY_ENV, PROFILE_DIR_ENV = "EDGE_BENCH_PY_SPY", "EDGE_BENCH_PROFILE_DIR"
PROFILERS: list[subprocess.Popen[bytes]] = []  # the uplinks' samplers, waited for at the end


def profile(pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """Start sampling process ``pid`` when EDGE_BENCH_PY_SPY is set; stops by itself when it exits."""
    py_spy = os.environ.get(PY_SPY_ENV)
    if not py_spy:
        return None
    out = Path(os.environ.get(PROFILE_DIR_ENV, ".")) / f"{name}-{pid}.txt"
    extra = os.environ.get("EDGE_BENCH_PY_SPY_ARGS", "--nonblocking").split()  # --native: C frames too
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                             "--threads", *extra, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def edge_command() -> list[str]:
    return [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the central ------------------------------------------------------------------------------------


S3_SECRET_ENV = "EDGE_BENCH_S3_SECRET"


class Bucket:
    """Fresh buckets with Object Lock (and a one-day default COMPLIANCE retention, as the README says to
    create them) on a Ceph gateway (tests/central/ceph.py)."""

    def __init__(self, gateway: Any, payload_signing: str) -> None:
        import boto3
        from botocore.config import Config

        self.gateway = gateway
        self.payload_signing = payload_signing
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=gateway.endpoint, aws_access_key_id=gateway.access_key_id,
            aws_secret_access_key=gateway.secret_access_key, region_name=gateway.region,
            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )
        os.environ[S3_SECRET_ENV] = gateway.secret_access_key  # the centrals' secret reference (env:)

    def objects_toml(self) -> str:
        """A new bucket, as the central's `objects` setting."""
        name = f"bench-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        self.client.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
        return (f'objects = {{type = "s3", endpoint = "{self.gateway.endpoint}", bucket = "{name}", '
                f'region = "{self.gateway.region}", access_key_id = "{self.gateway.access_key_id}", '
                f'secret_access_key = "env:{S3_SECRET_ENV}", payload_signing = "{self.payload_signing}"}}\n')


class Central:
    def __init__(self, work: Path, bucket: Bucket | None = None) -> None:
        self.dir = work / "central"
        self.port = free_port()
        self.config = work / "central.toml"
        self.config.write_text(
            f'[central]\nid = "BENCH-CENTRAL"\nstore_dir = "{self.dir}"\n'
            + (bucket.objects_toml() if bucket is not None else "")
            + f'[server]\nlisten = "127.0.0.1"\nport = {self.port}\nnames = ["localhost", "127.0.0.1"]\n'
        )
        run([*edge_command(), "central", "init", "--config", str(self.config)])
        self.proc: subprocess.Popen[bytes] | None = None
        self.profiler: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def enroll(self, station_id: str, store: Path, bundle: Path) -> None:
        run(
            [
                *edge_command(),
                "central",
                "enroll",
                station_id,
                "--config",
                str(self.config),
                "--signing-key",
                str(store / "keys" / "station.key.pub"),
                "--out",
                str(bundle),
            ]
        )

    def start(self) -> None:
        self.errors = self.dir.parent / "central.stderr"
        with open(self.errors, "wb") as errors:
            self.proc = subprocess.Popen(
                [*edge_command(), "central", "--config", str(self.config)], stderr=errors
            )
        # Generous: on a loaded machine the central's start (imports, keys, the bucket's check) is slow.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the central exited {self.proc.returncode} while starting: "
                                 f"{self.errors.read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                self.profiler = profile(self.proc.pid, "central")
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"the central did not start within 180 s: "
                         f"{self.errors.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(120)  # its graceful stop; slow on a loaded machine
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self.profiler is not None:
            self.profiler.wait(120)  # writes its profile when the central has gone


def run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[3:])} failed: {done.stderr.strip()[-2000:]}")


# -- station stores ---------------------------------------------------------------------------------


def make_volume(root: Path, serial: str, files: int, file_bytes: int, seed: int) -> Path:
    from datetime import datetime, timedelta

    from simulators.recorder.media import make_mp4
    from simulators.recorder.volume import param_ini_bytes, recorder_file_name

    volume = root / f"ZFY_{serial}"
    media = volume / "DCIM" / "100MEDIA"
    media.mkdir(parents=True)
    (volume / "PARAM.INI").write_bytes(
        param_ini_bytes(
            device_serial=serial,
            officer_no="110001",
            officer_name="张伟",
            unit_code="330100000000",
            unit_name="杭州市综合行政执法局",
        )
    )
    start = datetime(2026, 11, 20, 8, 0, 0)
    for i in range(files):
        name = recorder_file_name("110001", serial, start + timedelta(minutes=10 * i), i + 1, False, "MP4")
        make_mp4(media / name, size_bytes=file_bytes, seed=seed * 1000 + i)
    return volume


def station_config(station_id: str, store: Path, mount_root: Path, uplink: dict[str, Any] | None) -> Any:
    from edge.config.station import StationConfig

    return StationConfig.model_validate(
        {
            "station": {"id": station_id, "store_dir": str(store), "clock": "untrusted"},
            "usb": {"mount_root": str(mount_root)},
            # Verified as a station does (the re-read records the upload's prefix digests).
            "offload": {"verify_reread": True, "min_free_bytes": 0},
            "wipe": {"policy": "never"},
            "uplink": uplink or {},
        }
    )


def acquire_into(station_id: str, store_dir: Path, volume: Path, chunk_mb: int = 8) -> None:
    """Offload a volume into a new station store as a station does (set-up, not timed): the verification
    re-read records each copy's prefix digests at the uplink's chunk size."""
    from edge.ingest.store import StationStore
    from edge.sources.usb.identity import ClockFacts, RecorderIdentity, SessionInfo
    from edge.sources.usb.offload import OffloadOutcome, VolumeOffload

    config = station_config(station_id, store_dir, volume.parent, {"chunk_mb": chunk_mb})
    store = StationStore(store_dir, station_id)
    serial = volume.name.removeprefix("ZFY_")
    identity = RecorderIdentity(serial, "110001", "张伟", "330100000000", "杭州市综合行政执法局", "PARAM.INI")
    session = SessionInfo(
        str(uuid.uuid4()), station_id, None, identity, ClockFacts(None, 0, None, None, False)
    )
    with ThreadPoolExecutor(4) as executor:
        result = asyncio.run(VolumeOffload(store, config, session, volume, executor=executor).run())
    recorded = store.conn.execute("SELECT count(*) FROM prefix_digests").fetchone()[0]
    store.close()
    if result.outcome is not OffloadOutcome.DONE:
        raise SystemExit(f"set-up offload failed: {result.outcome} {result.errors[:3]}")
    if recorded != len(result.items):
        raise SystemExit(f"set-up offload recorded prefix digests of {recorded} of {len(result.items)} items")


def uplink_worker(
    station_id: str, store_dir: Path, central_url: str, bundle: Path, concurrency: int, chunk_mb: int
) -> None:
    """Drain one station's spool to the central; prints seconds, items and receipts as JSON."""
    from edge.ingest.store import StationStore
    from edge.uplink.service import UplinkService

    config = station_config(
        station_id,
        store_dir,
        store_dir,
        {
            "central_url": central_url,
            "identity_dir": str(bundle),
            "concurrency": concurrency,
            "chunk_mb": chunk_mb,
        },
    )
    store = StationStore(store_dir, station_id)
    service = UplinkService(config, store)
    # The transport's and the PKI's modules load on the uplink's first connection: a one-off cost of the
    # process, not of the bytes, so it is paid before the CPU count starts.
    import encodings.idna  # noqa: F401

    import edge.pki.tls
    import edge.uplink.tus_transport  # noqa: F401
    from edge.runtime.collector import freeze_start_up_objects

    # As the agent does once started (`edge run`): start-up objects out of the cyclic collector's reach.
    freeze_start_up_objects("benchmark uplink")

    cpu_before = 0.0

    def self_cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
        return usage.ru_utime + usage.ru_stime

    async def drain() -> float:
        nonlocal cpu_before
        cpu_before = self_cpu_s()
        started = time.perf_counter()
        task = asyncio.create_task(service.run())
        try:
            if not await service.wait_drained(3600):
                raise SystemExit("uplink did not drain")
            return time.perf_counter() - started
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    seconds = asyncio.run(drain())
    cpu_s = self_cpu_s() - cpu_before
    items = store.conn.execute("SELECT count(*) FROM items WHERE path IS NOT NULL").fetchone()[0]
    counts = service.spool.counts()
    store.close()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "items": items,
                "receipts": counts.get("receipted", 0),
                "bytes_sent": service.stats.bytes_sent,
                "cpu_s": cpu_s,
            }
        )
    )


def spawn_uplink(
    station_id: str,
    store: Path,
    central: Central,
    bundle: Path,
    concurrency: int,
    chunk_mb: int = 8,
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--uplink-worker",
            station_id,
            str(store),
            central.url,
            str(bundle),
            str(concurrency),
            str(chunk_mb),
        ],
        stdout=subprocess.PIPE,
    )
    profiler = profile(proc.pid, "uplink")
    if profiler is not None:
        PROFILERS.append(profiler)
    return proc


def reap(proc: subprocess.Popen[bytes]) -> tuple[dict[str, Any], float]:
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"uplink worker failed with {proc.returncode}")
    return json.loads(output.decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024


def curl_upload(files: list[Path], central: Central, bundle: Path) -> tuple[float, float]:
    """One tus creation-with-upload POST per file, streamed from disk (-T), sequentially: (seconds, CPU
    seconds of the curl processes)."""
    cpu_before = children_cpu_s()
    started = time.perf_counter()
    for path in files:
        size = path.stat().st_size
        run_curl = subprocess.run(
            [
                "curl",
                "-sS",
                "--fail",
                "-o",
                "/dev/null",
                "--cert",
                str(bundle / "client.crt"),
                "--key",
                str(bundle / "client.key"),
                "--cacert",
                str(bundle / "ca.crt"),
                "-X",
                "POST",
                "-T",
                str(path),
                "-H",
                "Tus-Resumable: 1.0.0",
                "-H",
                f"Upload-Length: {size}",
                "-H",
                "Content-Type: application/offset+octet-stream",
                "-H",
                "Expect:",
                f"{central.url}/v1/uploads",
            ],
            capture_output=True,
            text=True,
        )
        if run_curl.returncode != 0:
            raise SystemExit(f"curl failed: {run_curl.stderr.strip()}")
    return time.perf_counter() - started, children_cpu_s() - cpu_before


# -- modes ------------------------------------------------------------------------------------------


def stored_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "items").rglob("*") if p.is_file() and not p.name.endswith(".json"))


def drop_cache(files: list[Path]) -> None:
    """Both contenders read cold files: the uplink reads items the offload wrote with O_DIRECT."""
    os.sync()
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def mode_single(
    work: Path, total_mb: int, files: int, concurrency: int, rounds: int, bucket: Bucket | None = None,
    chunk_mb: int = 8,
) -> dict[str, Any]:
    volume = make_volume(work / "media", "3300001", files, max(1, total_mb * MIB // files), 1)
    template = work / "station-template"
    acquire_into("BENCH-01", template, volume, chunk_mb)
    samples: dict[str, list[float]] = {"curl": [], "edge": []}
    # CPU seconds per GiB: each side of each contender, one sample per round.
    cpu: dict[str, list[float]] = {"station": [], "central": [], "curl": [], "curl_central": []}
    rss: list[float] = []
    receipts = 0
    for round_no in range(rounds):
        # A fresh copy of the station store each round, and a fresh central for each contender: every
        # round does the whole job (upload, registration, receipt), never an idempotent replay, and
        # neither contender's CPU count includes what the other left behind (512 MiB of unregistered
        # uploads, their dirty pages).
        round_dir = work / f"round-{round_no}"
        round_dir.mkdir()
        store = round_dir / "station-store"
        shutil.copytree(template, store, symlinks=True)
        items = stored_files(store)
        for name in (["curl", "edge"] if round_no % 2 == 0 else ["edge", "curl"]):
            (round_dir / name).mkdir()
            central = Central(round_dir / name, bucket if name == "edge" else None)
            bundle = round_dir / name / "bundle"
            central.enroll("BENCH-01", store, bundle)
            central.start()
            try:
                drop_cache(items)
                assert central.proc is not None
                central_before = process_cpu_s(central.proc.pid)
                if name == "curl":
                    seconds, curl_cpu = curl_upload(items, central, bundle)
                    samples["curl"].append(seconds)
                    content_bytes = sum(p.stat().st_size for p in items)
                    cpu["curl"].append(per_gb(curl_cpu, content_bytes))
                    cpu["curl_central"].append(
                        per_gb(process_cpu_s(central.proc.pid) - central_before, content_bytes)
                    )
                else:
                    uplink = spawn_uplink("BENCH-01", store, central, bundle, concurrency, chunk_mb)
                    result, peak = reap(uplink)
                    if result["receipts"] != result["items"]:
                        raise SystemExit(f"only {result['receipts']} of {result['items']} items receipted")
                    samples["edge"].append(result["seconds"])
                    cpu["station"].append(per_gb(result["cpu_s"], result["bytes_sent"]))
                    cpu["central"].append(
                        per_gb(process_cpu_s(central.proc.pid) - central_before, result["bytes_sent"])
                    )
                    rss.append(peak)
                    receipts = result["receipts"]
            finally:
                central.stop()
        shutil.rmtree(round_dir)
    curl_s, edge_s = statistics.median(samples["curl"]), statistics.median(samples["edge"])
    return {
        "mode": "single",
        "objects": "s3" if bucket is not None else "files",
        "payload_signing": bucket.payload_signing if bucket is not None else None,
        "total_mb": total_mb,
        "files": files,
        "concurrency": concurrency,
        "rounds": rounds,
        "curl_s": round(curl_s, 3),
        "edge_s": round(edge_s, 3),
        "ratio": round(edge_s / curl_s, 3),
        "peak_rss_mb": round(max(rss), 1),
        "receipts": receipts,
        "station_cpu_s_per_gb": statistics.median(cpu["station"]),
        "central_cpu_s_per_gb": statistics.median(cpu["central"]),
        "curl_cpu_s_per_gb": statistics.median(cpu["curl"]),
        "curl_central_cpu_s_per_gb": statistics.median(cpu["curl_central"]),
        "samples_s": {k: [round(v, 3) for v in vs] for k, vs in samples.items()},
        "cpu_s_per_gb_samples": cpu,
    }


def mode_pipeline(work: Path, file_mb: float, embedded: bool, rounds: int,
                  usb_mb_s: float | None = None) -> dict[str, Any]:
    paced = ["--usb-mb-s", str(usb_mb_s)] if usb_mb_s is not None else []

    def demo(*extra: str) -> dict[str, Any]:
        cpu_before = children_cpu_s()
        done = subprocess.run(
            [*edge_command(), "demo", "--file-mb", str(file_mb), "--json", *paced, *extra],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"demo failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        summary = dict(json.loads(done.stdout.strip().splitlines()[-1]))
        summary["cpu_s_per_gb"] = per_gb(children_cpu_s() - cpu_before, int(summary["bytes"]))
        return summary

    # Alternating rounds, medians: other work on the machine moves single runs by a factor of two.
    runs: dict[str, list[dict[str, Any]]] = {"offload": [], "journey": []}
    for round_no in range(rounds):
        for name in (["offload", "journey"] if round_no % 2 == 0 else ["journey", "offload"]):
            if name == "offload":
                runs[name].append(demo("--no-central"))
                continue
            journey = demo() if embedded else demo("--central-process")
            if (journey["errors"] or journey["receipts"] != journey["items"]
                    or not journey["central_verified"]):
                raise SystemExit(f"the journey did not end with every receipt verified: "
                                 f"{journey['errors'][:5]}")
            runs[name].append(journey)

    def median(name: str, key: str) -> float:
        return float(statistics.median(float(run[key]) for run in runs[name]))

    acquired = int(runs["journey"][0]["bytes"])
    offload_s, journey_s = median("offload", "offload_seconds"), median("journey", "journey_seconds")
    journey_cpu, offload_cpu = median("journey", "cpu_s_per_gb"), median("offload", "cpu_s_per_gb")
    result = {
        "mode": "pipeline",
        "central": "embedded" if embedded else "own process",
        "file_mb": file_mb,
        "usb_mb_s": usb_mb_s,
        "rounds": rounds,
        "items": runs["journey"][0]["items"],
        "receipts": runs["journey"][0]["receipts"],
        "offload_only_s": offload_s,
        "journey_s": journey_s,
        "pipeline_ratio": round(journey_s / offload_s, 3),
        "offload_cpu_s_per_gb": offload_cpu,
        "journey_cpu_s_per_gb": journey_cpu,
        "upload_path_cpu_s_per_gb": round(journey_cpu - offload_cpu, 3),
        "samples_s": {name: [run["journey_seconds"] for run in runs[name]] for name in runs},
        # How busy the offload alone keeps the machine: its process's CPU over its offload, in cores.
        "offload_cores": round(median("offload", "station_cpu_s") / offload_s, 2),
    }
    if not embedded:
        # Docking to the last receipt, each side its own process: the station's extra for uploading
        # (against the same window of the offload-only demo) and the central's whole share.
        result["station_upload_cpu_s_per_gb"] = per_gb(
            median("journey", "station_cpu_s") - median("offload", "station_cpu_s"), acquired)
        result["central_cpu_s_per_gb"] = per_gb(median("journey", "central_cpu_s"), acquired)
    return result


def mode_stations(work: Path, total_mb: int, stations: int, files: int) -> dict[str, Any]:
    central = Central(work)
    per_file = max(1, total_mb * MIB // (stations * files))
    volume = make_volume(work / "media", "3300001", files, per_file, 1)
    entries = []
    for n in range(stations):
        station_id, store, bundle = f"BENCH-{n:02d}", work / f"store-{n:02d}", work / f"bundle-{n:02d}"
        acquire_into(station_id, store, volume)
        central.enroll(station_id, store, bundle)
        entries.append((station_id, store, bundle))
    central.start()
    try:
        started = time.perf_counter()
        procs = [spawn_uplink(sid, store, central, bundle, 2) for sid, store, bundle in entries]
        results = [reap(p) for p in procs]
        wall_s = time.perf_counter() - started
    finally:
        central.stop()
    verified = subprocess.run(
        [*edge_command(), "verify", str(central.dir), "--json"], capture_output=True, text=True
    )
    report = json.loads(verified.stdout.strip().splitlines()[-1]) if verified.stdout.strip() else {}
    items = sum(r["items"] for r, _ in results)
    receipts = sum(r["receipts"] for r, _ in results)
    sent = sum(r["bytes_sent"] for r, _ in results)
    return {
        "mode": "stations",
        "stations": stations,
        "total_mb": round(sent / MIB, 1),
        "items": items,
        "receipts": receipts,
        "all_verified": receipts == items and bool(report.get("ok")),
        "wall_s": round(wall_s, 3),
        "aggregate_mb_s": round(sent / MIB / wall_s, 1),
        "peak_rss_mb_per_station": round(max(rss for _, rss in results), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=16, help="files per station")
    parser.add_argument("--concurrency", type=int, default=2, help="uplink uploads in flight")
    parser.add_argument("--chunk-mb", type=int, default=8,
                        help="the uplink's tus PATCH size ([uplink] chunk_mb)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contender; medians compared")
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--file-mb", type=float, default=50.0, help="--pipeline: demo file size")
    parser.add_argument("--usb-mb-s", type=float, default=None,
                        help="--pipeline: each recorder read at this many MB/s, as on USB 2.0 (30 to 40); "
                             "default: as fast as the simulated volumes read")
    parser.add_argument("--embedded-central", action="store_true",
                        help="--pipeline: the central inside the demo's process (the old mode), not its own")
    parser.add_argument("--stations", type=int, default=0)
    parser.add_argument("--s3", action="store_true", help="objects in a bucket on a throwaway Ceph cluster")
    parser.add_argument("--s3-payload-signing", choices=["auto", "signed", "unsigned"], default="unsigned",
                        help="--s3: the centrals' [objects] payload_signing (the gateway is plain http)")
    parser.add_argument("--json", action="store_true", help="(the last line is always JSON)")
    parser.add_argument("--workdir")
    parser.add_argument("--uplink-worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.uplink_worker:
        sid, store, url, bundle, conc, chunk_mb = args.uplink_worker
        uplink_worker(sid, Path(store), url, Path(bundle), int(conc), int(chunk_mb))
        return 0
    work = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="edge-upbench-", dir="/var/tmp"))
    )
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.pipeline:
            result = mode_pipeline(work, args.file_mb, args.embedded_central, args.rounds, args.usb_mb_s)
        elif args.stations:
            result = mode_stations(work, args.total_mb, args.stations, max(1, args.files // 4))
        elif args.s3:
            from tests.central.ceph import running_ceph

            # Everything the uplink contender sends stays locked in the OSD's RAM, plus room for Ceph's own.
            memstore_bytes = args.rounds * args.total_mb * MIB * 5 // 4 + 512 * MIB
            with running_ceph(memstore_bytes=memstore_bytes) as gateway:
                result = mode_single(work, args.total_mb, args.files, args.concurrency, args.rounds,
                                     Bucket(gateway, args.s3_payload_signing))
        else:
            result = mode_single(work, args.total_mb, args.files, args.concurrency, args.rounds,
                                 chunk_mb=args.chunk_mb)
    finally:
        for profiler in PROFILERS:
            profiler.wait(120)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
