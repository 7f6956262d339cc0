"""The dock screen's routes on a real aiohttp server: only the page's own files, with the right types
and a Content-Security-Policy that allows nothing but the page itself; the LED table it serves is the
dock protocol's, complete."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from drivers.serial.dock_protocol import LED_PATTERNS, BayLed
from edge.dockscreen import PAGE_FILES, STATIC, dock_screen_routes, led_patterns_document
from edge.sources.usb.bay_leds import ERROR_CLASS_LEDS, STATE_LEDS


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in dock_screen_routes():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_the_page_files_are_served_with_their_types_and_policy(base_url: str) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(base_url + "/dock", allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/dock/"
        async with client.get(base_url + "/dock/") as response:
            assert response.status == 200 and response.content_type == "text/html"
            assert "<main id=\"bays\"" in await response.text()
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy
            assert "unsafe" not in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        for name, content_type in PAGE_FILES.items():
            async with client.get(f"{base_url}/dock/{name}") as response:
                assert response.status == 200, name
                assert response.content_type == content_type
                assert await response.read() == (STATIC / name).read_bytes()


@pytest.mark.parametrize("path", [
    "/dock/../__init__.py", "/dock/%2e%2e/__init__.py", "/dock/..%2f__init__.py", "/dock/static",
    "/dock/__init__.py", "/dock/index.html.bak", "/dock/MAIN.JS", "/dock/led-patterns.json/x",
])
async def test_nothing_but_the_page_files_is_served(base_url: str, path: str) -> None:
    async with aiohttp.ClientSession() as client, client.get(base_url + path) as response:
        assert response.status == 404, path
        assert "import" not in await response.text()


def test_every_static_file_is_listed_and_every_listed_file_exists() -> None:
    on_disk = {p.name for p in STATIC.iterdir() if p.is_file()}
    assert on_disk == set(PAGE_FILES)


async def test_the_led_table_is_the_dock_protocols(base_url: str) -> None:
    url = base_url + "/dock/led-patterns.json"
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        served = await response.json()
    assert served == led_patterns_document()
    assert [entry["led"] for entry in served["leds"]] != []
    assert {entry["led"] for entry in served["leds"]} == {led.value for led in BayLed}
    for entry in served["leds"]:
        pattern = LED_PATTERNS[BayLed(entry["led"])]
        assert entry["colour"] == pattern.colour.value and entry["rhythm_ms"] == list(pattern.rhythm_ms)
    assert served["error_class_leds"] == {k: v.value for k, v in ERROR_CLASS_LEDS.items()}
    assert served["state_leds"] == {k: v.value for k, v in STATE_LEDS.items()}
