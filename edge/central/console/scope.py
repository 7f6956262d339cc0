"""The one seam every read of evidence goes through: who is reading, and what they may see.

``await reader_scope(request)`` names the reader and their :class:`~edge.central.index.ReaderScope`:

1. a console session (the ``__Host-edge-console`` cookie, :mod:`edge.central.console.sessions`), signed
   in with a password account (and TOTP) or a reader certificate; the account or certificate is checked
   again on every request, so disabling an account or revoking a reader takes effect at once;
2. otherwise a reader certificate on the TLS connection (``/v1/items`` for programs), checked by
   :class:`edge.central.auth.Authenticator`; in development mode the ``X-Edge-Reader`` header.

The role and units come from the reader's grant (``edge central grant``). A reader without a grant is
refused (403), except in development mode, where an ungranted header reader is a supervisor (that mode
believes any name anyway). 401 when nobody signed in, 403 when the reader may not read at all.

``require_item(request, scope, item_id, what)`` appends the read to the access log first (so an attempt
at an item the reader may not see is on record too), then answers the item, or 404 for an item that does
not exist *or* that the scope may not see (the same answer, so existence does not leak). Listings,
searches and statistics filter in the database: :meth:`edge.central.storage.Index.query_items` takes the
scope, and a backend's own queries add :func:`edge.central.sqlite.console.scope_clause` to their WHERE.
``log_read`` appends an access-log row for any other read (a search, a package, a statistic).

Each touches the index or the console's store, so a coroutine awaits :func:`logged_read` and
:func:`required_item` (on the database's writer) rather than calling them on the event loop.
"""

from __future__ import annotations

import logging
import uuid

from aiohttp import web

from edge.central.app import CENTRAL, CentralParts
from edge.central.console.sessions import COOKIE_NAME, AuthMethod, ConsoleSession, SessionLookup
from edge.central.console.state import CONSOLE
from edge.central.index import ItemRecord, ReaderScope, Role
from edge.central.registration import RejectCode, Rejection
from edge.runtime.logs import event_fields

__all__ = [
    "SESSION_KEY",
    "ItemRecord",
    "ReaderScope",
    "Role",
    "live_session",
    "log_read",
    "logged_read",
    "reader_scope",
    "require_item",
    "required_item",
    "scope_of",
    "session_of",
]

log = logging.getLogger(__name__)

# The session a request was made in (set by reader_scope), for the handlers that need it (CSRF, media).
SESSION_KEY = web.RequestKey("console-session", ConsoleSession)


def session_of(request: web.Request) -> ConsoleSession | None:
    """The live console session of the request's cookie, with its account or certificate still good
    (reads and writes in the caller's thread: :func:`live_session` splits them)."""
    found = _looked_up(request)
    return None if found is None else _settled(request, *found)


def _looked_up(request: web.Request) -> tuple[SessionLookup, bool] | None:
    """Reads only: the row of the request's cookie (None: no such row, nothing to write) and whether its
    account or certificate is still good."""
    state = request.app.get(CONSOLE)
    if state is None:
        return None
    found = state.sessions.look_up(request.cookies.get(COOKIE_NAME))
    if found is None or found.session is None:
        return None if found is None else (found, False)
    session = found.session
    parts = request.app[CENTRAL]
    if session.method is AuthMethod.CERTIFICATE:
        record = parts.index.reader(session.reader)
        still = record is not None and record.active and record.cert_sha256 == session.cert_sha256
    else:
        account = parts.console.account(session.reader)
        still = account is not None and account.active
    return found, still


def _settled(request: web.Request, found: SessionLookup, still: bool) -> ConsoleSession | None:
    """The writes :func:`_looked_up` found due: a session whose account or certificate is gone ends with
    every other of its reader's, a row that is no session ends, a live one's idle timer restarts."""
    store = request.app[CONSOLE].sessions
    session = found.session
    if session is not None and not still:
        store.end_reader(session.reader)
        log.warning("console session of %s ended: its %s is no longer valid", session.reader,
                    "certificate" if session.method is AuthMethod.CERTIFICATE else "account")
        return None
    return store.settle(found)


async def live_session(request: web.Request) -> ConsoleSession | None:
    """:func:`session_of` off the event loop: the look-up in a reader (any cookie value, before anything
    is authenticated, so it must not hold the writer every registration and signed head waits for:
    review 13), the writer only for a row found to end or a live session's touch."""
    parts = request.app[CENTRAL]
    found = await parts.read(_looked_up, request)
    if found is None:
        return None
    lookup, still = found
    if lookup.session is not None and still and lookup.touch is None:
        return lookup.session  # nothing to write
    return await parts.write(_settled, request, lookup, still)


def scope_of(parts: CentralParts, reader: str) -> ReaderScope:
    """The scope of ``reader`` from its grant; raises 403 without one (outside development mode)."""
    grant = parts.console.grant_of(reader)
    if grant is None:
        if parts.config.server.insecure_plain_http:
            return ReaderScope(reader, Role.SUPERVISOR, frozenset())
        raise Rejection(RejectCode.FORBIDDEN, f"reader {reader} has no role at this central; an "
                                              "administrator "
                                              "grants one with `edge central grant`")
    return ReaderScope(reader, grant.role, grant.units)


async def reader_scope(request: web.Request) -> ReaderScope:
    """The signed-in reader's scope (console session, else reader certificate); raises 401/403."""
    parts = request.app[CENTRAL]
    # Off the event loop: a session's row and the grant read, its last use written on the writer.
    session = await live_session(request)
    if session is not None:
        request[SESSION_KEY] = session
        return await parts.read(scope_of, parts, session.reader)
    if request.path.startswith("/console/"):
        # The console's own API is for signed-in sessions: a certificate signs in first (and gets a CSRF
        # token), so that a browser holding a certificate cannot be driven by another site.
        raise Rejection(RejectCode.UNAUTHENTICATED, "sign in to the console first")
    reader = await parts.read(parts.auth.reader, request)
    return await parts.read(scope_of, parts, reader)


async def logged_read(request: web.Request, scope: ReaderScope, what: str, *, item: str | None = None,
                      query: str | None = None) -> int:
    """:func:`log_read` on the database's writer, off the event loop."""
    return await request.app[CENTRAL].write(log_read, request, scope, what, item=item, query=query)


async def required_item(request: web.Request, scope: ReaderScope, item_id: str, what: str) -> ItemRecord:
    """:func:`require_item` on the database's writer, off the event loop."""
    return await request.app[CENTRAL].write(require_item, request, scope, item_id, what)


def log_read(request: web.Request, scope: ReaderScope, what: str, *, item: str | None = None,
             query: str | None = None) -> int:
    """Append the read to the access log before it is served; returns the row id. 503 when it cannot be
    logged: every retrieval logged is a rule, not a best effort."""
    parts = request.app[CENTRAL]
    try:
        row = parts.index.log_access(reader=scope.reader, what=what, item=item, query=query,
                                     remote=request.remote)
    except parts.index.unit.errors as exc:
        log.error("access log unavailable (%s); refusing %s of %s by reader %s", exc, what, item or query,
                  scope.reader)
        raise Rejection(RejectCode.ACCESS_LOG_UNAVAILABLE, "this read cannot be logged, so it is refused; "
                                                           "try again later") from None
    log.info("reader %s (%s): %s %s from %s", scope.reader, scope.role, what, item or query or "",
             request.remote, extra=event_fields(event="read", reader=scope.reader, read=what, item=item))
    return row


def valid_item_id(item_id: str) -> bool:
    try:
        return str(uuid.UUID(item_id)) == item_id
    except ValueError:
        return False


def require_item(request: web.Request, scope: ReaderScope, item_id: str, what: str) -> ItemRecord:
    """Log the read of ``item_id``, then the item if ``scope`` may see it; 400 for a malformed id, 404
    for an item that does not exist or that the scope may not see (the same answer)."""
    log_read(request, scope, what, item=item_id[:64])
    if not valid_item_id(item_id):
        raise Rejection(RejectCode.BAD_REQUEST, f"item must be a lower-case hyphenated UUID, found "
                                                f"{item_id[:80]!r}")
    parts = request.app[CENTRAL]
    record = parts.index.item(item_id) if parts.index.item_visible(item_id, scope) else None
    if record is None:
        raise Rejection(RejectCode.NOT_FOUND, f"no accepted item {item_id}")
    return record
