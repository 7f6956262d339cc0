"""Signing in to the console: password (and TOTP) accounts, or a reader certificate; signing out.

Refusals say the same thing whatever was wrong (unknown name, wrong password, wrong or reused code,
disabled or locked account), and an unknown name costs the same argon2 work as a known one, so a caller
learns nothing about which accounts exist. Attempts are limited twice over:

* per client address, at most ``[console] sign_in_per_minute`` attempts in any minute (429 with
  ``Retry-After`` beyond it, before any password is checked);
* per account, ``lockout_after`` failures in a row **with the right password** (a wrong or missing TOTP
  code) lock it for ``lockout_min`` minutes, during which even the right password and code are refused;
  an administrator's ``account reset-password`` unlocks it at once. A wrong password is recorded but
  does not count: an outsider who lacks the password cannot keep an account locked, and guessing
  passwords is bounded by the per-address limit and by the global cap below; the second factor is what
  a guessed password still lacks, so TOTP is required (see below);
* for everyone together, at most ``[console] password_checks_at_once`` password checks at once; an
  attempt beyond is refused with 503 and ``Retry-After`` before any work (the per-address limit alone
  does not hold behind a proxy or against many IPv6 addresses, and each check takes 64 MiB).

A password account without TOTP is refused unless ``[console] allow_password_only = true`` (warned about
at start): a password alone is too weak for evidence.

Every attempt on an existing account is an ``account_events`` row (signed in, failed, locked, refused
while locked) with the client address. Sign-in requests are same-origin only: they must carry the
``X-Edge-Console`` header (a cross-site form cannot set it without a CORS preflight, which the central
never grants) and, when the browser sends ``Origin``, it must be the central's own.

Password checks (argon2id, 64 MiB each) run in worker threads, within the global cap above, so the
event loop keeps serving uploads while they run and a burst of attempts cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from edge.central.app import CENTRAL, json_response, read_json_body
from edge.central.auth import peer_certificate
from edge.central.console.credentials import MAX_PASSWORD_CHARS, totp_step, verify_password
from edge.central.console.enrolments import missing_totp_refusal, open_enrolled_totp
from edge.central.console.scope import live_session, scope_of
from edge.central.console.secret_key import ConsoleKeyError, ConsoleSecretKey, SealedSecretError
from edge.central.console.sessions import COOKIE_NAME, CSRF_HEADER, AuthMethod, ConsoleSession
from edge.central.console.state import CONSOLE
from edge.central.index import CentralIndexError, validate_reader_name
from edge.central.registration import RejectCode, Rejection
from edge.custody.text import printable

__all__ = ["CONSOLE_HEADER", "add_sign_in_routes", "require_same_origin"]

log = logging.getLogger(__name__)

CONSOLE_HEADER = "X-Edge-Console"
_REFUSED = "the name, password or code is wrong, or the account is disabled or locked after repeated failures"
# How long a caller refused for lack of a free password check is told to wait.
_CHECKS_RETRY_AFTER_S = 2


def require_same_origin(request: web.Request) -> None:
    """Refuse a request another site's page could have made: the console's header is missing, or the
    browser's ``Origin`` is not this central."""
    if request.headers.get(CONSOLE_HEADER) != "1":
        raise Rejection(RejectCode.CSRF_REFUSED, f"console requests carry the {CONSOLE_HEADER}: 1 header")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise Rejection(
            RejectCode.CSRF_REFUSED,
            f"a console request from another origin ({printable(origin[:100])}) is refused",
        )


def _session_answer(request: web.Request, session: ConsoleSession) -> dict[str, Any]:
    scope = scope_of(request.app[CENTRAL], session.reader)
    return {
        "reader": session.reader,
        "role": str(scope.role),
        "units": sorted(scope.units),
        "method": str(session.method),
        "csrf": session.csrf_token,
    }


async def _signed_in(request: web.Request, token: str, session: ConsoleSession) -> web.Response:
    response = json_response(await request.app[CENTRAL].read(_session_answer, request, session))
    store = request.app[CONSOLE].sessions
    response.set_cookie(
        COOKIE_NAME,
        token,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
        max_age=int(store.absolute_s),
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _text_field(doc: dict[str, Any], name: str, limit: int, *, required: bool = True) -> str:
    value = doc.get(name, "" if not required else None)
    if not isinstance(value, str) or len(value) > limit or (required and not value):
        raise Rejection(RejectCode.BAD_REQUEST, f"{name} must be a string of 1-{limit} characters")
    return value


async def sign_in(request: web.Request) -> web.Response:
    require_same_origin(request)
    state = request.app[CONSOLE]
    wait = state.guard.admit(request.remote)
    if wait is not None:
        log.warning(
            "console sign-in from %s refused: more than %d attempts in a minute",
            request.remote,
            state.guard.per_minute,
        )
        # 429 with Retry-After, answered here: the error middleware adds Retry-After to 503s only.
        return json_response(
            {"error": str(RejectCode.RATE_LIMITED),
             "detail": f"too many sign-in attempts from this address; try again in {int(wait) + 1} s"},
            status=429,
            headers={"Retry-After": str(int(wait) + 1)},
        )
    parts = request.app[CENTRAL]
    doc = await read_json_body(request, stall_timeout_s=10.0)
    if not isinstance(doc, dict) or set(doc) - {"name", "password", "totp"}:
        raise Rejection(RejectCode.BAD_REQUEST, 'expected {"name", "password", "totp"?}')
    name = _text_field(doc, "name", 64)
    password = _text_field(doc, "password", MAX_PASSWORD_CHARS)
    code = _text_field(doc, "totp", 16, required=False)
    try:
        account = await parts.read(parts.console.account, validate_reader_name(name))
    except CentralIndexError:
        account = None
    settings = state.settings
    if state.password_checks >= settings.password_checks_at_once:
        log.warning("console sign-in from %s refused: %d password checks already running", request.remote,
                    state.password_checks)
        return json_response(
            {"error": str(RejectCode.SERVER_BUSY),
             "detail": f"too many sign-ins at once; try again in {_CHECKS_RETRY_AFTER_S} s"},
            status=503,
            headers={"Retry-After": str(_CHECKS_RETRY_AFTER_S)},
        )
    state.password_checks += 1
    try:
        password_right, rehash = await asyncio.to_thread(
            verify_password, account.password_hash if account else None, password
        )
    finally:
        state.password_checks -= 1
    if account is None:
        # The name typed is not logged: people type their password into the name field by mistake.
        log.warning("console sign-in refused from %s: no such account", request.remote)
        raise Rejection(RejectCode.UNAUTHENTICATED, _REFUSED)
    step = None
    good = password_right
    if good and account.totp_secret is not None:
        secret, refusal = _open_totp_secret(state.secret_key, account.name, account.totp_secret,
                                            request.remote)
        if refusal is not None:
            # Recorded beside the failed sign-in: a secret put back from a backup is tampering to look at.
            await parts.write(parts.console.record_totp_refused, account.name, remote=request.remote,
                              detail=refusal)
        if secret is None:
            # Not the caller's fault: recorded, but it does not count towards a lockout.
            password_right = False
            good = False
        else:
            step = totp_step(secret, code)
            good = step is not None
    elif good and (stripped := missing_totp_refusal(parts.config.layout.console_key, account.name)):
        # The record, outside index.db, says the account has TOTP: its secret was dropped (index.db put
        # back from before the enrolment, or emptied), never removed. Recorded like a refused secret.
        log.error("console sign-in of %s refused from %s: %s", account.name, request.remote, stripped)
        await parts.write(parts.console.record_totp_refused, account.name, remote=request.remote,
                          detail=stripped)
        password_right = False
        good = False
    elif good and not settings.allow_password_only:
        log.warning("console sign-in of %s refused from %s: the account has no TOTP and password-only "
                    "sign-in is off", account.name, request.remote)
        good = False
    now = state.utc_now()
    accepted = await parts.write(
        parts.console.record_sign_in,
        account.name,
        ok=good and account.active,
        remote=request.remote,
        now=_utc(now),
        lock_after=settings.lockout_after,
        lock_until=_utc(now + timedelta(minutes=settings.lockout_min)),
        totp_step=step,
        counts=password_right,
    )
    if not accepted:
        log.warning("console sign-in of %s refused from %s", account.name, request.remote)
        raise Rejection(RejectCode.UNAUTHENTICATED, _REFUSED)
    if rehash is not None:
        await parts.write(parts.console.set_password, account.name, rehash, by="argon2-rehash")
    await parts.read(scope_of, parts, account.name)  # 403 without a role: there is nothing to sign in to
    method = AuthMethod.PASSWORD_TOTP if step is not None else AuthMethod.PASSWORD
    token, session = await parts.write(state.sessions.create, account.name, method)
    log.info("console: %s signed in (%s) from %s", account.name, method, request.remote)
    return await _signed_in(request, token, session)


async def sign_in_certificate(request: web.Request) -> web.Response:
    """A reader certificate on this TLS connection opens a console session (with its CSRF token)."""
    require_same_origin(request)
    parts = request.app[CENTRAL]
    if parts.config.server.insecure_plain_http:
        raise Rejection(
            RejectCode.UNAUTHENTICATED, "development mode has no certificates; sign in with an account"
        )
    name = await parts.read(parts.auth.reader, request)
    cert = peer_certificate(request)
    assert cert is not None  # auth.reader refused otherwise
    await parts.read(scope_of, parts, name)
    token, session = await parts.write(request.app[CONSOLE].sessions.create, name, AuthMethod.CERTIFICATE,
                                       cert_sha256=cert.sha256)
    log.info("console: %s signed in with its certificate from %s", name, request.remote)
    return await _signed_in(request, token, session)


async def current_session(request: web.Request) -> web.Response:
    parts = request.app[CENTRAL]
    session = await live_session(request)
    if session is None:
        raise Rejection(RejectCode.UNAUTHENTICATED, "not signed in")
    response = json_response(await parts.read(_session_answer, request, session))
    response.headers["Cache-Control"] = "no-store"
    return response


async def sign_out(request: web.Request) -> web.Response:
    parts = request.app[CENTRAL]
    session = await live_session(request)
    if session is None:
        raise Rejection(RejectCode.UNAUTHENTICATED, "not signed in")
    require_same_origin(request)
    if not session.csrf_ok(request.headers.get(CSRF_HEADER)):
        raise Rejection(
            RejectCode.CSRF_REFUSED, f"a state-changing request needs the session's {CSRF_HEADER}"
        )
    await parts.write(request.app[CONSOLE].sessions.end, request.cookies.get(COOKIE_NAME))
    response = json_response({"signed_out": True})
    response.del_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="Strict")
    return response


def _open_totp_secret(key: ConsoleSecretKey | None, name: str, stored: str,
                      remote: str | None) -> tuple[str | None, str | None]:
    """``(the account's TOTP secret, None)``, or ``(None, why)`` (logged as an error) when it cannot be
    opened or is not of the account's recorded enrolment (edge.central.console.enrolments); why is None
    when the key itself is missing (logged at start, nothing about the account to record)."""
    if key is None:
        log.error("console sign-in of %s refused from %s: its TOTP secret is sealed with the console key, "
                  "which is missing or unreadable (see the error at start)", name, remote)
        return None, None
    try:
        return open_enrolled_totp(key, name, stored), None
    except (SealedSecretError, ConsoleKeyError) as exc:
        log.error("console sign-in of %s refused from %s: %s", name, remote, exc)
        return None, str(exc)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def add_sign_in_routes(app: web.Application) -> None:
    app.router.add_get("/console/api/session", current_session)
    app.router.add_post("/console/api/sign-in", sign_in)
    app.router.add_post("/console/api/sign-in/certificate", sign_in_certificate)
    app.router.add_post("/console/api/sign-out", sign_out)
