"""Signed refusals: the central's word that an item (or a ledger) is refused for good, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from edge.custody.canonical import canonical_json
from edge.custody.keys import StationKey
from edge.custody.refusal import (
    REFUSAL_FORMAT,
    RefusalError,
    refusal_payload,
    refusal_problems,
    sign_refusal,
    verify_refusal,
)
from edge.custody.witness import sign_witnessed_head

STATION = "3201000001"
ITEM = "5fcfc8f3-2d8a-42cb-9687-e239cb7ce9f7"
UPLOAD = "ab" * 16
TIME = "2024-05-01T09:00:00.123456Z"


@pytest.fixture(scope="module")
def key() -> StationKey:
    return StationKey.generate()


def refusal(key: StationKey, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"central": "central-hq", "station": STATION, "item": ITEM, "upload": UPLOAD,
                              "code": "content_mismatch", "detail": "the upload holds other bytes",
                              "time": TIME, "key": key}
    values.update(overrides)
    return sign_refusal(**values)


def check(doc: object, key: StationKey, **expected: Any) -> list[str]:
    values: dict[str, Any] = {"station": STATION, "item": ITEM, "code": "content_mismatch", "upload": UPLOAD}
    values.update(expected)
    return [p.where for p in verify_refusal(doc, key.public_key(), **values)]


def test_a_refusal_verifies_for_what_it_names_and_signs_everything_but_its_signature(key: StationKey) -> None:
    doc = refusal(key)
    assert doc["format"] == REFUSAL_FORMAT and doc["key_id"] == key.key_id
    assert check(doc, key) == []
    assert refusal_payload(doc) == canonical_json({k: v for k, v in doc.items()
                                                   if k not in ("key_id", "signature")})


@pytest.mark.parametrize(
    ("member", "value"),
    [("station", "3201000002"), ("item", "00000000-0000-4000-8000-000000000001"), ("upload", "cd" * 16),
     ("code", "bad_signature"), ("detail", "something else"), ("central", "other"),
     ("time", TIME[:-2] + "9Z"), ("format", "evidence-edge/refusal/2")],
)
def test_every_signed_member_is_covered(key: StationKey, member: str, value: Any) -> None:
    altered = {**refusal(key), member: value}
    expected = {name: value for name in ("station", "item", "upload", "code") if name == member}
    problems = check(altered, key, **expected)
    assert problems == (["refusal.format"] if member == "format" else ["refusal.signature"])


@pytest.mark.parametrize(
    ("expected", "where"),
    [({"item": "00000000-0000-4000-8000-000000000001"}, "refusal.item"), ({"upload": None}, "refusal.upload"),
     ({"code": "too_large"}, "refusal.code"), ({"station": "OTHER"}, "refusal.station")],
)
def test_a_genuine_refusal_of_something_else_decides_nothing(
    key: StationKey, expected: dict[str, Any], where: str
) -> None:
    assert check(refusal(key), key, **expected) == [where]


def test_another_key_is_named(key: StationKey) -> None:
    assert check(refusal(StationKey.generate()), key) == ["refusal.key_id"]
    # A document signed by the right key and claiming its key id, but signed over other bytes.
    forged = {**refusal(StationKey.generate()), "key_id": key.key_id}
    assert check(forged, key) == ["refusal.signature"]


def test_other_documents_the_central_signs_are_not_refusals(key: StationKey) -> None:
    head = sign_witnessed_head(central="central-hq", station=STATION, seq=3, hash_hex="ab" * 32,
                               station_key_id="0f" * 16, time=TIME, key=key).to_dict()
    assert "refusal" in check(head, key)[0]


@pytest.mark.parametrize(
    "hostile",
    [None, [], "refusal", {"format": REFUSAL_FORMAT}, {"code": "x" * 10_000},
     {**{"a": 1}, "signature": "\u202e" * 88}],
)
def test_hostile_documents_are_named_not_trusted(key: StationKey, hostile: object) -> None:
    assert refusal_problems(hostile) and check(hostile, key)


def test_ledger_refusals_name_no_item_and_details_are_bounded(key: StationKey) -> None:
    doc = refusal(key, item=None, upload=None, code="ledger_fork", detail="x" * 5000)
    assert len(doc["detail"]) == 500
    assert check(doc, key, item=None, upload=None, code="ledger_fork") == []


@pytest.mark.parametrize(("member", "value"), [("item", "../../etc"), ("code", "Content Mismatch"),
                                               ("station", "a b"), ("time", "yesterday")])
def test_nothing_unverifiable_is_signed(key: StationKey, member: str, value: str) -> None:
    with pytest.raises(RefusalError):
        refusal(key, **{member: value})
