"""The auditor console plays content kept in an S3 bucket (a real Ceph RGW, tests/central/ceph.py) as it
plays a local file: HTTP Range requests answered from the bucket by ranged GETs, each playback one access
log row with the ranges served; content that does not hash to its name (a PUT around the central) is
never served; a bucket that cannot be reached answers 503 and the playback resumes when it is back."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.central.console import media
from edge.central.index import Role
from edge.central.s3_objects import S3ObjectStore
from tests.central.ceph import CephGateway
from tests.central.conftest import FakeStation, HttpCentral, start_http_central
from tests.central.s3 import SECRET_ENV, new_bucket, raw_client, s3_objects_config
from tests.central.test_console_api import EAST, Browser, _account, _browser, _items
from tests.central.test_s3_objects import _Proxy

_STALE = "Mon, 01 Jan 2001 00:00:00 GMT"


@dataclass
class BucketLink:
    """A relay to the gateway on ``port`` that the test can cut (the bucket out of reach) and restore."""

    relay: _Proxy
    port: int

    def cut(self) -> None:
        self.relay.cut()

    def restore(self) -> None:
        self.relay.start(self.port)


@pytest.fixture
def link(ceph_gateway: CephGateway, monkeypatch: pytest.MonkeyPatch) -> Iterator[BucketLink]:
    monkeypatch.setenv(SECRET_ENV, ceph_gateway.secret_access_key)
    relay = _Proxy(int(ceph_gateway.endpoint.rsplit(":", 1)[1]))
    try:
        yield BucketLink(relay, relay.start())
    finally:
        relay.stop()


@pytest.fixture
async def central(tmp_path: Path, ceph_gateway: CephGateway, link: BucketLink) -> AsyncIterator[HttpCentral]:
    objects = s3_objects_config(ceph_gateway, new_bucket(ceph_gateway),
                                endpoint=f"http://127.0.0.1:{link.port}", max_attempts=1, connect_timeout_s=2,
                                read_timeout_s=10)
    running = await start_http_central(
        tmp_path, dev=False, objects=objects.model_dump(mode="json"),
        console={"sign_in_per_minute": 1000, "allow_password_only": True},
    )
    yield running
    await running.running.stop()


@pytest.fixture
async def browser(central: HttpCentral) -> AsyncIterator[Browser]:
    client = await _browser(central)
    yield client
    await client.session.close()


def _bucket(central: HttpCentral) -> S3ObjectStore:
    objects = central.running.parts.objects
    assert isinstance(objects, S3ObjectStore)
    return objects


async def test_media_from_the_bucket_is_served_in_ranges_and_each_playback_is_one_logged_read(
    central: HttpCentral, browser: Browser, station: FakeStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media, "_SEND_CHUNK_BYTES", 64 << 10)  # several reads from the bucket per range
    content = os.urandom(300_000 + 123)
    (item,) = await _items(central, station, [EAST], content=content)
    bucket = _bucket(central)
    assert bucket.exists(item.sha256)
    local = central.config.layout.objects_dir
    assert not local.exists() or not any(local.rglob("*"))  # the content is in the bucket only
    _account(central, "li.legal", Role.READER, EAST)
    assert (await browser.sign_in("li.legal"))[0] == 200
    url = f"/console/api/items/{item.item}/media?playback=0123456789abcdef0123"
    status, body, response = await browser.call("GET", url, headers={"Range": "bytes=0-99"})
    assert status == 206 and body == content[:100]
    assert response.headers["Content-Range"] == f"bytes 0-99/{len(content)}"
    assert response.headers["Content-Type"] == "video/mp4" and response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Cache-Control"] == "no-store"
    status, body, _ = await browser.call("GET", url, headers={"Range": "bytes=-50"})
    assert status == 206 and body == content[-50:]
    middle = (1000, 250_000)  # across the 64 KiB reads
    status, body, _ = await browser.call("GET", url, headers={"Range": f"bytes={middle[0]}-{middle[1]}"})
    assert status == 206 and body == content[middle[0]:middle[1] + 1]
    status, body, _ = await browser.call("GET", url, headers={"Range": "bytes=200000-"})
    assert status == 206 and body == content[200000:]
    # A conditional header does not change what goes out: exactly the range logged.
    status, body, _ = await browser.call("GET", url, headers={"Range": "bytes=0-0", "If-Range": _STALE})
    assert status == 206 and body == content[:1]
    # Beyond the end: 416 naming the size, nothing served and nothing logged.
    status, body, response = await browser.call("GET", url, headers={"Range": f"bytes={len(content)}-"})
    assert status == 416 and response.headers["Content-Range"] == f"bytes */{len(content)}"
    assert body == (f"range not satisfiable: the range starts at byte {len(content)}, past the end (the "
                    f"content is {len(content)} bytes)\n").encode()  # nothing of the content, and why
    # Control: another playback without Range gets the whole content.
    status, body, _ = await browser.call("GET", url.replace("0123", "9999", 1))
    assert status == 200 and body == content
    rows = central.store_index.access_log(item=item.item, what="media")
    assert len(rows) == 2  # two playbacks
    first_playback = 100 + 50 + (middle[1] - middle[0] + 1) + (len(content) - 200000) + 1
    assert sorted(r["bytes_served"] for r in rows) == sorted([first_playback, len(content)])
    assert all(r["reader"] == "li.legal" for r in rows)


async def test_a_version_put_around_the_central_is_never_played(
    central: HttpCentral, browser: Browser, station: FakeStation, ceph_gateway: CephGateway
) -> None:
    (item,) = await _items(central, station, [EAST])
    _account(central, "li.legal", Role.READER, EAST)
    assert (await browser.sign_in("li.legal"))[0] == 200
    url = f"/console/api/items/{item.item}/media?playback=abcdefabcdefabcdef"
    status, body, _ = await browser.call("GET", url, headers={"Range": "bytes=0-99"})
    assert status == 206 and body == item.content[:100]  # control: the genuine version plays
    bucket = _bucket(central)
    # Someone with the central's keys PUTs other bytes of the same length: a new current version.
    edited = bytearray(item.content)
    edited[10] ^= 1
    raw_client(ceph_gateway).put_object(Bucket=bucket.bucket, Key=bucket.key_of(item.sha256),
                                        Body=bytes(edited))
    status, doc, _ = await browser.call("GET", url, headers={"Range": "bytes=0-99"})
    assert status == 500 and doc["error"] == "store_damaged"
    (row,) = central.store_index.access_log(item=item.item, what="media")
    assert row["bytes_served"] == 100  # only the range served before


async def test_a_bucket_out_of_reach_answers_503_and_the_playback_resumes(
    central: HttpCentral, browser: Browser, station: FakeStation, link: BucketLink
) -> None:
    (item,) = await _items(central, station, [EAST])
    _account(central, "li.legal", Role.READER, EAST)
    assert (await browser.sign_in("li.legal"))[0] == 200
    url = f"/console/api/items/{item.item}/media?playback=fedcbafedcbafedcba"
    status, body, _ = await browser.call("GET", url, headers={"Range": "bytes=0-9"})
    assert status == 206 and body == item.content[:10]
    link.cut()
    status, doc, _ = await browser.call("GET", url, headers={"Range": "bytes=10-19"})
    assert status == 503 and doc["error"] == "store_unavailable", doc
    link.restore()
    status, body, _ = await browser.call("GET", url, headers={"Range": "bytes=10-19"})
    assert status == 206 and body == item.content[10:20]
    (row,) = central.store_index.access_log(item=item.item, what="media")
    assert row["bytes_served"] == 20  # the refused range was not logged as served
