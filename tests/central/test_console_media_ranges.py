"""The console player's Range header (edge/central/console/byte_ranges.py), read one way for both object
stores: the odd ranges of RFC 9110 (a zero-length suffix, the last byte before the first, a first byte
at the end, several ranges, another unit, garbage) answered alike from a local folder and from a real
Ceph bucket, each beside a control that is served; and the access log records exactly what went out."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edge.central.console.byte_ranges import ContentRange, content_range_of
from edge.central.index import Role
from tests.central.ceph import CephGateway
from tests.central.conftest import FakeStation, HttpCentral, start_http_central
from tests.central.s3 import SECRET_ENV, new_bucket, s3_objects_config
from tests.central.test_console_api import CONSOLE_HEADERS, EAST, Browser, _account, _browser, _items

SIZE = 1000


def _served(first: int, last: int) -> ContentRange:
    return ContentRange(first, last + 1, SIZE, partial=True)


WHOLE = ContentRange(0, SIZE, SIZE, partial=False)


@pytest.mark.parametrize(("fields", "expected"), [
    ([], WHOLE),
    (["bytes=0-99"], _served(0, 99)),
    (["bytes=0-0"], _served(0, 0)),          # control for bytes=-0
    (["bytes=-1"], _served(SIZE - 1, SIZE - 1)),
    (["bytes=-5000"], _served(0, SIZE - 1)),  # a suffix longer than the content: all of it
    (["bytes=990-"], _served(990, SIZE - 1)),
    ([f"bytes={SIZE - 1}-"], _served(SIZE - 1, SIZE - 1)),  # control for bytes=SIZE-
    (["bytes=5-5000"], _served(5, SIZE - 1)),
    (["bytes=0-" + "9" * 40], _served(0, SIZE - 1)),  # a last byte of any length: cut to the end
    (["BYTES=4-5"], _served(4, 5)),
    (["bytes= 4-5 "], _served(4, 5)),
    (["bytes=0-1,5-6"], WHOLE),            # several ranges: Range ignored
    (["bytes=0-1, ,"], _served(0, 1)),     # empty list elements are allowed and ignored
    (["items=0-5"], WHOLE),                # another unit: MUST be ignored
    (["0-5"], WHOLE),                      # no unit at all
])
def test_ranges_that_are_served_or_ignored(fields: list[str], expected: ContentRange) -> None:
    got = content_range_of(fields, SIZE)
    assert got == expected and got.satisfiable


@pytest.mark.parametrize(("fields", "why"), [
    (["bytes=-0"], "a suffix of 0 bytes"),
    (["bytes=5-4"], "ends before it starts"),
    ([f"bytes={SIZE}-"], f"starts at byte {SIZE}, past the end"),
    ([f"bytes={SIZE}-{SIZE + 5}"], "past the end"),
    (["bytes=" + "9" * 40 + "-"], "past the end"),
    (["bytes=abc"], "not a list of bytes ranges"),
    (["bytes="], "not a list of bytes ranges"),
    (["bytes=--5"], "not a list of bytes ranges"),
    (["bytes=1-2-3"], "not a list of bytes ranges"),
    (["bytes=-"], "neither its first byte nor a suffix"),
    (["bytes=0-1,9-3"], "ends before it starts"),  # one invalid range makes the set invalid
    (["bytes=0-1", "bytes=2-3"], "several Range fields"),
])
def test_ranges_that_are_refused_with_416(fields: list[str], why: str) -> None:
    got = content_range_of(fields, SIZE)
    assert not got.satisfiable and got.refused is not None and why in got.refused, got
    assert got.content_range == f"bytes */{SIZE}" and got.count == 0


def test_any_range_of_empty_content_is_unsatisfiable() -> None:
    assert content_range_of(["bytes=-5"], 0).refused == "the content is empty"
    assert content_range_of(["bytes=0-"], 0).refused is not None
    assert content_range_of([], 0) == ContentRange(0, 0, 0, partial=False)  # control: no Range, 200


# -- over HTTP, from each object store ----------------------------------------------------------------

@pytest.fixture(params=["files", "s3"])
async def central(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HttpCentral]:
    objects = None
    if request.param == "s3":
        gateway: CephGateway = request.getfixturevalue("ceph_gateway")
        monkeypatch.setenv(SECRET_ENV, gateway.secret_access_key)
        objects = s3_objects_config(gateway, new_bucket(gateway)).model_dump(mode="json")
    running = await start_http_central(
        tmp_path, dev=False, objects=objects,
        console={"sign_in_per_minute": 1000, "allow_password_only": True},
    )
    yield running
    await running.running.stop()


@pytest.fixture
async def browser(central: HttpCentral) -> AsyncIterator[Browser]:
    client = await _browser(central)
    yield client
    await client.session.close()


async def _get_raw(browser: Browser, path: str,
                   headers: dict[str, str]) -> tuple[int, bytes, aiohttp.ClientResponse]:
    """A GET as the browser sends it, the body as received (random bytes are sometimes valid JSON)."""
    sent = {**CONSOLE_HEADERS, "Origin": browser.origin, **headers}
    async with browser.session.get(f"{browser.base}{path}", headers=sent) as response:
        return response.status, await response.read(), response


# (Range sent, status, Content-Range with LEN for the size, first byte, last byte): None for no body
ODD_RANGES: list[tuple[str | None, int, str | None, int | None, int | None]] = [
    ("bytes=-0", 416, "bytes */LEN", None, None),
    ("bytes=0-0", 206, "bytes 0-0/LEN", 0, 0),                       # control for bytes=-0
    ("bytes=-1", 206, "bytes LAST-LAST/LEN", -1, -1),                # control for bytes=-0
    ("bytes=5-4", 416, "bytes */LEN", None, None),
    ("bytes=4-5", 206, "bytes 4-5/LEN", 4, 5),                       # control for bytes=5-4
    ("bytes=LEN-", 416, "bytes */LEN", None, None),
    ("bytes=LAST-", 206, "bytes LAST-LAST/LEN", -1, -1),             # control for bytes=LEN-
    ("bytes=0-1,5-6", 200, None, 0, -1),                             # several ranges: the whole content
    ("bytes=garbage", 416, "bytes */LEN", None, None),
    ("items=0-5", 200, None, 0, -1),                                 # another unit: ignored
    (None, 200, None, 0, -1),                                        # control: no Range
]


async def test_odd_ranges_are_answered_alike_from_either_store_and_logged_as_served(
    central: HttpCentral, browser: Browser, station: FakeStation,
) -> None:
    content = os.urandom(5000)
    size = len(content)
    (item,) = await _items(central, station, [EAST], content=content)
    _account(central, "li.legal", Role.READER, EAST)
    assert (await browser.sign_in("li.legal"))[0] == 200

    def sized(text: str) -> str:
        return text.replace("LEN", str(size)).replace("LAST", str(size - 1))

    playbacks = (f"playback{n:012d}" for n in itertools.count())
    expected_log: dict[str, int | None] = {}
    for sent, status, content_range, first, last in ODD_RANGES:
        playback = next(playbacks)
        headers = {} if sent is None else {"Range": sized(sent)}
        got_status, body, response = await _get_raw(
            browser, f"/console/api/items/{item.item}/media?playback={playback}", headers)
        assert got_status == status, (sent, got_status, body)
        wanted_range = None if content_range is None else sized(content_range)
        assert response.headers.get("Content-Range") == wanted_range, (sent, response.headers)
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.headers["Cache-Control"] == "no-store"
        if first is None or last is None:
            assert body.startswith(b"range not satisfiable: ") and b"(the content is 5000 bytes)" in body
            expected_log[playback] = None  # the playback is on the log, with no byte served
        else:
            want = content[first % size:last % size + 1]
            assert body == want, (sent, len(body))
            expected_log[playback] = len(want)
    rows = central.store_index.access_log(item=item.item, what="media")
    logged = {row["query"].removeprefix("playback="): row["bytes_served"] for row in rows}
    assert logged == expected_log
