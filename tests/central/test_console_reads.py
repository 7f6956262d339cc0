"""Console reads log and show what happened: a media read is logged as the bytes actually sent whatever
conditional headers the browser adds (review finding 5), and the item timeline names other readers only to
supervisors (review finding 9c). Each with its control."""

from __future__ import annotations

from edge.central.index import Role
from tests.central.conftest import FakeStation, HttpCentral, station  # noqa: F401
from tests.central.test_console_api import (  # noqa: F401
    EAST,
    Browser,
    _account,
    _browser,
    _items,
    browser,
    central,
)

_STALE = "Mon, 01 Jan 2001 00:00:00 GMT"


async def test_a_stale_if_range_still_serves_only_the_logged_range(
    central: HttpCentral, browser: Browser, station: FakeStation  # noqa: F811
) -> None:
    (item,) = await _items(central, station, [EAST], content=b"evidence " * 20000)
    _account(central, "li.legal", Role.READER, EAST)
    assert (await browser.sign_in("li.legal"))[0] == 200
    url = f"/console/api/items/{item.item}/media?playback=0123456789abcdef0123"
    status, body, _ = await browser.call("GET", url, headers={"Range": "bytes=0-0", "If-Range": _STALE})
    assert status == 206 and body == item.content[:1]
    # If-None-Match naming anything (as a cached browser would) does not turn the read into a 304 either.
    status, body, _ = await browser.call("GET", url, headers={"Range": "bytes=1-4", "If-None-Match": "*"})
    assert status == 206 and body == item.content[1:5]
    # Control: without Range the whole file goes out, and is logged whole.
    status, body, _ = await browser.call("GET", url, headers={"If-Range": _STALE})
    assert status == 200 and body == item.content
    (row,) = central.store_index.access_log(item=item.item, what="media")
    assert row["bytes_served"] == 1 + 4 + len(item.content)


async def test_the_timeline_names_other_readers_to_supervisors_only(
    central: HttpCentral, browser: Browser, station: FakeStation  # noqa: F811
) -> None:
    (item,) = await _items(central, station, [EAST])
    _account(central, "li.legal", Role.READER, EAST)
    _account(central, "zhao.east", Role.READER, EAST)
    _account(central, "wang.chief", Role.SUPERVISOR)
    other = await _browser(central)
    chief = await _browser(central)
    try:
        assert (await other.sign_in("zhao.east"))[0] == 200
        assert (await other.call("GET", f"/console/api/items/{item.item}"))[0] == 200
        assert (await browser.sign_in("li.legal"))[0] == 200
        status, doc, _ = await browser.call("GET", f"/console/api/items/{item.item}")
        assert status == 200
        reads = [row for row in doc["timeline"] if row["event"].startswith("read:")]
        assert len(reads) == 2  # both reads happened, and the reader sees when
        assert all(row["time"] for row in reads)
        assert {row["who"] for row in reads} == {"li.legal", None}
        hidden = next(row for row in reads if row["who"] is None)
        assert hidden["detail"] == {}  # no address of the other reader
        assert "zhao.east" not in str(doc["timeline"])
        # Control: a supervisor sees who read and from where.
        assert (await chief.sign_in("wang.chief"))[0] == 200
        status, doc, _ = await chief.call("GET", f"/console/api/items/{item.item}")
        assert status == 200
        named = {row["who"]: row["detail"] for row in doc["timeline"] if row["event"].startswith("read:")}
        assert {"zhao.east", "li.legal", "wang.chief"} <= set(named)
        assert named["zhao.east"]["remote"]
    finally:
        await other.session.close()
        await chief.session.close()
