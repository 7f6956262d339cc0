"""The central's health, readiness and metrics endpoints, over a real HTTPS server.

/healthz and /readyz answer a caller without a client certificate (load balancers); every other route
refuses one; /readyz names the check that fails when the store stops taking writes (a read-only bind
mount over it, as when the kernel remounts a failing disk read-only); /metrics, on its loopback-only
listener, is parsed with the Prometheus client's own parser and its counters match what was requested.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.central.app import READINESS
from edge.central.health import PUBLIC_ROUTES, READINESS_DIR
from edge.central.verify import verify_central
from edge.runtime.logs import JsonLineFormatter
from tests.central.conftest import (
    FakeStation,
    HttpCentral,
    free_port,
    register_over_http,
    start_http_central,
    tls_session,
)
from tests.mounting import require_bind_mounts


def anonymous_session(central: HttpCentral) -> aiohttp.ClientSession:
    """HTTPS that trusts the central's CA and presents no client certificate (a load balancer)."""
    context = ssl.create_default_context(cafile=str(central.config.layout.ca_cert))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json(content_type=None)


def store_listing(central: HttpCentral) -> list[str]:
    root = central.config.central.store_dir
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


async def test_health_and_readiness_answer_without_a_client_certificate(tls_central: HttpCentral) -> None:
    before = store_listing(tls_central)
    async with anonymous_session(tls_central) as session:
        assert await get(session, f"{tls_central.url}/healthz") == (200, {"status": "alive"})
        for _ in range(3):
            status, body = await get(session, f"{tls_central.url}/readyz")
            assert status == 200
    assert body == {"status": "ready", "checks": {"store": "ok", "index": "ok", "signer": "ok"}}
    # The write probes leave no name in the store (edge verify would call one planted); their own
    # directory is all that may appear.
    assert sorted(set(store_listing(tls_central)) - set(before)) in ([], [READINESS_DIR])
    assert set(before) <= set(store_listing(tls_central))


def _sample_path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "0123456789abcdef0123456789abcdef", template)


async def test_every_other_route_refuses_a_caller_without_a_certificate(
    tls_central: HttpCentral, station: FakeStation
) -> None:
    app = tls_central.running._runner.app
    assert app is not None
    routes = [(route.method, route.resource.canonical) for route in app.router.routes()
              if route.resource is not None]
    assert len(routes) > 15  # the station, log, tus and read routes are all there
    bundle = tls_central.enroll_tls(station)
    async with anonymous_session(tls_central) as anonymous, tls_session(bundle) as enrolled:
        for method, template in routes:
            url = tls_central.url + _sample_path(template)
            async with anonymous.request(method, url) as response:
                body = await response.read()
            if template in PUBLIC_ROUTES:
                assert response.status == 200, (method, template)
                continue
            # The console too: on this port it needs a certificate (its own listener serves it without).
            assert response.status == 401, (method, template, response.status, body)
            if method != "HEAD":
                assert b'"error":"unauthenticated"' in body, (method, template, body)
        # Control: the same kind of request with a station certificate reaches the handlers.
        async with enrolled.options(f"{tls_central.url}/v1/uploads") as response:
            assert response.status == 204
        async with anonymous.options(f"{tls_central.url}/v1/uploads") as response:
            assert response.status == 401


@contextmanager
def read_only_bind_mount(directory: Path) -> Iterator[None]:
    """``directory`` remounted read-only in place (a real mount; root only)."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


async def test_readiness_turns_503_when_the_store_is_read_only(
    tls_central: HttpCentral, caplog: pytest.LogCaptureFixture
) -> None:
    require_bind_mounts()
    caplog.set_level(logging.INFO, logger="edge.central.health")
    store = tls_central.config.central.store_dir
    tls_central.running.app[READINESS].max_age_s = 0.0  # every call probes (the cache is tested below)
    async with anonymous_session(tls_central) as session:
        status, body = await get(session, f"{tls_central.url}/readyz")
        assert status == 200 and body["checks"]["store"] == "ok"  # control: ready before
        with read_only_bind_mount(store):
            async with session.get(f"{tls_central.url}/readyz") as response:
                raw = await response.read()
                status, retry_after = response.status, response.headers.get("Retry-After")
        assert status == 503 and retry_after
        status, body = await get(session, f"{tls_central.url}/readyz")
        assert status == 200  # ready again once the store takes writes
    failed = json.loads(raw)
    assert failed["status"] == "not_ready" and failed["checks"]["store"] == "not_writable"
    assert failed["checks"]["signer"] == "ok"
    # The body names the check, never a path or an error text; the log says what failed, once.
    assert str(store).encode() not in raw and b"Errno" not in raw and b"Read-only" not in raw
    warnings = [r.getMessage() for r in caplog.records if "NOT ready" in r.getMessage()]
    assert len(warnings) == 1 and "store" in warnings[0] and "Read-only file system" in warnings[0]
    assert any("ready again" in r.getMessage() for r in caplog.records)


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_what_was_requested(tmp_path: Path, station: FakeStation) -> None:
    metrics_port = free_port()
    central = await start_http_central(tmp_path, dev=False, server={"metrics_port": metrics_port})
    try:
        assert central.running.metrics_url == f"http://127.0.0.1:{metrics_port}"
        bundle = central.enroll_tls(station)
        acquired = station.acquire(b"evidence bytes " * 4000)
        async with anonymous_session(central) as anonymous, tls_session(bundle) as enrolled:
            for _ in range(3):
                assert (await get(anonymous, f"{central.url}/healthz"))[0] == 200
            for _ in range(2):  # refused: no certificate
                assert (await get(anonymous, f"{central.url}/v1/log/tree-head"))[0] == 401
            assert (await get(anonymous, f"{central.url}/no/such/route"))[0] == 401
            status, _doc = await register_over_http(enrolled, central.url, station, acquired)
            assert status == 201
            # Not on the internet-facing listener, whoever asks.
            assert (await get(enrolled, f"{central.url}/metrics"))[0] == 404
        scrape = f"{central.running.metrics_url}/metrics"
        async with aiohttp.ClientSession() as plain, plain.get(scrape) as reply:
            assert reply.status == 200 and reply.content_type == "text/plain"
            text = await reply.text()
    finally:
        await central.running.stop()
    samples = metric_samples(text)

    def requests(route: str, method: str, status: int) -> float:
        key = ("edge_central_requests_total", (("method", method), ("route", route), ("status", str(status))))
        return samples.get(key, 0.0)

    assert requests("/healthz", "GET", 200) == 3
    assert requests("/v1/log/tree-head", "GET", 401) == 2
    assert requests("unmatched", "GET", 401) == 1
    assert requests("/v1/uploads", "POST", 201) == 1
    assert requests("/v1/uploads/{upload_id}", "PATCH", 204) == 1
    assert requests("/v1/stations/{station}/items", "POST", 201) == 1
    assert samples[("edge_central_refusals_total", (("class", "unauthenticated"),))] == 3
    assert samples[("edge_central_upload_bytes_total", ())] == len(acquired.content)
    assert samples[("edge_central_receipt_seconds_count", ())] == 1
    assert samples[("edge_central_verify_seconds_count", ())] == 1
    assert samples[("edge_central_log_size", ())] == 1
    # No label names a station, an item or an upload.
    assert station.station_id not in text and acquired.item not in text


async def test_the_metrics_listener_binds_loopback_only(tmp_path: Path) -> None:
    central = await start_http_central(tmp_path, dev=False, server={"metrics_port": free_port(),
                                                                    "listen": "0.0.0.0"})
    try:
        runner = central.running._metrics_runner
        assert runner is not None
        assert [host for host, _port in runner.addresses] == ["127.0.0.1"]
    finally:
        await central.running.stop()


def test_metrics_port_must_differ_from_the_service_port(tmp_path: Path) -> None:
    from edge.central.config import CentralConfig

    doc = {"central": {"id": "c", "store_dir": str(tmp_path)}, "server": {"port": 9000, "metrics_port": 9000}}
    with pytest.raises(ValueError, match="metrics_port must differ"):
        CentralConfig.model_validate(doc)


async def test_central_events_carry_item_station_and_device_as_fields(
    tls_central: HttpCentral, station: FakeStation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.central")
    bundle = tls_central.enroll_tls(station)
    reader_bundle = tls_central.enroll_reader_tls("auditor-7")
    acquired = station.acquire(b"evidence for the log " * 100, device_serial="DSJ\x1b[2J-0042")
    async with tls_session(bundle) as session:
        status, _doc = await register_over_http(session, tls_central.url, station, acquired)
        assert status == 201
        status, _doc = await register_over_http(session, tls_central.url, station, acquired)
        assert status == 200  # a replay
    async with tls_session(reader_bundle) as session, session.get(
        f"{tls_central.url}/v1/items/{acquired.item}") as response:
        assert response.status == 200
    events = {r.__dict__["edge_fields"]["event"]: r.__dict__["edge_fields"] for r in caplog.records
              if "edge_fields" in r.__dict__ and "event" in r.__dict__["edge_fields"]}
    assert events["accepted"]["item"] == acquired.item and events["accepted"]["station"] == station.station_id
    assert events["accepted"]["device"] == "DSJ\x1b[2J-0042"  # escaped by every formatter, kept here
    assert events["replayed"]["item"] == acquired.item
    assert events["ledger_accepted"]["station"] == station.station_id
    assert events["read"] == {"event": "read", "reader": "auditor-7", "read": "item", "item": acquired.item}
    accepted = next(r for r in caplog.records if r.__dict__.get("edge_fields", {}).get("event") == "accepted")
    line = JsonLineFormatter().format(accepted)
    assert "\x1b" not in line and json.loads(line)["device"] == "DSJ\\x1b[2J-0042"


async def test_anonymous_readiness_calls_share_one_cached_probe(tls_central: HttpCentral) -> None:
    """A burst of anonymous /readyz calls makes the central probe (write, fsync) once, not per call."""
    readiness = tls_central.running.app[READINESS]
    readiness.max_age_s = 3600.0
    probe_dir = tls_central.config.central.store_dir / READINESS_DIR
    async with anonymous_session(tls_central) as session:
        assert (await get(session, f"{tls_central.url}/readyz"))[0] == 200
        # The store stops taking the probe: a directory where it writes is now a file.
        probe_dir.rmdir()
        probe_dir.write_bytes(b"")
        for _ in range(20):
            status, body = await get(session, f"{tls_central.url}/readyz")
            assert status == 200 and body["checks"]["store"] == "ok"  # the cached verdict, no new probe
        # Control: once the verdict is due again, the probe runs and sees the broken store.
        readiness.max_age_s = 0.0
        status, body = await get(session, f"{tls_central.url}/readyz")
        assert status == 503 and body["checks"]["store"] == "not_writable"
        probe_dir.unlink()
        assert (await get(session, f"{tls_central.url}/readyz"))[0] == 200


async def test_readiness_never_probes_the_object_store(tls_central: HttpCentral) -> None:
    """The probe writes in its own directory; a probe a crash left there is not reported by edge verify,
    while the same file in objects/ is (control)."""
    layout = tls_central.config.layout
    objects_before = sorted(layout.objects_dir.iterdir())
    uploads_mtime = layout.uploads_dir.stat().st_mtime_ns
    objects_mtime = layout.objects_dir.stat().st_mtime_ns
    async with anonymous_session(tls_central) as session:
        assert (await get(session, f"{tls_central.url}/readyz"))[0] == 200
    assert sorted(layout.objects_dir.iterdir()) == objects_before
    assert layout.objects_dir.stat().st_mtime_ns == objects_mtime
    assert layout.uploads_dir.stat().st_mtime_ns == uploads_mtime
    await tls_central.running.stop()
    store = tls_central.config.central.store_dir
    leftover = b"ready\n"
    (store / READINESS_DIR / ".readyz-0123456789abcdef").write_bytes(leftover)
    assert verify_central(store).problems == []
    planted = layout.objects_dir / ".readyz-0123456789abcdef"
    planted.write_bytes(leftover)
    assert verify_central(store).problems  # control: the same file among the objects is reported
