"""The central side of the load benchmark (tests/bench/central_load.py): the shared storage and R real
`edge central run` processes on it.

Agency backends: a throwaway PostgreSQL server and a single-node Ceph cluster with an Object Lock bucket,
started with the test fixtures' own context managers (tests/central/pg.py, tests/central/ceph.py). Each
receiver has a store directory of its own (the store lock is per directory) with a copy of the first one's
identity (same CA, signing key, console key) and shares the database and the bucket, as README "The central
on an agency's PostgreSQL" describes. Embedded: SQLite and a local folder, one receiver.

CPU is read from /proc (utime + stime of every thread, and reaped children): per receiver process; for
PostgreSQL the postmaster and every backend under it; for Ceph the monitor, the OSD and radosgw.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge.central.backends import open_central_index
from edge.central.config import CentralConfig, load_central_config
from edge.central.identity import enroll_station

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CENTRAL_ID = "BENCH-CENTRAL"
# The secrets reach the receivers by environment (secret references "env:..."), never in a file or argv.
PG_PASSWORD_ENV = "EDGE_BENCH_PG_PASSWORD"
S3_SECRET_ENV = "EDGE_BENCH_S3_SECRET"
START_TIMEOUT_S = 120.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads) and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (proc(5)).
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and of its living children (PostgreSQL's backends): a backend that ended in
    between is in the postmaster's reaped-children count, so a difference of two readings is exact."""
    total = process_cpu_s(root)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == root:  # ppid
                total += process_cpu_s(int(entry.name))
    return total


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class SharedStorage:
    """What every receiver's [central] section says about the index and the objects, the environment
    that carries their secrets, and the processes whose CPU is the storage's."""

    name: str
    central_lines: str
    env: dict[str, str] = field(default_factory=dict, repr=False)
    cpu_pids: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def cpu_s(self) -> dict[str, float]:
        return {name: sum(tree_cpu_s(pid) for pid in pids) for name, pids in self.cpu_pids.items()}


@contextlib.contextmanager
def agency_storage(memstore_bytes: int) -> Iterator[SharedStorage]:
    """PostgreSQL and Ceph RGW (an Object Lock bucket) for as long as the block runs."""
    from tests.central.ceph import running_ceph
    from tests.central.pg import fresh_database, running_postgres
    from tests.central.s3 import new_bucket

    # PostgreSQL's own default max_connections (an agency's server as installed), not the tests' small 40:
    # each receiver may hold [uploads] max_upload_connections (20) for writes beside its index pool (README:
    # several receivers), so two receivers at the defaults need about 72.
    with running_postgres(max_connections=100) as server, fresh_database(server) as database, \
            running_ceph(memstore_bytes) as gateway:
        bucket = new_bucket(gateway)
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        lines = (
            f'index = {{type = "postgresql", url = "{database.url}", password = "env:{PG_PASSWORD_ENV}"}}\n'
            f'objects = {{type = "s3", endpoint = "{gateway.endpoint}", bucket = "{bucket}", '
            f'region = "{gateway.region}", access_key_id = "{gateway.access_key_id}", '
            f'secret_access_key = "env:{S3_SECRET_ENV}"}}\n'
        )
        yield SharedStorage(
            "postgresql+ceph",
            lines,
            {PG_PASSWORD_ENV: server.password, S3_SECRET_ENV: gateway.secret_access_key},
            {"postgresql": (postmaster,), "ceph": gateway.daemon_pids},
        )


@contextlib.contextmanager
def embedded_storage() -> Iterator[SharedStorage]:
    """SQLite and a local folder: the defaults, nothing to start."""
    yield SharedStorage("sqlite+files", "")


class Receiver:
    """One `edge central run` process with a store directory of its own."""

    def __init__(self, work: Path, number: int, storage: SharedStorage) -> None:
        self.number = number
        self.port = free_port()
        self.store_dir = work / f"receiver-{number}"
        self.config_file = work / f"receiver-{number}.toml"
        self.log_file = work / f"receiver-{number}.log"
        self.env = {**os.environ, **storage.env}
        self.config_file.write_text(
            f'[central]\nid = "{CENTRAL_ID}"\nstore_dir = "{self.store_dir}"\n{storage.central_lines}'
            f'[server]\nlisten = "127.0.0.1"\nport = {self.port}\nnames = ["localhost", "127.0.0.1"]\n',
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def config(self) -> CentralConfig:
        with patched_environ(self.env):
            return load_central_config(self.config_file)

    def edge(self, *argv: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "edge.cli", *argv, "--config", str(self.config_file)],
            capture_output=True, text=True, env=self.env, check=False, timeout=START_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise SystemExit(f"edge {' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> None:
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge.cli", "central", "run", "--config", str(self.config_file)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            )

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit(f"receiver {self.number} exited {self.proc.returncode}: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"receiver {self.number} did not listen within {START_TIMEOUT_S} s: "
                         f"{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


@contextlib.contextmanager
def patched_environ(env: dict[str, str]) -> Iterator[None]:
    """The receivers' secrets in this process's environment while its own calls resolve "env:" references
    (enrolment writes the shared index)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Receivers:
    """R receivers on one shared storage: `edge central init` in the first, its identity copied to the
    others, stations enrolled once (the index is shared; embedded, there is one receiver)."""

    def __init__(self, work: Path, count: int, storage: SharedStorage) -> None:
        self.storage = storage
        self.all = [Receiver(work, number, storage) for number in range(count)]
        self.all[0].edge("central", "init")

    def enroll(self, stations: list[tuple[str, Path, Path]]) -> None:
        """Issue each station's certificate and bundle (``(station id, its ledger public key, bundle
        dir)``) and record its ledger key in the index: what `edge central enroll` does, in one process and
        one index connection instead of a hundred starts of the command."""
        first = self.all[0]
        config = first.config()
        with patched_environ(first.env):
            index = open_central_index(config)
            try:
                for station_id, public_key, bundle in stations:
                    issued = enroll_station(config, station_id, signing_key_pub=public_key, out_dir=bundle)
                    assert issued.signing_public_key_b64 is not None
                    index.enroll_station(station_id, issued.signing_public_key_b64, issued.cert_sha256)
            finally:
                index.close()

    def start(self) -> None:
        identity = self.all[0].store_dir / "identity"
        for receiver in self.all[1:]:
            receiver.store_dir.mkdir(mode=0o700)
            shutil.copytree(identity, receiver.store_dir / "identity", symlinks=True)
        for receiver in self.all:
            receiver.start()
        for receiver in self.all:
            receiver.wait_listening()

    def cpu_s(self) -> list[float]:
        return [process_cpu_s(receiver.pid) for receiver in self.all]

    def stop(self) -> None:
        for receiver in self.all:
            receiver.stop()
