"""Every route of the station's local API is authorised: the test enumerates the app's routes and calls
each as callers that must be refused (a uid that is neither root, the store's owner nor an operator, on
the Unix socket; anyone over TCP for what the kiosk does not need), with controls that an authorised
caller gets through on each. The refused caller is a real other process running as `nobody`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge.config.station import ApiSection
from edge.equipment.fleet import FleetPolicy, FleetRecords, build_fleet, fleet_summary
from edge.ingest.store import StationStore
from edge.observe.api import LocalApi
from edge.observe.board import StatusBoard
from tests.prerequisites import require

NOBODY = 65534  # nobody:nogroup on Debian
# What the dock screen needs over TCP, read-only; every other route must be refused there.
KIOSK_PATHS = {"/api/v1/status", "/api/v1/bays", "/api/v1/events", "/api/v1/fleet"}
ITEM = str(uuid.UUID(int=7))

# Run as another user: one HTTP request per route on the Unix socket, the status code of each (or
# "EACCES" when the socket file itself keeps the caller out). Only the status line is read (the event
# stream never ends).
CLIENT = r"""
import json, socket, sys
path, calls = sys.argv[1], json.loads(sys.argv[2])
codes = []
for method, target, body in calls:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
    except PermissionError:
        codes.append("EACCES")
        continue
    data = body.encode()
    s.sendall((f"{method} {target} HTTP/1.1\r\nHost: station\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        line += chunk
    s.close()
    codes.append(int(line.split()[1]))
print(json.dumps(codes))
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-auth-", dir="/tmp"))
    path.chmod(0o755)  # the other user must reach the socket inside
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def _board() -> StatusBoard:
    board = StatusBoard(identity={"id": "TEST-STATION"}, bays=[1, 2])
    # The fleet view of a station that knows one recorder (the agent's fleet task keeps it fresh).
    policy = FleetPolicy(timedelta(hours=14), 80)
    fleet = build_fleet(FleetRecords(["3300001"]), {}, policy, datetime.now(UTC))
    board.sections["fleet"] = lambda: fleet_summary(fleet, station_id="TEST-STATION")
    return board


@asynccontextmanager
async def _serve(store: StationStore, settings: ApiSection) -> AsyncIterator[LocalApi]:
    api = LocalApi(_board(), store, settings)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def calls_for(app: web.Application) -> list[tuple[str, str, str]]:
    """One call per route of the app: method, a path that matches it, a body."""
    calls = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if "path" in info:
            path = info["path"]
        elif "formatter" in info:
            path = info["formatter"].format(item=ITEM, name="main.js")  # name: the dock screen's files
        else:
            path = info["prefix"] + "/index.html"
        body = json.dumps({"case_number": "A-1"}) if route.method == "POST" else ""
        calls.append((route.method, path, body))
    assert calls, "the app has routes"
    return calls


def as_user(socket_path: Path, calls: list[tuple[str, str, str]], **credentials: Any) -> list[Any]:
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", CLIENT, str(socket_path), json.dumps(calls)],
        capture_output=True, text=True, timeout=60, check=True, **credentials,
    )
    codes: list[Any] = json.loads(done.stdout)
    return codes


def _require_root() -> None:
    require(os.geteuid() == 0, "running a client as another user needs root")
    require(Path("/usr/bin/python3").exists(), "needs /usr/bin/python3 for the other user's client")


async def test_a_caller_who_is_not_an_operator_is_refused_on_every_route(
    store: StationStore, short_dir: Path
) -> None:
    _require_root()
    settings = ApiSection(socket_path=short_dir / "api.sock", operators_group="")
    async with _serve(store, settings) as api:
        calls = calls_for(api.app)
        nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        # The socket file (0600, the store owner's) keeps others out...
        codes = await asyncio.to_thread(as_user, short_dir / "api.sock", calls, **nobody)
        assert codes == ["EACCES"] * len(calls)
        # ...and the API refuses them itself, should the file's mode ever let them in.
        (short_dir / "api.sock").chmod(0o666)
        codes = await asyncio.to_thread(as_user, short_dir / "api.sock", calls, **nobody)
        assert codes == [403] * len(calls), list(zip(calls, codes, strict=True))
        # Control: root, on the same socket, gets through on every route.
        codes = await asyncio.to_thread(as_user, short_dir / "api.sock", calls)
        assert 403 not in codes and "EACCES" not in codes, list(zip(calls, codes, strict=True))


@pytest.mark.parametrize("membership", ["primary", "supplementary"])
async def test_members_of_the_operators_group_get_through_on_every_route(
    store: StationStore, short_dir: Path, membership: str
) -> None:
    _require_root()
    import grp

    group = grp.getgrnam("nogroup" if membership == "primary" else "users")
    settings = ApiSection(socket_path=short_dir / "api.sock", operators_group=group.gr_name)
    credentials: dict[str, Any] = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    if membership == "supplementary":
        credentials["extra_groups"] = [group.gr_gid]
    async with _serve(store, settings) as api:
        calls = calls_for(api.app)
        assert oct((short_dir / "api.sock").stat().st_mode & 0o777) == "0o660"
        assert (short_dir / "api.sock").stat().st_gid == group.gr_gid
        codes = await asyncio.to_thread(as_user, short_dir / "api.sock", calls, **credentials)
        assert 403 not in codes and "EACCES" not in codes, list(zip(calls, codes, strict=True))
        if membership == "supplementary":
            # Control: the same user without the supplementary group is refused (the file's group
            # lets it connect only through that group: it gets EACCES, not even a 403).
            codes = await asyncio.to_thread(
                as_user, short_dir / "api.sock", calls, user=NOBODY, group=NOBODY, extra_groups=[]
            )
            assert set(codes) == {"EACCES"}


async def test_over_tcp_only_the_kiosk_routes_are_served(store: StationStore, short_dir: Path) -> None:
    settings = ApiSection(socket_path=short_dir / "api.sock", tcp_port=0)
    async with _serve(store, settings) as api:
        assert api.tcp_url is not None and api.tcp_url.startswith("http://127.0.0.1:")
        calls = calls_for(api.app)
        kiosk = [c for c in calls if c[1] in KIOSK_PATHS or c[1].startswith("/dock")]
        others = [c for c in calls if c not in kiosk]
        assert others and {c[1] for c in kiosk} >= KIOSK_PATHS
        async with aiohttp.ClientSession() as client:
            for method, path, body in others:
                async with client.request(method, api.tcp_url + path, data=body) as response:
                    assert response.status == 403, (method, path)
            for method, path, _ in kiosk:
                # Control: the kiosk's own routes answer (only the headers of the event stream).
                async with client.request(method, api.tcp_url + path) as response:
                    assert response.status == 200, (method, path)


async def test_metrics_over_tcp_only_when_configured(store: StationStore, short_dir: Path) -> None:
    for allowed in (False, True):
        settings = ApiSection(socket_path=short_dir / "api.sock", tcp_port=0, metrics_over_tcp=allowed)
        async with _serve(store, settings) as api:
            assert api.tcp_url is not None
            async with aiohttp.ClientSession() as client, client.get(api.tcp_url + "/metrics") as response:
                assert response.status == (200 if allowed else 403)


def test_a_non_loopback_listener_needs_saying_so() -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        ApiSection(tcp_host="0.0.0.0", tcp_port=8470)
    # Control: loopback is fine, and another address is when explicitly allowed.
    assert ApiSection(tcp_host="::1", tcp_port=8470).tcp_host == "::1"
    assert ApiSection(tcp_host="0.0.0.0", tcp_port=8470, allow_non_loopback=True).allow_non_loopback


async def test_event_streams_are_bounded(store: StationStore, short_dir: Path) -> None:
    from edge.observe.api import BOARD
    from edge.observe.board import MAX_SUBSCRIBERS

    settings = ApiSection(socket_path=short_dir / "api.sock", tcp_port=0)
    async with _serve(store, settings) as api, aiohttp.ClientSession() as client:
        assert api.tcp_url is not None
        held = [api.app[BOARD].subscribe() for _ in range(MAX_SUBSCRIBERS)]
        async with client.get(api.tcp_url + "/api/v1/events") as response:
            assert response.status == 503 and "event streams" in (await response.json())["error"]
        held.pop().close()
        # Control: with one given back, a stream opens.
        async with client.get(api.tcp_url + "/api/v1/events") as response:
            assert response.status == 200
            assert (await response.content.readline()).startswith(b"event: snapshot")
        for subscription in held:
            subscription.close()


async def test_edge_status_tells_a_caller_the_api_does_not_admit(
    store: StationStore, short_dir: Path
) -> None:
    _require_root()
    import sysconfig

    root = Path(__file__).resolve().parents[2]
    pythonpath = f"{root}:{sysconfig.get_paths()['purelib']}"
    env = {"PYTHONPATH": pythonpath, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    argv = ["/usr/bin/python3", "-m", "edge.cli", "status", "--socket", str(short_dir / "api.sock"), "--json"]
    for group, expected in (("", 77), ("nogroup", 0)):  # the second: the control, an operator
        settings = ApiSection(socket_path=short_dir / "api.sock", operators_group=group)
        async with _serve(store, settings):
            done = await asyncio.to_thread(
                subprocess.run, argv, user=NOBODY, group=NOBODY, extra_groups=[], env=env, cwd="/",
                capture_output=True, text=True, timeout=120,
            )
        assert done.returncode == expected, done.stderr
        if expected:
            assert "not allowed to read the station status" in done.stderr and done.stdout == ""
        else:
            assert json.loads(done.stdout)["station"]["id"] == "TEST-STATION"


async def test_a_kiosk_page_is_served_read_only_and_only_from_its_directory(
    store: StationStore, short_dir: Path, tmp_path: Path
) -> None:
    from edge.observe.api import add_kiosk_page

    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<html>extra</html>")
    (page / "app.js").write_text("export {}")
    (tmp_path / "secret.txt").write_text("not for the kiosk")
    (page / "link.txt").symlink_to(tmp_path / "secret.txt")
    settings = ApiSection(socket_path=short_dir / "api.sock", tcp_port=0)
    api = LocalApi(_board(), store, settings)
    add_kiosk_page(api.app, "/extra", page)  # before start, as build_app does (a started app is frozen)
    await api.start()
    try:
        assert api.tcp_url is not None
        async with aiohttp.ClientSession() as client:
            index = "<html>extra</html>"
            served = (("/extra", index), ("/extra/", index), ("/extra/app.js", "export {}"))
            for path, body in served:
                async with client.get(api.tcp_url + path) as response:
                    assert (response.status, await response.text()) == (200, body), path
            for path in ("/extra/link.txt", "/extra/../secret.txt", "/extra/%2e%2e/secret.txt"):
                async with client.get(api.tcp_url + path) as response:
                    assert response.status in (403, 404), path
                    assert "not for the kiosk" not in await response.text()
            async with client.post(api.tcp_url + "/extra/app.js") as response:
                assert response.status == 405
        # Every route the page added is a kiosk route: served over TCP, as the enumeration expects.
        calls = calls_for(api.app)
        assert {c[1] for c in calls} >= {"/extra", "/extra/", "/extra/index.html"}
    finally:
        await api.stop()


async def test_tcp_answers_only_a_host_that_names_the_listener(store: StationStore, short_dir: Path) -> None:
    """Review R8: a page that rebinds its DNS name to 127.0.0.1 sent `Host: evil.example` and read the
    status (officers' names, badge numbers)."""
    settings = ApiSection(socket_path=short_dir / "api.sock", tcp_port=0)
    async with _serve(store, settings) as api, aiohttp.ClientSession() as client:
        assert api.tcp_url is not None
        port = api.tcp_url.rsplit(":", 1)[1]
        for path in sorted(KIOSK_PATHS):
            for host in ("evil.example:80", f"evil.example:{port}", "127.0.0.1", f"127.0.0.2:{port}"):
                hostile = {"Host": host, "Origin": "http://evil.example"}
                async with client.get(api.tcp_url + path, headers=hostile) as response:
                    assert response.status == 421, (path, host)
                    assert "TEST-STATION" not in await response.text()
            # Control: the listener's own names are answered.
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
                async with client.get(api.tcp_url + path, headers={"Host": host}) as response:
                    assert response.status == 200, (path, host)
    # No Host header at all (HTTP/1.0): 400.
    async with _serve(store, settings) as api:
        assert api.tcp_url is not None
        host, port = api.tcp_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /api/v1/status HTTP/1.0\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).split()[1] == b"400"
        writer.close()


STREAM_HOG = r"""
import json, socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held, codes = [], []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    codes.append(int(s.makefile("rb").readline().split()[1]))
    held.append(s)
print(json.dumps(codes), flush=True)
sys.stdin.read()  # holds its streams until the test closes stdin
"""


async def test_another_local_user_cannot_take_the_dock_screens_event_streams(
    store: StationStore, short_dir: Path
) -> None:
    """Review R8: any local user opened all 64 event streams over TCP and the dock screen got 503."""
    _require_root()
    from edge.observe.api import STREAMS_PER_PEER
    from edge.observe.board import MAX_SUBSCRIBERS

    settings = ApiSection(socket_path=short_dir / "api.sock", tcp_port=0)
    async with _serve(store, settings) as api, aiohttp.ClientSession() as client:
        assert api.tcp_url is not None
        port = api.tcp_url.rsplit(":", 1)[1]
        hog = await asyncio.create_subprocess_exec(
            "/usr/bin/python3", "-I", "-c", STREAM_HOG, port, str(MAX_SUBSCRIBERS + 10),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, user=NOBODY, group=NOBODY,
            extra_groups=[])
        try:
            assert hog.stdout is not None and hog.stdin is not None
            codes = json.loads(await asyncio.wait_for(hog.stdout.readline(), 60))
            # The other user gets its share and no more...
            assert codes[:STREAMS_PER_PEER] == [200] * STREAMS_PER_PEER
            assert set(codes[STREAMS_PER_PEER:]) == {503}
            # ...and the dock screen (this user, same listener) still streams.
            dock = await client.get(api.tcp_url + "/api/v1/events")
            assert dock.status == 200
            assert (await dock.content.readline()).startswith(b"event: snapshot")
            # Control: this user is held to the same share, so the cap is real for everyone.
            opened = [await client.get(api.tcp_url + "/api/v1/events") for _ in range(STREAMS_PER_PEER)]
            assert [r.status for r in opened] == [200] * (STREAMS_PER_PEER - 1) + [503]
            for response in [dock, *opened]:
                response.close()
        finally:
            if hog.stdin is not None:
                hog.stdin.close()
            await hog.wait()


async def test_the_fleet_route_says_when_there_is_no_fleet_yet_or_none_at_all(
    store: StationStore, short_dir: Path
) -> None:
    settings = ApiSection(socket_path=short_dir / "api.sock")
    board = StatusBoard(identity={"id": "TEST-STATION"}, bays=[1])
    api = LocalApi(board, store, settings)
    await api.start()
    try:
        connector = aiohttp.UnixConnector(path=str(settings.socket_path))
        async with aiohttp.ClientSession(connector=connector) as client:
            async def fleet() -> tuple[int, Any]:
                async with client.get("http://station/api/v1/fleet") as response:
                    return response.status, await response.json()

            status, body = await fleet()
            assert status == 404 and "no fleet view" in body["error"]  # a board with no fleet task
            latest: dict[str, Any] | None = None
            board.sections["fleet"] = lambda: latest
            status, body = await fleet()
            assert status == 503 and "not been read yet" in body["error"]  # before its first read
            policy = FleetPolicy(timedelta(hours=14), 80)
            latest = fleet_summary(build_fleet(FleetRecords(["3300001"]), {}, policy, datetime.now(UTC)),
                                   station_id="TEST-STATION")
            status, body = await fleet()  # control: read once, it answers
            assert status == 200 and body["recorders"][0]["device_serial"] == "3300001"
            assert body["recorders"][0]["state"] == "never_docked"
    finally:
        await api.stop()
