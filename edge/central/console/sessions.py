"""Server-side sessions of the auditor console: a random token in a cookie, everything else here.

The cookie (``__Host-edge-console``: HttpOnly, Secure, SameSite=Strict, Path=/) carries 32 random bytes;
the store keys sessions by the SHA-256 of the token, so neither a log line nor a memory dump of the
store yields a usable cookie. A session ends at sign-out, after ``idle_s`` without a request, or
``absolute_s`` after sign-in, whichever comes first; at most ``max_sessions`` are kept (the oldest is
dropped). Sessions live in the central process: a restart signs everybody out, which is the safe way
round. Each session has its own CSRF token, which every state-changing request must echo in the
``X-CSRF-Token`` header (compared in constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["COOKIE_NAME", "CSRF_HEADER", "AuthMethod", "ConsoleSession", "SessionStore"]

COOKIE_NAME = "__Host-edge-console"
CSRF_HEADER = "X-CSRF-Token"


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


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class SessionStore:
    """Sessions by token hash, with idle and absolute expiry; ``clock`` is monotonic seconds."""

    def __init__(self, *, idle_s: float, absolute_s: float, max_sessions: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.max_sessions = max_sessions
        self.clock = clock  # monotonic seconds; replaceable in tests
        self._sessions: OrderedDict[bytes, ConsoleSession] = OrderedDict()

    def __repr__(self) -> str:
        return (f"SessionStore({len(self._sessions)} sessions, idle_s={self.idle_s}, "
                f"absolute_s={self.absolute_s})")

    def __len__(self) -> int:
        return len(self._sessions)

    def create(
        self, reader: str, method: AuthMethod, *, cert_sha256: str | None = None
    ) -> tuple[str, ConsoleSession]:
        """A new session; returns ``(token for the cookie, session)``."""
        now = self.clock()
        token = secrets.token_urlsafe(32)
        session = ConsoleSession(reader, method, now, now, secrets.token_urlsafe(32), cert_sha256)
        self._sessions[_key(token)] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> ConsoleSession | None:
        """The live session of ``token`` (its idle timer restarted), None when unknown or expired."""
        if not token or len(token) > 200:
            return None
        key = _key(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if now - session.last_seen > self.idle_s or now - session.created > self.absolute_s:
            del self._sessions[key]
            return None
        session.last_seen = now
        return session

    def end(self, token: str | None) -> bool:
        if not token:
            return False
        return self._sessions.pop(_key(token), None) is not None

    def end_reader(self, reader: str) -> int:
        """End every session of ``reader`` (an account disabled or a grant withdrawn); returns how many."""
        keys = [key for key, session in self._sessions.items() if session.reader == reader]
        for key in keys:
            del self._sessions[key]
        return len(keys)
