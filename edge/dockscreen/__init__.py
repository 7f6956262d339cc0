"""The dock screen: a page for the kiosk display beside the bays, served by the station's local API on
loopback TCP at ``/dock/`` (``dock_screen_routes``).

The page is plain ES modules and CSS in ``static/`` (no build step, no framework, nothing fetched from
elsewhere). It reads the status model of the local API (``/api/v1/status``, then the live stream
``/api/v1/events``) and ``/dock/led-patterns.json``, which is made here from the dock protocol's own LED
table and the station's mapping from bay states and error classes to LED states, so the legend on the
screen always matches what the bay board shows. While the station runs the GB/T 28181 platform, a panel
below the bays lists its devices (the status's ``gb28181`` part: online state and keepalive age, address,
clock offset, channels, downloads); that part has no event of its own, so the page reads the status again
every few seconds while it is there, and shows no panel when it is not. The fleet panel (every recorder
the station knows, overdue and faulty ones first: ``/api/v1/fleet``, edge.equipment.fleet) is read every
few seconds. Words (Chinese by default, English by a switch) live in ``static/i18n.js``; device text is
shown with ``textContent`` only. On a station with the check-out desk (``[equipment] enabled``),
``static/checkout.js`` adds the check-out page (领用: 警号 + PIN on a pad, over the bays) and shows the
desk's card outcomes at the foot of the screen (``/api/v1/checkout``, edge.observe.desk_api).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any

from aiohttp import web

from drivers.serial.dock_protocol import LED_PATTERNS, BayLed
from edge.sources.usb.bay_leds import ERROR_CLASS_LEDS, STATE_LEDS

STATIC = files(__package__) / "static"
# The files of the page and how they are served; nothing else under /dock/ exists.
PAGE_FILES = {
    "index.html": "text/html",
    "dock.css": "text/css",
    "main.js": "text/javascript",
    "i18n.js": "text/javascript",
    "format.js": "text/javascript",
    "led.js": "text/javascript",
    "checkout.js": "text/javascript",
    "checkout.css": "text/css",
}
# Names of the rhythms for the legend's words (static/i18n.js has them in each language).
RHYTHM_NAMES: dict[tuple[int, ...], str] = {
    (): "steady",
    (500, 500): "slow",
    (125, 125): "fast",
    (150, 150, 150, 1050): "double",
    (250, 1750): "heartbeat",
    (150, 150, 150, 150, 150, 1050): "triple",
}
# Only what the page itself loads: its own files and the local API, nothing inline, no frames.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The legend's order: calm first, then what needs the officer, red last.
LEGEND_ORDER = [
    BayLed.IDLE, BayLed.COPYING, BayLed.DONE, BayLed.RECEIPT, BayLed.ATTENTION, BayLed.FULL,
    BayLed.PARTIAL, BayLed.BOUNCING, BayLed.PULLED, BayLed.DENIED, BayLed.PASSWORD, BayLed.ERROR, BayLed.OFF,
]


def led_patterns_document() -> dict[str, Any]:
    """What /dock/led-patterns.json serves: every LED state's colour and rhythm, and which state a bay
    shows for its state and error class."""
    return {
        "leds": [
            {
                "led": led.value,
                "colour": LED_PATTERNS[led].colour.value,
                "rhythm_ms": list(LED_PATTERNS[led].rhythm_ms),
                "rhythm": RHYTHM_NAMES[LED_PATTERNS[led].rhythm_ms],
            }
            for led in LEGEND_ORDER
        ],
        "state_leds": {state: led.value for state, led in STATE_LEDS.items()},
        "error_class_leds": {error_class: led.value for error_class, led in ERROR_CLASS_LEDS.items()},
        # What a bouncing bay that showed nothing of a docking shows (edge/station.py).
        "bouncing_led": BayLed.BOUNCING.value,
    }


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dock/")


async def _page_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name") or "index.html"
    content_type = PAGE_FILES.get(name)
    if content_type is None:  # only the page's own files: no path from a request reaches the disk
        raise web.HTTPNotFound()
    body = (STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=SECURITY_HEADERS)


async def _patterns(request: web.Request) -> web.StreamResponse:
    return web.json_response(led_patterns_document(), headers=SECURITY_HEADERS)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dock_screen_routes() -> list[tuple[str, Handler]]:
    """The GET routes of the dock screen, in the order to register them (the JSON before the file
    pattern). The local API registers each with its kiosk access level; all are read-only and serve
    nothing but the page's own files and the LED table."""
    return [
        ("/dock", _redirect),
        ("/dock/", _page_file),
        ("/dock/led-patterns.json", _patterns),
        ("/dock/{name}", _page_file),
    ]
