"""Server-side sessions of the auditor console: a random token in a cookie, everything else in the index.

The cookie (``__Host-edge-console``: HttpOnly, Secure, SameSite=Strict, Path=/) carries 32 random bytes.
The index keeps each session (``console_sessions``) under an HMAC of its token, never the token, keyed by
a subkey of ``identity/console.key`` (:attr:`ConsoleSecretKey.session_key
<edge.central.console.secret_key.ConsoleSecretKey.session_key>`): a copy of ``index.db`` or a read of its
rows yields no usable cookie. Each row also carries an HMAC, under the same subkey, of its key, reader,
method, certificate, creation, expiry and last request, checked in constant time: whoever can write
``index.db`` but does not hold the key can neither plant a session nor change whose session it is or how
long it lasts, nor revive an idle session by moving its last request forward (a row that does not match
is ended). The last request is under the seal because the idle limit is what ends a session left open
on a shared screen; restoring an older copy of a row only makes it end sooner. Without a usable console
key the sessions are keyed by a random secret of this process: they end at its restart. The session's
CSRF token is not stored either: it is an HMAC of the cookie token, so only the holder of the cookie can
compute it.

A session ends at sign-out (its row deleted), after ``idle_s`` without a request, or ``absolute_s``
after sign-in, whichever comes first; at most ``max_sessions`` are kept (the oldest is dropped). Times
are wall-clock seconds, so they keep counting across a restart of the central: a restart keeps a live
session and refuses an expired or signed-out one. A session whose creation or last request lies more than
``CLOCK_SKEW_S`` in the future (the clock was stepped back) ends: otherwise it would live on for the size
of the step. The idle timer is written back at most every
``touch_every_s`` (a fraction of the idle time), so a busy page is not one database write per request;
the session can thus end up to that much early, never late. Each such write re-seals the row (one
HMAC-SHA256 with the write it rides on): no write is added per request. Every state-changing request must
echo the CSRF token in the ``X-CSRF-Token`` header (compared in constant time).

Which playback a media range belongs to (``ConsoleSession.playbacks``) is kept in memory only: after a
restart, the next range of a video opens a new logged playback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from edge.central.storage import SessionRows

__all__ = ["CLOCK_SKEW_S", "COOKIE_NAME", "CSRF_HEADER", "AuthMethod", "ConsoleSession", "SessionBackend",
           "SessionLookup", "SessionStore", "SessionTouch",
           "session_row_mac", "token_row_key"]

COOKIE_NAME = "__Host-edge-console"
CSRF_HEADER = "X-CSRF-Token"
_MAX_TOKEN_CHARS = 200
# Sessions whose playbacks are remembered in memory (the rest open a new logged playback).
_PLAYBACK_SESSIONS = 1000
# How far in the future a session's times may lie (clocks of one host stepping by NTP slew); beyond, it ends.
CLOCK_SKEW_S = 60.0


class AuthMethod(StrEnum):
    PASSWORD = "password"
    PASSWORD_TOTP = "password+totp"
    CERTIFICATE = "certificate"


@dataclass
class ConsoleSession:
    """A signed-in reader. ``repr`` leaves out the CSRF token."""

    reader: str
    method: AuthMethod
    created: float
    last_seen: float
    csrf_token: str = field(repr=False)
    cert_sha256: str | None = None  # the certificate a certificate sign-in was made with
    playbacks: dict[str, int] = field(default_factory=dict, repr=False)  # playback id -> access-log row

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode("utf-8", "replace"),
                                                             self.csrf_token.encode("ascii"))


@dataclass(frozen=True)
class SessionTouch:
    """A live session's idle timer to restart: its row's new last use and seal, if its last use is still
    ``last_seen_before`` (another receiver may have touched it meanwhile)."""

    now: float
    mac: str = field(repr=False)
    last_seen_before: float


@dataclass(frozen=True)
class SessionLookup:
    """What :meth:`SessionStore.look_up` read for a token's row: its live ``session`` (with the ``touch``
    due, if any), or None when the row is no session (unsealed, expired, unknown method) and is ended by
    :meth:`SessionStore.settle`."""

    key: bytes = field(repr=False)
    session: ConsoleSession | None
    touch: SessionTouch | None = None


# Where sessions are kept: the console store's session rows, by an HMAC of their token.
SessionBackend = SessionRows


def token_row_key(secret: bytes, token: str) -> bytes:
    """The key of a session's row: an HMAC of its cookie token (the token itself is never stored)."""
    return hmac.new(secret, b"edge-console session-token v1\x00" + token.encode("utf-8", "replace"),
                    hashlib.sha256).digest()


def session_row_mac(secret: bytes, key: bytes, reader: str, method: str, cert_sha256: str | None,
                    created_s: float, expires_s: float, last_seen_s: float) -> str:
    """The seal of a session row: what it grants (who, how signed in, from when, until when) and when it
    was last used (the idle timer). v2: v1 rows, sealed without the last request, no longer check (their
    sessions end at their next use, once, at the upgrade)."""
    message = json.dumps([key.hex(), reader, method, cert_sha256, repr(float(created_s)),
                          repr(float(expires_s)), repr(float(last_seen_s))]).encode("utf-8")
    return hmac.new(secret, b"edge-console session-row v2\x00" + message, hashlib.sha256).hexdigest()


def _csrf(token: str) -> str:
    mac = hmac.new(token.encode("utf-8", "replace"), b"edge-console csrf v1", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


class SessionStore:
    """Sessions by token hash in ``backend``, with idle and absolute expiry; ``clock`` is wall-clock
    seconds (replaceable in tests)."""

    def __init__(self, backend: SessionBackend, *, idle_s: float, absolute_s: float,
                 max_sessions: int = 10_000, clock: Callable[[], float] = time.time,
                 secret: bytes | None = None) -> None:
        self.backend = backend
        # The session subkey of console.key; without one, a secret of this process (sessions end with it).
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.max_sessions = max_sessions
        self.touch_every_s = min(60.0, idle_s / 20)
        self.clock = clock
        self._playbacks: OrderedDict[bytes, dict[str, int]] = OrderedDict()
        # The console's reads (look_up) run in its two reader threads and settle/end on the loop: the
        # OrderedDict's reordering and eviction are not atomic.
        self._playbacks_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SessionStore(idle_s={self.idle_s}, absolute_s={self.absolute_s})"

    def __len__(self) -> int:
        return self.backend.session_count()

    def create(
        self, reader: str, method: AuthMethod, *, cert_sha256: str | None = None
    ) -> tuple[str, ConsoleSession]:
        """A new session; returns ``(token for the cookie, session)``."""
        now = self.clock()
        self.backend.purge_sessions(idle_before_s=now - self.idle_s, now_s=now)
        token = secrets.token_urlsafe(32)
        key = self._key(token)
        expires = now + self.absolute_s
        mac = session_row_mac(self._secret, key, reader, str(method), cert_sha256, now, expires, now)
        self.backend.put_session(key, reader, str(method), cert_sha256, created_s=now, expires_s=expires,
                                 max_sessions=self.max_sessions, mac=mac)
        return token, ConsoleSession(reader, method, now, now, _csrf(token), cert_sha256,
                                     self._playbacks_of(key))

    def _key(self, token: str) -> bytes:
        return token_row_key(self._secret, token)

    def get(self, token: str | None) -> ConsoleSession | None:
        """The live session of ``token`` (its idle timer restarted), None when unknown, ended or expired:
        :meth:`look_up` then :meth:`settle`."""
        found = self.look_up(token)
        return None if found is None else self.settle(found)

    def look_up(self, token: str | None) -> SessionLookup | None:
        """What ``token``'s row says, read without writing anything (a reader's work: a request with a
        made-up cookie never reaches the writer, review 13); None when there is no such row."""
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        key = self._key(token)
        row = self.backend.session(key)
        if row is None:
            return None
        stored_mac = row.get("mac")
        want = session_row_mac(self._secret, key, str(row["reader"]), str(row["method"]), row["cert_sha256"],
                               float(row["created_s"]), float(row["expires_s"]), float(row["last_seen_s"]))
        if not isinstance(stored_mac, str) or not hmac.compare_digest(stored_mac.encode("ascii", "replace"),
                                                                      want.encode("ascii")):
            # Written or changed without the key (or by a central with another key): no session.
            return SessionLookup(key, None)
        now = self.clock()
        created, last_seen = float(row["created_s"]), float(row["last_seen_s"])
        expires = min(float(row["expires_s"]), created + self.absolute_s)
        stepped_back = max(created, last_seen) > now + CLOCK_SKEW_S
        if stepped_back or now - last_seen > self.idle_s or now >= expires:
            return SessionLookup(key, None)
        try:
            method = AuthMethod(row["method"])
        except ValueError:
            return SessionLookup(key, None)
        touch = None
        if now - last_seen >= self.touch_every_s:
            mac = session_row_mac(self._secret, key, str(row["reader"]), str(method), row["cert_sha256"],
                                  created, float(row["expires_s"]), now)
            touch = SessionTouch(now, mac, last_seen)
        session = ConsoleSession(row["reader"], method, created, last_seen, _csrf(token), row["cert_sha256"],
                                 self._playbacks_of(key))
        return SessionLookup(key, session, touch)

    def settle(self, found: SessionLookup) -> ConsoleSession | None:
        """Write what :meth:`look_up` found due (the writer's work): end a row that is no session, or
        restart a live session's idle timer; returns the live session."""
        if found.session is None:
            self.backend.end_session(found.key)
            self._forget_playbacks(found.key)
            return None
        touch = found.touch
        if touch is not None and self.backend.touch_session(found.key, touch.now, mac=touch.mac,
                                                            last_seen_before_s=touch.last_seen_before):
            found.session.last_seen = touch.now
        return found.session

    def end(self, token: str | None) -> bool:
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return False
        key = self._key(token)
        self._forget_playbacks(key)
        return self.backend.end_session(key)

    def end_reader(self, reader: str) -> int:
        """End every session of ``reader`` (an account disabled or a grant withdrawn); returns how many."""
        return self.backend.end_sessions_of(reader)

    def _playbacks_of(self, key: bytes) -> dict[str, int]:
        with self._playbacks_lock:
            playbacks = self._playbacks.get(key)
            if playbacks is None:
                playbacks = self._playbacks[key] = {}
                while len(self._playbacks) > _PLAYBACK_SESSIONS:
                    self._playbacks.popitem(last=False)
            else:
                self._playbacks.move_to_end(key)
            return playbacks

    def _forget_playbacks(self, key: bytes) -> None:
        with self._playbacks_lock:
            self._playbacks.pop(key, None)
