"""The README's load balancer for real: HAProxy running config/haproxy-central.cfg (its addresses replaced)
in front of two TLS receivers on one PostgreSQL database and one Ceph bucket.

TCP passthrough keeps mutual TLS end to end (the station's client certificate reaches the receiver);
the /readyz health check takes a stopped receiver out; a tus upload begun through the proxy on one
receiver is finished through the same URL on the other, registered, and its receipt verified.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from edge.central.identity import enroll_station
from edge.central.service import RunningCentral, start_central
from edge.custody.receipt import verify_receipt
from edge.uplink.tus_client import PREFIX_SHA256, TusClient
from tests.central.conftest import FakeStation, free_port, post_json, tls_session
from tests.central.receivers import PART_MB, ReceiverSite
from tests.central.test_tus_shared_store import site  # noqa: F401  (the fixture)
from tests.prerequisites import require_tool

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "haproxy-central.cfg"
PART = PART_MB << 20
OCTET = "application/offset+octet-stream"


class HaProxy:
    """``haproxy`` on the example configuration with the test's addresses, and its stats socket."""

    def __init__(self, workdir: Path, ca_file: Path, receivers: list[int]) -> None:
        self.port = free_port()
        self.socket = workdir / "haproxy.sock"
        text = EXAMPLE.read_text(encoding="utf-8")
        text = text.replace("    bind :443", f"    bind 127.0.0.1:{self.port}")
        text = text.replace("ca-file /etc/evidence-edge/central-ca.pem", f"ca-file {ca_file}")
        text = text.replace("    maxconn 4096",
                            f"    maxconn 4096\n    stats socket {self.socket} level admin")
        text = text.replace("10.0.0.11:8443", f"127.0.0.1:{receivers[0]}")
        text = text.replace("10.0.0.12:8443", f"127.0.0.1:{receivers[1]}")
        assert text.count("127.0.0.1") == 3, text  # every address of the example was replaced
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(text, encoding="utf-8")
        self.log = workdir / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run(["haproxy", "-c", "-f", str(self.config)], capture_output=True, text=True,
                               timeout=60, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)], stdout=log,
                                            stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def status(self) -> dict[str, str]:
        """Each server's status (UP, DOWN, ...) from the stats socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(self.socket))
            conn.sendall(b"show stat\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        lines = data.decode("utf-8", "replace").splitlines()
        header = lines[0].lstrip("# ").split(",")
        found: dict[str, str] = {}
        for line in lines[1:]:
            fields = dict(zip(header, line.split(","), strict=False))
            if fields.get("pxname") == "receivers" and fields.get("svname", "").startswith("receiver-"):
                found[fields["svname"]] = fields.get("status", "")
        return found

    async def wait_for(self, wanted: dict[str, str]) -> None:
        for _ in range(600):
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            try:
                status = self.status()
            except OSError:
                status = {}
            if all(re.match(state, status.get(name, "")) for name, state in wanted.items()):
                return
            await asyncio.sleep(0.1)  # polling HAProxy's health checks, not proving an absence
        raise AssertionError(f"HAProxy never showed {wanted}: {self.status()}\n{self.log.read_text()}")


@pytest.fixture
def haproxy_tool() -> None:
    require_tool("haproxy")


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[list[HaProxy]]:
    started: list[HaProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


async def test_haproxy_passes_mutual_tls_through_and_an_upload_moves_to_the_receiver_still_up(
    haproxy_tool: None, site: ReceiverSite, proxies: list[HaProxy], station: FakeStation,  # noqa: F811
    tmp_path: Path,
) -> None:
    config_a, config_b = site.config("a", tls=True), site.config("b", tls=True)
    proxy = HaProxy(tmp_path, config_a.layout.ca_cert, [config_a.server.port, config_b.server.port])
    proxies.append(proxy)
    pub = tmp_path / "station.pub"
    pub.write_bytes(station.key.public_pem())
    bundle = tmp_path / "bundle"
    enrollment = enroll_station(config_a, station.station_id, signing_key_pub=pub, out_dir=bundle)
    shutil.copy(config_a.layout.ca_cert, tmp_path / "ca.pem")
    running: dict[str, RunningCentral] = {"a": await start_central(config_a)}
    try:
        key_b64 = enrollment.signing_public_key_b64
        assert key_b64 is not None
        running["a"].parts.index.enroll_station(station.station_id, key_b64, enrollment.cert_sha256)
        running["b"] = await start_central(config_b)
        proxy.start()
        await proxy.wait_for({"receiver-1": "UP", "receiver-2": "UP"})
        content = os.urandom(3 * PART)
        acquired = station.acquire(content)
        clip = tmp_path / "clip.mp4"
        clip.write_bytes(content)
        base = f"https://127.0.0.1:{proxy.port}"
        # A goes away: the health check takes it out, and everything goes to B.
        await running.pop("a").stop()
        await proxy.wait_for({"receiver-1": "DOWN", "receiver-2": "UP"})
        async with tls_session(bundle) as session:
            tus = TusClient(session, f"{base}/v1/uploads", chunk_size_bytes=PART, checksum=PREFIX_SHA256,
                            request_timeout_s=60)
            url = await tus.create(len(content), {"item": acquired.item})
            first = hashlib.sha256(content[:PART]).digest()
            async with session.patch(url, data=io.BytesIO(content[:PART]), headers={
                "Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": OCTET,
                "Upload-Checksum": f"{PREFIX_SHA256} " + base64.b64encode(first).decode(),
            }) as answer:
                assert answer.status == 204, await answer.text()
        # B goes away and A comes back: the same URL, through the same proxy, now reaches A.
        running["a"] = await start_central(config_a)
        await running.pop("b").stop()
        await proxy.wait_for({"receiver-1": "UP", "receiver-2": "DOWN"})
        async with tls_session(bundle) as session:
            tus = TusClient(session, f"{base}/v1/uploads", chunk_size_bytes=PART, checksum=PREFIX_SHA256,
                            request_timeout_s=60)
            result = await tus.upload(url, clip, len(content), {"item": acquired.item},
                                      expected_sha256=acquired.sha256)
            assert result.resumed_from == PART
            body = {"upload": url.rsplit("/", 1)[-1], "manifest": acquired.manifest,
                    "ledger": station.segment()}
            status, doc = await post_json(session, f"{base}/v1/stations/{station.station_id}/items", body)
        assert status == 201, doc  # the station's certificate reached the receiver through the proxy
        problems = verify_receipt(doc["receipt"], running["a"].parts.signing_key.public_key(),
                                  expected_item=acquired.item, expected_sha256=acquired.sha256,
                                  expected_station=station.station_id)
        assert problems == []
        assert running["a"].parts.objects.verify(acquired.sha256) is None
        # Control: without a client certificate the receiver behind the proxy refuses the station's route.
        anonymous_tls = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=anonymous_tls)) as anonymous:
            async with anonymous.head(url, headers={"Tus-Resumable": "1.0.0"}) as refused:
                assert refused.status == 401
            async with anonymous.get(f"{base}/readyz") as ready:
                assert ready.status == 200  # the health check's route answers without one
    finally:
        for receiver in running.values():
            await receiver.stop()
