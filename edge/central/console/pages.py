"""The console's page: one HTML file, plain ES modules and CSS from this package, no build step.

``GET /console/`` serves ``static/index.html``; ``GET /console/static/{name}`` the modules and the style
sheet, by name from a fixed list (never a path from the request). Every response under ``/console/`` gets
a Content-Security-Policy without inline scripts or styles (scripts, styles, media and requests from this
origin only; no frames, objects or base URL), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer`` and ``X-Frame-Options: DENY``. The page shows device text with ``textContent`` only, so a
file name or officer name cannot become markup. Chinese by default, with an English switch
(``static/i18n.js``; the choice is kept in ``localStorage``).

The page and its files hold no evidence and no secrets, so they are served without a session: the page
is where one signs in.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "PUBLIC_CONSOLE_ROUTES",
    "STATIC_FILES",
    "add_console_pages",
    "console_headers",
]

# The console's routes that answer a caller with neither a certificate nor a session, on the console's
# own listener only ([console] listen; the main port wants a certificate for them too): the page, its
# files (no data in either) and signing in. Every other console route refuses such a caller (401).
PUBLIC_CONSOLE_ROUTES = frozenset({
    "/console", "/console/", "/console/static/{name}", "/console/api/sign-in",
    "/console/api/sign-in/certificate",
})

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
STATIC_FILES = {
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "i18n.js": "text/javascript",
    "views.js": "text/javascript",
    "style.css": "text/css",
}
_PAGE = "index.html"


def _read(name: str) -> bytes:
    return resources.files("edge.central.console").joinpath("static", name).read_bytes()


def console_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers of every response under /console/ (an on_response_prepare hook)."""
    if request.path == "/console" or request.path.startswith("/console/"):
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Cache-Control", "no-store")


async def _page(request: web.Request) -> web.Response:
    return web.Response(body=_read(_PAGE), content_type="text/html", charset="utf-8")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.Response(body=_read(name), content_type=content_type, charset="utf-8")


async def _to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console/")


def add_console_pages(app: web.Application) -> None:
    app.router.add_get("/console", _to_page)
    app.router.add_get("/console/", _page)
    app.router.add_get("/console/static/{name}", _static)

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        console_headers(request, response)

    app.on_response_prepare.append(hook)
