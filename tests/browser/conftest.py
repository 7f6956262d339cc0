"""Browser tests: real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright's sync API.

Fixtures every browser test uses (the contract of issue 8, shared with the auditor console's tests):

    def test_something(page: Page, live_server: LiveServer) -> None:
        url = live_server.serve(app)               # a real aiohttp server on 127.0.0.1, its base URL
        page.goto(url + "/dock")
        screenshot(page, "dock-idle")            # tests/artifacts/screenshots/dock-idle.png

`page` is a fresh browser for each test: its own Chromium process with a fresh user-data-dir under the
test's tmp_path (no cookies, localStorage or cache from another test), headless, 1280x800 unless the test
resizes it. Playwright's own browser downloads are never used: the Python wheel carries the driver and
launches the system's Chromium (`make setup` installs it with apt). Without Chromium the tests skip on a
developer's machine and fail under CI (tests/prerequisites.py).

The sync API runs its own event loop in the test's thread, so an aiohttp app under test runs in
`live_server`'s background thread with its loop (`live_server.run(coro)` runs a coroutine there).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

import pytest
from aiohttp import web
from playwright.sync_api import Page, ViewportSize, sync_playwright

from tests.prerequisites import require

# The browser the tests drive; EDGE_TEST_CHROMIUM overrides it (tests/browser/test_rig.py points it at a
# missing file to prove that a missing browser fails under CI).
CHROMIUM = Path(os.environ.get("EDGE_TEST_CHROMIUM", "/usr/bin/chromium"))
# Headless, no sandbox (the tests run as root), and nothing that reaches the network on its own.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DEFAULT_VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
_SCREENSHOT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,80}")

SHUTDOWN_TIMEOUT_S = 2.0

T = TypeVar("T")


def chromium_available() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """A page in a fresh headless Chromium (own process, own user-data-dir), closed after the test."""
    require(chromium_available(), f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    profile = tmp_path / "chromium-profile"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=DEFAULT_VIEWPORT,
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def screenshot(page: Page, name: str) -> Path:
    """Save the page as tests/artifacts/screenshots/NAME.png (kept as a test artefact; git-ignored)."""
    if not _SCREENSHOT_NAME.fullmatch(name):
        raise ValueError(f"screenshot name {name!r}: lower-case letters, digits, '.', '_' and '-' only")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


class LiveServer:
    """An asyncio loop in a background thread that serves aiohttp apps on 127.0.0.1 (real TCP)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-server", daemon=True)
        self._runners: list[web.AppRunner] = []
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        """Run a coroutine on the server's loop and return its result."""

        async def wrapped() -> T:
            return await coro

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
        return future.result(timeout)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run a plain function on the server's loop (for state that the loop's tasks share)."""
        self._loop.call_soon_threadsafe(callback)

    def serve(self, app: web.Application) -> str:
        """Start `app` on a free loopback port; return its base URL (no trailing slash)."""

        async def start() -> str:
            # Open event streams end at shutdown: a browser still connected does not hold it up.
            runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            host, port = runner.addresses[0][:2]
            return f"http://{host}:{port}"

        return self.run(start())

    def close(self) -> None:
        async def stop() -> None:
            for runner in reversed(self._runners):
                await runner.cleanup()

        try:
            self.run(stop(), timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()


@pytest.fixture
def live_server() -> Iterator[LiveServer]:
    server = LiveServer()
    try:
        yield server
    finally:
        server.close()
