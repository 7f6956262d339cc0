"""Canonical JSON: RFC 8785 vectors, our documented choices, and hostile values."""

from __future__ import annotations

import math
import random
import struct
from collections import OrderedDict
from types import MappingProxyType

import pytest

from edge.custody.canonical import MAX_DEPTH, MAX_SAFE_INTEGER, canonical_json, parse_json, sha256_hex
from edge.custody.errors import CanonicalJsonError

# RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def _double(bits_hex: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(bits_hex))[0]
    return value


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_rfc8785_appendix_b_numbers(bits: str, expected: str) -> None:
    assert canonical_json(_double(bits)) == expected.encode()


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_rfc8785_non_finite_numbers_are_rejected(bits: str) -> None:
    with pytest.raises(CanonicalJsonError, match="finite"):
        canonical_json({"duration_s": _double(bits)})


def test_rfc8785_section_3_2_2_example() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(value) == expected.encode("utf-8")


def test_rfc8785_section_3_2_3_sorting_by_utf16_code_units() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    text = canonical_json(value).decode("utf-8")
    order = [
        text.index(f'"{label}"')
        for label in (
            "Carriage Return",
            "One",
            "Control",
            "Latin Small Letter O With Diaeresis",
            "Euro Sign",
            "Emoji: Grinning Face",
            "Hebrew Letter Dalet With Dagesh",
        )
    ]
    assert order == sorted(order)
    # The emoji (surrogates D83D DE00) sorts before U+FB33 only under UTF-16 ordering, not by code point.
    assert text.index("Emoji") < text.index("Hebrew")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (-0.0, "0"),
        (1e16, "10000000000000000"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (123.456, "123.456"),
        (0.1, "0.1"),
        (MAX_SAFE_INTEGER, "9007199254740991"),
        (-MAX_SAFE_INTEGER, "-9007199254740991"),
        (0, "0"),
        (True, "true"),
        (None, "null"),
        ("", '""'),
        ([], "[]"),
        ({}, "{}"),
        ((1, "a"), '[1,"a"]'),
        ("\x00\x1f\x7f\u2028", '"\\u0000\\u001f\x7f\u2028"'),
        ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
        ("中文 /", '"中文 /"'),
    ],
)
def test_serialisation_choices(value: object, expected: str) -> None:
    assert canonical_json(value) == expected.encode("utf-8")


def test_mappings_of_any_kind_and_key_order_do_not_matter() -> None:
    a = {"b": 1, "a": [1, 2, {"y": None, "x": True}]}
    b = OrderedDict([("a", [1, 2, {"x": True, "y": None}]), ("b", 1)])
    assert canonical_json(a) == canonical_json(b) == canonical_json(MappingProxyType(a))
    assert canonical_json(a) == b'{"a":[1,2,{"x":true,"y":null}],"b":1}'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"raw", "found bytes"),
        (bytearray(b"raw"), "found bytearray"),
        ({1, 2}, "found set"),
        ({1: "int key"}, "str object keys"),
        ({("a",): 1}, "str object keys"),
        (MAX_SAFE_INTEGER + 1, "within"),
        (-(2**64), "within"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        ({"a": {"b": [object()]}}, r"\$\.a\.b\[0\]: .*found object"),
        ("\ud800", "lone surrogate"),
        ({"\udfff": 1}, "lone surrogate"),
    ],
)
def test_rejected_values_name_what_came(value: object, message: str) -> None:
    with pytest.raises(CanonicalJsonError, match=message):
        canonical_json(value)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    deep: object = 1
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(CanonicalJsonError, match="depth"):
        canonical_json(deep)


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_parse_then_canonical_is_stable() -> None:
    doc = {"size": 123, "duration_s": 1.25, "name": "张三\n", "nested": {"b": [1.0, -0.0], "a": None}}
    once = canonical_json(doc)
    assert canonical_json(parse_json(once)) == once
    assert canonical_json(parse_json(b'{ "size" : 123.0 }')) == b'{"size":123}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"a": 1, "a": 2}', "unique"),
        (b'{"a": NaN}', "finite"),
        (b'{"a": -Infinity}', "finite"),
        (b'{"a": 1e400}', "double range"),
        (b'\xff{"a": 1}', "UTF-8"),
        (b'{"a": ', "JSON text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b"1" * 5000, "JSON text"),  # beyond Python's int digit limit
    ],
)
def test_parse_json_rejects_hostile_text(text: bytes, message: str) -> None:
    with pytest.raises(CanonicalJsonError, match=message):
        parse_json(text)


# -- the C encoder's fast path writes exactly what the reference serialiser writes -------------------------


def _reference(obj: object) -> bytes:
    """The pure-Python serialiser alone (canonical_json takes a fast path for plain values)."""
    from edge.custody import canonical

    parts: list[str] = []
    canonical._emit(obj, parts, "$", 0)
    return "".join(parts).encode("utf-8")


_ALPHABET = "aZ09 _-\"\\/\b\f\n\r\t\x00\x01\x1f\x7f\u2028\u00e9张伟\uffff\U0001f600\U00010000\ue000"


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 6)))


def _random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        return rng.choice([
            None, True, False, 0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, rng.randint(-10**6, 10**6),
            _random_text(rng), 1.5, -0.0, 1e21,
        ])
    if roll < 0.7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_random_text(rng): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_the_fast_path_writes_what_the_reference_serialiser_writes() -> None:
    rng = random.Random(20261205)
    for _ in range(3000):
        value = _random_value(rng)
        assert canonical_json(value) == _reference(value), value


def test_the_fast_path_leaves_what_it_cannot_write_canonically_to_the_reference() -> None:
    # Names outside the BMP sort by UTF-16 code units, not by code point.
    names = {"\U0001f600": 1, "\ue000": 2, "a": 3}
    assert canonical_json(names) == _reference(names) == '{"a":3,"\U0001f600":1,"\ue000":2}'.encode()

    class Shown(str):
        def __str__(self) -> str:
            return "shown"

    assert canonical_json({"k": Shown("raw")}) == _reference({"k": Shown("raw")})
    assert canonical_json([1.0, 1e-7, -0.0]) == b"[1,1e-7,0]"
    with pytest.raises(CanonicalJsonError, match="lone surrogate U\\+D800"):
        canonical_json({"k": "\ud800"})
    with pytest.raises(CanonicalJsonError, match="holds a lone surrogate"):
        canonical_json({"\ud800": 1})
    with pytest.raises(CanonicalJsonError, match="within \\+-\\(2\\*\\*53-1\\)"):
        canonical_json({"k": MAX_SAFE_INTEGER + 1})
    with pytest.raises(CanonicalJsonError, match="expected str object keys"):
        canonical_json({1: "one"})
    deep: object = "x"
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(CanonicalJsonError, match="nesting depth"):
        canonical_json(deep)
