"""The room page: the operator's page of an interview or hearing room PC (询问室/听证室), served by the
station's local API at ``/rooms/`` (``room_page_routes``, registered with the room routes by
:func:`edge.observe.room_api.room_routes`).

The page is plain ES modules and CSS in ``static/`` (no build step, no framework, nothing fetched from
elsewhere). Its files hold no data, so they are served at the kiosk level like the dock screen's; the
data comes from ``GET /api/v1/rooms``, read every 2 s, and the page starts, marks and stops sessions with
``POST /api/v1/rooms/ROOM/start|mark|stop`` (JSON; the browser adds the page's Origin, which the API's
CSRF guard checks). Those routes answer over TCP only with ``[api] room_page_over_tcp`` and only to an
operator (root, the store's owner, ``operators_group``): otherwise the page shows the API's refusal.

Why polling and not the status board's event stream: the board (and so ``/api/v1/events``) is the
kiosk's unauthenticated channel and carries only whether a room records, never its case; an operator
event stream would need a second, authorised stream of case data for 2 s of latency gained. The page
counts the elapsed time on by the second between reads.

Words (Chinese by default, English by a switch) live in ``static/i18n.js``; text from the station, the
configuration or an operator is set with ``textContent`` only. A Content-Security-Policy allows only the
page's own files and the API of its own origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files

from aiohttp import web

STATIC = files(__package__) / "static"
# The files of the page and how they are served; nothing else under /rooms/ exists.
PAGE_FILES = {
    "index.html": "text/html",
    "rooms.css": "text/css",
    "main.js": "text/javascript",
    "i18n.js": "text/javascript",
    "model.js": "text/javascript",
}
# Only what the page itself loads: its own files and the local API, nothing inline, no frames; forms
# are sent by the page's script (fetch), never by the browser's form submission.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/rooms/")


async def _page_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name") or "index.html"
    content_type = PAGE_FILES.get(name)
    if content_type is None:  # only the page's own files: no path from a request reaches the disk
        raise web.HTTPNotFound()
    body = (STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=SECURITY_HEADERS)


def room_page_routes() -> list[tuple[str, Handler]]:
    """The GET routes of the room page, in the order to register them. All are read-only and serve
    nothing but the page's own files."""
    return [
        ("/rooms", _redirect),
        ("/rooms/", _page_file),
        ("/rooms/{name}", _page_file),
    ]
