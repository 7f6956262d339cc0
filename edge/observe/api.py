"""The station's local API (aiohttp): on a Unix socket for people and tools on the station, and on a
loopback TCP port for the dock screen beside the bays.

Routes (JSON unless said; shapes in the package docstring):

  GET  /api/v1/status            station + bays                         kiosk
  GET  /api/v1/bays              bays                                   kiosk
  GET  /api/v1/fleet             every recorder known here (edge.equipment.fleet)   kiosk
  GET  /api/v1/events            text/event-stream: snapshot, bay, station   kiosk
  GET  /api/v1/items?limit=N     recent items                           operator
  GET  /api/v1/items/{item}      one item: case, manifest, ledger trail operator
  POST /api/v1/items/{item}/tags case fields: a signed `tagged` entry    operator
  GET  /metrics                  Prometheus text                        operator (kiosk with metrics_over_tcp)
  GET  /api/v1/rooms, POST /api/v1/rooms/{room}/start|mark|change|stop   room (edge.observe.room_api,
                                 only on a station with [[rooms.room]]): operator, and over loopback TCP
                                 too with [api] room_page_over_tcp
  GET  /dock/...                 the dock screen (registered by its package with add_kiosk_page)   kiosk
  GET  /rooms/...                the room page's files (edge.roompage; no data in them)   kiosk
  POST /api/v1/checkout, GET /api/v1/checkout/outcomes   the check-out desk (edge.observe.desk_api, only with
                                 [equipment] enabled): desk (operator; loopback TCP too for the dock
                                 screen with [equipment] screen_checkout, CSRF-guarded), outcomes kiosk

Authorisation, on every route (a route registered without an access level is refused to everyone):

* Unix socket: the caller is who the kernel says (SO_PEERCRED): root, the store's owner, or a member of
  ``[api] operators_group`` (primary or supplementary group) may use every route; anyone else gets 403.
  The socket file itself is 0660, owned by the store's owner and that group, so others cannot connect.
* TCP: only the kiosk routes, read-only; everything else is 403 ("over the Unix socket only"). The
  listener binds to loopback unless ``allow_non_loopback`` says otherwise, and a peer that is not
  loopback is refused unless it does. Two opt-ins widen it: ``metrics_over_tcp`` (/metrics) and
  ``room_page_over_tcp`` (the room routes, below).
* The room routes over TCP (``[api] room_page_over_tcp``, off by default) are for the room page
  (``/rooms/``) in a browser on the room PC itself. They are authorised like the socket, by who the
  caller is, never by where it connects from (every local user and every local process can reach
  127.0.0.1): the peer must be loopback, its uid is the owner of its socket in /proc/net/tcp{,6}, and
  that uid must be root, the store's owner or a member of ``operators_group``. TCP has no SO_PEERCRED
  and no SO_PEERGROUPS, so the uid's groups come from the account database (its primary group and
  ``getgrouplist``), as they stand at the request: a member removed from the group is refused at once
  (on the socket only at its next connect), a member added is admitted without logging in again. The
  caller is recorded as ``by`` as on the socket. The /proc row must be the peer's live socket: in state
  ESTABLISHED and with an inode. A client that closes its socket at once after its request leaves an
  orphan whose row the kernel prints with uid 0 (a time-wait or orphaned FIN-WAIT socket has no owner
  left): taken at face value any local user would be root (measured before the check: every such
  request by ``nobody`` read as uid 0). With no such row the uid is unknown and the request refused.
  What the uid does not prove is which *program* of that user sent the request: any process the
  operator runs can use the routes, as it can their socket; the browser is what needs more:
* CSRF. Any web page the operator's browser opens, on any origin, can make the browser send a request
  to 127.0.0.1 with the right Host header (it names the URL it sends to), and the peer's uid is then the
  operator's. So a state-changing TCP request (anything but GET and HEAD) must carry an ``Origin`` that
  is this listener's own (``http://127.0.0.1:PORT``, ``http://localhost:PORT``, ``http://[::1]:PORT``,
  ``http://TCP_HOST:PORT``) and a ``Content-Type: application/json`` body: a cross-origin page can
  neither forge the Origin (the browser sets it) nor send JSON without a CORS preflight, which this API
  never answers (no ``Access-Control-*`` header is ever sent; an OPTIONS request is 405). No Origin, a
  foreign or ``null`` one, or another content type is 403 with the reason, logged. A tool that is not a
  browser must send the Origin too (``edge room`` uses the socket, where none of this applies).
  A GET of the room status over TCP carries case data. Another origin can make the browser send it, but
  cannot read the answer: reading a cross-origin response needs CORS, never sent here, and the answer
  is JSON with ``nosniff`` and ``no-store`` (no script or style can load it). DNS rebinding, where the
  other page's own name resolves to 127.0.0.1 and so makes it same-origin, is what the Host check stops.
  As defence in depth a GET with an ``Origin`` or ``Sec-Fetch-Site`` saying it came from another origin
  (or site) is refused too; a navigation typed by the user (``Sec-Fetch-Site: none``) is not.
* TCP requests must name the listener in their ``Host`` header (``127.0.0.1:PORT``, ``localhost:PORT``,
  ``[::1]:PORT``, or the configured ``tcp_host:PORT``): anything else is 421, no Host 400. A web page on
  any origin that rebinds its own DNS name to 127.0.0.1 sends its own name as Host, so it cannot read
  the status (officers' names, badge numbers) through the station's browser (DNS rebinding).
* Event streams have a budget per channel (half of the board's subscribers each for the socket and for
  TCP) and, within it, per local user (the kernel's uid of the peer: SO_PEERCRED on the socket, the
  owner of the client's socket in /proc/net/tcp{,6} for a loopback TCP peer): one local user holding
  many streams cannot leave the dock screen, another user's browser, without one (503 past a budget).
* Tagging records the caller as the tagger: ``[api] accounts`` names a uid's account, else its login name
  (``uid:N`` for a uid without one). It writes the very entry ``edge tag`` writes, through
  :func:`edge.ingest.tagging.tag_item`, on the agent's own store.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import json
import logging
import os
import pwd
import socket
import stat
import struct
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from aiohttp import web

from edge.config.station import ApiSection
from edge.custody.text import json_printable, printable
from edge.dockscreen import dock_screen_routes
from edge.ingest.store import StationStore
from edge.ingest.tagging import TagError, tag_item
from edge.observe.board import MAX_SUBSCRIBERS, StatusBoard, TooManySubscribers
from edge.observe.items import ITEM_ID, StoreReader
from edge.observe.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
SSE_KEEPALIVE_S = 15.0
# Event streams per channel ("unix", "tcp") and per peer (uid, or address when the uid is unknown)
# within it: the two channels together hold at most the board's MAX_SUBSCRIBERS.
STREAMS_PER_CHANNEL = MAX_SUBSCRIBERS // 2
STREAMS_PER_PEER = 8
# SO_PEERGROUPS (Linux 4.13+; not in Python's socket module): the peer's supplementary groups as the
# kernel recorded them at connect time. CPython's getsockopt takes at most 1024 bytes: 256 groups.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_PEERGROUPS_BYTES = 1024


class Access(StrEnum):
    KIOSK = "kiosk"  # read-only status for the dock screen: TCP and the socket
    OPERATOR = "operator"  # the socket only, authorised callers
    METRICS = "metrics"  # the socket; TCP too when [api] metrics_over_tcp
    ROOM = "room"  # operator; loopback TCP too, same callers, when [api] room_page_over_tcp
    # The check-out desk (edge.observe.desk_api): operator on the socket; over loopback TCP to the dock screen
    # when [equipment] screen_checkout, with the CSRF guard: the officer's 警号 + PIN is the authority there.
    DESK = "desk"


@dataclass(frozen=True)
class Caller:
    channel: str  # "unix" or "tcp"
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    address: str | None = None
    groups: frozenset[int] = frozenset()  # supplementary groups at connect time (SO_PEERGROUPS)
    # Where the groups come from: the kernel at connect time ("kernel"), or for a TCP peer the account
    # database when the request is authorised ("accounts"; "" until then).
    groups_from: str = "kernel"

    def describe(self) -> str:
        if self.channel == "unix":
            return f"uid {self.uid} (pid {self.pid})"
        return f"tcp {self.address}" if self.uid is None else f"uid {self.uid} (tcp {self.address})"


ACCESS = web.AppKey("access", dict[str, Access])
BOARD = web.AppKey("board", StatusBoard)
SETTINGS = web.AppKey("settings", ApiSection)
STORE = web.AppKey("store", StationStore)
READER = web.AppKey("reader", StoreReader)
OWNER_UID = web.AppKey("owner_uid", int)
CALLER = web.RequestKey("caller", Caller)
# The Host values the TCP listener answers (filled when it binds: the port is known then).
TCP_HOSTS = web.AppKey("tcp_hosts", set[str])
# Whether the check-out desk's routes (Access.DESK) are served over TCP (set by edge.observe.desk_api).
DESK_OVER_TCP = web.AppKey("desk_over_tcp", bool)
# Open event streams per (channel, peer).
STREAMS = web.AppKey("streams", dict[tuple[str, str], int])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_route(app: web.Application, method: str, path: str, handler: Handler, access: Access) -> None:
    """Register a route with the access level the authorisation middleware enforces."""
    resource = app.router.add_resource(path)
    resource.add_route(method, handler)
    app[ACCESS][resource.canonical] = access


def add_kiosk_page(app: web.Application, prefix: str, directory: Path) -> None:
    """Serve a directory of static files read-only at ``prefix`` to the kiosk (TCP) and the socket;
    ``prefix`` and ``prefix/`` answer with its ``index.html``; symlinks are not followed out of it. The
    dock screen registers itself with this, one line in :func:`build_app`."""
    index = directory / "index.html"

    async def page(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    add_route(app, "GET", prefix, page, Access.KIOSK)
    add_route(app, "GET", prefix + "/", page, Access.KIOSK)  # (the static route would refuse a directory)
    static = app.router.add_static(prefix, directory, follow_symlinks=False)
    app[ACCESS][static.canonical] = Access.KIOSK


# Adds routes to the app (with add_route, so that each has its access level): the room routes
# (edge.observe.room_api), given by the composition root when the station records rooms.
Extension = Callable[[web.Application], None]


def build_app(
    board: StatusBoard, store: StationStore, settings: ApiSection, extensions: Sequence[Extension] = ()
) -> web.Application:
    app = web.Application(middlewares=[_authorise], client_max_size=MAX_BODY_BYTES)
    app[ACCESS] = {}
    app[BOARD] = board
    app[STORE] = store
    app[SETTINGS] = settings
    app[READER] = StoreReader(store.layout.root)
    app[OWNER_UID] = os.stat(store.layout.root).st_uid
    app[TCP_HOSTS] = set()
    app[STREAMS] = {}
    add_route(app, "GET", "/api/v1/status", _status, Access.KIOSK)
    add_route(app, "GET", "/api/v1/bays", _bays, Access.KIOSK)
    add_route(app, "GET", "/api/v1/fleet", _fleet, Access.KIOSK)
    add_route(app, "GET", "/api/v1/events", _events, Access.KIOSK)
    add_route(app, "GET", "/api/v1/items", _items, Access.OPERATOR)
    add_route(app, "GET", "/api/v1/items/{item}", _item, Access.OPERATOR)
    add_route(app, "POST", "/api/v1/items/{item}/tags", _tag, Access.OPERATOR)
    add_route(app, "GET", "/metrics", _metrics, Access.METRICS)
    # Kiosk pages register here with add_kiosk_page; the dock screen's own routes (read-only, kiosk):
    for path, handler in dock_screen_routes():
        add_route(app, "GET", path, handler, Access.KIOSK)
    for extend in extensions:
        extend(app)

    async def close_reader(app: web.Application) -> None:
        app[READER].close()

    app.on_cleanup.append(close_reader)
    return app


# -- authorisation ------------------------------------------------------------------------------------


def _caller(request: web.Request) -> Caller:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        raise web.HTTPForbidden(text="no connection to identify the caller by")
    if sock.family == socket.AF_UNIX:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return Caller("unix", uid=uid, gid=gid, pid=pid, groups=_peer_groups(sock))
    peer = transport.get_extra_info("peername") if transport is not None else None
    mine = transport.get_extra_info("sockname") if transport is not None else None
    uid = _tcp_peer_uid(peer, mine) if peer and mine else None
    return Caller("tcp", uid=uid, address=str(peer[0]) if peer else None, groups_from="")


def _with_account_groups(caller: Caller) -> Caller:
    """A TCP caller with its uid's primary group and supplementary groups from the account database (TCP
    has no SO_PEERCRED or SO_PEERGROUPS); a uid without an account has none."""
    if caller.uid is None:
        return caller
    try:
        account = pwd.getpwuid(caller.uid)
    except KeyError:
        return replace(caller, gid=None, groups=frozenset(), groups_from="accounts")
    try:
        groups = frozenset(os.getgrouplist(account.pw_name, account.pw_gid))
    except OSError:
        groups = frozenset()
    return replace(caller, gid=account.pw_gid, groups=groups, groups_from="accounts")


def _peer_groups(sock: socket.socket) -> frozenset[int]:
    """The peer's supplementary groups as the kernel recorded them when it connected (SO_PEERGROUPS):
    not /proc/<pid>/status at request time, where the pid may have changed its groups or been reused."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_BYTES)
    except OSError as exc:  # ERANGE: more than 256 groups; ENOPROTOOPT: kernel before 4.13
        log.warning("local API: the peer's supplementary groups are unknown (%s): only its primary group "
                    "counts", exc.strerror)
        return frozenset()
    count = len(raw) // 4
    return frozenset(struct.unpack(f"{count}I", raw[: count * 4]))


# /proc/net/tcp's state column for an established connection (include/net/tcp_states.h).
_TCP_ESTABLISHED = "01"


def _tcp_peer_uid(peer: Any, mine: Any) -> int | None:
    """The uid owning a loopback TCP client's socket: its row in /proc/net/tcp{,6} has the peer's address
    as local and ours as remote (a socket of this host; a remote peer has none). Only a live socket's
    row counts: ESTABLISHED and with an inode. A socket its process has closed (orphaned FIN-WAIT, or
    time-wait) has no owner any more, and the kernel prints its uid as 0: a client that closes right
    after sending its request would otherwise be read as root."""
    try:
        peer_ip, peer_port = ipaddress.ip_address(str(peer[0]).split("%")[0]), int(peer[1])
        my_ip, my_port = ipaddress.ip_address(str(mine[0]).split("%")[0]), int(mine[1])
    except (ValueError, IndexError, TypeError):
        return None
    table = "/proc/net/tcp6" if peer_ip.version == 6 else "/proc/net/tcp"
    want_local, want_remote = _proc_address(peer_ip, peer_port), _proc_address(my_ip, my_port)
    try:
        with open(table, encoding="ascii") as rows:
            next(rows, None)
            for row in rows:
                cols = row.split()
                if len(cols) > 9 and cols[1] == want_local and cols[2] == want_remote:
                    if cols[3] != _TCP_ESTABLISHED or cols[9] == "0":
                        return None
                    return int(cols[7])
    except (OSError, ValueError):
        return None
    return None


def _proc_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """An address as /proc/net/tcp{,6} writes it: the address's 32-bit words in host order, in hex."""
    packed = ip.packed
    words = "".join(f"{int.from_bytes(packed[i:i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4))
    return f"{words}:{port:04X}"


def _in_group(caller: Caller, group: str) -> bool:
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    if caller.gid == entry.gr_gid:
        return True
    try:
        name = pwd.getpwuid(caller.uid or 0).pw_name
    except KeyError:
        name = None
    if name is not None and name in entry.gr_mem:
        return True
    return entry.gr_gid in caller.groups


def authorised(app: web.Application, caller: Caller, access: Access | None) -> str | None:
    """Why ``caller`` may not use a route of ``access``, or None when it may. A TCP caller of a room route
    must have had its groups read from the account database (:func:`_with_account_groups`)."""
    settings = app[SETTINGS]
    if access is None:
        return "this route has no access rule"
    if caller.channel == "tcp":
        if not settings.allow_non_loopback and not loopback_peer(caller.address):
            return "the dock screen listener serves loopback only"
        if access is Access.KIOSK or (access is Access.METRICS and settings.metrics_over_tcp):
            return None
        if access is Access.DESK:
            if not app.get(DESK_OVER_TCP, False):
                return ("the check-out desk is served over the station's Unix socket only ([equipment] "
                        "screen_checkout is off)")
            if not loopback_peer(caller.address):
                return ("the check-out desk takes a PIN from this PC's own screen only (a loopback peer): a "
                        "PIN must not cross the network in clear")
            return None  # the dock screen's check-out: the officer's 警号 + PIN decide (CSRF-guarded below)
        if access is not Access.ROOM:
            return "served over the station's Unix socket only"
        if not settings.room_page_over_tcp:
            return ("the room routes are served over the station's Unix socket only ([api] "
                    "room_page_over_tcp is off)")
        if not loopback_peer(caller.address):
            return "the room routes are served to this PC's own users only (a loopback peer)"
        if caller.uid is None:
            return "the local user of this connection cannot be determined (no live socket of it in /proc)"
        if caller.groups_from != "accounts":
            return "the caller's groups were not read"
    if caller.uid == 0 or caller.uid == app[OWNER_UID]:
        return None
    if settings.operators_group and _in_group(caller, settings.operators_group):
        return None
    return f"uid {caller.uid} is neither root, the store's owner nor in the operators group"


def loopback_peer(address: str | None) -> bool:
    """Whether a TCP peer address is a loopback one (this PC)."""
    try:
        return address is not None and ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


@web.middleware
async def _authorise(request: web.Request, handler: Handler) -> web.StreamResponse:
    caller = _caller(request)
    if caller.channel == "tcp":
        _check_host(request, caller)
    route = request.match_info.route
    resource = route.resource
    access = request.app[ACCESS].get(resource.canonical) if resource is not None else None
    if resource is None:  # no such route: nothing to authorise, nothing to show
        return await handler(request)
    if caller.channel == "tcp" and access is Access.ROOM and request.app[SETTINGS].room_page_over_tcp:
        # (The account database may be slow, LDAP say: off the event loop.)
        caller = await asyncio.get_running_loop().run_in_executor(None, _with_account_groups, caller)
    refusal = authorised(request.app, caller, access)
    if refusal is None and caller.channel == "tcp":
        refusal = cross_origin_refusal(request)
    if refusal is not None:
        log.info("local API: %s refused %s %s: %s", caller.describe(), request.method,
                 printable(request.path)[:200], refusal)
        raise web.HTTPForbidden(text=json.dumps({"error": refusal}), content_type="application/json")
    request[CALLER] = caller
    return await handler(request)


# What Sec-Fetch-Site may say of a TCP GET of operator data: the page's own origin, or the user's own
# navigation (typing the URL). "same-site" is not enough: 127.0.0.1 on another port is the same site.
_OWN_FETCH_SITES = {"same-origin", "none"}


def cross_origin_refusal(request: web.Request) -> str | None:
    """Why a TCP request may have come from a page on another origin (CSRF), or None. A request that
    changes state must carry this listener's own Origin and a JSON body; a GET of operator data must not
    say it came from elsewhere. Kiosk GETs (no data the operator's browser could leak) pass as before."""
    own = {f"http://{host}" for host in request.app[TCP_HOSTS]}
    origin = request.headers.get("Origin")
    if request.method in ("GET", "HEAD"):
        access = request.app[ACCESS].get(request.match_info.route.resource.canonical) \
            if request.match_info.route.resource is not None else None
        if access is Access.KIOSK:
            return None
        if origin is not None and origin.lower() not in own:
            return f"a read from another origin ({printable(origin)[:100]}) is not served"
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() not in _OWN_FETCH_SITES:
            return f"a read requested by another site (Sec-Fetch-Site: {printable(site)[:40]}) is not served"
        return None
    if origin is None:
        return ("a change over TCP needs the Origin header of this listener's own page (a cross-site "
                "request forgery guard)")
    if origin.lower() not in own:
        return (f"a change from another origin ({printable(origin)[:100]}) is refused: only this "
                "listener's own page may make one")
    if request.content_type != "application/json":
        return (f"a change over TCP must be sent as application/json, not "
                f"{printable(request.content_type)[:60] or 'no content type'}")
    return None


def _check_host(request: web.Request, caller: Caller) -> None:
    """A TCP request names the listener in its Host header, or it is refused (DNS rebinding: a page
    whose name now resolves to 127.0.0.1 still sends its own name)."""
    host = request.headers.get("Host")
    if host is None:
        raise web.HTTPBadRequest(text=json.dumps({"error": "a Host header is required"}),
                                 content_type="application/json")
    if host.lower() not in request.app[TCP_HOSTS]:
        log.info("local API: %s refused %s %s: Host %s is not this listener", caller.describe(),
                 request.method, printable(request.path)[:200], printable(host)[:200])
        raise web.HTTPMisdirectedRequest(text=json.dumps({"error": "the Host header does not name this "
                                                          "listener"}), content_type="application/json")


def listener_hosts(tcp_host: str, port: int) -> set[str]:
    """The Host values the TCP listener answers: the loopback names with its port, and the configured
    bind address (lower case; an IPv6 address in brackets)."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    if tcp_host not in ("", "0.0.0.0", "::"):
        names.add(f"[{tcp_host}]" if ":" in tcp_host else tcp_host)
    return {f"{name.lower()}:{port}" for name in names}


def _json(data: Any, status: int = 200) -> web.Response:
    # Device text is escaped as printable() does, inside the JSON (the dock screen never sees a control).
    text = json_printable(json.dumps(data, ensure_ascii=False))
    return web.Response(text=text, status=status, content_type="application/json")


# -- handlers -----------------------------------------------------------------------------------------


async def _status(request: web.Request) -> web.Response:
    return _json(request.app[BOARD].snapshot())


async def _bays(request: web.Request) -> web.Response:
    return _json(request.app[BOARD].bays())


async def _fleet(request: web.Request) -> web.Response:
    read = request.app[BOARD].sections.get("fleet")
    if read is None:
        return _json({"error": "this station keeps no fleet view"}, 404)
    fleet = read()
    if fleet is None:
        return _json({"error": "the fleet has not been read yet: ask again in a moment"}, 503)
    return _json(fleet)


async def _events(request: web.Request) -> web.StreamResponse:
    board = request.app[BOARD]
    caller: Caller = request[CALLER]
    streams = request.app[STREAMS]
    peer = (caller.channel, f"uid:{caller.uid}" if caller.uid is not None else f"addr:{caller.address}")
    in_channel = sum(n for (channel, _who), n in streams.items() if channel == caller.channel)
    if in_channel >= STREAMS_PER_CHANNEL:
        return _json({"error": f"{STREAMS_PER_CHANNEL} event streams are open on this channel already"}, 503)
    if streams.get(peer, 0) >= STREAMS_PER_PEER:
        return _json({"error": f"{STREAMS_PER_PEER} event streams are open for this user already"}, 503)
    try:
        subscription = board.subscribe()
    except TooManySubscribers as exc:
        return _json({"error": str(exc)}, 503)
    streams[peer] = streams.get(peer, 0) + 1
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        while True:
            try:
                # Not asyncio.wait_for: on Python 3.11 it can take a cancel (the server stopping) that
                # arrives with an event for the event, and the stream then outlives the server's stop.
                async with asyncio.timeout(SSE_KEEPALIVE_S):
                    kind, data = await subscription.get()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            text = json_printable(json.dumps(data, ensure_ascii=False))
            await response.write(f"event: {kind}\ndata: {text}\n\n".encode())
    finally:
        subscription.close()
        left = streams.get(peer, 1) - 1
        if left > 0:
            streams[peer] = left
        else:
            streams.pop(peer, None)


def _item_id(request: web.Request) -> str:
    item = request.match_info["item"]
    if not ITEM_ID.fullmatch(item):
        raise web.HTTPBadRequest(text=json.dumps({"error": "an item id is a lower-case UUID"}),
                                 content_type="application/json")
    return item


async def _items(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        return _json({"error": "limit must be a whole number"}, 400)
    reader = request.app[READER]
    items = await asyncio.get_running_loop().run_in_executor(None, reader.recent, limit)
    return _json(items)


async def _item(request: web.Request) -> web.Response:
    item = _item_id(request)
    reader = request.app[READER]
    found = await asyncio.get_running_loop().run_in_executor(None, reader.item, item)
    if found is None:
        return _json({"error": f"no item {item} in this store"}, 404)
    log.info("local API: %s read item %s", request[CALLER].describe(), item)
    return _json(found)


def tagger_name(settings: ApiSection, uid: int) -> str:
    """The name a tag made over the socket records: the configured account, else the login name."""
    configured = settings.accounts.get(str(uid))
    if configured:
        return configured
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


async def _tag(request: web.Request) -> web.Response:
    item = _item_id(request)
    caller: Caller = request[CALLER]
    if caller.channel != "unix" or caller.uid is None:
        raise web.HTTPForbidden(text=json.dumps({"error": "tagging is served over the Unix socket only"}),
                                content_type="application/json")
    try:
        changes = await request.json()
    except ValueError:
        return _json({"error": "the body must be a JSON object of case fields"}, 400)
    if not isinstance(changes, dict):
        return _json({"error": "the body must be a JSON object of case fields"}, 400)
    by = tagger_name(request.app[SETTINGS], caller.uid)
    try:
        # The agent's writes all run on the event loop (one connection, no interleaving): so does this.
        entry = tag_item(request.app[STORE], item, changes, by=by)
    except TagError as exc:
        return _json({"error": printable(str(exc))}, 404 if "no sealed item" in str(exc) else 400)
    log.info("local API: %s (%s) tagged item %s: ledger seq %d", caller.describe(), by, item, entry.seq)
    return _json({"item": item, "seq": entry.seq, "by": by, "changes": entry.data["changes"]})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[BOARD].metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


# -- serving ------------------------------------------------------------------------------------------


class LocalApi:
    """The API's listeners; ``start`` binds both, ``stop`` closes them (open event streams included)."""

    def __init__(
        self,
        board: StatusBoard,
        store: StationStore,
        settings: ApiSection,
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.settings = settings
        self.app = build_app(board, store, settings, extensions)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        self.tcp_url: str | None = None
        self.socket_path: Path | None = None

    async def start(self) -> None:
        await self.runner.setup()
        try:
            await self._unix()
            if self.settings.tcp_port is not None:
                site = web.TCPSite(self.runner, self.settings.tcp_host, self.settings.tcp_port)
                await site.start()
                # The port bound (tcp_port 0 picks one): the runner's TCP address, the socket's being a path.
                port = next(a[1] for a in self.runner.addresses if isinstance(a, tuple))
                host = self.settings.tcp_host
                self.app[TCP_HOSTS].update(listener_hosts(host, port))
                host = f"[{host}]" if ":" in host else host
                self.tcp_url = f"http://{host}:{port}"
        except BaseException:
            await self.runner.cleanup()
            raise

    async def _unix(self) -> None:
        path = self.settings.socket_path
        owner = self.app[OWNER_UID]
        group_gid = _group_gid(self.settings.operators_group)
        directory = path.parent
        if not directory.exists():
            # Others must reach the socket to connect: the socket's own mode and the credential check
            # decide who may (as systemd's RuntimeDirectoryMode=0755 in the unit).
            directory.mkdir(parents=True)
            directory.chmod(0o755)
        _remove_stale_socket(path)
        # Made inaccessible until its owner and mode are right: nobody connects in between. (The umask is
        # the process's: this runs at start, before any offload creates files.)
        old = os.umask(0o177)
        try:
            site = web.UnixSite(self.runner, str(path))
            await site.start()
        finally:
            os.umask(old)
        self.socket_path = path
        try:
            os.chown(path, owner if os.geteuid() == 0 else -1, group_gid if group_gid is not None else -1)
        except PermissionError as exc:
            # The agent may give a file only to a group it is in (the unit's SupplementaryGroups=).
            log.warning("local API: the socket stays the agent's alone (%s): make the service user a member "
                        "of the operators group", exc.strerror)
            group_gid = None
        os.chmod(path, 0o660 if group_gid is not None else 0o600)

    async def stop(self) -> None:
        await self.runner.cleanup()
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            self.socket_path = None


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by an agent that did not stop cleanly; refuse to take over one that answers
    (another agent serves it: the store lock is per store, not per socket path)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket: not replaced")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise OSError(f"another process serves {path}: the local API is not started")


def _group_gid(name: str) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        log.warning("local API: operators group %r does not exist: only root and the store owner may "
                    "use the socket", printable(name))
        return None
