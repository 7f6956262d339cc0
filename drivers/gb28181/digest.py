"""HTTP digest authentication for SIP (RFC 2617, RFC 3261 section 22.4) as GB/T 28181 uses it: pure, no I/O.

Server side: `DigestServer` makes challenges (`WWW-Authenticate` values) whose nonce carries its own time, a
random part and an HMAC of both under a secret, so the server keeps no state per challenge (two challenges in
the same second differ), and verifies `Authorization` values with or without `qop=auth`. The response is
checked against the `uri` parameter the client gave (devices and sipp put the server's address there, not the
request URI) and the method of the request; the comparison is constant-time. A nonce older than its lifetime
is stale (the client should retry with a fresh one, RFC 2617 `stale=true`); a nonce the server did not make is
refused. With qop, the nonce count must grow per (nonce, cnonce): a replayed `nc` is refused as stale. Without
qop (RFC 2069, what most GB/T 28181 devices send) there is no count, so a nonce answered that way is
single-use: a second answer with it is refused as stale, so a captured REGISTER cannot be replayed; a device
that reuses a nonce for its next REGISTER gets a fresh challenge with `stale=true` (one more 401, which GB
devices handle). What is remembered for this is bounded and cannot be made to forget a live entry by anyone
else: an entry is kept until its nonce's lifetime is over (after which the nonce itself is stale), each user
name keeps at most `MAX_TRACKED_NONCE_COUNTS` entries (a device that exceeds it forgets only its own oldest
ones; only the holder of that device's password can add them), and when the whole table
(`MAX_TRACKED_NONCE_USES`) is full of live entries a new (nonce, cnonce) is refused as stale rather than
forgetting another device's entry.

Client side (for device simulators): `authorization_for()` answers a challenge.

MD5 is what the standard and every device use (GB/T 28181-2016 section 9.1 and Annex J.1); device
passwords are weak, so digest only proves the device knows one, never more. `MD5-sess` and `auth-int`
are refused with a clear verdict.
"""

from __future__ import annotations

import hashlib
import heapq
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
_NONCE_RANDOM_HEX = 16
_NONCE_MAC_HEX = 24
_NONCE_HEX = _NONCE_STAMP_HEX + _NONCE_RANDOM_HEX + _NONCE_MAC_HEX
# Live (nonce, cnonce) entries one user name may hold; beyond it the user's own oldest are forgotten.
MAX_TRACKED_NONCE_COUNTS = 4096
# Live entries of all users together (about 200 bytes each: a 16-byte digest key, a tuple, a heap slot).
MAX_TRACKED_NONCE_USES = 16384
# Nonces are accepted up to this many seconds "from the future" (clock steps between challenge and answer).
_NONCE_FUTURE_SLACK_S = 5


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
    # surrogatepass: a lone surrogate (never from the wire, which is decoded from UTF-8, but possible in a
    # caller's str) hashes to some value that simply does not match, instead of raising UnicodeEncodeError.
    return hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


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
        # key (digest of nonce and cnonce, or of the nonce alone for answers without qop) → (the last
        # nonce count, -1 without qop; when the nonce expires, Unix seconds; user name).
        self._nonce_counts: dict[bytes, tuple[int, float, str]] = {}
        self._keys_by_user: dict[str, OrderedDict[bytes, None]] = {}
        self._expiries: list[tuple[float, bytes]] = []  # a heap; entries whose key is gone are skipped

    def __repr__(self) -> str:
        return f"DigestServer(realm={self.realm!r})"

    def _mac(self, stamp: str, random_part: str) -> str:
        message = f"{stamp}:{random_part}:{self.realm}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:_NONCE_MAC_HEX]

    def new_nonce(self) -> str:
        stamp = f"{int(self._clock()) & 0xFFFFFFFF:0{_NONCE_STAMP_HEX}x}"
        random_part = os.urandom(_NONCE_RANDOM_HEX // 2).hex()
        return stamp + random_part + self._mac(stamp, random_part)

    def challenge(self, *, stale: bool = False) -> DigestChallenge:
        return DigestChallenge(
            realm=self.realm, nonce=self.new_nonce(), opaque=self._opaque, qop=self._qop, stale=stale
        )

    def _nonce_age_s(self, nonce: str) -> int | None:
        """The nonce's age in seconds if this server made it, else None."""
        if len(nonce) != _NONCE_HEX or not re.fullmatch(r"[0-9a-f]+", nonce):
            return None
        stamp = nonce[:_NONCE_STAMP_HEX]
        random_part = nonce[_NONCE_STAMP_HEX : _NONCE_STAMP_HEX + _NONCE_RANDOM_HEX]
        mac = nonce[_NONCE_STAMP_HEX + _NONCE_RANDOM_HEX :]
        if not hmac.compare_digest(self._mac(stamp, random_part), mac):
            return None
        return (int(self._clock()) & 0xFFFFFFFF) - int(stamp, 16)

    def _nonce_verdict(self, nonce: str) -> DigestVerdict:
        age_s = self._nonce_age_s(nonce)
        if age_s is None:
            return DigestVerdict.FOREIGN_NONCE
        if age_s < -_NONCE_FUTURE_SLACK_S or age_s > self._lifetime_s:
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
        if credentials.qop is None:
            return self._record_use(credentials, count=-1)
        nc_text = credentials.nc or ""
        if not re.fullmatch(r"[0-9A-Fa-f]{1,8}", nc_text):
            return DigestVerdict.WRONG_RESPONSE
        return self._record_use(credentials, count=int(nc_text, 16))

    def _record_use(self, credentials: DigestCredentials, *, count: int) -> DigestVerdict:
        """Remember this (authenticated) use of a nonce: `count` is the nonce count, or -1 for an answer
        without qop, which makes the nonce single-use. STALE_NONCE for a replay, and when the table is
        full of live entries (the device is challenged again; nobody else's entry is forgotten)."""
        now = self._clock()
        self._forget_expired(now)
        # A digest of the key keeps the table's size independent of how long a client makes its cnonce.
        key_text = credentials.nonce if count < 0 else f"{credentials.nonce}\0{credentials.cnonce or ''}"
        key = hashlib.sha256(key_text.encode("utf-8")).digest()[:16]
        entry = self._nonce_counts.get(key)
        if entry is not None:
            if count < 0 or count <= entry[0]:
                return DigestVerdict.STALE_NONCE
            self._nonce_counts[key] = (count, entry[1], entry[2])
            return DigestVerdict.OK
        if len(self._nonce_counts) >= MAX_TRACKED_NONCE_USES:
            return DigestVerdict.STALE_NONCE
        age_s = self._nonce_age_s(credentials.nonce) or 0
        expires_s = now - age_s + self._lifetime_s + _NONCE_FUTURE_SLACK_S + 1
        user = credentials.username
        self._nonce_counts[key] = (count, expires_s, user)
        heapq.heappush(self._expiries, (expires_s, key))
        own = self._keys_by_user.setdefault(user, OrderedDict())
        own[key] = None
        while len(own) > MAX_TRACKED_NONCE_COUNTS:
            oldest, _ = own.popitem(last=False)
            del self._nonce_counts[oldest]
        if len(self._expiries) > 2 * MAX_TRACKED_NONCE_USES:  # stale heap slots of forgotten entries
            self._expiries = [(entry[1], k) for k, entry in self._nonce_counts.items()]
            heapq.heapify(self._expiries)
        return DigestVerdict.OK

    def _forget_expired(self, now: float) -> None:
        """Forget entries whose nonce is past its lifetime: such a nonce is refused as stale anyway."""
        while self._expiries and self._expiries[0][0] <= now:
            expires_s, key = heapq.heappop(self._expiries)
            entry = self._nonce_counts.get(key)
            if entry is None or entry[1] != expires_s:
                continue
            del self._nonce_counts[key]
            own = self._keys_by_user.get(entry[2])
            if own is not None:
                own.pop(key, None)
                if not own:
                    del self._keys_by_user[entry[2]]


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
