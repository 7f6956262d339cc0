"""A throwaway single-node Ceph cluster with an S3 gateway, from Debian's packages, for the tests.

No vstart.sh (Debian ships none): a monitor bound to msgr v1 only (with ``auth none`` over msgr2 radosgw
fails "failed to fetch mon config"), one OSD on the memstore object store (RAM, no disks), and radosgw
(beast) on 127.0.0.1, all in a temporary folder on free ports (../shared/reference/agency-scale.md).
About 15 s to a working S3 endpoint. One cluster per test session (per xdist worker); each test takes
its own buckets. Every daemon is started here in the foreground and stopped here (terminate, wait,
kill): none outlives the session.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.prerequisites import require_tool

CEPH_TOOLS = ("monmaptool", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph")
_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class CephGateway:
    endpoint: str
    access_key_id: str
    secret_access_key: str = field(repr=False)  # never in a benchmark's output or a failure
    region: str = "default"
    # The monitor's, the OSD's and radosgw's process ids: a benchmark reads their CPU time from /proc.
    daemon_pids: tuple[int, ...] = ()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _config(folder: Path, mon_port: int, rgw_port: int, memstore_bytes: int) -> str:
    return f"""[global]
fsid = {uuid.uuid4()}
mon_host = v1:127.0.0.1:{mon_port}
ms_bind_msgr2 = false
ms_bind_msgr1 = true
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_crush_chooseleaf_type = 0
osd_objectstore = memstore
memstore_device_bytes = {memstore_bytes}
run_dir = {folder}/run
log_file = {folder}/log/$name.log
admin_socket = {folder}/run/$name.asok
pid_file = {folder}/run/$name.pid
mon_data = {folder}/mon/$id
osd_data = {folder}/osd/$id
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_autoscale_mode = off
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_max_pg_per_osd = 1000
mon_data_avail_crit = 1
client_mount_timeout = 30
rgw_frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw_data = {folder}/rgw
"""


class _Cluster:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "ceph.conf"
        self.daemons: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.argv: dict[str, tuple[str, ...]] = {}

    def run(self, *argv: str) -> str:
        done = subprocess.run([*argv[:1], "-c", str(self.conf), *argv[1:]], capture_output=True, text=True,
                              check=False, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(argv[:3])} failed ({done.returncode}): "
                        f"{done.stderr[-2000:]}{self.logs()}")
        return done.stdout

    def start(self, *argv: str) -> None:
        self.daemons.append((argv[0], self._spawn(argv)))
        self.argv[argv[0]] = argv

    def _spawn(self, argv: tuple[str, ...]) -> subprocess.Popen[bytes]:
        with open(self.folder / "log" / f"{argv[0]}.out", "ab") as out:
            return subprocess.Popen([argv[0], "-c", str(self.conf), *argv[1:], "-f"], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def restart(self, position: int) -> None:
        name, _ = self.daemons[position]
        self.daemons[position] = (name, self._spawn(self.argv[name]))

    def logs(self) -> str:
        texts = []
        for path in sorted((self.folder / "log").glob("*")):
            # Ceph marks errors with level -1; the tail alone is often a JSON dump.
            lines = path.read_text(errors="replace").splitlines()
            errors = [line for line in lines if " -1 " in line][-15:]
            texts.append(f"\n--- {path.name}\n" + "\n".join(errors + lines[-10:]))
        return "".join(texts)

    def stop(self) -> None:
        for _, daemon in reversed(self.daemons):
            daemon.terminate()
        for _, daemon in reversed(self.daemons):
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=30)


def _wait_http(url: str, cluster: _Cluster) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    osd_restarts = 0
    while time.monotonic() < deadline:
        for position, (name, daemon) in enumerate(cluster.daemons):
            if daemon.poll() is None:
                continue
            # A new OSD sometimes asks the monitor before it holds the monitor map, is told "wrong fsid"
            # and exits (Ceph 16.2, about one start in three here); started again it joins.
            if name == "ceph-osd" and osd_restarts < 5:
                osd_restarts += 1
                cluster.restart(position)
                continue
            pytest.fail(f"{name} exited {daemon.returncode} while starting{cluster.logs()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"radosgw did not answer at {url} within {_START_TIMEOUT_S} s{cluster.logs()}")


@pytest.fixture(scope="session")
def ceph_gateway() -> Iterator[CephGateway]:
    """A running Ceph RGW with one S3 user."""
    with running_ceph() as gateway:
        yield gateway


@contextlib.contextmanager
def running_ceph(memstore_bytes: int = 1 << 30) -> Iterator[CephGateway]:
    """A running Ceph RGW with one S3 user for as long as the block runs: the session fixture's, and a
    benchmark's (tests/bench/central_load.py). ``memstore_bytes``: the OSD's RAM store, all the cluster
    can hold (Object Lock keeps every version)."""
    for tool in CEPH_TOOLS:
        require_tool(tool)
    folder = Path(tempfile.mkdtemp(prefix="edge-ceph-"))
    for sub in ("run", "log", "mon/a", "osd/0", "rgw"):
        (folder / sub).mkdir(parents=True)
    mon_port, rgw_port = _free_port(), _free_port()
    (folder / "ceph.conf").write_text(_config(folder, mon_port, rgw_port, memstore_bytes))
    cluster = _Cluster(folder)
    try:
        fsid = next(line.split("=")[1].strip() for line in cluster.conf.read_text().splitlines()
                    if line.startswith("fsid"))
        subprocess.run(["monmaptool", "--create", "--addv", "a", f"[v1:127.0.0.1:{mon_port}]", "--fsid", fsid,
                        str(folder / "monmap")], capture_output=True, check=True, timeout=60)
        cluster.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(folder / "monmap"))
        cluster.start("ceph-mon", "-i", "a")
        # The OSD's uuid given to both, or the OSD's start-up (crush device class) fails with "wrong fsid".
        osd_uuid = str(uuid.uuid4())
        osd_id = cluster.run("ceph", "--connect-timeout", "60", "osd", "create", osd_uuid).strip()
        cluster.run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        cluster.start("ceph-osd", "-i", osd_id)
        cluster.start("radosgw", "-n", "client.rgw")
        endpoint = f"http://127.0.0.1:{rgw_port}"
        _wait_http(endpoint + "/", cluster)
        access, secret = "EDGE" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
        cluster.run("radosgw-admin", "-n", "client.admin", "user", "create", "--uid", "edge-central",
                    "--display-name", "edge central", "--access-key", access, "--secret", secret)
        yield CephGateway(endpoint, access, secret,
                          daemon_pids=tuple(daemon.pid for _, daemon in cluster.daemons))
    finally:
        cluster.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)
