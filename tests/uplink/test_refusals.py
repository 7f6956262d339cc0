"""Evidence is never rejected by accident (issue 7, 1.9): a real station uplink talks to a real central
through a real reverse proxy that answers some requests itself, the way nginx does.

Only a refusal the central signed (with the key pinned at enrollment, for this item, this upload and a
code on the published list) is final; a proxy's 400/413/502 page, a truncated JSON body, a JSON refusal
nobody signed or signed by another key, is retried and the item arrives once the proxy lets it through.
The controls are real central refusals (content mismatch, a bad manifest signature, an item beyond the
central's maximum size) passed through the same proxy: rejected, with the signed refusal in the ledger.
Then `edge uplink retry` (the real command line, in its own process) puts a rejected item back in the
queue with a `requeued` entry, and `Retry-After` from the central or the proxy holds the item and the
breaker's next probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edge.central.config import CentralConfig
from edge.central.service import RunningCentral, start_central
from edge.config.station import StationConfig
from edge.custody.canonical import parse_json
from edge.custody.keys import StationKey
from edge.custody.ledger import ENTRY_SALT, ITEM_PREV
from edge.custody.refusal import sign_refusal, verify_refusal
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory
from edge.uplink.service import UplinkService
from edge.uplink.tus_client import TusClient, UploadResult
from simulators.recorder.media import make_jpg, make_mp4
from tests.uplink.proxy import Answer, Fault, FaultyProxy, nginx_page

STATION = "TEST-STATION"
FAST_RETRY = {
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.3,
    "breaker_failures": 2,
    "breaker_open_s": 0.2,
    "request_timeout_s": 20,
    "chunk_mb": 1,  # the 2.5 MB clip goes as a creation with its first MiB, then two PATCHes
}
CASE = {"case_number": "A330106", "location": "询问室 2", "collector": "王芳(110002)", "subject": "询问笔录"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refusal-media")
    make_mp4(root / "clip.mp4", size_bytes=2_500_000, seed=21)
    make_jpg(root / "scene.jpg", seed=22)
    return root


def central_config(store_dir: Path, port: int = 0, **uploads: Any) -> CentralConfig:
    from edge.central.embedded import free_port

    return CentralConfig.model_validate({
        "central": {"id": "central-test", "store_dir": str(store_dir)},
        "server": {"listen": "127.0.0.1", "port": port or free_port(), "insecure_plain_http": True,
                   "retry_after_s": 37},
        "uploads": uploads,
    })


@dataclass
class Rig:
    """A station store with two sealed items, a central (development mode: plain HTTP on loopback) and
    a proxy in front of it that the station is pointed at."""

    tmp: Path
    store: StationStore
    central: RunningCentral
    central_key: StationKey
    proxy: FaultyProxy
    items: dict[str, str]  # original name -> item id

    @property
    def central_pub(self) -> Path:
        return self.tmp / "central-signing.pub"

    def config(self, **uplink: Any) -> StationConfig:
        return StationConfig.model_validate({
            "station": {"id": STATION, "store_dir": str(self.tmp / "store")},
            "usb": {"mount_root": str(self.tmp / "media")},
            "uplink": {"central_url": self.proxy.url, "insecure_plain_http": True,
                       "central_signing_key": str(self.central_pub), **FAST_RETRY, **uplink},
        })

    def states(self) -> dict[str, str]:
        rows = self.store.conn.execute("SELECT item, state FROM uploads").fetchall()
        by_item = {row["item"]: row["state"] for row in rows}
        return {name: by_item.get(item, "-") for name, item in self.items.items()}

    def ledger(self, type_: str, item: str | None = None) -> list[dict[str, Any]]:
        # Without item_prev, the item chain's link the ledger adds (tested with the ledger).
        return [{k: v for k, v in e.data.items() if k not in (ITEM_PREV, ENTRY_SALT)}
                for e in self.store.ledger.entries(item=item) if e.type == type_]

    def upload_row(self, name: str) -> tuple[str, int, float]:
        row = self.store.conn.execute(
            "SELECT state, attempts, next_attempt FROM uploads WHERE item=?", (self.items[name],)
        ).fetchone()
        return row["state"], row["attempts"], row["next_attempt"]


@contextlib.asynccontextmanager
async def make_rig(tmp_path: Path, media: Path, **uploads: Any) -> AsyncIterator[Rig]:
    drop = tmp_path / "drop"
    shutil.copytree(media, drop)
    store = StationStore(tmp_path / "store", STATION)
    source = LocalDirectory(drop, label="room-2", station_id=STATION, case=CASE, collector_no="110002")
    run = await IngestPipeline(store, IngestSettings(min_free_bytes=0)).ingest(source, source.listing().items)
    assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 2
    items = {row["name"]: row["item"] for row in store.conn.execute(
        "SELECT item, json_extract(manifest, '$.original.name') AS name FROM items")}
    central_key = StationKey.generate()
    config = central_config(tmp_path / "central-store", **uploads)
    central = await start_central(config, signing_key=central_key)
    central.parts.index.enroll_station(STATION, store.key.public_key_b64, "0" * 64)
    (tmp_path / "central-signing.pub").write_bytes(central_key.public_pem())
    proxy = await FaultyProxy(central.url).start()
    rig = Rig(tmp_path, store, central, central_key, proxy, items)
    try:
        yield rig
    finally:
        await proxy.stop()
        await rig.central.stop()
        rig.store.close()


@contextlib.asynccontextmanager
async def uplink_running(service: UplinkService) -> AsyncIterator[UplinkService]:
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def drain(rig: Rig, **uplink: Any) -> UplinkService:
    service = UplinkService(rig.config(**uplink), rig.store)
    async with uplink_running(service):
        assert await service.wait_drained(60), rig.states()
    return service


# -- what a proxy says on the central's behalf -------------------------------------------------------


def json_answer(status: int, doc: object, *, tus: bool = False) -> Answer:
    headers = {"Content-Type": "application/json", **({"Tus-Resumable": "1.0.0"} if tus else {})}
    return lambda _request, _body: (status, headers, json.dumps(doc).encode())


def truncated_refusal() -> Answer:
    body = b'{"error": "content_mismatch", "detail": "upload 3fa9c0 holds 2500000 bytes with SHA-256 9f'
    return lambda _request, _body: (422, {"Content-Type": "application/json"}, body)


def forged_refusal(code: str, *, creation: bool = False) -> Answer:
    """A refusal made for exactly this request (item, upload, code), in the right format, signed by a key
    that is not the central's: what a compromised or confused proxy could send."""
    impostor = StationKey.generate()

    def answer(request: web.Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if creation:
            metadata = dict(pair.split(" ") for pair in request.headers["Upload-Metadata"].split(","))
            import base64

            item, upload, status = base64.b64decode(metadata["item"]).decode(), None, 413
        else:
            doc = parse_json(body)
            item, upload, status = doc["manifest"]["item"], doc["upload"], 422
        refusal = sign_refusal(central="central-test", station=STATION, item=item, upload=upload, code=code,
                               detail="refused", time="2026-11-21T00:00:00.000000Z", key=impostor)
        doc = {"error": code, "detail": "refused", "refusal": refusal}
        headers = {"Content-Type": "application/json", "Tus-Resumable": "1.0.0"}
        return status, headers, json.dumps(doc).encode()

    return answer


UPLOADS = r"/v1/uploads"
UPLOAD = r"/v1/uploads/[0-9a-f]{32}"
ITEMS = r"/v1/stations/[^/]+/items"

PROXY_ANSWERS: dict[str, tuple[str, str, Callable[[], Answer], bool]] = {
    # name: (method, path, answer, claims finality without the central's signature)
    "nginx 413 on creation": ("POST", UPLOADS, lambda: nginx_page(413, "Request Entity Too Large"), False),
    "nginx 400 on PATCH": ("PATCH", UPLOAD, lambda: nginx_page(400, "Bad Request"), False),
    "nginx 502 on registration": ("POST", ITEMS, lambda: nginx_page(502, "Bad Gateway"), False),
    "nginx 400 on registration": ("POST", ITEMS, lambda: nginx_page(400, "Bad Request"), False),
    "truncated JSON refusal": ("POST", ITEMS, truncated_refusal, False),
    "unsigned JSON refusal": (
        "POST", ITEMS, lambda: json_answer(422, {"error": "bad_signature", "detail": "forged"}), True
    ),
    "unsigned too_large on creation": (
        "POST", UPLOADS, lambda: json_answer(413, {"error": "too_large", "detail": "nginx"}, tus=True), True
    ),
    "forged signed refusal": ("POST", ITEMS, lambda: forged_refusal("content_mismatch"), True),
    "forged signed too_large": ("POST", UPLOADS, lambda: forged_refusal("too_large", creation=True), True),
}


@pytest.mark.parametrize("case", list(PROXY_ANSWERS))
async def test_what_a_proxy_answers_is_retried_and_the_evidence_arrives(
    tmp_path: Path, media: Path, case: str
) -> None:
    method, path, answer, claims_final = PROXY_ANSWERS[case]
    async with make_rig(tmp_path, media) as rig:
        fault = Fault(method, path, answer(), times=3)
        rig.proxy.faults.append(fault)
        service = await drain(rig)
        assert fault.applied == 3, rig.proxy.seen
        assert rig.states() == {"clip.mp4": "receipted", "scene.jpg": "receipted"}
        assert service.stats.rejected == 0
        errors = [(e.item, e.data) for e in rig.store.ledger.entries() if e.type == "error"]
        # Nothing was ever held against the evidence...
        assert all(data["code"] == "unverified_refusal" for _, data in errors), errors
        # ...and a claim of finality nobody (or somebody else) signed is on the record, once per item.
        if claims_final:
            assert errors and all(data["reason"] for _, data in errors)
            assert len(errors) == len({(item, data["refused"]) for item, data in errors}) <= 2
        else:
            assert errors == []
        assert len(rig.ledger("receipt")) == 2


async def _not_checked_locally(_service: UplinkService, _entry: object) -> None:
    return None


def _flip_first_byte(path: Path) -> None:
    with path.open("r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))


@pytest.mark.parametrize("refusal", ["content_mismatch", "bad_signature", "too_large"])
async def test_a_refusal_the_central_signed_rejects_the_item_with_the_refusal_on_the_ledger(
    tmp_path: Path, media: Path, refusal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = {"max_size_mb": 1, "station_quota_mb": 1} if refusal == "too_large" else {}
    async with make_rig(tmp_path, media, **uploads) as rig:
        refused_name = "clip.mp4" if refusal == "too_large" else "scene.jpg"
        item = rig.items[refused_name]
        if refusal == "content_mismatch":
            stored = rig.store.conn.execute("SELECT path FROM items WHERE item=?", (item,)).fetchone()[0]
            (rig.tmp / "store" / stored).chmod(0o600)
            _flip_first_byte(rig.tmp / "store" / stored)
            # The station checks its copy before the central holds all of it (over tus on the pass that
            # sends it: tests/uplink/test_damaged_copy.py); the central's check stands behind that one,
            # for a copy that rots after it: reached here with the station's check switched off.
            monkeypatch.setattr(UplinkService, "_check_stored_copy", _not_checked_locally)
            real_upload = TusClient.upload

            async def unchecked(self: TusClient, *args: Any, **kwargs: Any) -> UploadResult:
                kwargs["expected_sha256"] = None
                return await real_upload(self, *args, **kwargs)

            monkeypatch.setattr(TusClient, "upload", unchecked)
        elif refusal == "bad_signature":
            manifest = parse_json(
                rig.store.conn.execute("SELECT manifest FROM items WHERE item=?", (item,)).fetchone()[0]
            )
            manifest["case"]["location"] = "somewhere else"
            rig.store.conn.execute("UPDATE items SET manifest=? WHERE item=?", (json.dumps(manifest), item))
        service = await drain(rig)
        other = "scene.jpg" if refused_name == "clip.mp4" else "clip.mp4"
        assert rig.states() == {refused_name: "rejected", other: "receipted"}
        assert service.stats.rejected == 1
        # The refusal came from the central, through the proxy.
        answered = 413 if refusal == "too_large" else 422
        assert any(status == answered for _, _, status in rig.proxy.seen)
        errors = rig.ledger("error", item)
        assert len(errors) == 1
        entry = errors[0]
        assert entry["code"] == refusal
        assert entry["stage"] == ("upload" if refusal == "too_large" else "register")
        signed = entry["refusal"]
        assert signed["item"] == item and signed["code"] == refusal and signed["station"] == STATION
        # The refusal kept in the ledger is provable with the pinned central key alone.
        assert verify_refusal(signed, rig.central_key.public_key(), station=STATION, item=item, code=refusal,
                              upload=signed["upload"]) == []
        assert (signed["upload"] is None) == (refusal == "too_large")


# -- edge uplink retry -----------------------------------------------------------------------------


def station_toml(rig: Rig) -> Path:
    path = rig.tmp / "station.toml"
    path.write_text(
        f'[station]\nid = "{STATION}"\nstore_dir = "{rig.tmp / "store"}"\n'
        f'[usb]\nmount_root = "{rig.tmp / "media"}"\n'
        f'[uplink]\ncentral_url = "{rig.proxy.url}"\ninsecure_plain_http = true\n'
        f'central_signing_key = "{rig.central_pub}"\n'
    )
    return path


def edge_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `edge` command line, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, **(env or {})},
    )


async def test_edge_uplink_retry_requeues_a_rejected_item_with_a_ledger_entry(
    tmp_path: Path, media: Path
) -> None:
    async with make_rig(tmp_path, media, max_size_mb=1, station_quota_mb=1) as rig:
        await drain(rig)
        assert rig.states() == {"clip.mp4": "rejected", "scene.jpg": "receipted"}
        clip, scene = rig.items["clip.mp4"], rig.items["scene.jpg"]
        rejecting_seq = next(e.seq for e in rig.store.ledger.entries(item=clip) if e.type == "error")
        # The central's maximum is raised (a restart with the new configuration).
        await rig.central.stop()
        rig.central = await start_central(central_config(tmp_path / "central-store", max_size_mb=8),
                                          signing_key=rig.central_key)
        rig.proxy.upstream = rig.central.url
        config = station_toml(rig)
        rig.store.close()  # the command needs the store to itself, as with the agent stopped
        head = StationStore(tmp_path / "store", STATION)
        head_seq = head.ledger.head()[0]
        head.close()

        refused = [
            (["uplink", "retry", "0c0ffee0-0000-4000-8000-000000000000", "--config", str(config)], "no item"),
            (["uplink", "retry", scene, "--config", str(config)], "is receipted, not rejected"),
            (["uplink", "retry", clip, scene, "--config", str(config)], "is receipted, not rejected"),
            (["uplink", "retry", clip, "--all-rejected", "--config", str(config)], "not both"),
            (["uplink", "retry", "--config", str(config)], "name the items"),
        ]
        for args, says in refused:
            result = edge_cli(*args)
            assert result.returncode == 2 and says in result.stderr, (args, result.stderr)
        store = StationStore(tmp_path / "store", STATION)
        assert store.ledger.head()[0] == head_seq, "a refused command changes nothing, not even in part"
        store.close()

        done = edge_cli("uplink", "retry", "--all-rejected", "--config", str(config), "--reason",
                        "central maximum raised to 8 MiB", env={"SUDO_USER": "wangfang"})
        assert done.returncode == 0, done.stderr
        assert f"requeued {clip}" in done.stdout and "refusal too_large" in done.stdout
        again = edge_cli("uplink", "retry", "--all-rejected", "--config", str(config))
        assert again.returncode == 0 and "no rejected items" in again.stdout

        rig.store = StationStore(tmp_path / "store", STATION)
        requeued = rig.ledger("requeued", clip)
        assert requeued == [{
            "by": {"uid": os.getuid(), "user": pwd.getpwuid(os.getuid()).pw_name, "sudo_user": "wangfang"},
            "previous": {"state": "rejected", "seq": rejecting_seq, "code": "too_large", "signed": True},
            "reason": "central maximum raised to 8 MiB",
        }]
        assert rig.upload_row("clip.mp4")[:2] == ("queued", 0)
        # The agent sends it again from the start, and this time the central takes it.
        await drain(rig)
        assert rig.states() == {"clip.mp4": "receipted", "scene.jpg": "receipted"}


# -- Retry-After ----------------------------------------------------------------------------------


class FrozenClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def first_in_line(rig: Rig, service: UplinkService) -> str:
    """Queue both items now and name the one the uplink sends first (concurrency 1)."""
    service.spool.enqueue_sealed()
    first = service.spool.due(time.time() + 86400, (), 1)[0].item
    return next(name for name, item in rig.items.items() if item == first)


async def first_failure(rig: Rig, name: str) -> tuple[str, int, float]:
    async with asyncio.timeout(20):
        while True:
            row = rig.store.conn.execute(
                "SELECT state, attempts, next_attempt FROM uploads WHERE item=?", (rig.items[name],)
            ).fetchone()
            if row is not None and row["attempts"] >= 1:
                return row["state"], row["attempts"], row["next_attempt"]
            await asyncio.sleep(0.02)


def busy(retry_after: str | None) -> Answer:
    headers = {"Content-Type": "text/html"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return lambda _request, _body: (503, headers, b"<html><body>503 Service Unavailable</body></html>")


@pytest.mark.parametrize(
    ("retry_after", "expected_s"),
    [("45", 45.0), ("date+20", 20.0), ("999999", 120.0), ("soon", None), (None, None)],
)
async def test_retry_after_from_a_busy_answer_holds_the_item_and_the_breaker(
    tmp_path: Path, media: Path, retry_after: str | None, expected_s: float | None
) -> None:
    """delay-seconds and an HTTP-date are honoured, bounded by retry_after_max_s; a malformed value or
    none leaves the ordinary backoff (the control: without the header nothing is held)."""
    clock = FrozenClock()
    header = retry_after
    if retry_after == "date+20":
        header = email.utils.formatdate(clock.now + 20, usegmt=True)
    async with make_rig(tmp_path, media) as rig:
        rig.proxy.faults.append(Fault("POST", UPLOADS, busy(header), times=1))
        service = UplinkService(rig.config(concurrency=1, retry_after_max_s=120), rig.store, clock=clock)
        name = first_in_line(rig, service)
        async with uplink_running(service):
            state, attempts, next_attempt = await first_failure(rig, name)
            assert (state, attempts) == ("queued", 1)
            held = service.breaker.held_until
            if expected_s is None:
                assert held is None
                assert next_attempt <= clock.now + FAST_RETRY["backoff_max_s"]
            else:
                # Second resolution of an HTTP-date: within a second of what was asked. The date is
                # read against real time when the answer arrives (later than the frozen clock's
                # start by however long the machine took): that much earlier is right too.
                late = time.time() - clock.now
                assert expected_s - 1 - late <= next_attempt - clock.now <= expected_s
                assert held is not None and expected_s - 1 - late <= held - clock.now <= expected_s
                assert service.breaker.retry_at == held and not service.breaker.allow()
            # Time passes (on the service's clock): the item goes again and arrives.
            clock.now += (expected_s or FAST_RETRY["backoff_max_s"]) + 1
            service.item_sealed(rig.items[name])
            assert await service.wait_drained(60), rig.states()
        assert rig.states() == {"clip.mp4": "receipted", "scene.jpg": "receipted"}
        assert rig.proxy.count("POST", UPLOADS) == 3  # the refused creation, then one per item


async def test_the_centrals_own_507_retry_after_holds_the_item(tmp_path: Path, media: Path) -> None:
    """The central's quota refusal (507 quota_exceeded, Retry-After: its retry_after_s) through the proxy."""
    clock = FrozenClock()
    async with make_rig(tmp_path, media, max_size_mb=8, station_quota_mb=8) as rig:
        # Another upload of this station, never registered, holds the whole quota.
        rig.central.parts.uploads.create(STATION, 8 << 20, {})
        service = UplinkService(rig.config(concurrency=1), rig.store, clock=clock)
        name = first_in_line(rig, service)
        async with uplink_running(service):
            _, _, next_attempt = await first_failure(rig, name)
        assert ("POST", "/v1/uploads", 507) in rig.proxy.seen, rig.proxy.seen
        assert next_attempt == clock.now + 37
        assert service.breaker.held_until == clock.now + 37
