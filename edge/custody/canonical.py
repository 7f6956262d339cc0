"""Canonical JSON (RFC 8785, JCS) and SHA-256 helpers.

Everything that is hashed or signed (ledger entries, checkpoints, manifests) goes through
:func:`canonical_json`, so one object has exactly one byte form on every station and at the central.

What is implemented, and the choices made where RFC 8785 leaves room or Python differs:

* Object members are sorted by their names as UTF-16 code units, exactly as RFC 8785 section 3.2.3 says.
  This differs from sorting by code point only when a name holds characters outside the BMP; we follow
  the RFC so that a JCS implementation in another language produces the same bytes.
* No insignificant white space; output is UTF-8 (non-ASCII characters are not escaped).
* Strings are escaped like ECMAScript ``JSON.stringify``: ``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``
  and ``\\u00xx`` (lower-case hex) for the other control characters; nothing else. Lone surrogates are
  rejected (they cannot be encoded as UTF-8).
* Numbers: RFC 8785 serialises every number as an IEEE-754 double in the ECMAScript shortest form.
  Python ``int`` values are accepted only within the interoperable range +-(2**53 - 1) (I-JSON, RFC 7493)
  and printed exactly; larger integers are rejected rather than silently rounded. Python ``float`` values
  are accepted when finite and printed with the ECMAScript ``Number.prototype.toString`` algorithm:
  the shortest round-tripping digits (Python's ``repr`` gives the same digit string) laid out in plain
  notation for exponents -7 < e < 21 and in ``1e+21`` style otherwise. So ``1.0`` becomes ``1``, ``-0.0``
  becomes ``0`` and ``1e21`` becomes ``1e+21``. NaN and the infinities are rejected.
* Accepted types: ``None``, ``bool``, ``int``, ``float``, ``str``, ``list``/``tuple`` and mappings with
  ``str`` keys. ``bytes``, sets, dates and every other type are rejected: callers convert explicitly
  (hex, base64, ISO-8601) so that the byte form is never an accident of a default.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from edge.custody.errors import CanonicalJsonError

__all__ = ["MAX_DEPTH", "MAX_SAFE_INTEGER", "canonical_json", "parse_json", "sha256_hex"]

MAX_SAFE_INTEGER = 2**53 - 1
# Evidence records are shallow; a bound keeps hostile input from exhausting the Python stack.
MAX_DEPTH = 64

_ESCAPE_RE = re.compile(r'[\x00-\x1f"\\]')
_ESCAPES: dict[str, str] = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
for _code in range(0x20):
    _ESCAPES.setdefault(chr(_code), f"\\u{_code:04x}")


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


# For values that hold only dicts, lists, str, int and None (no float, no key outside the BMP), the
# standard library's C encoder writes exactly the canonical form: members sorted by code point, which
# for BMP-only names is the UTF-16 order of RFC 8785; no white space; the same string escapes
# (lower-case \u00xx for the other control characters); integers as their digits.
_PLAIN_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False, check_circular=False
)
_PLAIN_SCALARS = (str, int, bool, type(None))


def canonical_json(obj: object) -> bytes:
    """Serialise ``obj`` as RFC 8785 canonical JSON (UTF-8 bytes).

    Raises :class:`CanonicalJsonError` naming the JSON path of the first offending value.
    """
    if _plain(obj, 0):
        # Ledger entries and manifests are written many times per item: the C encoder does it at a
        # fraction of the cost. Anything it could write differently takes the path below, which also
        # names what is wrong (a lone surrogate, for one).
        try:
            return _PLAIN_ENCODER.encode(obj).encode("utf-8")
        except UnicodeEncodeError:
            pass
    parts: list[str] = []
    _emit(obj, parts, "$", 0)
    text = "".join(parts)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalJsonError(
            f"expected valid Unicode text, found a lone surrogate U+{ord(text[exc.start]):04X}"
        ) from None


def _plain(obj: object, depth: int) -> bool:
    """Whether the C encoder writes `obj` canonically: exact dict/list/tuple/str/int/bool/None types
    only (subclasses may print otherwise), integers within the safe range, object names within the BMP
    (where code point order is UTF-16 order), nesting within MAX_DEPTH."""
    kind = type(obj)
    if kind is str or kind is bool or obj is None:
        return True
    if kind is int:
        return -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER  # type: ignore[operator]
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        for key, value in obj.items():  # type: ignore[attr-defined]
            if type(key) is not str or not (key.isascii() or max(key) < "\U00010000"):
                return False
            # str, bool and None need no look; ints and containers do.
            if (type(value) is int or type(value) not in _PLAIN_SCALARS) and not _plain(value, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        return all(_plain(value, depth + 1) for value in obj)  # type: ignore[attr-defined]
    return False


def _emit(obj: object, out: list[str], path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CanonicalJsonError(f"{path}: expected nesting depth <= {MAX_DEPTH}, found deeper")
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        if not -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
            raise CanonicalJsonError(
                f"{path}: expected an integer within +-(2**53-1), found one with {obj.bit_length()} bits"
            )
        out.append(str(int(obj)))
    elif isinstance(obj, float):
        out.append(_format_float(obj, path))
    elif isinstance(obj, str):
        out.append(_quote(obj))
    elif isinstance(obj, Mapping):
        _emit_object(obj, out, path, depth)
    elif isinstance(obj, list | tuple):
        out.append("[")
        for index, value in enumerate(obj):
            if index:
                out.append(",")
            _emit(value, out, f"{path}[{index}]", depth + 1)
        out.append("]")
    else:
        raise CanonicalJsonError(
            f"{path}: expected null, bool, int, float, str, list or str-keyed mapping, "
            f"found {type(obj).__name__}"
        )


def _emit_object(obj: Mapping[Any, Any], out: list[str], path: str, depth: int) -> None:
    keyed: list[tuple[bytes, str, object]] = []
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CanonicalJsonError(f"{path}: expected str object keys, found {type(key).__name__}")
        try:
            sort_key = key.encode("utf-16-be")
        except UnicodeEncodeError:
            raise CanonicalJsonError(f"{path}: object key {key!r} holds a lone surrogate") from None
        keyed.append((sort_key, str(key), value))
    # Big-endian UTF-16 bytes compare exactly like sequences of UTF-16 code units (RFC 8785 3.2.3).
    keyed.sort(key=lambda member: member[0])
    out.append("{")
    for index, (_, key, value) in enumerate(keyed):
        if index:
            out.append(",")
        out.append(_quote(key))
        out.append(":")
        _emit(value, out, f"{path}.{key}", depth + 1)
    out.append("}")


def _quote(text: str) -> str:
    return '"' + _ESCAPE_RE.sub(lambda match: _ESCAPES[match.group(0)], str(text)) + '"'


def _format_float(value: float, path: str) -> str:
    if not math.isfinite(value):
        raise CanonicalJsonError(f"{path}: expected a finite number, found {value!r}")
    if value == 0.0:
        return "0"  # also for -0.0, as ECMAScript does
    # repr() yields the shortest digit string that round-trips, which is what ECMAScript requires.
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)
    k = len(digits)
    n = exponent + k  # value = 0.digits * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return ("-" if sign else "") + text


def _reject_constant(name: str) -> Any:
    raise CanonicalJsonError(f"expected a finite number, found {name}")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CanonicalJsonError(f"expected a number within double range, found {text[:40]}")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CanonicalJsonError(f"expected unique object keys, found {key!r} twice")
        result[key] = value
    return result


def parse_json(data: bytes | str) -> Any:
    """Parse JSON text strictly: UTF-8 only, no NaN/Infinity, no duplicate keys, bounded depth.

    The parsed value may still be outside canonical JSON (for example a huge integer); callers that
    need the canonical form run :func:`canonical_json` on the result, which raises then.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise CanonicalJsonError(f"expected UTF-8 JSON text, found an invalid byte at offset "
                                 f"{exc.start}") from None
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            object_pairs_hook=_unique_object,
        )
    except CanonicalJsonError:
        raise
    except RecursionError:
        raise CanonicalJsonError("expected JSON nested at most a few hundred levels, found deeper") from None
    except ValueError as exc:  # JSONDecodeError, and int strings beyond Python's digit limit
        raise CanonicalJsonError(f"expected JSON text, found: {exc}") from None
