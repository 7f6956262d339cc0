"""The local API's check-out desk routes (edge.equipment.station_desk), registered by the composition root
with ``LocalApi(..., extensions=[desk_routes(...)])`` on a station with ``[equipment] enabled``:

  POST /api/v1/checkout             {"officer_no": "110001", "pin": "1234"}: check-out by 警号 + PIN. 200 with
                                    the outcome when a recorder was issued, 403 with the outcome when the desk
                                    refused (its reason and screen text), 429 past the rate limit (with
                                    Retry-After), 400 for a body that is not that object.
  GET  /api/v1/checkout/outcomes    {"pin_checkout": bool, "outcomes": [...]}: whether this listener takes a
                                    PIN check-out, and the latest desk outcomes, newest first, card and PIN
                                    alike (the dock screen shows the newest it has not shown).

The POST is Access.DESK: on the Unix socket the operators' (like every operator route); over the loopback
TCP listener the dock screen's, from a loopback peer only (a PIN never crosses the network in clear, even
where ``[api] allow_non_loopback`` serves the screen to another host), when ``[equipment] screen_checkout``
(default on), with the API's CSRF guard (this listener's own Origin and a JSON body: edge.observe.api).
There the officer's 警号 and PIN are the authority, as at the desk: the PIN lockout per 警号 and the rate
limit over all 警号 are what stop guessing. The outcomes are kiosk-level, like the bay tiles: an issued
recorder's bay, 警号 and name; a refusal's reason and screen text, never the card or the 警号 typed.

The PIN is never logged, echoed or kept; the 警号 is logged only when it is six digits (anything else typed
could be a PIN in the wrong field).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from edge.custody.text import json_printable
from edge.equipment.station_desk import RATE_LIMITED, PinRateLimited, StationDesk
from edge.observe.api import CALLER, DESK_OVER_TCP, Access, add_route, loopback_peer

__all__ = ["desk_routes"]

log = logging.getLogger(__name__)

DESK = web.AppKey("desk", StationDesk)
MAX_OFFICER_NO_CHARS = 32
MAX_PIN_CHARS = 64
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def desk_routes(desk: StationDesk, *, over_tcp: bool) -> Callable[[web.Application], None]:
    def extend(app: web.Application) -> None:
        app[DESK] = desk
        app[DESK_OVER_TCP] = over_tcp
        add_route(app, "POST", "/api/v1/checkout", _check_out, Access.DESK)
        add_route(app, "GET", "/api/v1/checkout/outcomes", _outcomes, Access.KIOSK)

    return extend


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    text = json_printable(json.dumps(data, ensure_ascii=False))
    return web.Response(text=text, status=status, content_type="application/json",
                        headers={**API_HEADERS, **(headers or {})})


def _bad(reason: str) -> web.Response:
    return _json({"error": reason}, 400)


async def _check_out(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return _bad("the body must be a JSON object {officer_no, pin}")
    if not isinstance(body, dict) or set(body) != {"officer_no", "pin"}:
        return _bad("the body must be a JSON object with officer_no and pin, nothing else")
    officer_no, pin = body["officer_no"], body["pin"]
    if not isinstance(officer_no, str) or not 0 < len(officer_no) <= MAX_OFFICER_NO_CHARS:
        return _bad(f"officer_no must be text of 1..{MAX_OFFICER_NO_CHARS} characters")
    if not isinstance(pin, str) or not 0 < len(pin) <= MAX_PIN_CHARS:
        return _bad(f"pin must be text of 1..{MAX_PIN_CHARS} characters")
    caller = request[CALLER].describe()
    well_formed = officer_no.isascii() and officer_no.isdigit() and len(officer_no) == 6
    shown = officer_no if well_formed else "(malformed)"
    desk = request.app[DESK]
    try:
        outcome = await desk.check_out_by_pin(officer_no, pin)
    except PinRateLimited as limited:
        log.info("local API: %s check-out by PIN refused: rate limited", caller)
        retry = str(max(1, math.ceil(limited.retry_after_s)))
        return _json({"outcome": "refused", "reason": RATE_LIMITED, "screen_text": limited.screen_text}, 429,
                     {"Retry-After": retry})
    now = outcome.as_json(outcome.monotonic_s)
    log.info("local API: %s check-out by PIN for 警号 %s: %s%s", caller, shown, now["outcome"],
             f" ({outcome.reason})" if outcome.reason else f" (bay {now.get('bay')})")
    return _json(now, 200 if outcome.assignment is not None else 403)


async def _outcomes(request: web.Request) -> web.Response:
    # Whether this caller's listener takes a PIN check-out: the dock screen shows its page only then.
    caller = request[CALLER]
    pin_checkout = caller.channel == "unix" or (request.app[DESK_OVER_TCP] and loopback_peer(caller.address))
    return _json({"pin_checkout": pin_checkout, "outcomes": request.app[DESK].outcomes()})
