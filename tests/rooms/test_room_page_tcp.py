"""The room routes over loopback TCP (``[api] room_page_over_tcp``), for the room page: served only with
the option on; to the same callers as the socket (root, the store's owner, operators_group), by the uid
owning the peer's socket; a change only with the listener's own Origin and a JSON body (CSRF); a read
refused when the browser says it came from elsewhere; never a CORS header; and every other operator
route still on the socket only. The other users are real processes run as ``nobody`` (setpriv), talking
raw HTTP over real TCP; every refusal has its control."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.config.station import ApiSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.observe.api import ACCESS, Access, Caller, LocalApi
from edge.observe.board import StatusBoard
from edge.observe.room_api import ReadLog, room_routes
from edge.rooms.service import RoomService
from tests.observe.test_api_auth import NOBODY, _require_root
from tests.prerequisites import require
from tests.rooms.conftest import STATION, rooms_config

MARK = "/api/v1/rooms/xw-1/mark"  # nothing records: a caller who gets through is refused by the service
MARK_BODY = json.dumps({"note": "出示证据一"})
STOP = "/api/v1/rooms/xw-1/stop"
ROOM_CALLS = [("GET", "/api/v1/rooms", ""), ("POST", "/api/v1/rooms/xw-1/start", "{}"),
              ("POST", MARK, MARK_BODY), ("POST", "/api/v1/rooms/xw-1/change", json.dumps({"subject": "y"})),
              ("POST", "/api/v1/rooms/xw-1/stop", "{}")]

# One HTTP/1.1 request per call over TCP to 127.0.0.1:PORT, as whatever user runs it: the status and
# body of each, or "closed" for a call sent with close_at_once (the request, then close() at once,
# nothing read: the client is gone while the station handles it).
CLIENT = r"""
import json, socket, sys
port, calls = int(sys.argv[1]), json.loads(sys.argv[2])
out = []
for method, target, headers, body, close_at_once in calls:
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    data = body.encode()
    head = f"{method} {target} HTTP/1.1\r\nContent-Length: {len(data)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall((head + "\r\n").encode() + data)
    if close_at_once:
        s.close()
        out.append(["closed", ""])
        continue
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    s.close()
    status_line, _, rest = answer.partition(b"\r\n")
    out.append([int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")])
print(json.dumps(out))
"""
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-roomtcp-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def _serve(store: StationStore, pipeline: IngestPipeline, short_dir: Path,
                 **settings: Any) -> AsyncIterator[LocalApi]:
    service = RoomService(rooms_config(), store, pipeline, station_id=STATION)
    service.load()
    api = LocalApi(StatusBoard(identity={"id": STATION}, bays=[]), store,
                   ApiSection(socket_path=short_dir / "api.sock", tcp_port=0, **settings),
                   [room_routes(service)])
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def _port(api: LocalApi) -> int:
    assert api.tcp_url is not None
    return int(api.tcp_url.rsplit(":", 1)[1])


def _headers(api: LocalApi, origin: str | None = "own", content_type: str = "application/json",
             **extra: str) -> dict[str, str]:
    port = _port(api)
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": content_type, **extra}
    if origin is not None:
        headers["Origin"] = f"http://127.0.0.1:{port}" if origin == "own" else origin.format(port=port)
    return headers


async def _run(api: LocalApi, calls: list[tuple[str, str, dict[str, str], str, bool]],
               as_nobody: bool = False, station_busy: bool = False) -> list[tuple[Any, Any]]:
    """Run the client; with ``station_busy`` the API's event loop is held while it runs (a loaded
    agent): the station handles its requests only after the client is done with them."""
    argv = [*(AS_NOBODY if as_nobody else []), "/usr/bin/python3", "-I", "-c", CLIENT, str(_port(api)),
            json.dumps(calls)]
    if station_busy:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    else:
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=120,
                                       check=True)
    answers = []
    for status, body in json.loads(done.stdout):
        try:
            answers.append((status, json.loads(body) if body else None))
        except ValueError:
            answers.append((status, body))
    return answers


def _refused_by_service(store: StationStore, after_seq: int) -> list[dict[str, Any]]:
    return [e.data for e in store.ledger.entries(after_seq + 1) if e.type == "refused"]


@pytest.mark.parametrize("enabled", [False, True])
async def test_the_room_routes_are_served_over_tcp_only_with_the_option(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path, enabled: bool
) -> None:
    async with _serve(store, pipeline, short_dir, room_page_over_tcp=enabled) as api:
        head = store.ledger.head()[0]
        answers = await _run(api, [(m, p, _headers(api), b, False) for m, p, b in ROOM_CALLS])
        if not enabled:
            assert [a[0] for a in answers] == [403] * len(ROOM_CALLS)
            assert all("room_page_over_tcp is off" in a[1]["error"] for a in answers)
            assert store.ledger.head()[0] == head  # refused before the service saw anything
            return
        # Control: on, root (this test's uid) reads the rooms and reaches the service with each change,
        # which answers for itself (nothing records, the empty start is bad input) and records `by`.
        status, rooms = answers[0]
        assert status == 200 and rooms["rooms"][0]["room"] == "xw-1"
        assert [a[0] for a in answers[1:]] == [400, 404, 404, 404], answers
        refused = _refused_by_service(store, head)
        assert [r["action"] for r in refused] == ["start", "mark", "change", "stop"]
        assert {r["by"] for r in refused} == {"root"}


@pytest.mark.parametrize("origin", [None, "http://evil.example", "null", "http://127.0.0.1:1",
                                    "https://127.0.0.1:{port}", "http://127.0.0.1.evil.example:{port}"])
async def test_a_change_without_the_listeners_own_origin_is_refused(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path, origin: str | None,
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.observe.api")
    async with _serve(store, pipeline, short_dir, room_page_over_tcp=True) as api:
        head = store.ledger.head()[0]
        [(status, body)] = await _run(api, [("POST", MARK, _headers(api, origin), MARK_BODY, False)])
        assert status == 403 and "origin" in body["error"].lower(), body
        assert store.ledger.head()[0] == head
        assert any("refused POST" in r.getMessage() and "origin" in r.getMessage().lower()
                   for r in caplog.records)
        # Control: the listener's own origin, under each of its names, gets through to the service.
        port = _port(api)
        own = [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"]
        answers = await _run(api, [("POST", MARK, _headers(api, o), MARK_BODY, False) for o in own])
        assert [a[0] for a in answers] == [404] * 3, answers
        assert len(_refused_by_service(store, head)) == 3


NOT_JSON = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain",
            "application/jsonx"]


@pytest.mark.parametrize("content_type", NOT_JSON)
async def test_a_change_that_is_not_json_is_refused(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path, content_type: str
) -> None:
    async with _serve(store, pipeline, short_dir, room_page_over_tcp=True) as api:
        head = store.ledger.head()[0]
        body = "note=x" if "form" in content_type else MARK_BODY
        [(status, answer)] = await _run(api, [("POST", MARK, _headers(api, content_type=content_type), body,
                                               False)])
        assert status == 403 and "application/json" in answer["error"], answer
        assert store.ledger.head()[0] == head
        # Control: the same request as JSON (with a charset, as browsers may send) reaches the service.
        [(status, _)] = await _run(api, [("POST", MARK, _headers(api, content_type="application/json; "
                                                                 "charset=utf-8"), MARK_BODY, False)])
        assert status == 404 and len(_refused_by_service(store, head)) == 1


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                                     {"Sec-Fetch-Site": "same-site"}])
async def test_a_read_that_says_it_came_from_elsewhere_is_refused(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path, headers: dict[str, str]
) -> None:
    async with _serve(store, pipeline, short_dir, room_page_over_tcp=True) as api:
        host = {"Host": f"127.0.0.1:{_port(api)}"}
        [(status, body)] = await _run(api, [("GET", "/api/v1/rooms", {**host, **headers}, "", False)])
        assert status == 403 and "not served" in body["error"]
        # Controls: the page's own read, a navigation typed by the user, a tool that sends neither.
        own = [{"Origin": f"http://127.0.0.1:{_port(api)}", "Sec-Fetch-Site": "same-origin"},
               {"Sec-Fetch-Site": "none"}, {}]
        answers = await _run(api, [("GET", "/api/v1/rooms", {**host, **h}, "", False) for h in own])
        assert [a[0] for a in answers] == [200] * 3


async def test_no_cors_header_is_ever_sent(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path
) -> None:
    async with _serve(store, pipeline, short_dir, room_page_over_tcp=True) as api, \
            aiohttp.ClientSession() as client:
        assert api.tcp_url is not None
        evil = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type"}
        own = {"Origin": api.tcp_url}
        # A preflight is not answered (so no cross-origin JSON POST is ever sent by a browser)...
        async with client.options(api.tcp_url + MARK, headers=evil) as response:
            assert response.status >= 400
            preflight = dict(response.headers)
        # ...and no answer, refused or served, carries a CORS header.
        answers = []
        for method, path, headers in (("GET", "/api/v1/rooms", own), ("GET", "/api/v1/rooms", evil),
                                      ("POST", MARK, {**own, "Content-Type": "application/json"}),
                                      ("GET", "/rooms/", evil)):
            async with client.request(method, api.tcp_url + path, headers=headers, data=MARK_BODY
                                      if method == "POST" else None) as response:
                answers.append((response.status, dict(response.headers)))
    assert [a[0] for a in answers] == [200, 403, 404, 200]  # control: they were answered
    for headers in [preflight, *(a[1] for a in answers)]:
        assert not [h for h in headers if h.lower().startswith("access-control-")], headers
    # The case data is not kept by the browser, nor sniffed into something a page could load.
    served = answers[0][1]
    assert served["Cache-Control"] == "no-store" and served["X-Content-Type-Options"] == "nosniff"


async def test_a_tcp_caller_who_is_not_an_operator_is_refused(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path
) -> None:
    _require_root()
    require(shutil.which("setpriv"), "needs setpriv (util-linux)")
    async with _serve(store, pipeline, short_dir, room_page_over_tcp=True, operators_group="") as api:
        head = store.ledger.head()[0]
        calls = [("GET", "/api/v1/rooms", _headers(api), "", False),
                 ("POST", MARK, _headers(api), MARK_BODY, False)]
        answers = await _run(api, calls, as_nobody=True)
        assert [a[0] for a in answers] == [403, 403]
        assert all(f"uid {NOBODY} is neither root" in a[1]["error"] for a in answers)
        assert store.ledger.head()[0] == head
        # Control: root, the same client, the same requests.
        answers = await _run(api, calls)
        assert [a[0] for a in answers] == [200, 404]
    # A member of operators_group (here nobody's primary group in the account database: TCP has no
    # SO_PEERCRED, so the groups come from there, whatever the process dropped) gets through.
    async with _serve(store, pipeline, short_dir, room_page_over_tcp=True, operators_group="nogroup") as api:
        head = store.ledger.head()[0]
        calls = [("GET", "/api/v1/rooms", _headers(api), "", False),
                 ("POST", MARK, _headers(api), MARK_BODY, False)]
        answers = await _run(api, calls, as_nobody=True)
        assert [a[0] for a in answers] == [200, 404]
        assert [r["by"] for r in _refused_by_service(store, head)] == ["nobody"]


async def test_a_client_that_closes_at_once_is_not_taken_for_root(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A socket closed by its process is printed in /proc/net/tcp with uid 0 once it is orphaned (time
    wait, FIN-WAIT-2): read naively, `nobody` sending a request and closing at once is root whenever the
    station handles the request a moment later (a loaded agent). Before the check, every one of these
    requests reached the service as root (20 `refused` entries by root)."""
    _require_root()
    require(shutil.which("setpriv"), "needs setpriv (util-linux)")
    async with _serve(store, pipeline, short_dir, room_page_over_tcp=True, operators_group="") as api:
        head = store.ledger.head()[0]
        # A stop needs no body: the request is whole before the client's close reaches the station.
        calls = [("POST", STOP, _headers(api), "", True)] * 20
        caplog.set_level(logging.INFO, logger="edge.observe.api")
        await _run(api, calls, as_nobody=True, station_busy=True)

        def refusals() -> list[str]:
            return [r.getMessage() for r in caplog.records if "refused POST " + STOP in r.getMessage()]

        # The station handles what it got (nothing to await: the client is gone): each request is
        # refused by the API, as nobody's or as a user unknown, or (the hole) reaches the service.
        async with asyncio.timeout(60):
            while len(refusals()) + len(_refused_by_service(store, head)) < len(calls):
                await asyncio.sleep(0.1)
        assert store.ledger.head()[0] == head, _refused_by_service(store, head)
        assert all(f"uid {NOBODY} is neither root" in m or "cannot be determined" in m for m in refusals())
        # Control: the same requests as root, read to the end, reach the service (and are its refusals).
        answers = await _run(api, [("POST", STOP, _headers(api), "", False)] * 2)
        assert [a[0] for a in answers] == [404, 404] and len(_refused_by_service(store, head)) == 2


async def test_every_other_operator_route_stays_on_the_socket(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path
) -> None:
    item = str(uuid.UUID(int=7))
    async with _serve(store, pipeline, short_dir, room_page_over_tcp=True, metrics_over_tcp=False) as api:
        access = api.app[ACCESS]
        operator = {c for c, a in access.items() if a in (Access.OPERATOR, Access.METRICS)}
        assert operator >= {"/api/v1/items", "/api/v1/items/{item}", "/api/v1/items/{item}/tags", "/metrics"}
        assert all(a is not Access.ROOM for c, a in access.items() if not c.startswith("/api/v1/rooms"))
        calls = [("GET", "/api/v1/items", ""), ("GET", f"/api/v1/items/{item}", ""),
                 ("POST", f"/api/v1/items/{item}/tags", json.dumps({"case_number": "A-1"})),
                 ("GET", "/metrics", "")]
        answers = await _run(api, [(m, p, _headers(api), b, False) for m, p, b in calls])
        assert [a[0] for a in answers] == [403] * 4
        assert all("Unix socket only" in a[1]["error"] for a in answers)
        # Control: root on the socket gets each (the unknown item is the route's own 404).
        connector = aiohttp.UnixConnector(path=str(short_dir / "api.sock"))
        async with aiohttp.ClientSession(connector=connector) as client:
            codes = []
            for method, path, body in calls:
                async with client.request(method, "http://station" + path, data=body,
                                          headers={"Content-Type": "application/json"}) as response:
                    codes.append(response.status)
        assert codes == [200, 404, 404, 200]


def test_repeated_reads_are_logged_at_most_once_a_minute_with_their_count(
    caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    reads = ReadLog(interval_s=60.0, clock=lambda: now[0])
    operator = Caller("tcp", uid=1001, address="127.0.0.1", groups_from="accounts")
    caplog.set_level(logging.INFO, logger="edge.observe.room_api")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records]

    reads.read(operator, ("s1",))
    assert lines() == ["local API: uid 1001 (tcp 127.0.0.1) read the rooms' sessions (s1)"]
    for _ in range(29):
        now[0] += 2
        reads.read(operator, ("s1",))
    assert len(lines()) == 1  # counted, not logged one by one
    # Another caller's read is its own line at once.
    reads.read(Caller("unix", uid=0, pid=7), ("s1",))
    assert lines()[-1] == "local API: uid 0 (pid 7) read the rooms' sessions (s1)"
    now[0] += 2  # past the minute: logged, with the reads not logged since
    reads.read(operator, ("s1",))
    assert lines()[-1].endswith("(s1); 29 more reads of (s1) since the last line")
    # A change of what is read is logged at once.
    now[0] += 1
    reads.read(operator, ("s1", "s2"))
    assert lines()[-1] == "local API: uid 1001 (tcp 127.0.0.1) read the rooms' sessions (s1, s2)"
