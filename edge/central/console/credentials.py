"""Passwords and second factors of console accounts, with maintained libraries.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommended option: 64 MiB,
3 passes) and verified by the library in constant time; a hash made with weaker parameters is re-made at
the next good sign-in. An unknown account name is verified against a dummy hash, so that the time a
refusal takes does not tell which names exist.

The second factor is TOTP (RFC 6238, 30 s steps, 6 digits; pyotp), one step of clock drift either way. A
code is good once: the step it matched is returned so that the account store can refuse it again.
"""

from __future__ import annotations

import time

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "PasswordPolicyError",
    "check_password_policy",
    "hash_password",
    "new_totp_secret",
    "totp_step",
    "totp_uri",
    "verify_password",
]

MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024  # bounds the work an unauthenticated request can ask for
TOTP_ISSUER = "evidence-edge"
_TOTP_WINDOW = 1

_hasher = PasswordHasher()
# A hash of a password no account has, made with the hasher's parameters (argon2-cffi 25.1's defaults):
# verifying an unknown name against it costs what verifying a real hash costs. A constant, because making
# it is a full argon2 run (64 MiB, ~0.2 s) at import, i.e. in every `edge` command; should the library's
# parameters ever differ from the constant's, it is made afresh with them.
_DUMMY_HASH_MADE_WITH_DEFAULTS = (
    "$argon2id$v=19$m=65536,t=3,p=4$9pwdyyMN+TX5jNJUX5isjQ$oqHftfpJRoDf7jaYK9cH4W3ixiBTYS5CXtGY75NvvcA"
)
_DUMMY_HASH = (
    _hasher.hash("not any account's password: equalises the time of unknown names")
    if _hasher.check_needs_rehash(_DUMMY_HASH_MADE_WITH_DEFAULTS)
    else _DUMMY_HASH_MADE_WITH_DEFAULTS
)


class PasswordPolicyError(ValueError):
    """A new password the policy refuses (too short, too long, not text)."""


def check_password_policy(password: str) -> str:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise PasswordPolicyError(f"a password has {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters; "
                                  f"this one has {len(password)}")
    if not password.isprintable():
        raise PasswordPolicyError("a password has no control characters (a pasted newline, say)")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password_policy(password))


def verify_password(password_hash: str | None, password: str) -> tuple[bool, str | None]:
    """``(good, new_hash)``: whether ``password`` matches, and a re-made hash when the stored one used
    weaker parameters. ``password_hash`` None (an unknown account) costs the same and answers False."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False, None
    try:
        _hasher.verify(password_hash or _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, None
    if password_hash is None:
        return False, None
    return True, _hasher.hash(password) if _hasher.check_needs_rehash(password_hash) else None


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(name: str, secret: str) -> str:
    """The otpauth:// URI an authenticator app scans (shown once, at enrolment)."""
    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=TOTP_ISSUER)


def totp_step(secret: str, code: str, *, now: float | None = None) -> int | None:
    """The time step ``code`` is good for (within one step of now), None when it is not good."""
    code = code.strip()
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    moment = time.time() if now is None else now
    for offset in range(-_TOTP_WINDOW, _TOTP_WINDOW + 1):
        at = moment + offset * totp.interval
        # pyotp compares in constant time (hmac.compare_digest).
        if totp.verify(code, for_time=at, valid_window=0):
            return int(at) // totp.interval
    return None
