"""What the console keeps in the running central: its settings, the sessions, the sign-in guard, its clock."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from edge.central.config import ConsoleSection
from edge.central.console.secret_key import ConsoleSecretKey
from edge.central.console.sessions import SessionBackend, SessionStore
from edge.central.console.signin_guard import SignInGuard

__all__ = ["CONSOLE", "ConsoleState"]

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ConsoleState:
    settings: ConsoleSection
    sessions: SessionStore
    guard: SignInGuard
    # Opens the accounts' sealed TOTP secrets; None when identity/console.key is missing or unreadable
    # (TOTP sign-ins are then refused, see edge.central.console.secret_key).
    secret_key: ConsoleSecretKey | None = None
    # Wall-clock time for account lockouts (kept in the index as UTC text); replaceable in tests.
    utc_now: Callable[[], datetime] = field(default=_utc_now)
    # Password checks (argon2id) running now, for anyone who calls: at most
    # settings.password_checks_at_once, the rest are refused (edge.central.console.signin).
    password_checks: int = 0

    @classmethod
    def from_settings(
        cls, settings: ConsoleSection, sessions: SessionBackend, secret_key: ConsoleSecretKey | None = None
    ) -> ConsoleState:
        if settings.allow_password_only:
            log.warning("console: [console] allow_password_only = true: accounts without TOTP sign in with "
                        "a password alone; enrol TOTP for every account and turn this off")
        return cls(
            settings,
            SessionStore(sessions, idle_s=settings.session_idle_min * 60,
                         absolute_s=settings.session_max_h * 3600,
                         secret=None if secret_key is None else secret_key.session_key),
            SignInGuard(settings.sign_in_per_minute),
            secret_key,
        )


CONSOLE = web.AppKey("console", ConsoleState)
