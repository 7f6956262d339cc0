"""HTTP digest authentication for SIP (RFC 2617, RFC 3261 section 22.4) as GB/T 28181 uses it: pure, no I/O.

Server side: `DigestServer` makes challenges (`WWW-Authenticate` values) whose nonce carries its own
time and an HMAC of it under a secret, so the server keeps no state per challenge, and verifies
`Authorization` values with or without `qop=auth`. The response is checked against the `uri` parameter
the client gave (devices and sipp put the server's address there, not the request URI) and the method
of the request; the comparison is constant-time. A nonce older than its lifetime is stale (the client
should retry with a fresh one, RFC 2617 `stale=true`); a nonce the server did not make is refused.
With qop, the nonce count must grow per (nonce, cnonce): a replayed `nc` is refused as stale.

Client side (for device simulators): `authorization_for()` answers a challenge.

MD5 is what the standard and every device use (GB/T 28181-2016 section 9.1 and Annex J.1); device
passwords are weak, so digest only proves the device knows one, never more. `MD5-sess` and `auth-int`
are refused with a clear verdict.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class DigestError(ValueError):
    """An authentication header that cannot be read; the message says what was wrong."""


class DigestVerdict(StrEnum):
    """The outcome of verifying credentials. Only `OK` authenticates."""

    OK = "ok"
    WRONG_RESPONSE = "wrong response"  # wrong password (or user, uri, method): answer 403
    STALE_NONCE = "stale nonce"  # ours but too old, or a replayed nc: challenge again with stale=true
    FOREIGN_NONCE = "foreign nonce"  # not made by this server: challenge again
    WRONG_REALM = "wrong realm"
    UNSUPPORTED = "unsupported algorithm or qop"
    OPAQUE_MISMATCH = "opaque mismatch"


_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
# One `name=value` or `name="quoted"`; the comma after it is optional (some firmware leaves it out).
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s,\"]*)\s*,?")
MAX_HEADER_CHARS = 4096
_NONCE_STAMP_HEX = 8
_NONCE_MAC_HEX = 24
MAX_TRACKED_NONCE_COUNTS = 4096


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """`Digest a="b", c=d` → ("digest", {"a": "b", "c": "d"}): the scheme lower-cased, parameter names
    lower-cased, quotes and backslash escapes removed. Tolerates missing spaces and missing commas
    between parameters (seen in device firmware); refuses duplicates and junk."""
    if len(value) > MAX_HEADER_CHARS:
        raise DigestError(f"authentication header longer than {MAX_HEADER_CHARS} characters")
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if not re.fullmatch(_TOKEN, scheme):
        raise DigestError(f"authentication scheme {scheme[:20]!r} is not a token")
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM_RE.match(rest, position)
        if match is None or match.end() == position:
            raise DigestError(f"authentication parameters: cannot read {rest[position : position + 30]!r}")
        name = match.group(1).lower()
        raw = match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if name in params:
            raise DigestError(f"authentication parameter {name!r} given twice")
        params[name] = raw
        position = match.end()
    return scheme.lower(), params


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def digest_response(
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The `response` value (RFC 2617 section 3.2.2.1, algorithm MD5): with `qop="auth"` over nonce, nc,
    cnonce and qop; without qop the RFC 2069 form. `nc` is the client's string as sent."""
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop is None:
        return _md5(f"{ha1}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise ValueError("qop needs nc and cnonce")
    return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


@dataclass(frozen=True)
class DigestChallenge:
    """A `WWW-Authenticate: Digest ...` value."""

    realm: str
    nonce: str
    opaque: str | None = None
    qop: tuple[str, ...] = ()
    algorithm: str = "MD5"
    stale: bool = False

    @classmethod
    def parse(cls, value: str) -> DigestChallenge:
        scheme, params = parse_auth_params(value)
        if scheme != "digest":
            raise DigestError(f"challenge scheme {scheme!r} is not Digest")
        for required in ("realm", "nonce"):
            if required not in params:
                raise DigestError(f"challenge without {required}")
        qop = tuple(q.strip() for q in params.get("qop", "").split(",") if q.strip())
        return cls(
            realm=params["realm"],
            nonce=params["nonce"],
            opaque=params.get("opaque"),
            qop=qop,
            algorithm=params.get("algorithm", "MD5"),
            stale=params.get("stale", "").lower() == "true",
        )

    def __str__(self) -> str:
        parts = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        parts.append(f"algorithm={self.algorithm}")
        if self.stale:
            parts.append("stale=true")
        return "Digest " + ",".join(parts)


@dataclass(frozen=True)
class DigestCredentials:
    """An `Authorization: Digest ...` value. `repr` leaves out nothing secret: the response is a hash."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> DigestCredentials:
        scheme, params = parse_auth_params(value)
        if scheme != "digest":
            raise DigestError(f"authorization scheme {scheme!r} is not Digest")
        missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in params]
        if missing:
            raise DigestError(f"authorization without {', '.join(missing)}")
        qop = params.get("qop")
        if qop is not None and ("nc" not in params or "cnonce" not in params):
            raise DigestError("authorization with qop but without nc and cnonce")
        return cls(
            username=params["username"],
            realm=params["realm"],
            nonce=params["nonce"],
            uri=params["uri"],
            response=params["response"],
            algorithm=params.get("algorithm", "MD5"),
            qop=qop,
            nc=params.get("nc"),
            cnonce=params.get("cnonce"),
            opaque=params.get("opaque"),
        )

    def __str__(self) -> str:
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.qop is not None:
            parts += [f"qop={self.qop}", f"nc={self.nc}", f"cnonce={_quote(self.cnonce or '')}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        return "Digest " + ",".join(parts)


def response_matches(credentials: DigestCredentials, *, method: str, password: str) -> bool:
    """Whether `credentials.response` is right for `password`, computed over the client's own `uri`,
    realm, username and nonce; constant-time. MD5 with qop absent or `auth` only."""
    if credentials.algorithm.upper() != "MD5" or credentials.qop not in (None, "auth"):
        return False
    expected = digest_response(
        username=credentials.username,
        realm=credentials.realm,
        password=password,
        method=method,
        uri=credentials.uri,
        nonce=credentials.nonce,
        qop=credentials.qop,
        nc=credentials.nc,
        cnonce=credentials.cnonce,
    )
    return hmac.compare_digest(expected.encode("ascii"), credentials.response.lower().encode("utf-8"))


class DigestServer:
    """Makes challenges and verifies answers for one realm (the platform's SIP domain).

    `secret` keys the nonces and the opaque (keep it per process or in a credential file; never log it).
    `clock` is the seam for nonce ages (Unix seconds). With `qop_auth` the challenges offer `qop="auth"`;
    clients that answer without qop (RFC 2069, most GB/T 28181 devices) are still accepted.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_lifetime_s: float = 300.0,
        qop_auth: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        self.realm = realm
        self._secret = secret
        self._lifetime_s = nonce_lifetime_s
        self._qop = ("auth",) if qop_auth else ()
        self._clock = clock
        self._opaque = hmac.new(secret, b"opaque:" + realm.encode(), hashlib.sha256).hexdigest()[:32]
        self._nonce_counts: OrderedDict[tuple[str, str], int] = OrderedDict()

    def __repr__(self) -> str:
        return f"DigestServer(realm={self.realm!r})"

    def _mac(self, stamp: str) -> str:
        message = f"{stamp}:{self.realm}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:_NONCE_MAC_HEX]

    def new_nonce(self) -> str:
        stamp = f"{int(self._clock()) & 0xFFFFFFFF:0{_NONCE_STAMP_HEX}x}"
        return stamp + self._mac(stamp)

    def challenge(self, *, stale: bool = False) -> DigestChallenge:
        return DigestChallenge(
            realm=self.realm, nonce=self.new_nonce(), opaque=self._opaque, qop=self._qop, stale=stale
        )

    def _nonce_verdict(self, nonce: str) -> DigestVerdict:
        if len(nonce) != _NONCE_STAMP_HEX + _NONCE_MAC_HEX or not re.fullmatch(r"[0-9a-f]+", nonce):
            return DigestVerdict.FOREIGN_NONCE
        stamp = nonce[:_NONCE_STAMP_HEX]
        if not hmac.compare_digest(self._mac(stamp), nonce[_NONCE_STAMP_HEX:]):
            return DigestVerdict.FOREIGN_NONCE
        age_s = (int(self._clock()) & 0xFFFFFFFF) - int(stamp, 16)
        if age_s < -5 or age_s > self._lifetime_s:
            return DigestVerdict.STALE_NONCE
        return DigestVerdict.OK

    def verify(self, credentials: DigestCredentials, *, method: str, password: str) -> DigestVerdict:
        """Check `credentials` (from the request) for `method` and the device's `password`. Which user
        name belongs to which device is the caller's decision (`credentials.username`)."""
        if credentials.realm != self.realm:
            return DigestVerdict.WRONG_REALM
        if credentials.algorithm.upper() != "MD5" or credentials.qop not in (None, "auth"):
            return DigestVerdict.UNSUPPORTED
        nonce_verdict = self._nonce_verdict(credentials.nonce)
        if nonce_verdict is not DigestVerdict.OK:
            return nonce_verdict
        if credentials.opaque is not None and not hmac.compare_digest(credentials.opaque, self._opaque):
            return DigestVerdict.OPAQUE_MISMATCH
        if not response_matches(credentials, method=method, password=password):
            return DigestVerdict.WRONG_RESPONSE
        if credentials.qop is not None:
            return self._check_nonce_count(credentials)
        return DigestVerdict.OK

    def _check_nonce_count(self, credentials: DigestCredentials) -> DigestVerdict:
        nc_text = credentials.nc or ""
        if not re.fullmatch(r"[0-9A-Fa-f]{1,8}", nc_text):
            return DigestVerdict.WRONG_RESPONSE
        count = int(nc_text, 16)
        key = (credentials.nonce, credentials.cnonce or "")
        last = self._nonce_counts.get(key)
        if last is not None and count <= last:
            return DigestVerdict.STALE_NONCE
        self._nonce_counts[key] = count
        self._nonce_counts.move_to_end(key)
        while len(self._nonce_counts) > MAX_TRACKED_NONCE_COUNTS:
            self._nonce_counts.popitem(last=False)
        return DigestVerdict.OK


def authorization_for(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> DigestCredentials:
    """Answer `challenge` (client side): qop=auth when offered, otherwise the RFC 2069 form."""
    if challenge.algorithm.upper() != "MD5":
        raise DigestError(f"challenge algorithm {challenge.algorithm!r} is not MD5")
    qop = "auth" if "auth" in challenge.qop else None
    nc_text = f"{nc:08x}" if qop else None
    if qop and cnonce is None:
        cnonce = os.urandom(8).hex()
    response = digest_response(
        username=username,
        realm=challenge.realm,
        password=password,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce if qop else None,
    )
    return DigestCredentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce if qop else None,
        opaque=challenge.opaque,
    )
