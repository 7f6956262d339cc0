"""SIP messages (RFC 3261) as GB/T 28181 devices send them: a pure codec, no I/O.

`parse_datagram()` reads one UDP datagram, `SipStreamParser` cuts a TCP byte stream into messages (the body
is exactly `Content-Length` bytes there), and `SipRequest.to_bytes()` / `SipResponse.to_bytes()` produce
exactly the bytes that go on the wire. Messages are frozen dataclasses; headers keep their order and
repetitions (`Headers`), compact forms (`i`, `f`, `t`, `v`, `m`, `l`, `c`, `k`, `s`, `e`) are expanded to
their long names on parsing. Header values are read on demand (`top_via`, `from_`, `to`, `cseq`,
`contacts`, `expires`) into `Via`, `NameAddress`, `SipUri` and `CSeq`. Builders: `request()`,
`response_to()` (RFC 3261 section 8.2.6), `ack_for_non_2xx()` (section 17.1.1.3) and `Dialog` (the
platform's side of an INVITE dialog: in-dialog requests and the ACK of a 2xx).

Tolerant of what devices really send (GB/T 28181 research notes, section 12): lower-case or compact header
names, no space after the colon, LF-only line ends, stray white space around values, folded header lines,
CRLF keepalives between messages. Strict about what matters: a missing or bad `Content-Length` on a stream,
a body shorter than it says, duplicate `Content-Length` values that disagree, oversized header sections or
bodies, a start line that is not SIP/2.0, a bare CR in the header section, a control character other
than HTAB in a header value (NUL included; refused when building a message too, so nothing read from the
wire is echoed with one). The stream parser resumes its search for the blank line where the previous
read left it, so a header trickled byte by byte costs linear work. Every such case raises
`SipProtocolError` naming what was wrong, and nothing else escapes the parsers. Sizes are bounded by
`SipLimits`, so a hostile peer cannot make a parser hold more than `max_header_bytes + max_body_bytes`
of input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

SIP_VERSION = "SIP/2.0"
# RFC 3261 section 8.1.1.7: a branch starting with this cookie was made unique by an RFC 3261 client.
BRANCH_MAGIC_COOKIE = "z9hG4bK"
CRLF = b"\r\n"
_PING = b"\r\n\r\n"  # RFC 5626 section 3.5.1: a client's keepalive on a stream; answered with CRLF

# Compact forms (RFC 3261 section 7.3.3 and its extensions) and the canonical spelling of the long names.
COMPACT_FORMS = {
    "i": "Call-ID",
    "f": "From",
    "t": "To",
    "v": "Via",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
}
_CANONICAL_NAMES = {
    name.lower(): name
    for name in (
        "Accept",
        "Allow",
        "Authorization",
        "Call-ID",
        "Contact",
        "Content-Encoding",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Event",
        "Allow-Events",
        "Expires",
        "From",
        "Max-Forwards",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Record-Route",
        "Route",
        "Server",
        "Subject",
        "Subscription-State",
        "Supported",
        "To",
        "User-Agent",
        "Via",
        "WWW-Authenticate",
        "X-GB-Ver",
        "Min-Expires",
        "Require",
        "Unsupported",
        "Warning",
        "Timestamp",
        "Retry-After",
    )
}
# Headers whose value may be a comma-separated list (RFC 3261 section 7.3.1). Authorization and
# WWW-Authenticate are not: their commas separate parameters of one value.
_LIST_HEADERS = frozenset(
    {"via", "contact", "route", "record-route", "allow", "supported", "require", "unsupported", "accept"}
)

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_HEADER_END_MAX_BYTES = 4  # the longest match of _HEADER_END_RE: a search may resume this far back less one
# RFC 3261 section 25.1: header text never holds control characters but HTAB. A NUL in a Call-ID echoed into
# a response cuts it in device stacks that handle C strings; CR and LF would split a header.
_CONTROL_CHAR_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LINE_SPLIT_RE = re.compile(rb"\r?\n")
_STATUS_RE = re.compile(r"SIP/2\.0[ \t]+([0-9]{3})(?:[ \t]+(.*))?", re.IGNORECASE)
_REQUEST_RE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+(\S+)[ \t]+SIP/2\.0", re.IGNORECASE)
_DIGITS_RE = re.compile(r"[0-9]{1,10}")

REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    423: "Interval Too Brief",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    603: "Decline",
}


class SipProtocolError(ValueError):
    """Input is not a SIP message this codec accepts; the message says what was expected and what came.

    `status` is the response a server should answer with when the request line and the headers needed to
    answer were readable (400, or 413 for an oversized message); None when the input cannot be answered.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SipLimits:
    """Bounds on what a parser accepts (and so on the memory a peer can make it hold)."""

    max_header_bytes: int = 16 * 1024  # start line + headers + the blank line
    max_headers: int = 128
    # MANSCDP answers carry up to a few hundred records per message in practice (Annex N allows more but
    # devices split them); 1 MiB is generous for XML and bounded.
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_header_bytes < 64 or self.max_headers < 1 or self.max_body_bytes < 0:
            raise ValueError(f"SipLimits out of range: {self}")


DEFAULT_LIMITS = SipLimits()


def canonical_header_name(name: str) -> str:
    """The long, canonically spelled name of a header (`i` → `Call-ID`, `call-id` → `Call-ID`); names
    this codec does not know keep their spelling."""
    lowered = name.lower()
    if lowered in COMPACT_FORMS:
        return COMPACT_FORMS[lowered]
    return _CANONICAL_NAMES.get(lowered, name)


def split_header_values(value: str) -> list[str]:
    """Split a list-valued header at commas outside quotes and angle brackets (RFC 3261 section 7.3.1)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    angle = 0
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            angle += 1
        elif not quoted and char == ">" and angle:
            angle -= 1
        elif char == "," and not quoted and not angle:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]


@dataclass(frozen=True)
class Headers:
    """Header fields in wire order, repetitions kept, names canonical (`canonical_header_name`).

    Lookups are case-insensitive and accept compact names. `get_all` returns every value of a header,
    splitting comma-separated lists for the headers that allow them (Via, Contact, Route, ...).
    """

    fields: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, fields: Iterable[tuple[str, str]]) -> Headers:
        checked: list[tuple[str, str]] = []
        for name, value in fields:
            if not _TOKEN_RE.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a token")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} value contains a line break")
            if _CONTROL_CHAR_RE.search(value):
                raise ValueError(f"header {name} value contains a control character")
            checked.append((canonical_header_name(name), value))
        return cls(tuple(checked))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def get(self, name: str) -> str | None:
        """The first value of `name` (a list header's first element), or None."""
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        wanted = canonical_header_name(name).lower()
        values: list[str] = []
        for field_name, value in self.fields:
            if field_name.lower() != wanted:
                continue
            if wanted in _LIST_HEADERS:
                values.extend(split_header_values(value))
            else:
                values.append(value)
        return values

    def without(self, name: str) -> Headers:
        wanted = canonical_header_name(name).lower()
        return Headers(tuple(f for f in self.fields if f[0].lower() != wanted))

    def replaced(self, name: str, value: str) -> Headers:
        """`name` set to one `value`, at the place of its first occurrence (appended when absent)."""
        canonical = canonical_header_name(name)
        wanted = canonical.lower()
        out: list[tuple[str, str]] = []
        placed = False
        for field_name, old in self.fields:
            if field_name.lower() == wanted:
                if not placed:
                    out.append((canonical, value))
                    placed = True
                continue
            out.append((field_name, old))
        if not placed:
            out.append((canonical, value))
        return Headers.of(out)

    def prepended(self, name: str, value: str) -> Headers:
        return Headers.of(((name, value), *self.fields))

    def appended(self, name: str, value: str) -> Headers:
        return Headers.of((*self.fields, (name, value)))


# ---------------------------------------------------------------------------------------------- params


def _split_params(text: str) -> list[str]:
    """Split `;`-separated parameters outside quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _parse_params(parts: Sequence[str], what: str) -> tuple[tuple[str, str | None], ...]:
    params: list[tuple[str, str | None]] = []
    for raw in parts:
        raw = raw.strip()
        if not raw:
            continue
        name, sep, value = raw.partition("=")
        name = name.strip()
        if not _TOKEN_RE.fullmatch(name):
            raise SipProtocolError(f"{what}: parameter name {name!r} is not a token", status=400)
        params.append((name.lower(), value.strip() if sep else None))
    return tuple(params)


def _render_params(params: Iterable[tuple[str, str | None]]) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params)


def _param(params: Iterable[tuple[str, str | None]], name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def _has_param(params: Iterable[tuple[str, str | None]], name: str) -> bool:
    return any(key == name for key, _ in params)


def _with_param(
    params: tuple[tuple[str, str | None], ...], name: str, value: str | None
) -> tuple[tuple[str, str | None], ...]:
    if _has_param(params, name):
        return tuple((k, value if k == name else v) for k, v in params)
    return (*params, (name, value))


# ------------------------------------------------------------------------------------------------ URIs


@dataclass(frozen=True)
class SipUri:
    """`sip:user@host:port;params` (the parts a GB/T 28181 platform uses: the user is the 20-digit id)."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        if not colon or scheme.lower() not in ("sip", "sips"):
            raise SipProtocolError(f"URI {text[:80]!r}: expected sip: or sips:", status=400)
        rest, _, _headers = rest.partition("?")
        address, *param_parts = rest.split(";")
        user: str | None = None
        if "@" in address:
            user, _, address = address.rpartition("@")
            user = user.partition(":")[0]  # a password in the URI is never used
        host, port = _split_host_port(address, f"URI {text[:80]!r}")
        return cls(scheme.lower(), user or None, host, port, _parse_params(param_parts, "URI"))

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}:{user}{host}{port}{_render_params(self.params)}"


def _split_host_port(text: str, what: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise SipProtocolError(f"{what}: unterminated IPv6 reference", status=400)
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise SipProtocolError(f"{what}: junk after IPv6 reference", status=400)
    else:
        host, colon, port_text_raw = text.partition(":")
        port_text = port_text_raw if colon else None
    host = host.strip()
    if not host or any(c.isspace() for c in host):
        raise SipProtocolError(f"{what}: host {host!r} is not valid", status=400)
    if port_text is None:
        return host, None
    port_text = port_text.strip()
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SipProtocolError(f"{what}: port {port_text!r} is not 1..65535", status=400)
    return host, int(port_text)


@dataclass(frozen=True)
class NameAddress:
    """A From, To or Contact value: `"display" <uri>;params` or `uri;params` (then the parameters belong
    to the header, RFC 3261 section 20.10)."""

    uri: str
    display: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> NameAddress:
        text = text.strip()
        display_text = ""
        rest_text = text
        if text.startswith('"'):
            quoted = re.match(r'"((?:[^"\\]|\\.)*)"', text)
            if quoted is None:
                raise SipProtocolError(f"name-address {text[:80]!r}: unterminated display name", status=400)
            display_text, rest_text = quoted.group(1), text[quoted.end() :]
            if "<" not in rest_text:
                raise SipProtocolError(f"name-address {text[:80]!r}: display name without <uri>", status=400)
        if "<" in rest_text:
            before, _, rest = rest_text.partition("<")
            uri, bracket, after = rest.partition(">")
            if not bracket:
                raise SipProtocolError(f"name-address {text[:80]!r}: missing '>'", status=400)
            display = (re.sub(r"\\(.)", r"\1", display_text) if display_text else before).strip() or None
            params = _parse_params(_split_params(after)[1:], "name-address") if after.strip() else ()
            if after.strip() and not after.strip().startswith(";"):
                raise SipProtocolError(f"name-address {text[:80]!r}: junk after '>'", status=400)
            return cls(uri.strip(), display, params)
        uri, *param_parts = _split_params(text)
        if not uri.strip():
            raise SipProtocolError("name-address: empty", status=400)
        return cls(uri.strip(), None, _parse_params(param_parts, "name-address"))

    @property
    def tag(self) -> str | None:
        return _param(self.params, "tag")

    @property
    def expires(self) -> int | None:
        """A Contact's `expires` parameter (RFC 3261 section 20.10), seconds; None when it has none."""
        value = _param(self.params, "expires")
        if value is None:
            return None
        if not _DIGITS_RE.fullmatch(value) or int(value) >= 2**32:
            raise SipProtocolError(f"Contact expires {value[:40]!r} is not a number of seconds", status=400)
        return int(value)

    @property
    def sip_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def with_tag(self, tag: str) -> NameAddress:
        return replace(self, params=_with_param(self.params, "tag", tag))

    def __str__(self) -> str:
        display = ""
        if self.display:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            display = f'"{escaped}" '
        return f"{display}<{self.uri}>{_render_params(self.params)}"


# ----------------------------------------------------------------------------------------------- Via


@dataclass(frozen=True)
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...;rport;received=...` (RFC 3261, RFC 3581)."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Via:
        protocol, *param_parts = _split_params(text.strip())
        match = re.fullmatch(
            r"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([A-Za-z]+)[ \t]+(\S+)", protocol.strip(), re.IGNORECASE
        )
        if match is None:
            raise SipProtocolError(
                f"Via {text[:80]!r}: expected 'SIP/2.0/<transport> host[:port]'", status=400
            )
        host, port = _split_host_port(match.group(2), "Via sent-by")
        params = _parse_params(param_parts, "Via")
        rport = _param(params, "rport")
        if rport is not None and not (rport.isascii() and rport.isdigit() and 0 < int(rport) < 65536):
            raise SipProtocolError(f"Via rport {rport!r} is not a port", status=400)
        return cls(match.group(1).upper(), host, port, params)

    @property
    def branch(self) -> str | None:
        return _param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return _param(self.params, "received")

    @property
    def rport(self) -> int | None:
        """The filled-in rport (a response's), None when absent or only asked for."""
        value = _param(self.params, "rport")
        return int(value) if value else None

    @property
    def wants_rport(self) -> bool:
        return _has_param(self.params, "rport")

    def with_param(self, name: str, value: str | None) -> Via:
        return replace(self, params=_with_param(self.params, name.lower(), value))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {host}{port}{_render_params(self.params)}"


# ---------------------------------------------------------------------------------------------- CSeq


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not _DIGITS_RE.fullmatch(parts[0]) or not _TOKEN_RE.fullmatch(parts[1]):
            raise SipProtocolError(f"CSeq {text[:80]!r}: expected '<number> <method>'", status=400)
        number = int(parts[0])
        if number >= 2**31:
            raise SipProtocolError(f"CSeq number {number} is not below 2**31", status=400)
        return cls(number, parts[1].upper())

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


# ------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True, kw_only=True)
class _SipMessage:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def _header(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipProtocolError(f"missing {canonical_header_name(name)} header", status=400)
        return value.strip()

    @property
    def call_id(self) -> str:
        return self._header("Call-ID")

    @property
    def cseq(self) -> CSeq:
        return CSeq.parse(self._header("CSeq"))

    @property
    def from_(self) -> NameAddress:
        return NameAddress.parse(self._header("From"))

    @property
    def to(self) -> NameAddress:
        return NameAddress.parse(self._header("To"))

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        return Via.parse(self._header("Via"))

    @property
    def contacts(self) -> list[NameAddress]:
        return [NameAddress.parse(v) for v in self.headers.get_all("Contact") if v.strip() != "*"]

    @property
    def expires(self) -> int | None:
        value = self.headers.get("Expires")
        if value is None:
            return None
        value = value.strip()
        if not _DIGITS_RE.fullmatch(value) or int(value) >= 2**32:
            raise SipProtocolError(f"Expires {value[:40]!r} is not a number of seconds", status=400)
        return int(value)

    @property
    def register_expires(self) -> int | None:
        """The expiry a REGISTER asks for (RFC 3261 section 10.2.1.1: an Expires header or an `expires`
        Contact parameter): the first Contact's parameter when it has one (it overrides the header,
        section 10.3 step 7), else the Expires header; None when neither says (the registrar chooses)."""
        contacts = self.contacts
        from_contact = contacts[0].expires if contacts else None
        return from_contact if from_contact is not None else self.expires

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return value.strip() if value is not None else None

    def _encode(self, start_line: str) -> bytes:
        headers = self.headers.replaced("Content-Length", str(len(self.body)))
        # Headers made by the parser or by `Headers(...)` skipped `Headers.of`'s checks: nothing that
        # could split or cut a header leaves in a message we write.
        for name, value in headers:
            if _CONTROL_CHAR_RE.search(value):
                raise ValueError(f"header {name} value contains a control character (CR, LF, NUL, ...)")
        if _CONTROL_CHAR_RE.search(start_line):
            raise ValueError("start line contains a control character")
        lines = [start_line, *(f"{name}: {value}" for name, value in headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass(frozen=True, kw_only=True)
class SipRequest(_SipMessage):
    """A request. `to_bytes()` writes `Content-Length` as the body's length (replacing any given)."""

    method: str
    uri: str

    def __post_init__(self) -> None:
        if not _TOKEN_RE.fullmatch(self.method):
            raise ValueError(f"method {self.method!r} is not a token")
        if not self.uri or any(c.isspace() for c in self.uri):
            raise ValueError(f"request URI {self.uri!r} is empty or contains white space")

    def to_bytes(self) -> bytes:
        return self._encode(f"{self.method} {self.uri} {SIP_VERSION}")


@dataclass(frozen=True, kw_only=True)
class SipResponse(_SipMessage):
    """A response. `to_bytes()` writes `Content-Length` as the body's length (replacing any given)."""

    status: int
    reason: str = ""

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 699:
            raise ValueError(f"status {self.status} is not 100..699")
        if "\r" in self.reason or "\n" in self.reason:
            raise ValueError("reason phrase contains a line break")

    def to_bytes(self) -> bytes:
        reason = f" {self.reason}" if self.reason else " "
        return self._encode(f"{SIP_VERSION} {self.status}{reason}")


SipMessage = SipRequest | SipResponse


def request(method: str, uri: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> SipRequest:
    """A request from its parts (header names may be compact or any case; they are canonicalised)."""
    return SipRequest(headers=Headers.of(headers), body=body, method=method.upper(), uri=uri)


def response_to(
    req: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """A response to `req` (RFC 3261 section 8.2.6): its Via values, From, To (with `to_tag` added when
    the To has none and the status is above 100), Call-ID and CSeq, then `headers`."""
    copied: list[tuple[str, str]] = [("Via", v) for v in req.headers.get_all("Via")]
    copied.append(("From", req._header("From")))
    to_value = req._header("To")
    if to_tag is not None and status > 100 and NameAddress.parse(to_value).tag is None:
        to_value = str(NameAddress.parse(to_value).with_tag(to_tag))
    copied.append(("To", to_value))
    copied.append(("Call-ID", req.call_id))
    copied.append(("CSeq", req._header("CSeq")))
    copied.extend(headers)
    return SipResponse(
        headers=Headers.of(copied),
        body=body,
        status=status,
        reason=REASON_PHRASES.get(status, "") if reason is None else reason,
    )


def ack_for_non_2xx(invite: SipRequest, final: SipResponse) -> SipRequest:
    """The ACK a client transaction sends for a non-2xx final response to `invite` (RFC 3261 section
    17.1.1.3): same request URI, the INVITE's top Via only (same branch), From, Call-ID and Route, the
    response's To (with its tag), CSeq with the INVITE's number and method ACK."""
    fields: list[tuple[str, str]] = [("Via", invite._header("Via"))]
    fields += [
        ("From", invite._header("From")),
        ("To", final._header("To")),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.number} ACK"),
    ]
    fields += [("Route", route) for route in invite.headers.get_all("Route")]
    fields.append(("Max-Forwards", "70"))
    return SipRequest(headers=Headers.of(fields), method="ACK", uri=invite.uri)


@dataclass(frozen=True)
class Dialog:
    """A dialog as the side that sent the INVITE (the platform) holds it after a 2xx (RFC 3261 12.1.2).

    `request()` builds the next in-dialog request (BYE, INFO, MESSAGE) and returns the dialog with its
    CSeq advanced; `ack()` builds the ACK of the 2xx (its own transaction, sent with the transport's
    `send_ack`). Where to send them is the caller's: GB/T 28181 devices are reached at the source
    address they registered from, whatever host their Contact names.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # our From value without its tag
    remote_uri: str  # our To value without its tag
    remote_target: str  # the request URI of in-dialog requests: the 2xx's Contact
    local_cseq: int
    invite_cseq: int
    route_set: tuple[str, ...] = ()

    @classmethod
    def from_2xx(cls, invite: SipRequest, ok: SipResponse) -> Dialog:
        if not 200 <= ok.status < 300:
            raise SipProtocolError(f"a dialog needs a 2xx, not {ok.status}")
        local, remote = invite.from_, ok.to
        if local.tag is None or remote.tag is None:
            raise SipProtocolError("a dialog needs a From tag and a To tag", status=400)
        contacts = ok.contacts
        cseq = invite.cseq.number
        return cls(
            call_id=invite.call_id,
            local_tag=local.tag,
            remote_tag=remote.tag,
            local_uri=str(NameAddress(local.uri, local.display)),
            remote_uri=str(NameAddress(remote.uri, remote.display)),
            # A 2xx without Contact breaks RFC 3261; such devices are reached at the INVITE's URI.
            remote_target=contacts[0].uri if contacts else invite.uri,
            local_cseq=cseq,
            invite_cseq=cseq,
            route_set=tuple(reversed(ok.headers.get_all("Record-Route"))),
        )

    def _fields(self, cseq: int, method: str) -> list[tuple[str, str]]:
        fields = [
            ("From", f"{self.local_uri};tag={self.local_tag}"),
            ("To", f"{self.remote_uri};tag={self.remote_tag}"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        fields += [("Route", route) for route in self.route_set]
        fields.append(("Max-Forwards", "70"))
        return fields

    def request(
        self, method: str, *, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> tuple[Dialog, SipRequest]:
        cseq = self.local_cseq + 1
        req = request(method, self.remote_target, [*self._fields(cseq, method.upper()), *headers], body)
        return replace(self, local_cseq=cseq), req

    def ack(self, *, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> SipRequest:
        return request("ACK", self.remote_target, [*self._fields(self.invite_cseq, "ACK"), *headers], body)


# ------------------------------------------------------------------------------------------- parsing


def _decode_text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Header text should be UTF-8 (RFC 3261); GB/T 28181 devices may put GB2312 in a display name.
        try:
            return raw.decode("gb18030")
        except UnicodeDecodeError as exc:
            raise SipProtocolError(f"{what} is neither UTF-8 nor GB18030 text", status=400) from exc


def _parse_head(head: bytes, limits: SipLimits) -> tuple[str, Headers]:
    """The start line and the headers of a header section (without the blank line)."""
    if b"\r" in head.replace(b"\r\n", b""):
        # A CR not followed by LF ends no line; letting it through would put it into a rebuilt message.
        raise SipProtocolError("header section contains a bare CR", status=400)
    lines = _LINE_SPLIT_RE.split(head)
    start = _decode_text(lines[0], "start line").strip()
    if not start:
        raise SipProtocolError("empty start line")
    if _CONTROL_CHAR_RE.search(start):
        raise SipProtocolError("start line contains a control character", status=400)
    unfolded: list[str] = []
    for raw in lines[1:]:
        line = _decode_text(raw, "header line")
        if line[:1] in (" ", "\t"):
            if not unfolded:
                raise SipProtocolError("first header line starts with white space", status=400)
            unfolded[-1] += " " + line.strip()
        elif line.strip():
            unfolded.append(line)
    if len(unfolded) > limits.max_headers:
        raise SipProtocolError(f"{len(unfolded)} header lines, more than {limits.max_headers}", status=413)
    fields: list[tuple[str, str]] = []
    for line in unfolded:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN_RE.fullmatch(name):
            raise SipProtocolError(f"header line {line[:60]!r}: expected 'Name: value'", status=400)
        value = value.strip()
        if _CONTROL_CHAR_RE.search(value):
            raise SipProtocolError(
                f"header {name[:40]!r} value contains a control character (only HTAB is allowed)", status=400
            )
        fields.append((canonical_header_name(name), value))
    return start, Headers(tuple(fields))


def _content_length(headers: Headers) -> int | None:
    values = {v.strip() for v in headers.get_all("Content-Length")}
    if not values:
        return None
    if len(values) > 1:
        raise SipProtocolError(f"Content-Length given with different values {sorted(values)}", status=400)
    (value,) = values
    if not _DIGITS_RE.fullmatch(value):
        raise SipProtocolError(f"Content-Length {value[:40]!r} is not a decimal number", status=400)
    return int(value)


def _message(start: str, headers: Headers, body: bytes) -> SipMessage:
    if start[:4].upper() == "SIP/":
        status = _STATUS_RE.fullmatch(start)
        if status is None:
            raise SipProtocolError(f"status line {start[:80]!r}: expected 'SIP/2.0 <code> <reason>'")
        code = int(status.group(1))
        if code < 100:
            raise SipProtocolError(f"status code {code} is below 100")
        return SipResponse(headers=headers, body=body, status=code, reason=(status.group(2) or "").strip())
    req = _REQUEST_RE.fullmatch(start)
    if req is None:
        raise SipProtocolError(f"request line {start[:80]!r}: expected '<METHOD> <URI> SIP/2.0'")
    return SipRequest(headers=headers, body=body, method=req.group(1).upper(), uri=req.group(2))


def _check_body_limit(length: int, limits: SipLimits) -> None:
    if length > limits.max_body_bytes:
        raise SipProtocolError(
            f"Content-Length {length} is above the limit of {limits.max_body_bytes} bytes", status=413
        )


def parse_datagram(data: bytes, limits: SipLimits = DEFAULT_LIMITS) -> SipMessage | None:
    """One UDP datagram as a message, or None for a keepalive (only CR/LF/white space).

    Without `Content-Length` the body is the rest of the datagram; with it, the body is that many bytes
    and extra bytes are dropped (RFC 3261 section 18.3); a datagram shorter than it says is an error.
    """
    stripped = data.lstrip(b"\r\n\t ")
    if not stripped:
        return None
    match = _HEADER_END_RE.search(stripped, 0, limits.max_header_bytes + 4)
    if match is None:
        if len(stripped) > limits.max_header_bytes:
            raise SipProtocolError(f"header section longer than {limits.max_header_bytes} bytes", status=413)
        # A message with no body may end without the blank line in a datagram: its end is the datagram's.
        head, rest = stripped.rstrip(b"\r\n"), b""
    else:
        head, rest = stripped[: match.start()], stripped[match.end() :]
    if len(head) > limits.max_header_bytes:
        raise SipProtocolError(f"header section longer than {limits.max_header_bytes} bytes", status=413)
    start, headers = _parse_head(head, limits)
    length = _content_length(headers)
    if length is None:
        length = len(rest)
    _check_body_limit(length, limits)
    if len(rest) < length:
        raise SipProtocolError(
            f"Content-Length {length} but the datagram carries {len(rest)} body bytes", status=400
        )
    return _message(start, headers, rest[:length])


def request_head(data: bytes, limits: SipLimits = DEFAULT_LIMITS) -> SipRequest | None:
    """The request line and headers of a datagram whose body was refused (a wrong `Content-Length`, a
    body over the limit), without the body; None when they are not readable either. A server answers
    such a request with the error (RFC 3261 section 21.4.1) instead of leaving the device to retransmit."""
    stripped = data.lstrip(b"\r\n\t ")
    match = _HEADER_END_RE.search(stripped, 0, limits.max_header_bytes + 4)
    head = stripped[: match.start()] if match is not None else stripped.rstrip(b"\r\n")
    if not head or len(head) > limits.max_header_bytes:
        return None
    try:
        message = _message(*_parse_head(head, limits), b"")
    except SipProtocolError:
        return None
    return message if isinstance(message, SipRequest) else None


class SipStreamParser:
    """Cuts a TCP byte stream into SIP messages.

    `feed()` returns the messages completed by the new bytes. CR/LF between messages are keepalives
    (RFC 5626 sends CRLFCRLF and expects CRLF back): `pings` counts the CRLFCRLF seen, so a transport can
    answer each. After a `SipProtocolError` the stream is out of step and the connection should be
    closed; the parser refuses further input. The buffer never holds more than one message's bounds.
    """

    def __init__(self, limits: SipLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._head: tuple[str, Headers, int] | None = None  # parsed head awaiting its body
        self._failed: SipProtocolError | None = None
        # Where the search for the end of the header section resumes: bytes before it were searched
        # already (a header trickled one byte per read costs linear, not quadratic, work).
        self._header_end_searched = 0
        self._ping_matched = 0
        self.pings = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    @property
    def partial_message(self) -> bool:
        """Whether bytes of an unfinished message are held (CR/LF keepalives between messages are not)."""
        return self._head is not None or bool(self._buffer)

    def feed(self, data: bytes) -> list[SipMessage]:
        if self._failed is not None:
            raise SipProtocolError(f"stream already failed: {self._failed}")
        self._buffer += data
        try:
            return list(self._drain())
        except SipProtocolError as exc:
            self._failed = exc
            self._buffer.clear()
            raise

    def _skip_keepalives(self) -> None:
        skipped = 0
        while skipped < len(self._buffer) and self._buffer[skipped] in (0x0D, 0x0A):
            byte = self._buffer[skipped]
            # Match CRLFCRLF across feeds: _ping_matched counts the bytes of it matched so far.
            if byte == _PING[self._ping_matched]:
                self._ping_matched += 1
                if self._ping_matched == len(_PING):
                    self.pings += 1
                    self._ping_matched = 0
            else:
                self._ping_matched = 1 if byte == 0x0D else 0
            skipped += 1
        del self._buffer[:skipped]
        if skipped:
            self._header_end_searched = 0  # positions moved (never inside a header: it starts with text)
        if self._buffer:
            self._ping_matched = 0

    def _drain(self) -> Iterator[SipMessage]:
        limits = self._limits
        while True:
            if self._head is None:
                self._skip_keepalives()
                if not self._buffer:
                    return
                resume = max(0, self._header_end_searched - (_HEADER_END_MAX_BYTES - 1))
                match = _HEADER_END_RE.search(self._buffer, resume, limits.max_header_bytes + 4)
                if match is None:
                    if len(self._buffer) > limits.max_header_bytes:
                        raise SipProtocolError(
                            f"no end of header section within {limits.max_header_bytes} bytes", status=413
                        )
                    self._header_end_searched = len(self._buffer)
                    return
                self._header_end_searched = 0
                head = bytes(self._buffer[: match.start()])
                del self._buffer[: match.end()]
                if len(head) > limits.max_header_bytes:
                    raise SipProtocolError(
                        f"header section longer than {limits.max_header_bytes} bytes", status=413
                    )
                start, headers = _parse_head(head, limits)
                length = _content_length(headers)
                if length is None:
                    raise SipProtocolError("missing Content-Length on a stream transport", status=400)
                _check_body_limit(length, limits)
                self._head = (start, headers, length)
            start, headers, length = self._head
            if len(self._buffer) < length:
                return
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._head = None
            yield _message(start, headers, body)
