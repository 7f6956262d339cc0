"""The console's page and the central's routes as a whole: every route refuses a caller who is neither
signed in nor holding a certificate (except the few that must answer one, each named with its reason),
and the page is served with a Content-Security-Policy and no inline script or markup sinks."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central.console.pages import CONTENT_SECURITY_POLICY, STATIC_FILES
from tests.central.conftest import (
    FakeStation,
    HttpCentral,
    register_over_http,
    start_http_central,
    tls_session,
)

STATIC = Path(__file__).resolve().parents[2] / "edge" / "central" / "console" / "static"

# Routes that answer without a certificate or a session, and why; nothing else may.
PUBLIC = {
    ("GET", "/healthz"): "load balancers probe it without a certificate",
    ("GET", "/readyz"): "load balancers probe it without a certificate",
    ("GET", "/console"): "redirects to the page",
    ("GET", "/console/"): "the sign-in page itself: no data",
    ("GET", "/console/static/{name}"): "the page's modules and style sheet: no data",
}
# Public by necessity, but never with anything in them without credentials (checked: a 4xx).
SIGN_IN = {("POST", "/console/api/sign-in"), ("POST", "/console/api/sign-in/certificate")}


@pytest.fixture
async def central(tmp_path: Path) -> AsyncIterator[HttpCentral]:
    running = await start_http_central(tmp_path, dev=False)
    yield running
    await running.running.stop()


def _fill(path: str, item: str, station: str) -> str:
    values = {"item": item, "station": station, "name": "app.js", "upload_id": "0" * 32}
    return re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: values.get(m.group(1), "x"), path)


async def test_every_route_refuses_a_caller_without_certificate_or_session(
    central: HttpCentral, station: FakeStation
) -> None:
    bundle = central.enroll_tls(station)
    acquired = station.acquire(b"clip" * 100)
    async with tls_session(bundle) as session:
        status, doc = await register_over_http(session, central.url, station, acquired)
        assert status == 201, doc
    routes = sorted({(route.method, route.resource.canonical) for route in central.running.app.router.routes()
                     if route.resource is not None and route.method != "*"})
    assert any(path.startswith("/console/api/") for _, path in routes)
    context = ssl.create_default_context(cafile=str(central.config.layout.ca_cert))
    checked = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as anonymous:
        # The main (station-facing) port: only the health routes answer; the console needs a certificate
        # there like everything else. The console's own listener: the console's public routes answer,
        # everything else of the console refuses, and nothing but the console is served at all (404).
        for base, console_listener in ((central.url, False), (central.console_url, True)):
            for method, path in routes:
                url = base + _fill(path, acquired.item, station.station_id)
                headers = {"X-Edge-Console": "1", "Tus-Resumable": "1.0.0"}
                body_doc: dict[str, Any] | None = {} if method in ("POST", "PATCH", "PUT") else None
                async with anonymous.request(method, url, headers=headers, allow_redirects=False,
                                             json=body_doc) as response:
                    body = await response.read()
                is_console = path == "/console" or path.startswith("/console/")
                public = (method, path) in PUBLIC or (method == "HEAD" and ("GET", path) in PUBLIC)
                if console_listener and not is_console:
                    assert response.status == 404, (base, method, path, response.status)
                elif public and (console_listener or not is_console):
                    assert response.status in (200, 302, 404, 503), (method, path, response.status)
                    continue
                elif (method, path) in SIGN_IN and console_listener:
                    assert 400 <= response.status < 500, (method, path, response.status)
                    continue
                elif not console_listener and is_console:
                    assert response.status == 401, (method, path, response.status, body[:200])
                else:
                    assert response.status in (401, 403), (method, path, response.status, body[:200])
                assert acquired.item.encode() not in body and acquired.content[:16] not in body
                checked += 1
    assert checked >= 40


async def test_a_certificate_alone_does_not_open_the_console_api(
    central: HttpCentral, station: FakeStation
) -> None:
    reader = central.enroll_reader_tls("court-expert")
    async with tls_session(reader) as session:
        # The read side takes the certificate (programs) ...
        async with session.get(f"{central.url}/v1/items") as response:
            assert response.status == 200
        # ... the console's API wants a session, made by signing in with it (and then a CSRF token).
        async with session.get(f"{central.url}/console/api/items") as response:
            assert response.status == 401


async def test_the_page_has_a_strict_policy_and_no_inline_script(central: HttpCentral) -> None:
    context = ssl.create_default_context(cafile=str(central.config.layout.ca_cert))
    console = central.console_url
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as browser:
        async with browser.get(f"{console}/console/") as response:
            assert response.status == 200 and response.content_type == "text/html"
            html = await response.text()
            assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Frame-Options"] == "DENY"
        for name, content_type in STATIC_FILES.items():
            async with browser.get(f"{console}/console/static/{name}") as response:
                assert response.status == 200 and response.content_type == content_type
        for bad in ("index.html", "..%2F..%2Fconsole%2Fapi.py", "app.js%00", "nope.js"):
            async with browser.get(f"{console}/console/static/{bad}") as response:
                assert response.status == 404, bad
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.S)
    assert scripts and all(body.strip() == "" for body in scripts)  # modules by src only
    assert not re.search(r"\son[a-z]+\s*=", html) and " style=" not in html


def test_the_modules_put_text_in_with_textcontent_only() -> None:
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function")
    for name in STATIC_FILES:
        if name.endswith(".js"):
            text = (STATIC / name).read_text(encoding="utf-8")
            assert not sinks.search(text), name
    assert "textContent" in (STATIC / "views.js").read_text(encoding="utf-8")  # control: the sink in use
