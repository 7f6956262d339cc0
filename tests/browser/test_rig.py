"""The browser rig itself: real Chromium loads a page from a real aiohttp server on loopback, runs its ES
modules, talks back to the server, and leaves a screenshot; a missing Chromium skips locally and fails
under CI."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

from aiohttp import web
from playwright.sync_api import Page, expect

from tests.browser.conftest import CHROMIUM, SCREENSHOTS, LiveServer, screenshot

ROOT = Path(__file__).resolve().parents[2]

INDEX = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>rig</title></head>
<body><p id="greeting">static text</p><script type="module" src="/static/main.js"></script></body></html>"""
# Two modules, so that a relative ES module import is resolved and served too.
MAIN_JS = """import { shout } from "./shout.js";
const answer = await (await fetch("/api/echo?word=" + encodeURIComponent("dock"))).json();
document.getElementById("greeting").textContent = shout(answer.word);
"""
SHOUT_JS = "export function shout(word) { return word.toUpperCase() + '!'; }\n"


def _app(requests_seen: list[str]) -> web.Application:
    async def index(_: web.Request) -> web.Response:
        return web.Response(text=INDEX, content_type="text/html")

    async def module(request: web.Request) -> web.Response:
        body = {"main.js": MAIN_JS, "shout.js": SHOUT_JS}[request.match_info["name"]]
        return web.Response(text=body, content_type="text/javascript")

    async def echo(request: web.Request) -> web.Response:
        requests_seen.append(request.path_qs)
        return web.json_response({"word": request.query["word"]})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/static/{name:(main|shout)\\.js}", module)
    app.router.add_get("/api/echo", echo)
    return app


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_chromium_runs_es_modules_from_a_live_server(page: Page, live_server: LiveServer) -> None:
    requests_seen: list[str] = []
    base = live_server.serve(_app(requests_seen))
    assert base.startswith("http://127.0.0.1:")

    page.goto(base + "/")
    # The text only the modules can write: proves both were served, resolved and run, and that the
    # fetch reached the server and came back.
    expect(page.locator("#greeting")).to_have_text("DOCK!")
    assert requests_seen == ["/api/echo?word=dock"]

    path = screenshot(page, "rig-live-server")
    assert path == SCREENSHOTS / "rig-live-server.png"
    assert _png_size(path)[0] == 1280


def test_each_page_starts_with_empty_storage(page: Page, live_server: LiveServer) -> None:
    # Together with the test above (run in any order): nothing written here survives into another test.
    base = live_server.serve(_app([]))
    page.goto(base + "/")
    assert page.evaluate("localStorage.getItem('rig-marker')") is None
    page.evaluate("localStorage.setItem('rig-marker', 'set')")
    page.reload()
    assert page.evaluate("localStorage.getItem('rig-marker')") == "set"


def test_screenshot_names_cannot_leave_the_artefact_folder(page: Page) -> None:
    for bad in ("../escape", "a/b", "", "UPPER", "x" * 90):
        try:
            screenshot(page, bad)
        except ValueError as refused:
            assert repr(bad) in str(refused)
        else:
            raise AssertionError(f"screenshot name {bad!r} was accepted")


PAGE_USER = """
def test_uses_the_browser(page):
    page.goto("about:blank")
"""


def _run_user_project(tmp_path: Path, ci: str | None, chromium: Path) -> str:
    """Run a one-test project in tmp_path that uses this rig's `page` fixture with the given Chromium;
    return pytest's report."""
    (tmp_path / "conftest.py").write_text("from tests.browser.conftest import page\n", encoding="utf-8")
    (tmp_path / "test_user.py").write_text(PAGE_USER, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(ROOT)
    env["EDGE_TEST_CHROMIUM"] = str(chromium)
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio", "-v", "-rs",
         "test_user.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    return done.stdout


def test_a_missing_chromium_skips_locally_and_fails_under_ci(tmp_path: Path) -> None:
    missing = tmp_path / "no-chromium-here"
    local = _run_user_project(tmp_path, None, missing)
    assert "test_user.py::test_uses_the_browser SKIPPED" in local, local[-2000:]
    assert "no-chromium-here" in local
    ci = _run_user_project(tmp_path, "true", missing)
    assert "test_user.py::test_uses_the_browser ERROR" in ci, ci[-2000:]
    assert "missing prerequisite" in ci
    # The control: the same project under CI with the real Chromium passes.
    present = _run_user_project(tmp_path, "true", CHROMIUM)
    assert "test_user.py::test_uses_the_browser PASSED" in present, present[-2000:]
